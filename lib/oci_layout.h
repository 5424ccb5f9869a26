// An OCI image layout directory (image-spec image-layout.md): oci-layout, index.json,
// blobs/sha256/<hex>. Readers verify what they read; writers never leave a partly written blob or
// index.json under its final name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "oci_types.h"
#include "result.h"
#include "sha256.h"
#include "unique_fd.h"

namespace erostream {

// Writes one new blob: the bytes go to a temporary file in the layout directory (same
// filesystem, so the final rename is atomic) and are hashed on the way. commit() fsyncs and
// renames it to blobs/sha256/<digest>; a writer destroyed before commit() removes its file.
class BlobWriter {
public:
    BlobWriter(BlobWriter&& o) noexcept;
    BlobWriter& operator=(BlobWriter&& o) noexcept;
    BlobWriter(const BlobWriter&) = delete;
    BlobWriter& operator=(const BlobWriter&) = delete;
    ~BlobWriter();

    Result<void> write(const void* data, size_t n);
    Result<void> write(std::string_view s) { return write(s.data(), s.size()); }
    Result<Descriptor> commit(std::string media_type);
    uint64_t size() const { return size_; }
    // For reading back what was written (pread). Writing through it bypasses the digest.
    int fd() const { return fd_.get(); }

private:
    friend class OciLayout;
    BlobWriter(std::string blobs_dir, std::string tmp_path, UniqueFd fd);
    void discard() noexcept;

    std::string blobs_dir_;  // <layout>/blobs/sha256
    std::string tmp_path_;   // empty once committed or discarded
    UniqueFd fd_;
    Sha256 hash_;
    uint64_t size_ = 0;
};

// Looks a manifest up in an index: by its org.opencontainers.image.ref.name annotation (tag), by
// digest, or, with neither, the only manifest (an error otherwise lists what is there). `where`
// names the index in errors. With both, the tagged entry must have that digest.
Result<Descriptor> resolve_in_index(const Index& index, const std::optional<std::string>& tag,
                                    const std::optional<std::string>& digest,
                                    std::string_view where);

class OciLayout {
public:
    // Needs oci-layout (imageLayoutVersion 1.x) and index.json.
    static Result<OciLayout> open(const std::string& dir);
    // Creates what is missing: the directory, oci-layout {"imageLayoutVersion":"1.0.0"}, an empty
    // index.json and blobs/sha256; an existing layout is opened as it is.
    static Result<OciLayout> open_or_create(const std::string& dir);

    const std::string& path() const { return dir_; }
    Result<Index> read_index() const;
    // <dir>/blobs/<algorithm>/<encoded>; the digest is not checked here: callers pass validated
    // digests (every parser here validates them) or use has_blob/open_blob, which do.
    std::string blob_path(std::string_view digest) const;
    bool has_blob(std::string_view digest) const;
    // Reads a whole blob, checking its size and digest against the descriptor.
    Result<std::string> read_blob(const Descriptor& d, size_t max_size = 64 << 20) const;
    Result<UniqueFd> open_blob(std::string_view digest) const;
    Result<BlobWriter> new_blob() const;
    // Stores bytes as a blob (nothing is written when the blob is already there).
    Result<Descriptor> put_blob(std::string_view bytes, std::string media_type) const;
    // Adds a manifest to index.json. With a tag, the entries carrying that ref.name are replaced
    // (the tag is set on the stored descriptor); without, the descriptor is added unless an entry
    // with its digest is there already. index.json is rewritten atomically (temp + rename) under
    // an flock of the layout directory, so concurrent writers on one machine do not lose entries.
    Result<void> add_manifest(Descriptor manifest, std::optional<std::string> tag) const;
    // resolve_in_index on index.json; a digest that index.json does not list is still found when
    // its blob is in the layout (for example a platform manifest of a listed index).
    Result<Descriptor> resolve(std::optional<std::string> tag,
                               std::optional<std::string> digest) const;

private:
    explicit OciLayout(std::string dir) : dir_(std::move(dir)) {}
    std::string dir_;
};

}  // namespace erostream
