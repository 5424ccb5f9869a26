// Reads an EROFS image held in memory (what `check`, `materialize`, `inspect` and the daemon use).
// The image is untrusted: every offset, length and count is checked against the image before it
// is used, and errors name the nid, the path or the byte offset that is wrong. Supports what
// erostream writes (uncompressed flat and chunk-based inodes, inline xattrs, a device table) plus
// what plain mkfs.erofs writes without compression (compact inodes, block-map chunks); compressed
// inodes, shared xattrs and long xattr prefixes are rejected with a reason.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "erofs_builder.h"
#include "erofs_format.h"
#include "fs_tree.h"
#include "result.h"

namespace erostream {

struct ErofsInodeInfo {
    uint64_t nid = 0;
    FileType type = FileType::Regular;
    uint32_t mode = 0;  // 07777 bits only
    uint32_t uid = 0, gid = 0;
    int64_t mtime = 0;
    uint32_t mtime_nsec = 0;
    uint64_t size = 0;
    uint32_t nlink = 0;
    uint32_t rdev_major = 0, rdev_minor = 0;
    std::vector<Xattr> xattrs;  // in on-disk order, full names ("user.foo")
    uint16_t datalayout = 0;    // EROFS_INODE_FLAT_PLAIN, _FLAT_INLINE or _CHUNK_BASED
    uint32_t raw_blkaddr = 0;   // flat layouts: first block of the out-of-inode data
    uint32_t chunk_bits = 0;    // chunk-based only
    std::vector<ChunkRef> chunks;  // chunk-based only: one per chunk, holes included
    // Where the inode lives in the image (byte offset), and the sizes the data after it depends on.
    uint64_t inode_offset = 0;
    uint32_t inode_isize = 0;  // 32 (compact) or 64 (extended)
    uint32_t xattr_isize = 0;
};

struct ErofsDirEntry {
    std::string name;
    uint64_t nid = 0;
    uint8_t file_type = EROFS_FT_UNKNOWN;
};

class ErofsReader {
public:
    // Borrows the bytes (the caller keeps them alive and unchanged); checks the superblock and the
    // device table.
    static Result<ErofsReader> open(std::string_view image);

    const erofs_super_block& superblock() const { return sb_; }
    const std::vector<ErofsDevice>& devices() const { return devices_; }
    uint64_t root_nid() const { return sb_.root_nid; }

    Result<ErofsInodeInfo> read_inode(uint64_t nid) const;
    // The content of a FLAT_PLAIN / FLAT_INLINE inode: directory blocks, a symlink target, an
    // inline file.
    Result<std::string> read_inline_or_plain_data(const ErofsInodeInfo& inode) const;
    // All entries of a directory, "." and ".." included, in on-disk (sorted) order. Checks the
    // order, the name lengths and characters, and that "." names the directory itself.
    Result<std::vector<ErofsDirEntry>> read_dir(const ErofsInodeInfo& dir) const;

    using WalkFn = std::function<Result<void>(const std::string& path, const ErofsInodeInfo&)>;
    // Depth-first, pre-order walk from the root ("/", "/usr", "/usr/bin", ...; a directory's
    // entries in name order). Checks ".." against the parent and the dirent file type against the
    // inode; detects directory loops (a directory reached twice). Hardlinked files are reported
    // once per path.
    Result<void> walk(const WalkFn& fn) const;

private:
    ErofsReader() = default;
    Result<std::string_view> bytes(uint64_t offset, uint64_t length, const char* what) const;

    std::string_view image_;
    erofs_super_block sb_{};
    std::vector<ErofsDevice> devices_;
};

}  // namespace erostream
