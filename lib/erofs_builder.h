// Lays out the merged file tree as an EROFS image (block size 4096): superblock, device table,
// inodes (always the 64-byte extended form), inline xattrs, directories, symlinks, inline files,
// and chunk indexes that point regular files into the extra devices (the data blobs).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "fs_tree.h"
#include "result.h"

namespace erostream {

// One extra device (data blob) of the image: slot device_id-1 of the device table.
struct ErofsDevice {
    std::string tag;  // the blob's sha256 digest in hex (64 chars), stored in erofs_deviceslot.tag
    uint32_t blocks = 0;
    bool operator==(const ErofsDevice&) const = default;
};

struct ErofsBuildOptions {
    uint32_t chunk_bits = 20;  // 12..24: chunk size (1 << chunk_bits) of chunk-based inodes
    std::vector<ErofsDevice> devices;
    uint64_t build_time = 0;
    std::array<uint8_t, 16> uuid{};
};

struct ErofsBuildStats {
    uint64_t inodes = 0;
    uint64_t directories = 0;
    uint64_t inline_files = 0;   // regular files whose content lives in the metadata image
    uint64_t chunked_files = 0;  // regular files as chunk-based inodes
    uint64_t image_bytes = 0;
};

// Builds the metadata image of `root` (a directory). Deterministic: the same tree and options give
// the same bytes. Errors name the entry path (and the xattr, chunk count, ...) that is wrong.
Result<std::string> build_erofs_image(const Node& root, const ErofsBuildOptions& opt,
                                      ErofsBuildStats* stats = nullptr);

}  // namespace erostream
