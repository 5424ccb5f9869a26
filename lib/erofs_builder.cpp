#include "erofs_builder.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <string_view>
#include <unordered_map>

namespace erostream {

namespace {

constexpr uint64_t kBlk = EROFS_BLKSIZ;
constexpr uint32_t kInodeSize = sizeof(erofs_inode_extended);  // always the extended form
constexpr uint64_t kDevTableOffset = EROFS_SUPER_OFFSET + sizeof(erofs_super_block);
// erofs_xattr_ibody_size() is 12 + 4 * (icount - 1), and i_xattr_icount is 16 bits.
constexpr uint64_t kMaxXattrArea = 12 + 4ull * (UINT16_MAX - 1);

constexpr uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// A name index and the suffix stored after it; the kernel's xattr handlers only know these.
struct XattrPrefix {
    std::string_view prefix;
    uint8_t index;
    bool exact;  // the whole name is the prefix (POSIX ACLs: empty suffix)
};
constexpr XattrPrefix kXattrPrefixes[] = {
    {"user.", EROFS_XATTR_INDEX_USER, false},
    {"system.posix_acl_access", EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, true},
    {"system.posix_acl_default", EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT, true},
    {"trusted.", EROFS_XATTR_INDEX_TRUSTED, false},
    {"security.", EROFS_XATTR_INDEX_SECURITY, false},
};

// One directory entry as laid out: names borrow the tree's map keys (or static "." / "..").
struct Dent {
    std::string_view name;
    uint32_t ino;  // index into the inode table
    uint8_t ftype;
};

struct Rec {
    const Inode* in = nullptr;
    uint32_t nlink = 0;
    uint32_t xattr_off = 0;  // into Layout::xattrs (encoded ibody: header + entries)
    uint32_t xattr_len = 0;
    uint32_t dent_begin = 0, dent_count = 0;   // dirs: into Layout::dents ("." and ".." included)
    uint32_t dblk_begin = 0, dblk_count = 0;   // dirs: first dent index of each dirent block
    uint64_t size = 0;
    uint16_t layout = EROFS_INODE_FLAT_PLAIN;
    uint32_t tail = 0;        // bytes of content stored right after the inode and its xattrs
    uint32_t nblocks = 0;     // blocks of content in the data area
    uint64_t nchunks = 0;     // chunk-based only
    uint64_t pos = 0;         // byte offset of the inode in the image
    uint32_t blkaddr = EROFS_NULL_ADDR;
};

struct Layout {
    std::vector<Rec> recs;
    std::string xattrs;
    std::vector<Dent> dents;
    std::vector<uint32_t> dblks;
};

Result<void> encode_xattrs(const Inode& in, std::string& out, uint32_t& len) {
    len = 0;
    if (in.xattrs.empty()) return {};
    std::vector<const Xattr*> sorted;
    sorted.reserve(in.xattrs.size());
    for (const auto& x : in.xattrs) sorted.push_back(&x);
    std::sort(sorted.begin(), sorted.end(),
              [](const Xattr* a, const Xattr* b) { return a->name < b->name; });
    const size_t start = out.size();
    out.append(sizeof(erofs_xattr_ibody_header), '\0');  // no shared xattrs, no name filter
    for (size_t i = 0; i < sorted.size(); ++i) {
        const Xattr& x = *sorted[i];
        if (i > 0 && sorted[i - 1]->name == x.name)
            return failf("xattr {} appears twice", x.name);
        const XattrPrefix* match = nullptr;
        for (const auto& p : kXattrPrefixes) {
            if (p.exact ? x.name == p.prefix : x.name.starts_with(p.prefix)) {
                match = &p;
                break;
            }
        }
        if (!match)
            return failf("xattr {}: prefix not supported by EROFS (user., trusted., "
                         "security., system.posix_acl_access/default)",
                         x.name);
        std::string_view suffix = std::string_view(x.name).substr(match->prefix.size());
        if (!match->exact && suffix.empty())
            return failf("xattr {}: empty name after the prefix", x.name);
        if (x.name.size() > 255 || suffix.size() > 255)
            return failf("xattr {}: name longer than 255 bytes", x.name);
        if (x.value.size() > UINT16_MAX)
            return failf("xattr {}: value of {} bytes exceeds 65535", x.name,
                         x.value.size());
        erofs_xattr_entry e{};
        e.e_name_len = static_cast<uint8_t>(suffix.size());
        e.e_name_index = match->index;
        e.e_value_size = static_cast<uint16_t>(x.value.size());
        const size_t entry_start = out.size();
        out.append(reinterpret_cast<const char*>(&e), sizeof(e));
        out.append(suffix);
        out.append(x.value);
        out.resize(entry_start + erofs_xattr_entry_size(suffix.size(), x.value.size()), '\0');
    }
    const uint64_t area = out.size() - start;
    if (area > kMaxXattrArea)
        return failf("xattrs take {} bytes, more than an inode can hold ({})", area,
                     kMaxXattrArea);
    len = static_cast<uint32_t>(area);
    return {};
}

Result<void> check_name(std::string_view name, const std::string& dir_path) {
    if (name.empty()) return failf("{}: directory entry with an empty name", dir_path);
    if (name == "." || name == "..")
        return failf("{}: directory entry named \"{}\"", dir_path, name);
    if (name.size() > EROFS_NAME_LEN)
        return failf("{}: entry name of {} bytes exceeds {} ({}...)", dir_path, name.size(),
                     EROFS_NAME_LEN, name.substr(0, 32));
    if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos)
        return failf("{}: entry name contains '/' or NUL", dir_path);
    return {};
}

std::string child_path(const std::string& dir, std::string_view name) {
    std::string p = dir;
    if (p != "/") p += '/';
    p += name;
    return p;
}

// Checks one inode the first time it is reached and fills what does not depend on placement.
Result<void> prepare_inode(const Inode& in, const ErofsBuildOptions& opt, Layout& L, Rec& r) {
    if (in.mode & ~07777u) return failf("mode {:o} has bits outside 07777", in.mode);
    if (in.mtime_nsec >= 1000000000u)
        return failf("mtime nanoseconds {} out of range", in.mtime_nsec);
    if (L.xattrs.size() > UINT32_MAX - kMaxXattrArea)
        return failf("too much xattr data in the image");
    EROS_TRYV(encode_xattrs(in, L.xattrs, r.xattr_len));
    r.xattr_off = static_cast<uint32_t>(L.xattrs.size() - r.xattr_len);

    switch (in.type) {
    case FileType::Regular:
        if (in.is_inline) {
            if (in.inline_data.size() != in.size)
                return failf("inline content has {} bytes but the size is {}", in.inline_data.size(), in.size);
            if (!in.chunks.empty()) return failf("inline file with chunks");
            r.size = in.size;
        } else {
            const uint64_t chunk = 1ull << opt.chunk_bits;
            const uint64_t want = in.size / chunk + (in.size % chunk != 0);
            if (in.chunks.size() != want)
                return failf("{} chunks for {} bytes, expected {} of {} bytes", in.chunks.size(), in.size, want, chunk);
            for (size_t i = 0; i < in.chunks.size(); ++i) {
                const ChunkRef& c = in.chunks[i];
                if (c.is_hole()) continue;
                if (c.device_id == 0 || c.device_id > opt.devices.size())
                    return failf("chunk {} names device {}, the image has {} extra devices",
                                 i, c.device_id, opt.devices.size());
                const uint64_t len = std::min<uint64_t>(chunk, in.size - i * chunk);
                const uint64_t end = uint64_t(c.blkaddr) + align_up(len, kBlk) / kBlk;
                if (end > opt.devices[c.device_id - 1].blocks)
                    return failf("chunk {} ends at block {} of device {}, which has {} blocks",
                                 i, end, c.device_id, opt.devices[c.device_id - 1].blocks);
            }
            r.size = in.size;
            r.nchunks = want;
        }
        break;
    case FileType::Symlink:
        if (in.symlink_target.empty()) return failf("empty symlink target");
        if (in.symlink_target.size() >= kBlk)
            return failf("symlink target of {} bytes is longer than 4095", in.symlink_target.size());
        r.size = in.symlink_target.size();
        break;
    case FileType::CharDevice:
    case FileType::BlockDevice:
        if (in.rdev_major >= (1u << 12) || in.rdev_minor >= (1u << 20))
            return failf("device number {}:{} does not fit 12:20 bits", in.rdev_major,
                         in.rdev_minor);
        break;
    case FileType::Directory:
    case FileType::Fifo:
    case FileType::Socket:
        break;
    }
    return {};
}

// Decides how the content of a flat inode is stored: inline tail after the inode (the kernel
// wants inode + xattrs + tail inside one block), whole blocks in the data area, or both.
void choose_flat_layout(Rec& r) {
    if (r.size == 0) {
        r.layout = EROFS_INODE_FLAT_PLAIN;
        return;
    }
    const uint64_t full = r.size / kBlk;
    const uint64_t rest = r.size % kBlk;
    if (rest != 0 && kInodeSize + r.xattr_len + rest <= kBlk) {
        r.layout = EROFS_INODE_FLAT_INLINE;
        r.tail = static_cast<uint32_t>(rest);
        r.nblocks = static_cast<uint32_t>(full);
    } else {
        r.layout = EROFS_INODE_FLAT_PLAIN;
        r.nblocks = static_cast<uint32_t>(full + (rest != 0));
    }
}

// Splits a directory's entries into dirent blocks (an entry never straddles two blocks) and
// returns the directory size: full blocks plus the used part of the last one.
uint64_t partition_dir(Layout& L, Rec& r) {
    r.dblk_begin = static_cast<uint32_t>(L.dblks.size());
    uint64_t used = 0, blocks = 0;
    for (uint32_t i = 0; i < r.dent_count; ++i) {
        const uint64_t need = sizeof(erofs_dirent) + L.dents[r.dent_begin + i].name.size();
        if (i == 0 || used + need > kBlk) {
            L.dblks.push_back(r.dent_begin + i);
            ++blocks;
            used = 0;
        }
        used += need;
    }
    r.dblk_count = static_cast<uint32_t>(blocks);
    return (blocks - 1) * kBlk + used;
}

// Places inodes in the meta area. An inode that fits in a block (header, xattrs, inline tail or
// short chunk table) goes first-fit into one of a few recently opened blocks, never across a
// block boundary: the kernel maps an inline tail only inside one block, and one block read then
// gets the whole inode. A larger inode (long chunk table, huge xattrs) starts a fresh block and
// runs over as many as it needs; each chunk index is 8-byte aligned and so never straddles.
class MetaPlacer {
public:
    explicit MetaPlacer(uint64_t start) : frontier_(align_up(start, kBlk) / kBlk) {
        if (start % kBlk != 0) open(start / kBlk, align_up(start % kBlk, 32));
    }

