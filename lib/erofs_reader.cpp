#include "erofs_reader.h"

#include <sys/stat.h>

#include <cstring>
#include <unordered_set>

namespace erostream {

namespace {

constexpr uint64_t kBlk = EROFS_BLKSIZ;
constexpr uint32_t kSupportedIncompat =
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE;
constexpr uint16_t kIFormatKnownBits = 0x0F;  // version bit + 3 datalayout bits
constexpr uint16_t kChunkFormatKnownBits = EROFS_CHUNK_FORMAT_BLKBITS_MASK | EROFS_CHUNK_FORMAT_INDEXES;
constexpr uint32_t kBlockMapEntrySize = 4;  // chunk-based without indexes: a __le32 per chunk

template <class T>
T load(std::string_view b, size_t off = 0) {
    T v;
    std::memcpy(&v, b.data() + off, sizeof(T));
    return v;
}

Result<FileType> type_of_mode(uint16_t mode) {
    switch (mode & S_IFMT) {
    case S_IFREG: return FileType::Regular;
    case S_IFDIR: return FileType::Directory;
    case S_IFLNK: return FileType::Symlink;
    case S_IFCHR: return FileType::CharDevice;
    case S_IFBLK: return FileType::BlockDevice;
    case S_IFIFO: return FileType::Fifo;
    case S_IFSOCK: return FileType::Socket;
    }
    return failf("bogus i_mode {:o}", mode);
}

const char* xattr_prefix(uint8_t index) {
    switch (index) {
    case EROFS_XATTR_INDEX_USER: return "user.";
    case EROFS_XATTR_INDEX_POSIX_ACL_ACCESS: return "system.posix_acl_access";
    case EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT: return "system.posix_acl_default";
    case EROFS_XATTR_INDEX_TRUSTED: return "trusted.";
    case EROFS_XATTR_INDEX_SECURITY: return "security.";
    }
    return nullptr;
}

Result<std::vector<Xattr>> parse_inline_xattrs(std::string_view area) {
    std::vector<Xattr> out;
    if (area.empty()) return out;
    const auto h = load<erofs_xattr_ibody_header>(area);
    if (h.h_shared_count != 0)
        return failf("{} shared xattrs: not supported", h.h_shared_count);
    size_t p = sizeof(erofs_xattr_ibody_header);
    while (p < area.size()) {
        if (area.size() - p < sizeof(erofs_xattr_entry))
            return failf("xattr entry at +{} truncated", p);
        const auto e = load<erofs_xattr_entry>(area, p);
        const size_t esize = erofs_xattr_entry_size(e.e_name_len, e.e_value_size);
        if (esize > area.size() - p)
            return failf("xattr entry at +{} ({} bytes) overruns the inline xattr area ({} bytes)",
                         p, esize, area.size());
        const char* prefix = xattr_prefix(e.e_name_index);
        if (!prefix)
            return failf("xattr entry at +{}: name index {:#x} not supported", p, e.e_name_index);
        std::string_view suffix = area.substr(p + sizeof(e), e.e_name_len);
        const bool acl = e.e_name_index == EROFS_XATTR_INDEX_POSIX_ACL_ACCESS ||
                         e.e_name_index == EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT;
        if (acl ? !suffix.empty() : suffix.empty())
            return failf("xattr entry at +{}: name of {} bytes after {}", p, suffix.size(), prefix);
        if (suffix.find('\0') != std::string_view::npos)
            return failf("xattr entry at +{}: name contains NUL", p);
        Xattr x;
        x.name = prefix;
        x.name += suffix;
        x.value = std::string(area.substr(p + sizeof(e) + e.e_name_len, e.e_value_size));
        out.push_back(std::move(x));
        p += esize;
    }
    return out;
}

}  // namespace

Result<std::string_view> ErofsReader::bytes(uint64_t offset, uint64_t length,
                                            const char* what) const {
    if (offset > image_.size() || length > image_.size() - offset)
        return failf("{} at byte {} ({} bytes) lies outside the image ({} bytes)", what, offset,
                     length, image_.size());
    return image_.substr(offset, length);
}

Result<ErofsReader> ErofsReader::open(std::string_view image) {
    ErofsReader r;
    if (image.size() < EROFS_SUPER_OFFSET + sizeof(erofs_super_block))
        return failf("image of {} bytes is too small for an EROFS superblock", image.size());
    std::memcpy(&r.sb_, image.data() + EROFS_SUPER_OFFSET, sizeof(r.sb_));
    const erofs_super_block& sb = r.sb_;
    if (sb.magic != EROFS_SUPER_MAGIC_V1)
        return failf("bad EROFS magic {:#x} at byte {}", sb.magic, EROFS_SUPER_OFFSET);
    if (sb.blkszbits != EROFS_BLKSIZ_BITS)
        return failf("block size 2^{} not supported (only 4096)", sb.blkszbits);
    if (sb.feature_incompat & ~kSupportedIncompat)
        return failf("incompatible features {:#x} not supported",
                     sb.feature_incompat & ~kSupportedIncompat);
    if (sb.dirblkbits != 0) return failf("dirblkbits {} not supported", sb.dirblkbits);
    if (sb.blocks == 0) return fail("superblock says the image has 0 blocks");
    const uint64_t image_bytes = uint64_t(sb.blocks) * kBlk;
    if (image_bytes > image.size())
        return failf("image truncated: the superblock says {} blocks ({} bytes), got {} bytes",
                     sb.blocks, image_bytes, image.size());
    r.image_ = image.substr(0, image_bytes);
    if (uint64_t(sb.meta_blkaddr) >= sb.blocks)
        return failf("meta_blkaddr {} beyond the image's {} blocks", sb.meta_blkaddr, sb.blocks);

    if (sb.feature_incompat & EROFS_FEATURE_INCOMPAT_DEVICE_TABLE) {
        const uint64_t off = uint64_t(sb.devt_slotoff) * EROFS_DEVT_SLOT_SIZE;
        if (off < EROFS_SUPER_OFFSET + sizeof(erofs_super_block))
            return failf("device table at byte {} overlaps the superblock", off);
        auto table = EROS_TRY(r.bytes(off, uint64_t(sb.extra_devices) * EROFS_DEVT_SLOT_SIZE,
                                      "device table"));
        for (uint32_t i = 0; i < sb.extra_devices; ++i) {
            const auto slot = load<erofs_deviceslot>(table, i * EROFS_DEVT_SLOT_SIZE);
            const char* tag = reinterpret_cast<const char*>(slot.tag);
            const size_t len = strnlen(tag, sizeof(slot.tag));
            if (len == 0) return failf("device {}: empty tag", i + 1);
            if (slot.mapped_blkaddr != 0)
                return failf("device {}: mapped_blkaddr {} not supported", i + 1,
                             slot.mapped_blkaddr);
            r.devices_.push_back(ErofsDevice{std::string(tag, len), slot.blocks});
        }
    }

    auto root = r.read_inode(sb.root_nid);
    if (!root) return std::unexpected(std::move(root.error().prefix("root inode")));
    if (root->type != FileType::Directory)
        return failf("root inode (nid {}) is a {}, not a directory", sb.root_nid,
                     file_type_name(root->type));
    return r;
}

Result<ErofsInodeInfo> ErofsReader::read_inode(uint64_t nid) const {
    auto wrap = [nid](Error e) { return std::unexpected(std::move(e.prefix(fmt::format("nid {}", nid)))); };
    const uint64_t meta = uint64_t(sb_.meta_blkaddr) * kBlk;
    if (nid > (image_.size() - meta) / 32) return wrap(Error{0, "inode beyond the image"});
    ErofsInodeInfo info;
    info.nid = nid;
    info.inode_offset = meta + nid * 32;
    auto head = bytes(info.inode_offset, sizeof(erofs_inode_compact), "inode");
    if (!head) return wrap(head.error());
    const uint16_t ifmt = load<uint16_t>(*head);
    if (ifmt & ~kIFormatKnownBits) return wrap(Error{0, fmt::format("i_format {:#x} has unsupported bits", ifmt)});
    info.datalayout = (ifmt >> EROFS_I_DATALAYOUT_BIT) & 0x7;
    if (info.datalayout != EROFS_INODE_FLAT_PLAIN && info.datalayout != EROFS_INODE_FLAT_INLINE &&
        info.datalayout != EROFS_INODE_CHUNK_BASED)
        return wrap(Error{0, fmt::format("data layout {} not supported (compressed?)", info.datalayout)});

    uint16_t i_mode, icount;
    erofs_inode_i_u iu;
    if ((ifmt & 1) == EROFS_INODE_LAYOUT_EXTENDED) {
        auto raw = bytes(info.inode_offset, sizeof(erofs_inode_extended), "extended inode");
        if (!raw) return wrap(raw.error());
        const auto di = load<erofs_inode_extended>(*raw);
        info.inode_isize = sizeof(erofs_inode_extended);
        i_mode = di.i_mode;
        icount = di.i_xattr_icount;
        iu = di.i_u;
        info.size = di.i_size;
        info.uid = di.i_uid;
        info.gid = di.i_gid;
        info.mtime = static_cast<int64_t>(di.i_mtime);
        info.mtime_nsec = di.i_mtime_nsec;
        info.nlink = di.i_nlink;
    } else {
        const auto dc = load<erofs_inode_compact>(*head);
        info.inode_isize = sizeof(erofs_inode_compact);
        i_mode = dc.i_mode;
        icount = dc.i_xattr_icount;
        iu = dc.i_u;
        info.size = dc.i_size;
        info.uid = dc.i_uid;
        info.gid = dc.i_gid;
        // Compact inodes keep their mtime as seconds after the build time in what older
        // headers call i_reserved (0 in images from older mkfs: the build time itself).
        info.mtime = static_cast<int64_t>(sb_.build_time) + dc.i_reserved;
        info.mtime_nsec = sb_.build_time_nsec;
        info.nlink = dc.i_nlink;
    }
    if (info.mtime_nsec >= 1000000000u)
        return wrap(Error{0, fmt::format("mtime nanoseconds {} out of range", info.mtime_nsec)});
    if (info.size > uint64_t(INT64_MAX)) return wrap(Error{0, fmt::format("size {} out of range", info.size)});
    auto type = type_of_mode(i_mode);
    if (!type) return wrap(type.error());
    info.type = *type;
    info.mode = i_mode & 07777;

    if (icount == 1)  // the kernel refuses a header without entries
        return wrap(Error{0, "i_xattr_icount 1 (xattr header without entries)"});
    info.xattr_isize = erofs_xattr_ibody_size(icount);
    auto area = bytes(info.inode_offset + info.inode_isize, info.xattr_isize, "inline xattrs");
    if (!area) return wrap(area.error());
    auto xattrs = parse_inline_xattrs(*area);
    if (!xattrs) return wrap(xattrs.error());
    info.xattrs = std::move(*xattrs);

    switch (info.type) {
    case FileType::CharDevice:
    case FileType::BlockDevice:
        erofs_decode_dev(iu.rdev, info.rdev_major, info.rdev_minor);
        [[fallthrough]];
    case FileType::Fifo:
    case FileType::Socket:
        if (info.datalayout != EROFS_INODE_FLAT_PLAIN)
            return wrap(Error{0, fmt::format("special file with data layout {}", info.datalayout)});
        return info;
    case FileType::Symlink:
        if (info.size == 0 || info.size >= kBlk)
            return wrap(Error{0, fmt::format("symlink target of {} bytes", info.size)});
        break;
    case FileType::Directory:
        if (info.size < 2 * sizeof(erofs_dirent) + 3)
            return wrap(Error{0, fmt::format("directory of {} bytes cannot hold . and ..", info.size)});
        break;
    case FileType::Regular:
        break;
    }

    if (info.datalayout != EROFS_INODE_CHUNK_BASED) {
        info.raw_blkaddr = iu.raw_blkaddr;
        return info;
    }
    if (info.type != FileType::Regular)
        return wrap(Error{0, fmt::format("chunk-based {} not supported", file_type_name(info.type))});
    const uint16_t format = iu.c.format;
    if (format & ~kChunkFormatKnownBits)
        return wrap(Error{0, fmt::format("chunk format {:#x} not supported", format)});
    info.chunk_bits = EROFS_BLKSIZ_BITS + (format & EROFS_CHUNK_FORMAT_BLKBITS_MASK);
    if (info.chunk_bits > 40)
        return wrap(Error{0, fmt::format("chunk size 2^{} out of range", info.chunk_bits)});
    const bool indexes = format & EROFS_CHUNK_FORMAT_INDEXES;
    const uint64_t unit = indexes ? sizeof(erofs_inode_chunk_index) : kBlockMapEntrySize;
    const uint64_t chunk = 1ull << info.chunk_bits;
    const uint64_t count = info.size / chunk + (info.size % chunk != 0);
    const uint64_t start = (info.inode_offset + info.inode_isize + info.xattr_isize + unit - 1) / unit * unit;
    if (count > image_.size() / unit)
        return wrap(Error{0, fmt::format("{} chunks for {} bytes cannot fit the image", count, info.size)});
    auto table = bytes(start, count * unit, "chunk table");
    if (!table) return wrap(table.error());
    info.chunks.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
        ChunkRef c;
        if (indexes) {
            const auto ci = load<erofs_inode_chunk_index>(*table, i * unit);
            if (ci.blkaddr == EROFS_NULL_ADDR) {
                info.chunks.push_back(ChunkRef{});
                continue;
            }
            c.device_id = ci.device_id;
            c.blkaddr = ci.blkaddr;
        } else {
            c.blkaddr = load<uint32_t>(*table, i * unit);
            if (c.is_hole()) {
                info.chunks.push_back(c);
                continue;
            }
        }
        uint64_t dev_blocks;
        if (c.device_id == 0) {
            dev_blocks = sb_.blocks;
        } else if (c.device_id <= devices_.size()) {
            dev_blocks = devices_[c.device_id - 1].blocks;
        } else {
            return wrap(Error{0, fmt::format("chunk {} names device {}, the image has {}", i,
                                             c.device_id, devices_.size())});
        }
        const uint64_t len = std::min(chunk, info.size - i * chunk);
        const uint64_t end = uint64_t(c.blkaddr) + (len + kBlk - 1) / kBlk;
        if (end > dev_blocks)
            return wrap(Error{0, fmt::format("chunk {} ends at block {} of device {}, which has {} blocks",
                                             i, end, c.device_id, dev_blocks)});
        info.chunks.push_back(c);
    }
    return info;
}

