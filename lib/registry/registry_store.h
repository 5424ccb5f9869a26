// Streaming artifacts in a registry: an ArtifactStore that reads blobs and ranges from a
// repository, discovery of the artifacts of an image (referrers API, else the sha256-<hex> tag),
// and pushing an artifact converted into an OCI layout.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "artifact_reader.h"
#include "oci_layout.h"
#include "oci_types.h"
#include "reference.h"
#include "registry_client.h"

namespace erostream {

class RegistryStore final : public ArtifactStore {
public:
    RegistryStore(std::shared_ptr<RegistryClient> client, std::string repository)
        : client_(std::move(client)), repo_(std::move(repository)) {}
    std::string describe() const override { return "docker://" + client_->registry() + "/" + repo_; }
    Result<std::string> read_manifest(const Descriptor& d) override;
    Result<std::string> read_blob(const Descriptor& d) override;
    Result<std::string> read_range(const Descriptor& d, uint64_t offset, uint64_t len) override;
    unsigned read_retries() const override { return client_->retry_policy().max_retries; }

private:
    std::shared_ptr<RegistryClient> client_;
    std::string repo_;
};

// The erostream artifacts that refer to the manifest `ref` names; for an index, to the index and
// to its platform manifests (only those matching `platform` when given). Order: as the registry
// lists them, subject by subject.
Result<std::vector<ReferrerDescriptor>> discover_artifacts(RegistryClient& client, const ImageReference& ref,
                                                           const std::optional<Platform>& platform);

// The artifact `ref` means: `ref` itself when it names an erostream artifact manifest, else the
// newest erostream artifact (annotation org.opencontainers.image.created, else the last listed)
// referring to the image for `platform` (default: this machine's).
Result<Descriptor> resolve_artifact(RegistryClient& client, const ImageReference& ref,
                                    const std::optional<Platform>& platform);

// Everything a push did, for reports.
struct PushReport {
    std::string reference;  // "registry/repo@sha256:..." or ":tag"
    uint64_t blobs = 0, blobs_existing = 0, blobs_mounted = 0, bytes_sent = 0;
    bool referrers_tag_updated = false;
    bool referrers_api = false;
};

struct PushProgress {
    size_t blob = 0, blobs = 0;
    std::string digest;
    uint64_t done = 0, total = 0;
};

// Pushes artifact manifest `artifact` (and its blobs) from `layout` into `dest` (repository, and
// the tag when it has one; else by digest). `mount_from`: a repository of the same registry that
// may hold some of the blobs. When the registry keeps no referrers itself, the artifact is added
// to its subject's sha256-<hex> tag.
Result<PushReport> push_artifact(RegistryClient& client, const OciLayout& layout, const Descriptor& artifact,
                                 const ImageReference& dest, const std::optional<std::string>& tag,
                                 const std::optional<std::string>& mount_from,
                                 const std::function<void(const PushProgress&)>& progress = nullptr);

}  // namespace erostream