    uint64_t place(uint64_t size) {
        const uint64_t need = align_up(size, 32);  // nids count 32-byte slots
        if (need <= kBlk) {
            for (size_t i = 0; i < open_.size(); ++i) {
                OpenBlock& b = open_[i];
                if (b.used + need > kBlk) continue;
                const uint64_t pos = b.blk * kBlk + b.used;
                b.used += need;
                if (kBlk - b.used < kInodeSize) open_.erase(open_.begin() + static_cast<ptrdiff_t>(i));
                return pos;
            }
        }
        const uint64_t pos = frontier_ * kBlk;
        frontier_ += need / kBlk;
        if (need % kBlk != 0) open(frontier_++, need % kBlk);
        return pos;
    }
    // The first block after the meta area.
    uint64_t end_block() const { return frontier_; }

private:
    struct OpenBlock {
        uint64_t blk;
        uint64_t used;
    };
    static constexpr size_t kMaxOpen = 16;  // enough to fill gaps, few enough to keep locality

    void open(uint64_t blk, uint64_t used) {
        if (kBlk - used < kInodeSize) return;
        if (open_.size() == kMaxOpen) open_.erase(open_.begin());
        open_.push_back({blk, used});
    }

    uint64_t frontier_;
    std::vector<OpenBlock> open_;
};

}  // namespace