Result<std::string> ErofsReader::read_inline_or_plain_data(const ErofsInodeInfo& in) const {
    auto wrap = [&](Error e) { return std::unexpected(std::move(e.prefix(fmt::format("nid {}", in.nid)))); };
    if (in.datalayout != EROFS_INODE_FLAT_PLAIN && in.datalayout != EROFS_INODE_FLAT_INLINE)
        return wrap(Error{0, fmt::format("data layout {} is not flat", in.datalayout)});
    if (in.size == 0) return std::string();
    if (in.size > image_.size())
        return wrap(Error{0, fmt::format("flat data of {} bytes larger than the image", in.size)});
    const uint64_t nblocks = (in.size + kBlk - 1) / kBlk;
    const uint64_t in_blocks =
        in.datalayout == EROFS_INODE_FLAT_INLINE ? (nblocks - 1) * kBlk : in.size;
    std::string out;
    out.reserve(in.size);
    if (in_blocks > 0) {
        if (in.raw_blkaddr == EROFS_NULL_ADDR)
            return wrap(Error{0, "flat inode with data but no data blocks"});
        auto b = bytes(uint64_t(in.raw_blkaddr) * kBlk, in_blocks, "data blocks");
        if (!b) return wrap(b.error());
        out.append(*b);
    }
    if (in.datalayout == EROFS_INODE_FLAT_INLINE) {
        const uint64_t tail = in.size - in_blocks;
        const uint64_t off = in.inode_offset + in.inode_isize + in.xattr_isize;
        if (off % kBlk + tail > kBlk)  // the kernel's rule for tail-packed data
            return wrap(Error{0, fmt::format("inline data of {} bytes at byte {} crosses a block boundary",
                                             tail, off)});
        auto t = bytes(off, tail, "inline data");
        if (!t) return wrap(t.error());
        out.append(*t);
    }
    return out;
}

