#include "fs_tree.h"

#include <sys/stat.h>

namespace erostream {

const char* file_type_name(FileType t) {
    switch (t) {
    case FileType::Regular: return "file";
    case FileType::Directory: return "directory";
    case FileType::Symlink: return "symlink";
    case FileType::CharDevice: return "char device";
    case FileType::BlockDevice: return "block device";
    case FileType::Fifo: return "fifo";
    case FileType::Socket: return "socket";
    }
    return "unknown";
}

uint8_t erofs_ftype_of(FileType t) {
    switch (t) {
    case FileType::Regular: return EROFS_FT_REG_FILE;
    case FileType::Directory: return EROFS_FT_DIR;
    case FileType::Symlink: return EROFS_FT_SYMLINK;
    case FileType::CharDevice: return EROFS_FT_CHRDEV;
    case FileType::BlockDevice: return EROFS_FT_BLKDEV;
    case FileType::Fifo: return EROFS_FT_FIFO;
    case FileType::Socket: return EROFS_FT_SOCK;
    }
    return EROFS_FT_UNKNOWN;
}

uint16_t mode_type_bits(FileType t) {
    switch (t) {
    case FileType::Regular: return S_IFREG;
    case FileType::Directory: return S_IFDIR;
    case FileType::Symlink: return S_IFLNK;
    case FileType::CharDevice: return S_IFCHR;
    case FileType::BlockDevice: return S_IFBLK;
    case FileType::Fifo: return S_IFIFO;
    case FileType::Socket: return S_IFSOCK;
    }
    return 0;
}

std::unique_ptr<Node> make_implicit_dir(int layer) {
    auto n = std::make_unique<Node>();
    n->inode = std::make_shared<Inode>();
    n->inode->type = FileType::Directory;
    n->inode->mode = 0755;
    n->layer = layer;
    return n;
}

}  // namespace erostream
