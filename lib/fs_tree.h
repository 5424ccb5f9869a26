// The merged file tree of an image, as the converter builds it from the layers and the EROFS
// builder lays it out. Hardlinks are several directory entries sharing one Inode (shared_ptr);
// link counts are derived when the image is built, never stored here.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "erofs_format.h"

namespace erostream {

enum class FileType : uint8_t { Regular, Directory, Symlink, CharDevice, BlockDevice, Fifo, Socket };

const char* file_type_name(FileType t);
// The EROFS dirent file type (EROFS_FT_*) and the S_IF* bits of i_mode for a file type.
uint8_t erofs_ftype_of(FileType t);
uint16_t mode_type_bits(FileType t);

struct Xattr {
    std::string name;  // full name, e.g. "security.capability"
    std::string value;
    bool operator==(const Xattr&) const = default;
};

// Where one chunk of a regular file lives: extra device `device_id` (1-based: the device table's
// slot device_id-1), at block `blkaddr` of that device's uncompressed view. A hole reads as zeros.
struct ChunkRef {
    uint16_t device_id = 0;
    uint32_t blkaddr = EROFS_NULL_ADDR;
    bool is_hole() const { return blkaddr == EROFS_NULL_ADDR; }
    bool operator==(const ChunkRef&) const = default;
};

struct Inode {
    FileType type = FileType::Regular;
    uint32_t mode = 0;  // permission bits including setuid/setgid/sticky (07777); no type bits
    uint32_t uid = 0;
    uint32_t gid = 0;
    int64_t mtime = 0;
    uint32_t mtime_nsec = 0;
    uint64_t size = 0;           // regular files: content length
    std::string symlink_target;  // symlinks
    uint32_t rdev_major = 0;     // character and block devices
    uint32_t rdev_minor = 0;
    std::vector<Xattr> xattrs;  // sorted by name, names unique

    // Regular files keep their content either whole in the metadata (inline, small files) or as
    // chunks of 1 << chunk_bits bytes on the data devices; chunks.size() == ceil(size / chunk).
    bool is_inline = false;
    std::string inline_data;
    std::vector<ChunkRef> chunks;

    int layer = -1;  // index of the layer that wrote this inode (for inspect), -1: implicit
};

struct Node {
    std::shared_ptr<Inode> inode;
    // Directories only. std::map<std::string> orders names bytewise (unsigned), as EROFS needs.
    std::map<std::string, std::unique_ptr<Node>> children;
    int layer = -1;  // layer whose entry created this name (whiteouts only hide lower layers)

    bool is_dir() const { return inode && inode->type == FileType::Directory; }
};

// A fresh directory node with the defaults used for parents that no layer names (0755 root:root,
// mtime 0: deterministic).
std::unique_ptr<Node> make_implicit_dir(int layer);

}  // namespace erostream