Result<std::vector<ErofsDirEntry>> ErofsReader::read_dir(const ErofsInodeInfo& dir) const {
    auto wrap = [&](std::string msg) {
        return std::unexpected(Error{0, fmt::format("directory nid {}: {}", dir.nid, msg)});
    };
    if (dir.type != FileType::Directory) return wrap("not a directory");
    auto data_r = read_inline_or_plain_data(dir);
    if (!data_r) return std::unexpected(std::move(data_r.error()));
    const std::string_view data = *data_r;
    std::vector<ErofsDirEntry> out;
    int dots = 0, dotdots = 0;
    std::string_view prev;
    for (uint64_t bstart = 0; bstart < data.size(); bstart += kBlk) {
        const std::string_view blk = data.substr(bstart, kBlk);
        const size_t maxsize = blk.size();
        if (maxsize < sizeof(erofs_dirent))
            return wrap(fmt::format("dirent block at +{} has only {} bytes", bstart, maxsize));
        const uint16_t nameoff0 = load<erofs_dirent>(blk).nameoff;
        if (nameoff0 < sizeof(erofs_dirent) || nameoff0 % sizeof(erofs_dirent) != 0 ||
            nameoff0 >= maxsize)
            return wrap(fmt::format("dirent block at +{}: bad first nameoff {}", bstart, nameoff0));
        const size_t n = nameoff0 / sizeof(erofs_dirent);
        for (size_t i = 0; i < n; ++i) {
            const auto de = load<erofs_dirent>(blk, i * sizeof(erofs_dirent));
            const size_t off = de.nameoff;
            size_t end;
            if (off < nameoff0 || off >= maxsize)
                return wrap(fmt::format("dirent {} of block at +{}: nameoff {} out of range", i,
                                        bstart, off));
            if (i + 1 < n) {
                end = load<erofs_dirent>(blk, (i + 1) * sizeof(erofs_dirent)).nameoff;
                if (end > maxsize || end <= off)
                    return wrap(fmt::format("dirent {} of block at +{}: name ends at {}, starts at {}",
                                            i, bstart, end, off));
            } else {
                end = off + strnlen(blk.data() + off, maxsize - off);
            }
            const std::string_view name = blk.substr(off, end - off);
            if (name.empty() || name.size() > EROFS_NAME_LEN)
                return wrap(fmt::format("dirent {} of block at +{}: name length {}", i, bstart,
                                        name.size()));
            if (name.find('\0') != std::string_view::npos || name.find('/') != std::string_view::npos)
                return wrap(fmt::format("entry {:?}: name contains NUL or '/'", name));
            if (de.file_type == EROFS_FT_UNKNOWN || de.file_type > EROFS_FT_SYMLINK)
                return wrap(fmt::format("entry {:?}: file type {}", name, de.file_type));
            if (!out.empty() && !(prev < name))
                return wrap(fmt::format("entry {:?} is not sorted after {:?}", name, prev));
            if (name == ".") {
                ++dots;
                if (de.nid != dir.nid)
                    return wrap(fmt::format("\".\" points to nid {}", de.nid));
            }
            if (name == "..") ++dotdots;
            if ((name == "." || name == "..") && de.file_type != EROFS_FT_DIR)
                return wrap(fmt::format("entry {:?} is not a directory", name));
            prev = name;
            out.push_back(ErofsDirEntry{std::string(name), de.nid, de.file_type});
        }
    }
    if (dots != 1 || dotdots != 1) return wrap("\".\" or \"..\" missing");
    return out;
}

