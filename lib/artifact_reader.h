// Reading a streaming artifact back: load and cross-check its manifest, metadata blob and chunk
// table; materialize its devices; verify everything (check); summarize it (inspect). Blob access
// goes through ArtifactStore so that a registry can stand in for an OCI layout.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chunk_table.h"
#include "erofs_reader.h"
#include "oci_layout.h"
#include "oci_types.h"
#include "result.h"
#include "thread_pool.h"

namespace erostream {

// Where an artifact's blobs are read from.
class ArtifactStore {
public:
    virtual ~ArtifactStore() = default;
    virtual std::string describe() const = 0;
    virtual Result<std::string> read_manifest(const Descriptor& d) = 0;  // verified
    virtual Result<std::string> read_blob(const Descriptor& d) = 0;      // whole, verified
    // Exactly `len` bytes at `offset` of blob `d`, unverified (chunks are verified by digest).
    virtual Result<std::string> read_range(const Descriptor& d, uint64_t offset, uint64_t len) = 0;
    // How often a range whose chunk fails verification is read again: bytes from a network can be
    // corrupted in transit, bytes from a local file cannot.
    virtual unsigned read_retries() const { return 0; }
};

class LayoutStore final : public ArtifactStore {
public:
    explicit LayoutStore(OciLayout layout) : layout_(std::move(layout)) {}
    std::string describe() const override { return "oci:" + layout_.path(); }
    Result<std::string> read_manifest(const Descriptor& d) override;
    Result<std::string> read_blob(const Descriptor& d) override;
    Result<std::string> read_range(const Descriptor& d, uint64_t offset, uint64_t len) override;
    const OciLayout& layout() const { return layout_; }

private:
    OciLayout layout_;
};

struct Artifact {
    Descriptor desc;
    Manifest manifest;
    std::unique_ptr<std::string> meta_bytes;  // stable address: `meta` holds views into it
    MetadataBlob meta;
    Descriptor meta_desc;
    std::vector<Descriptor> data;  // device i+1 is data[i]
};

// Loads the artifact manifest `d` and its metadata blob, and checks that they agree: artifact
// type, media types, the chunk table, and the EROFS device table (tags = data blob digests,
// sizes = device sizes).
Result<Artifact> load_artifact(ArtifactStore& store, const Descriptor& d);

// Resolves "oci:DIR:TAG" / "oci:DIR@sha256:..." to a store and the artifact's descriptor.
struct OpenedArtifact {
    std::unique_ptr<ArtifactStore> store;
    Artifact artifact;
};
Result<OpenedArtifact> open_artifact(std::string_view ref);
// The same, with "docker://REGISTRY/REPO(:TAG|@sha256:..)" too: an erostream artifact named
// directly, or an image whose artifact is found through its referrers (for `platform`, default
// this machine's).
class RegistrySession;
Result<OpenedArtifact> open_artifact(std::string_view ref, RegistrySession& registry,
                                     const std::optional<Platform>& platform = std::nullopt);

// Decompresses and verifies one chunk's frame; `out` receives blocks * 4096 bytes.
Result<void> decode_chunk(std::string_view frame, const erostream_chunk_record& rec,
                          std::string& out);

using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

// Writes DIR/meta.erofs and DIR/device-N.img (N = 1..devices), verifying every chunk. Files
// appear under their final names only when complete.
Result<void> materialize_artifact(ArtifactStore& store, const Artifact& a, const std::string& dir,
                                  ThreadPool& pool, const ProgressFn& progress);

struct CheckReport {
    uint64_t inodes = 0;
    uint64_t chunks_checked = 0;
    std::vector<std::string> faults;  // empty: the artifact is sound
};
Result<CheckReport> check_artifact(ArtifactStore& store, const Artifact& a, ThreadPool& pool);

struct InspectReport {
    uint64_t files = 0, directories = 0, symlinks = 0, others = 0, hardlinks = 0;
    uint64_t tree_bytes = 0;      // sum of regular file sizes (hardlinked once)
    uint64_t inline_files = 0, inline_bytes = 0;
    uint64_t chunk_refs = 0, hole_refs = 0;
    uint64_t referenced_bytes = 0;  // block-padded bytes of all non-hole chunk references
    uint64_t meta_size = 0, erofs_size = 0;
    struct Layer {
        std::string layer_digest, blob_digest;
        uint64_t blob_size = 0, device_bytes = 0, chunks = 0;
    };
    std::vector<Layer> layers;
};
Result<InspectReport> inspect_artifact(const Artifact& a);

}  // namespace erostream
