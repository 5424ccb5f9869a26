#include "fs_tree.h"

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

std::unique_ptr<Node> make_implicit_dir(int layer) {
    auto n = std::make_unique<Node>();
    n->inode = std::make_shared<Inode>();
    n->inode->type = FileType::Directory;
    n->inode->mode = 0755;
    n->layer = layer;
    return n;
}

}  // namespace erostream