Result<void> ErofsReader::walk(const WalkFn& fn) const {
    struct Frame {
        std::string path;
        uint64_t nid;
        std::vector<ErofsDirEntry> entries;
        size_t next = 0;
    };
    auto root = EROS_TRY(read_inode(root_nid()));
    if (root.type != FileType::Directory)
        return failf("/ (nid {}): root is not a directory", root.nid);
    EROS_TRYV(fn("/", root));

    std::unordered_set<uint64_t> seen_dirs{root.nid};
    auto open_dir = [&](const std::string& path, const ErofsInodeInfo& d,
                        uint64_t parent) -> Result<Frame> {
        auto entries = read_dir(d);
        if (!entries) return std::unexpected(std::move(entries.error().prefix(path)));
        for (const auto& e : *entries) {
            if (e.name == ".." && e.nid != parent)
                return failf("{} (nid {}): \"..\" points to nid {}, the parent is nid {}", path,
                             d.nid, e.nid, parent);
        }
        return Frame{path, d.nid, std::move(*entries), 0};
    };
    std::vector<Frame> stack;
    stack.push_back(EROS_TRY(open_dir("/", root, root.nid)));
    while (!stack.empty()) {
        Frame& top = stack.back();
        if (top.next == top.entries.size()) {
            stack.pop_back();
            continue;
        }
        const ErofsDirEntry& e = top.entries[top.next++];
        if (e.name == "." || e.name == "..") continue;
        std::string path = top.path == "/" ? "/" + e.name : top.path + "/" + e.name;
        const uint64_t parent = top.nid;
        auto info = read_inode(e.nid);
        if (!info) return std::unexpected(std::move(info.error().prefix(path)));
        if (erofs_ftype_of(info->type) != e.file_type)
            return failf("{} (nid {}): directory entry says file type {}, the inode is a {}", path,
                         e.nid, e.file_type, file_type_name(info->type));
        EROS_TRYV(fn(path, *info));
        if (info->type == FileType::Directory) {
            if (!seen_dirs.insert(info->nid).second)
                return failf("{} (nid {}): directory reached twice (loop or hardlinked directory)",
                             path, info->nid);
            auto frame = EROS_TRY(open_dir(path, *info, parent));
            stack.push_back(std::move(frame));  // `top` is dangling from here on
        }
    }
    return {};
}

}  // namespace erostream
