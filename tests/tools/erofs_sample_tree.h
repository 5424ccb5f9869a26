// A file tree with every kind of entry erostream puts into an EROFS image, plus the contents of
// the extra devices its chunked files point into. Shared by the unit tests (reader, fsck.erofs)
// and the kernel mount check, so that both compare against the same expectations.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "erofs_builder.h"
#include "fs_tree.h"

namespace erostream::testing {

// Deterministic bytes that differ per seed and per position (never all zero for long runs).
inline std::string pattern_bytes(uint64_t seed, size_t n) {
    std::string s(n, '\0');
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x1234567;
    for (size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s[i] = static_cast<char>(x >> 24);
    }
    return s;
}

struct SampleImage {
    std::unique_ptr<Node> root;
    ErofsBuildOptions opt;
    std::vector<std::string> device_data;     // content of extra device i+1
    std::map<std::string, std::string> contents;  // regular files: path -> expected content
    std::map<std::string, std::shared_ptr<Inode>> entries;  // every path but "/"
    uint64_t next_seed = 1;

    explicit SampleImage(uint32_t chunk_bits, size_t ndevices) {
        root = make_implicit_dir(-1);
        opt.chunk_bits = chunk_bits;
        opt.build_time = 1700000000;
        for (size_t i = 0; i < ndevices; ++i) {
            device_data.emplace_back();
            opt.devices.push_back(
                ErofsDevice{fmt::format("{:064x}", 0xabc0 + i), 0});
        }
    }

    uint64_t chunk_size() const { return 1ull << opt.chunk_bits; }

    Node& dir_node(const std::string& path) {
        Node* n = root.get();
        size_t pos = 1;
        while (pos < path.size()) {
            size_t end = path.find('/', pos);
            if (end == std::string::npos) end = path.size();
            std::string name = path.substr(pos, end - pos);
            auto& child = n->children[name];
            if (!child) {
                child = make_implicit_dir(-1);
                entries[path.substr(0, end)] = child->inode;
            }
            n = child.get();
            pos = end + 1;
        }
        return *n;
    }

    // Adds an entry (the parents are created as 0755 directories); returns the inode.
    std::shared_ptr<Inode> put(const std::string& path, std::shared_ptr<Inode> in) {
        const size_t slash = path.rfind('/');
        Node& parent = dir_node(path.substr(0, slash));
        auto node = std::make_unique<Node>();
        node->inode = in;
        parent.children[path.substr(slash + 1)] = std::move(node);
        entries[path] = in;
        return in;
    }

    static std::shared_ptr<Inode> inode(FileType t, uint32_t mode) {
        auto in = std::make_shared<Inode>();
        in->type = t;
        in->mode = mode;
        in->mtime = 1600000000;
        in->mtime_nsec = 0;
        return in;
    }

    std::shared_ptr<Inode> mkdir(const std::string& path, uint32_t mode) {
        Node& n = dir_node(path);
        n.inode->mode = mode;
        return n.inode;
    }

    std::shared_ptr<Inode> inline_file(const std::string& path, std::string data,
                                       uint32_t mode = 0644) {
        auto in = inode(FileType::Regular, mode);
        in->is_inline = true;
        in->size = data.size();
        in->inline_data = data;
        contents[path] = std::move(data);
        return put(path, in);
    }

    // A chunked file of `size` pattern bytes; chunk i goes to device layout[i % layout.size()]
    // (0: a hole, the bytes are zeros).
    std::shared_ptr<Inode> chunked_file(const std::string& path, uint64_t size,
                                        const std::vector<uint16_t>& layout, uint32_t mode = 0644) {
        auto in = inode(FileType::Regular, mode);
        in->size = size;
        std::string content;
        const uint64_t cs = chunk_size();
        for (uint64_t off = 0, i = 0; off < size; off += cs, ++i) {
            const uint64_t len = std::min(cs, size - off);
            const uint16_t dev = layout[i % layout.size()];
            if (dev == 0) {
                in->chunks.push_back(ChunkRef{});
                content.append(len, '\0');
                continue;
            }
            std::string bytes = pattern_bytes(next_seed++, len);
            std::string& d = device_data[dev - 1];
            const uint32_t blkaddr = static_cast<uint32_t>(d.size() / 4096);
            d += bytes;
            d.resize((d.size() + 4095) / 4096 * 4096, '\0');
            opt.devices[dev - 1].blocks = static_cast<uint32_t>(d.size() / 4096);
            in->chunks.push_back(ChunkRef{dev, blkaddr});
            content += bytes;
        }
        contents[path] = std::move(content);
        return put(path, in);
    }

