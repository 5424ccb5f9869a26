// TEMPORARY stand-in with the agreed API; replaced by the wt-tar branch.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>
#include "byte_stream.h"
#include "fs_tree.h"
namespace erostream {
enum class TarEntryType { Regular, Directory, Symlink, Hardlink, CharDevice, BlockDevice, Fifo };
struct TarEntry {
    std::string path;
    TarEntryType type = TarEntryType::Regular;
    uint32_t mode = 0;
    uint32_t uid = 0, gid = 0;
    int64_t mtime = 0;
    uint32_t mtime_nsec = 0;
    uint64_t size = 0;
    std::string linkname;
    uint32_t devmajor = 0, devminor = 0;
    std::vector<Xattr> xattrs;
    uint64_t header_offset = 0;
};
class TarReader {
public:
    explicit TarReader(ByteStream& in);
    Result<std::optional<TarEntry>> next();
    Result<size_t> read(void* buf, size_t n);
};
}  // namespace erostream
