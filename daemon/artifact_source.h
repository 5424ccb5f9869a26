// From a mount request's REF to the artifact and the store its blobs come from, with the
// manifests and metadata blobs kept in the cache directory (verified whenever they are read),
// so that a restarted daemon brings its mounts back without the network.
//
// REF forms: oci:DIR:TAG / oci:DIR@sha256:HEX (a local layout; when the reference names an image
// rather than an artifact, the artifact is found in the same layout by its subject) and
// docker://REGISTRY/REPO:TAG or @sha256:HEX (an artifact named directly, or an image whose
// artifact for this machine's platform is found through its referrers: the registry's referrers
// API, else the sha256-<hex> tag; the same discovery as erostream-mkfs materialize).
#pragma once

#include <memory>
#include <string>

#include "artifact_reader.h"
#include "result.h"

namespace erostream {

// Wraps a store: manifests (<cache>/manifests/<hex>.json) and erostream metadata blobs
// (<cache>/meta/<hex>.erofs) are read from the cache when there, else fetched and written there.
// Everything read is checked against its descriptor's digest and size. Blocking: worker threads.
class CachingStore final : public ArtifactStore {
public:
    CachingStore(std::shared_ptr<ArtifactStore> inner, std::string cache_dir)
        : inner_(std::move(inner)), cache_dir_(std::move(cache_dir)) {}
    std::string describe() const override { return inner_ ? inner_->describe() : "cache " + cache_dir_; }
    Result<std::string> read_manifest(const Descriptor& d) override;
    Result<std::string> read_blob(const Descriptor& d) override;
    Result<std::string> read_range(const Descriptor& d, uint64_t offset, uint64_t len) override;
    // Where the metadata blob `d` lives in the cache (read_blob puts it there).
    std::string meta_path(const Descriptor& d) const;
    std::shared_ptr<ArtifactStore> inner() const { return inner_; }

private:
    Result<std::string> cached(const std::string& path, const Descriptor& d);
    std::shared_ptr<ArtifactStore> inner_;  // may be null: cache only
    std::string cache_dir_;
};

class DaemonRegistry;

struct ResolvedArtifact {
    std::shared_ptr<CachingStore> store;
    Descriptor artifact;      // the artifact manifest
    std::string source;       // how to reach the store again: "oci:DIR" or "docker://REG/REPO"
};

// Resolves REF to its artifact (blocking: layouts and registries are read). Errors carry an errno
// the control API maps to its status: EINVAL for a bad reference, ENOENT when the image, tag or
// artifact is not there, ECONNREFUSED/ETIMEDOUT/EIO when the registry cannot be reached or
// answers nonsense. `registry` (null: docker:// refused) serves docker:// references.
Result<ResolvedArtifact> resolve_artifact_ref(const std::string& ref, const std::string& cache_dir,
                                              DaemonRegistry* registry);
// The store for an artifact resolved before (from a saved `source`), without resolving anything
// and without the network: what it holds is read from the cache first.
Result<std::shared_ptr<CachingStore>> reopen_source(const std::string& source, const std::string& cache_dir,
                                                    DaemonRegistry* registry);

// The hex of a "sha256:<hex>" digest (validated by the parsers that produced it).
std::string digest_hex(const std::string& digest);

}  // namespace erostream