    std::shared_ptr<Inode> symlink(const std::string& path, std::string target) {
        auto in = inode(FileType::Symlink, 0777);
        in->symlink_target = std::move(target);
        return put(path, in);
    }

    std::shared_ptr<Inode> special(const std::string& path, FileType t, uint32_t major = 0,
                                   uint32_t minor = 0, uint32_t mode = 0644) {
        auto in = inode(t, mode);
        in->rdev_major = major;
        in->rdev_minor = minor;
        return put(path, in);
    }

    // Another name for an existing inode (a hardlink).
    void link(const std::string& path, const std::string& existing) {
        put(path, entries.at(existing));
        if (contents.count(existing)) contents[path] = contents[existing];
    }

    // Expected link counts: entries per inode, 2 + subdirectories for directories.
    std::map<const Inode*, uint32_t> expected_nlink() const {
        std::map<const Inode*, uint32_t> n;
        n[root->inode.get()] = 2;
        for (const auto& [path, in] : entries) {
            if (in->type == FileType::Directory) {
                n[in.get()] += 2;
                const std::string parent = path.substr(0, std::max<size_t>(path.rfind('/'), 1));
                const Inode* p = parent == "/" ? root->inode.get() : entries.at(parent).get();
                n[p] += 1;
            } else {
                n[in.get()] += 1;
            }
        }
        return n;
    }
};

// A valid POSIX ACL in the xattr format (version 2; entries sorted by tag).
inline std::string acl_xattr(std::initializer_list<std::array<uint32_t, 3>> entries) {
    std::string s;
    auto le32 = [&](uint32_t v) { for (int i = 0; i < 4; ++i) s += static_cast<char>(v >> (8 * i)); };
    auto le16 = [&](uint16_t v) { s += static_cast<char>(v); s += static_cast<char>(v >> 8); };
    le32(2);
    for (const auto& e : entries) {
        le16(static_cast<uint16_t>(e[0]));
        le16(static_cast<uint16_t>(e[1]));
        le32(e[2]);
    }
    return s;
}

// Every kind of entry. Chunk size 1 << chunk_bits; two extra devices. Without device_nodes the
// tree has no character or block devices (so that an unprivileged tool can extract it).
inline SampleImage make_sample_image(uint32_t chunk_bits, size_t big_dir_entries = 3000,
                                     bool device_nodes = true) {
    SampleImage s(chunk_bits, 2);
    const uint64_t cs = s.chunk_size();
    s.root->inode->mode = 0755;
    s.root->inode->mtime = 1234567890;
    s.root->inode->mtime_nsec = 987654321;

    // Inline files of every shape: tiny, one block + tail, whole blocks, a tail that cannot sit
    // next to its inode, empty.
    s.mkdir("/etc", 0755);
    s.inline_file("/etc/hostname", "erostream\n");
    s.inline_file("/etc/inline_5000", pattern_bytes(100, 5000));
    s.inline_file("/etc/inline_8192", pattern_bytes(101, 8192), 0600);
    auto big_tail = s.inline_file("/etc/inline_4090", pattern_bytes(102, 4090));
    big_tail->xattrs = {{"user.note", "tail does not fit"}};
    s.inline_file("/empty", "", 0000);
    auto empty_chunked = SampleImage::inode(FileType::Regular, 0644);
    s.put("/empty_chunked", empty_chunked);
    s.contents["/empty_chunked"] = "";

    // Chunked files: holes, several devices, partial last chunk, all holes, one short chunk.
    s.mkdir("/bin", 0755);
    s.chunked_file("/bin/multi", 3 * cs + 100, {1, 0, 2, 1});
    s.chunked_file("/bin/small", 10, {2});
    s.chunked_file("/bin/holes", 2 * cs, {0});
    s.chunked_file("/bin/exact", 2 * cs, {2, 1});
    auto tool = s.chunked_file("/bin/tool", cs + 4096 + 1, {1}, 04755);
    tool->uid = 4000000000u;
    tool->gid = 4000000001u;
    tool->mtime = 1700000123;
    tool->mtime_nsec = 123456789;
    tool->xattrs = {{"security.capability",
                     std::string("\x01\x00\x00\x02\x00\x30\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                 "\x00\x00\x00\x00",
                                 20)}};
    auto old = s.inline_file("/old", "before 1970");
    old->mtime = -86400 * 365;
    old->mtime_nsec = 5;

    // Hardlinks: a chunked file, an inline file, a symlink, across directories.
    s.chunked_file("/links/a", cs + 7, {2, 1});
    s.link("/links/b", "/links/a");
    s.link("/bin/c", "/links/a");
    s.inline_file("/links/ln1", "linked inline\n", 0640);
    s.link("/links/ln2", "/links/ln1");
    s.symlink("/links/sym1", "../etc/hostname");
    s.link("/links/sym2", "/links/sym1");

    // Symlinks: short, long but still inline, longest (4095 bytes: a block of its own).
    s.symlink("/lib", "usr/lib");
    s.symlink("/longlink", std::string(4000, 'x'));
    s.symlink("/longestlink", std::string(4095, 'y'));

    // Devices, fifo, socket.
    if (device_nodes) {
        s.special("/dev/null", FileType::CharDevice, 1, 3, 0666);
        s.special("/dev/biggest", FileType::CharDevice, 4095, 1048575, 0600);
        s.special("/dev/sda", FileType::BlockDevice, 8, 0, 0660)->gid = 6;
    }
    s.special("/dev/fifo", FileType::Fifo, 0, 0, 0600);
    s.special("/dev/sock", FileType::Socket, 0, 0, 0755);

    // Xattrs of every supported prefix, and more xattrs than fit in one block.
    auto xf = s.inline_file("/xattrs/file", "has xattrs\n", 0664);
    xf->xattrs = {
        {"security.selinux", "system_u:object_r:etc_t:s0"},
        {"system.posix_acl_access",
         acl_xattr({{0x01, 6, 0xffffffff}, {0x02, 6, 1000}, {0x04, 4, 0xffffffff},
                    {0x10, 6, 0xffffffff}, {0x20, 4, 0xffffffff}})},
        {"trusted.overlay.opaque", "y"},
        {"user.a", ""},
        {"user.mime_type", "text/plain"},
    };
    auto xd = s.mkdir("/xattrs/dir", 0755);
    xd->xattrs = {
        {"system.posix_acl_default",
         acl_xattr({{0x01, 7, 0xffffffff}, {0x04, 5, 0xffffffff}, {0x20, 5, 0xffffffff}})},
        {"user.dir", "d"},
    };
    auto xb = s.chunked_file("/xattrs/big_chunked", 3 * cs, {1, 2});
    xb->xattrs = {{"user.big1", pattern_bytes(7, 3000)}, {"user.big2", pattern_bytes(8, 3000)}};
    auto xi = s.inline_file("/xattrs/big_inline", "tail after big xattrs");
    xi->xattrs = {{"trusted.big", pattern_bytes(9, 5000)}};
    auto xs = s.symlink("/xattrs/sym", "file");
    xs->xattrs = {{"trusted.sym", "on a symlink"}};

    // Names: 255 bytes, bytes sorting before and around "." and "..", non-ASCII.
    const std::string long_name(255, 'L');
    s.inline_file("/names/" + long_name, "long name\n");
    s.mkdir("/names/" + std::string(254, 'D') + "d", 0700);
    for (const char* n : {"!", "-a", "+b", ".a", ".hidden", "..x", ".\x01", "a", "Z",
                          "\xc3\xa9t\xc3\xa9", "\xff\xfe"})
        s.inline_file(std::string("/names/") + n, n);

    // Modes on directories; a deep chain.
    s.mkdir("/tmp", 01777);
    s.mkdir("/srv", 02750)->uid = 70000;
    std::string deep = "/deep";
    for (int i = 0; i < 40; ++i) deep += fmt::format("/d{}", i);
    s.mkdir(deep, 0755);
    s.inline_file(deep + "/leaf", "bottom\n");

    // A large directory (many dirent blocks) of inline files, fifos and subdirectories.
    for (size_t i = 0; i < big_dir_entries; ++i) {
        const std::string name = fmt::format("/big/entry-{:05}-{}", i, std::string(i % 40, 'n'));
        if (i % 10 == 0)
            s.mkdir(name, 0755);
        else if (i % 10 == 1)
            s.special(name, FileType::Fifo);
        else
            s.inline_file(name, fmt::format("content {}\n", i));
    }
    return s;
}

}  // namespace erostream::testing