Result<std::string> build_erofs_image(const Node& root, const ErofsBuildOptions& opt,
                                      ErofsBuildStats* stats) {
    if (opt.chunk_bits < 12 || opt.chunk_bits > 24)
        return failf("chunk_bits {} out of range 12..24", opt.chunk_bits);
    if (opt.devices.size() > UINT16_MAX)
        return failf("{} extra devices, at most {}", opt.devices.size(), UINT16_MAX);
    for (size_t i = 0; i < opt.devices.size(); ++i) {
        const auto& d = opt.devices[i];
        if (d.tag.empty() || d.tag.size() > sizeof(erofs_deviceslot::tag) ||
            d.tag.find('\0') != std::string::npos)
            return failf("device {}: tag must be 1..64 bytes without NUL, got {} bytes", i + 1,
                         d.tag.size());
    }
    if (!root.is_dir()) return fail("/: the root of the tree is not a directory");

    Layout L;
    std::unordered_map<const Inode*, uint32_t> index;
    // Breadth-first, names in order: the inode table follows directory order, so a directory's
    // entries sit next to each other in the image.
    struct Pending {
        const Node* node;
        uint32_t ino;
        uint32_t parent;
        std::string path;
    };
    std::deque<Pending> queue;
    L.recs.push_back(Rec{});
    L.recs[0].in = root.inode.get();
    index.emplace(root.inode.get(), 0);
    if (auto ok = prepare_inode(*root.inode, opt, L, L.recs[0]); !ok)
        return std::unexpected(std::move(ok.error().prefix("/")));
    queue.push_back({&root, 0, 0, "/"});

    while (!queue.empty()) {
        Pending dir = std::move(queue.front());
        queue.pop_front();
        const uint32_t dent_begin = static_cast<uint32_t>(L.dents.size());
        bool dot_done = false, dotdot_done = false;
        uint32_t subdirs = 0;
        auto emit_dots_before = [&](std::string_view name) {
            if (!dot_done && std::string_view(".") < name) {
                L.dents.push_back({".", dir.ino, EROFS_FT_DIR});
                dot_done = true;
            }
            if (!dotdot_done && std::string_view("..") < name) {
                L.dents.push_back({"..", dir.parent, EROFS_FT_DIR});
                dotdot_done = true;
            }
        };
        for (const auto& [name, child] : dir.node->children) {
            EROS_TRYV(check_name(name, dir.path));
            if (!child || !child->inode)
                return failf("{}: entry without an inode", child_path(dir.path, name));
            const Inode* in = child->inode.get();
            emit_dots_before(name);
            uint32_t ino = static_cast<uint32_t>(L.recs.size());
            bool fresh = true;
            // An inode owned by this entry alone cannot be met again: only shared ones (possible
            // hardlinks) go through the map, which keeps a million-file tree fast.
            if (child->inode.use_count() > 1) {
                auto [it, inserted] = index.emplace(in, ino);
                ino = it->second;
                fresh = inserted;
            }
            if (fresh) {
                if (L.recs.size() >= UINT32_MAX) return fail("too many inodes");
                L.recs.push_back(Rec{});
                L.recs.back().in = in;
                if (auto ok = prepare_inode(*in, opt, L, L.recs.back()); !ok)
                    return std::unexpected(std::move(ok.error().prefix(child_path(dir.path, name))));
                if (in->type == FileType::Directory)
                    queue.push_back({child.get(), ino, dir.ino, child_path(dir.path, name)});
                else if (!child->children.empty())
                    return failf("{}: a {} with directory entries below it",
                                 child_path(dir.path, name), file_type_name(in->type));
            } else if (in->type == FileType::Directory) {
                return failf("{}: directory hardlinked to another entry", child_path(dir.path, name));
            }
            Rec& cr = L.recs[ino];
            if (in->type == FileType::Directory) {
                ++subdirs;
            } else {
                if (cr.nlink == UINT32_MAX)
                    return failf("{}: too many hardlinks", child_path(dir.path, name));
                ++cr.nlink;
            }
            L.dents.push_back({name, ino, erofs_ftype_of(in->type)});
        }
        // No name sorts after "." and "..": they go last.
        if (!dot_done) L.dents.push_back({".", dir.ino, EROFS_FT_DIR});
        if (!dotdot_done) L.dents.push_back({"..", dir.parent, EROFS_FT_DIR});
        Rec& r = L.recs[dir.ino];
        r.dent_begin = dent_begin;
        r.dent_count = static_cast<uint32_t>(L.dents.size() - dent_begin);
        r.nlink = 2 + subdirs;
        r.size = partition_dir(L, r);
    }

    // Layouts that do not depend on placement.
    ErofsBuildStats st;
    for (Rec& r : L.recs) {
        switch (r.in->type) {
        case FileType::Directory:
            ++st.directories;
            choose_flat_layout(r);
            break;
        case FileType::Symlink:
            choose_flat_layout(r);
            break;
        case FileType::Regular:
            if (r.nchunks > 0) {
                r.layout = EROFS_INODE_CHUNK_BASED;
                ++st.chunked_files;
            } else {
                if (r.in->is_inline && r.size > 0) ++st.inline_files;
                choose_flat_layout(r);
            }
            break;
        default:
            r.layout = EROFS_INODE_FLAT_PLAIN;
            break;
        }
    }

    // Placement. The meta area starts at block 0 (superblock at 1024, device table after it);
    // the root goes first so that its nid is small (sb.root_nid is 16 bits) and never 0.
    const uint64_t devt_end = kDevTableOffset + uint64_t(EROFS_DEVT_SLOT_SIZE) * opt.devices.size();
    MetaPlacer placer(devt_end);
    for (Rec& r : L.recs) {
        const uint64_t head = kInodeSize + r.xattr_len;
        uint64_t total = head;
        if (r.layout == EROFS_INODE_FLAT_INLINE) total += r.tail;  // <= one block by choice
        if (r.layout == EROFS_INODE_CHUNK_BASED)
            total = align_up(head, sizeof(erofs_inode_chunk_index)) +
                    r.nchunks * sizeof(erofs_inode_chunk_index);
        r.pos = placer.place(total);
    }
    const uint64_t cur = placer.end_block() * kBlk;
    const uint64_t root_nid = L.recs[0].pos / 32;
    if (root_nid > UINT16_MAX)
        return failf("root nid {} does not fit 16 bits ({} devices)", root_nid, opt.devices.size());
    uint64_t next_blk = align_up(cur, kBlk) / kBlk;
    for (Rec& r : L.recs) {
        if (r.nblocks == 0) continue;
        r.blkaddr = static_cast<uint32_t>(std::min<uint64_t>(next_blk, UINT32_MAX));
        next_blk += r.nblocks;
        if (next_blk >= UINT32_MAX) return fail("image larger than 2^32 blocks");
    }
    const uint64_t total_blocks = next_blk;
    if (total_blocks >= UINT32_MAX) return fail("image larger than 2^32 blocks");

    std::string out(total_blocks * kBlk, '\0');
    char* base = out.data();
    auto nid_of = [&](uint32_t ino) { return L.recs[ino].pos / 32; };

    // Superblock and device table.
    erofs_super_block sb{};
    sb.magic = EROFS_SUPER_MAGIC_V1;
    sb.blkszbits = EROFS_BLKSIZ_BITS;
    sb.root_nid = static_cast<uint16_t>(root_nid);
    sb.inos = L.recs.size();
    sb.build_time = opt.build_time;
    sb.blocks = static_cast<uint32_t>(total_blocks);
    sb.meta_blkaddr = 0;
    sb.xattr_blkaddr = 0;
    std::memcpy(sb.uuid, opt.uuid.data(), sizeof(sb.uuid));
    sb.feature_incompat = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE;
    if (!opt.devices.empty()) {
        sb.feature_incompat |= EROFS_FEATURE_INCOMPAT_DEVICE_TABLE;
        sb.extra_devices = static_cast<uint16_t>(opt.devices.size());
        sb.devt_slotoff = static_cast<uint16_t>(kDevTableOffset / EROFS_DEVT_SLOT_SIZE);
    }
    std::memcpy(base + EROFS_SUPER_OFFSET, &sb, sizeof(sb));
    for (size_t i = 0; i < opt.devices.size(); ++i) {
        erofs_deviceslot slot{};
        std::memcpy(slot.tag, opt.devices[i].tag.data(), opt.devices[i].tag.size());
        slot.blocks = opt.devices[i].blocks;
        slot.mapped_blkaddr = 0;  // nonzero would remap primary-device addresses to this device
        std::memcpy(base + kDevTableOffset + i * EROFS_DEVT_SLOT_SIZE, &slot, sizeof(slot));
    }

    // Inodes, xattrs, inline tails, chunk indexes, data blocks.
    std::string content;
    for (size_t ino = 0; ino < L.recs.size(); ++ino) {
        const Rec& r = L.recs[ino];
        const Inode& in = *r.in;
        erofs_inode_extended di{};
        di.i_format = static_cast<uint16_t>(EROFS_INODE_LAYOUT_EXTENDED |
                                            (r.layout << EROFS_I_DATALAYOUT_BIT));
        di.i_xattr_icount =
            r.xattr_len == 0 ? 0
                             : static_cast<uint16_t>((r.xattr_len - sizeof(erofs_xattr_ibody_header)) / 4 + 1);
        di.i_mode = static_cast<uint16_t>(mode_type_bits(in.type) | in.mode);
        di.i_size = r.size;
        di.i_ino = static_cast<uint32_t>(ino + 1);
        di.i_uid = in.uid;
        di.i_gid = in.gid;
        di.i_mtime = static_cast<uint64_t>(in.mtime);
        di.i_mtime_nsec = in.mtime_nsec;
        di.i_nlink = r.nlink;
        switch (in.type) {
        case FileType::CharDevice:
        case FileType::BlockDevice:
            di.i_u.rdev = erofs_encode_dev(in.rdev_major, in.rdev_minor);
            break;
        case FileType::Fifo:
        case FileType::Socket:
            di.i_u.rdev = 0;
            break;
        default:
            if (r.layout == EROFS_INODE_CHUNK_BASED) {
                di.i_u.c.format =
                    static_cast<uint16_t>(EROFS_CHUNK_FORMAT_INDEXES | (opt.chunk_bits - EROFS_BLKSIZ_BITS));
            } else {
                di.i_u.raw_blkaddr = r.blkaddr;
            }
            break;
        }
        char* p = base + r.pos;
        std::memcpy(p, &di, sizeof(di));
        std::memcpy(p + kInodeSize, L.xattrs.data() + r.xattr_off, r.xattr_len);
        const uint64_t after = r.pos + kInodeSize + r.xattr_len;

        if (r.layout == EROFS_INODE_CHUNK_BASED) {
            uint64_t ipos = align_up(after, sizeof(erofs_inode_chunk_index));
            for (const ChunkRef& c : in.chunks) {
                erofs_inode_chunk_index ci{};
                if (c.is_hole()) {
                    ci.device_id = 0;
                    ci.blkaddr = EROFS_NULL_ADDR;
                } else {
                    ci.device_id = c.device_id;
                    ci.blkaddr = c.blkaddr;
                }
                std::memcpy(base + ipos, &ci, sizeof(ci));
                ipos += sizeof(ci);
            }
            continue;
        }
        if (r.size == 0) continue;

        std::string_view data;
        if (in.type == FileType::Directory) {
            content.assign(r.size, '\0');
            for (uint32_t b = 0; b < r.dblk_count; ++b) {
                const uint32_t first = L.dblks[r.dblk_begin + b];
                const uint32_t end =
                    b + 1 < r.dblk_count ? L.dblks[r.dblk_begin + b + 1] : r.dent_begin + r.dent_count;
                char* blk = content.data() + b * kBlk;
                uint32_t nameoff = (end - first) * sizeof(erofs_dirent);
                for (uint32_t i = first; i < end; ++i) {
                    const Dent& d = L.dents[i];
                    erofs_dirent de{};
                    de.nid = nid_of(d.ino);
                    de.nameoff = static_cast<uint16_t>(nameoff);
                    de.file_type = d.ftype;
                    std::memcpy(blk + (i - first) * sizeof(erofs_dirent), &de, sizeof(de));
                    std::memcpy(blk + nameoff, d.name.data(), d.name.size());
                    nameoff += static_cast<uint32_t>(d.name.size());
                }
            }
            data = content;
        } else if (in.type == FileType::Symlink) {
            data = in.symlink_target;
        } else {
            data = in.inline_data;
        }
        const uint64_t in_blocks = std::min<uint64_t>(data.size(), uint64_t(r.nblocks) * kBlk);
        if (in_blocks > 0) std::memcpy(base + uint64_t(r.blkaddr) * kBlk, data.data(), in_blocks);
        if (r.layout == EROFS_INODE_FLAT_INLINE)
            std::memcpy(base + after, data.data() + in_blocks, data.size() - in_blocks);
    }

    st.inodes = L.recs.size();
    st.image_bytes = out.size();
    if (stats) *stats = st;
    return out;
}

}  // namespace erostream
