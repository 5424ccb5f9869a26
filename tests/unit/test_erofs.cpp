#include <doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "../tools/erofs_sample_tree.h"
#include "erofs_builder.h"
#include "erofs_reader.h"

using namespace erostream;
using erostream::testing::make_sample_image;
using erostream::testing::pattern_bytes;
using erostream::testing::SampleImage;

namespace {

std::map<std::string, ErofsInodeInfo> walk_all(const ErofsReader& r) {
    std::map<std::string, ErofsInodeInfo> out;
    auto res = r.walk([&](const std::string& path, const ErofsInodeInfo& info) -> Result<void> {
        if (!out.emplace(path, info).second) return failf("{} visited twice", path);
        return {};
    });
    REQUIRE_MESSAGE(res.has_value(), (res ? "" : res.error().what()));
    return out;
}

std::string chunked_content(const SampleImage& s, const ErofsInodeInfo& info) {
    std::string out;
    const uint64_t cs = 1ull << info.chunk_bits;
    for (size_t i = 0; i < info.chunks.size(); ++i) {
        const uint64_t len = std::min(cs, info.size - i * cs);
        const ChunkRef& c = info.chunks[i];
        if (c.is_hole()) {
            out.append(len, '\0');
        } else {
            REQUIRE(c.device_id >= 1);
            REQUIRE(c.device_id <= s.device_data.size());
            out += s.device_data[c.device_id - 1].substr(uint64_t(c.blkaddr) * 4096, len);
        }
    }
    return out;
}

std::vector<Xattr> sorted_xattrs(std::vector<Xattr> v) {
    std::sort(v.begin(), v.end(), [](const Xattr& a, const Xattr& b) { return a.name < b.name; });
    return v;
}

// Compares everything the reader sees with what the sample tree says.
void compare_with_sample(const SampleImage& s, const std::string& image) {
    auto reader = ErofsReader::open(image);
    REQUIRE_MESSAGE(reader.has_value(), (reader ? "" : reader.error().what()));
    const ErofsReader& r = *reader;
    auto seen = walk_all(r);
    CHECK(seen.size() == s.entries.size() + 1);
    const auto nlinks = s.expected_nlink();
    std::map<const Inode*, uint64_t> nid_of;
    auto check_one = [&](const std::string& path, const Inode& in) {
        INFO("path " << path);
        auto it = seen.find(path);
        REQUIRE(it != seen.end());
        const ErofsInodeInfo& info = it->second;
        auto [nit, fresh] = nid_of.emplace(&in, info.nid);
        CHECK(nit->second == info.nid);  // hardlinks share one nid, and only they do
        CHECK(info.type == in.type);
        CHECK(info.mode == in.mode);
        CHECK(info.uid == in.uid);
        CHECK(info.gid == in.gid);
        CHECK(info.mtime == in.mtime);
        CHECK(info.mtime_nsec == in.mtime_nsec);
        CHECK(info.nlink == nlinks.at(&in));
        CHECK(info.inode_isize == 64);
        CHECK(sorted_xattrs(info.xattrs) == sorted_xattrs(in.xattrs));
        CHECK(info.xattrs == sorted_xattrs(info.xattrs));  // the builder writes them sorted
        switch (in.type) {
        case FileType::Regular:
            CHECK(info.size == in.size);
            if (in.is_inline || in.size == 0) {
                CHECK(info.datalayout != EROFS_INODE_CHUNK_BASED);
                auto data = r.read_inline_or_plain_data(info);
                REQUIRE(data.has_value());
                CHECK(*data == s.contents.at(path));
            } else {
                CHECK(info.datalayout == EROFS_INODE_CHUNK_BASED);
                CHECK(info.chunk_bits == s.opt.chunk_bits);
                CHECK(info.chunks == in.chunks);
                CHECK(chunked_content(s, info) == s.contents.at(path));
            }
            break;
        case FileType::Symlink: {
            CHECK(info.size == in.symlink_target.size());
            auto data = r.read_inline_or_plain_data(info);
            REQUIRE(data.has_value());
            CHECK(*data == in.symlink_target);
            break;
        }
        case FileType::CharDevice:
        case FileType::BlockDevice:
            CHECK(info.rdev_major == in.rdev_major);
            CHECK(info.rdev_minor == in.rdev_minor);
            CHECK(info.size == 0);
            break;
        case FileType::Directory: {
            auto entries = r.read_dir(info);
            REQUIRE(entries.has_value());
            const Node* node = s.root.get();
            if (path != "/") {
                size_t pos = 1;
                while (pos <= path.size()) {
                    size_t end = std::min(path.find('/', pos), path.size());
                    node = node->children.at(path.substr(pos, end - pos)).get();
                    pos = end + 1;
                }
            }
            CHECK(entries->size() == node->children.size() + 2);
            break;
        }
        default:
            CHECK(info.size == 0);
            break;
        }
    };
    check_one("/", *s.root->inode);
    for (const auto& [path, in] : s.entries) check_one(path, *in);
    CHECK(r.superblock().inos == nid_of.size());
}

std::string build_ok(const Node& root, const ErofsBuildOptions& opt, ErofsBuildStats* st = nullptr) {
    auto img = build_erofs_image(root, opt, st);
    REQUIRE_MESSAGE(img.has_value(), (img ? "" : img.error().what()));
    return std::move(*img);
}

std::string build_error(const Node& root, const ErofsBuildOptions& opt) {
    auto img = build_erofs_image(root, opt);
    REQUIRE_FALSE(img.has_value());
    return img.error().what();
}

// A scratch directory removed with everything in it.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string t = (std::filesystem::temp_directory_path() / "erofs-test-XXXXXX").string();
        REQUIRE(mkdtemp(t.data()) != nullptr);
        path = t;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

void write_file(const std::filesystem::path& p, std::string_view data) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
    REQUIRE(f.good());
}

// Runs a command (no shell), returns its exit status and combined output.
std::pair<int, std::string> run(const std::vector<std::string>& argv) {
    int pipefd[2];
    REQUIRE(pipe(pipefd) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        close(pipefd[1]);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        _exit(127);
    }
    close(pipefd[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) out.append(buf, n);
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// Writes the image and its devices, runs fsck.erofs (optionally extracting to `extract_dir`).
void fsck_image(const TempDir& tmp, const SampleImage& s, const std::string& image,
                const std::string& extract_dir = "") {
    const auto img_path = tmp.path / "image.erofs";
    write_file(img_path, image);
    std::vector<std::string> argv = {"fsck.erofs"};
    for (size_t i = 0; i < s.device_data.size(); ++i) {
        const auto dev = tmp.path / fmt::format("dev{}.blob", i + 1);
        write_file(dev, s.device_data[i]);
        argv.push_back("--device=" + dev.string());
    }
    if (!extract_dir.empty()) argv.push_back("--extract=" + extract_dir);
    argv.push_back(img_path.string());
    auto [rc, out] = run(argv);
    INFO("fsck.erofs output:\n" << out);
    REQUIRE_MESSAGE(rc != 127, "fsck.erofs is not installed (erofs-utils)");
    CHECK(rc == 0);
}

ErofsInodeInfo inode_at(const ErofsReader& r, const std::string& path) {
    std::optional<ErofsInodeInfo> found;
    auto res = r.walk([&](const std::string& p, const ErofsInodeInfo& i) -> Result<void> {
        if (p == path) found = i;
        return {};
    });
    REQUIRE(res.has_value());
    REQUIRE(found.has_value());
    return *found;
}

std::shared_ptr<Inode> reg_inline(std::string data) {
    auto in = std::make_shared<Inode>();
    in->type = FileType::Regular;
    in->mode = 0644;
    in->is_inline = true;
    in->size = data.size();
    in->inline_data = std::move(data);
    return in;
}

void add(Node& dir, const std::string& name, std::shared_ptr<Inode> in) {
    auto n = std::make_unique<Node>();
    n->inode = std::move(in);
    dir.children[name] = std::move(n);
}

}  // namespace

TEST_CASE("erofs: every kind of entry round trips through builder and reader") {
    for (uint32_t bits : {12u, 14u, 20u}) {
        INFO("chunk_bits " << bits);
        SampleImage s = make_sample_image(bits);
        ErofsBuildStats st;
        const std::string image = build_ok(*s.root, s.opt, &st);
        CHECK(image.size() % 4096 == 0);
        CHECK(st.image_bytes == image.size());
        compare_with_sample(s, image);

        auto r = ErofsReader::open(image);
        REQUIRE(r.has_value());
        const erofs_super_block& sb = r->superblock();
        CHECK(sb.blkszbits == 12);
        CHECK(sb.dirblkbits == 0);
        CHECK(sb.feature_incompat ==
              (EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE));
        CHECK(sb.feature_compat == 0);
        CHECK(sb.extra_devices == 2);
        CHECK(uint64_t(sb.blocks) * 4096 == image.size());
        CHECK(sb.build_time == s.opt.build_time);
        CHECK(sb.inos == st.inodes);
        CHECK(r->root_nid() != 0);
        CHECK(r->devices() == s.opt.devices);

        // Layout choices the kernel relies on.
        CHECK(inode_at(*r, "/etc/hostname").datalayout == EROFS_INODE_FLAT_INLINE);
        auto i5000 = inode_at(*r, "/etc/inline_5000");
        CHECK(i5000.datalayout == EROFS_INODE_FLAT_INLINE);
        CHECK(i5000.raw_blkaddr != EROFS_NULL_ADDR);
        CHECK(inode_at(*r, "/etc/inline_8192").datalayout == EROFS_INODE_FLAT_PLAIN);
        CHECK(inode_at(*r, "/etc/inline_4090").datalayout == EROFS_INODE_FLAT_PLAIN);
        CHECK(inode_at(*r, "/xattrs/big_inline").datalayout == EROFS_INODE_FLAT_PLAIN);
        CHECK(inode_at(*r, "/lib").datalayout == EROFS_INODE_FLAT_INLINE);
        CHECK(inode_at(*r, "/longlink").datalayout == EROFS_INODE_FLAT_INLINE);
        CHECK(inode_at(*r, "/longestlink").datalayout == EROFS_INODE_FLAT_PLAIN);
        CHECK(inode_at(*r, "/empty").datalayout == EROFS_INODE_FLAT_PLAIN);
        CHECK(inode_at(*r, "/empty_chunked").datalayout == EROFS_INODE_FLAT_PLAIN);
        auto big = inode_at(*r, "/big");
        CHECK(big.size > 10 * 4096);
        CHECK(big.nlink == 2 + 300);
        auto deep = inode_at(*r, "/names");
        CHECK(deep.datalayout == EROFS_INODE_FLAT_INLINE);

        // Statistics.
        CHECK(st.inodes == sb.inos);
        CHECK(st.chunked_files == 7);  // multi small holes exact tool links/a xattrs/big_chunked
        CHECK(st.directories > 300);
        CHECK(st.inline_files > 2000);
    }
}

TEST_CASE("erofs: directory entries are sorted bytewise with . and .. in place") {
    SampleImage s = make_sample_image(12, 10);
    const std::string image = build_ok(*s.root, s.opt);
    auto r = ErofsReader::open(image);
    REQUIRE(r.has_value());
    auto names = r->read_dir(inode_at(*r, "/names"));
    REQUIRE(names.has_value());
    std::vector<std::string> got;
    for (const auto& e : *names) got.push_back(e.name);
    std::vector<std::string> want = {"!", "+b", "-a", ".", ".\x01", "..", "..x", ".a", ".hidden"};
    want.push_back(std::string(254, 'D') + "d");
    want.push_back(std::string(255, 'L'));
    want.push_back("Z");
    want.push_back("a");
    want.push_back("\xc3\xa9t\xc3\xa9");
    want.push_back("\xff\xfe");
    CHECK(got == want);
    for (const auto& e : *names) {
        if (e.name == ".") CHECK(e.nid == inode_at(*r, "/names").nid);
        if (e.name == "..") CHECK(e.nid == r->root_nid());
    }
}

TEST_CASE("erofs: a million-entry-style flat directory spans many blocks") {
    auto root = make_implicit_dir(-1);
    auto shared = reg_inline("x");
    for (int i = 0; i < 20000; ++i) add(*root, fmt::format("f{:06}", i), shared);  // one inode
    ErofsBuildStats st;
    const std::string image = build_ok(*root, ErofsBuildOptions{}, &st);
    CHECK(st.inodes == 2);
    auto r = ErofsReader::open(image);
    REQUIRE(r.has_value());
    auto rootinfo = r->read_inode(r->root_nid());
    REQUIRE(rootinfo.has_value());
    CHECK(rootinfo->size > 20000 * 19);
    auto entries = r->read_dir(*rootinfo);
    REQUIRE(entries.has_value());
    CHECK(entries->size() == 20002);
    CHECK(entries->front().name == ".");
    auto file = r->read_inode(entries->back().nid);
    REQUIRE(file.has_value());
    CHECK(file->nlink == 20000);
}

TEST_CASE("erofs: images are deterministic") {
    SampleImage a = make_sample_image(14, 500);
    SampleImage b = make_sample_image(14, 500);
    // Unrelated allocations between the two trees change pointer order, not the bytes.
    std::vector<std::shared_ptr<Inode>> noise;
    for (int i = 0; i < 100; ++i) noise.push_back(std::make_shared<Inode>());
    SampleImage c = make_sample_image(14, 500);
    const std::string ia = build_ok(*a.root, a.opt);
    CHECK(ia == build_ok(*b.root, b.opt));
    CHECK(ia == build_ok(*c.root, c.opt));
    CHECK(ia == build_ok(*a.root, a.opt));
    ErofsBuildOptions other = a.opt;
    other.build_time += 1;
    CHECK(ia != build_ok(*a.root, other));
}

TEST_CASE("erofs: builder errors name the entry") {
    SUBCASE("unsupported xattr prefix") {
        auto root = make_implicit_dir(-1);
        auto f = reg_inline("x");
        f->xattrs = {{"system.nfs4_acl", "v"}};
        add(*root, "file", f);
        const std::string e = build_error(*root, {});
        CHECK(e.find("system.nfs4_acl") != std::string::npos);
        CHECK(e.find("/file") != std::string::npos);
    }
    SUBCASE("xattr with an empty name after user.") {
        auto root = make_implicit_dir(-1);
        auto f = reg_inline("x");
        f->xattrs = {{"user.", "v"}};
        add(*root, "f", f);
        CHECK(build_error(*root, {}).find("user.") != std::string::npos);
    }
    SUBCASE("duplicate xattr") {
        auto root = make_implicit_dir(-1);
        auto f = reg_inline("x");
        f->xattrs = {{"user.a", "1"}, {"user.a", "2"}};
        add(*root, "f", f);
        CHECK(build_error(*root, {}).find("twice") != std::string::npos);
    }
    SUBCASE("chunk count mismatch") {
        SampleImage s(12, 1);
        auto in = SampleImage::inode(FileType::Regular, 0644);
        in->size = 3 * 4096;
        in->chunks = {ChunkRef{}, ChunkRef{}};
        s.put("/dir/file", in);
        const std::string e = build_error(*s.root, s.opt);
        CHECK(e.find("/dir/file") != std::string::npos);
        CHECK(e.find("2 chunks") != std::string::npos);
    }
    SUBCASE("chunk on a device that does not exist or beyond its end") {
        SampleImage s(12, 1);
        s.opt.devices[0].blocks = 4;
        auto in = SampleImage::inode(FileType::Regular, 0644);
        in->size = 4096;
        in->chunks = {ChunkRef{2, 0}};
        s.put("/f", in);
        CHECK(build_error(*s.root, s.opt).find("device 2") != std::string::npos);
        in->chunks = {ChunkRef{1, 4}};
        CHECK(build_error(*s.root, s.opt).find("block 5") != std::string::npos);
        in->chunks = {ChunkRef{1, 3}};
        CHECK(build_erofs_image(*s.root, s.opt).has_value());
    }
    SUBCASE("name longer than 255 bytes") {
        auto root = make_implicit_dir(-1);
        add(*root, std::string(256, 'n'), reg_inline("x"));
        CHECK(build_error(*root, {}).find("256") != std::string::npos);
    }
    SUBCASE("names with a slash, empty names, dot names") {
        for (const char* bad : {"a/b", "", ".", ".."}) {
            auto root = make_implicit_dir(-1);
            add(*root, bad, reg_inline("x"));
            CHECK_FALSE(build_erofs_image(*root, {}).has_value());
        }
    }
    SUBCASE("mode with type bits, bad nsec, device numbers too big") {
        auto root = make_implicit_dir(-1);
        auto f = reg_inline("x");
        f->mode = 0100644;
        add(*root, "f", f);
        CHECK(build_error(*root, {}).find("mode") != std::string::npos);
        f->mode = 0644;
        f->mtime_nsec = 1000000000;
        CHECK(build_error(*root, {}).find("nanoseconds") != std::string::npos);
        f->mtime_nsec = 0;
        auto d = SampleImage::inode(FileType::CharDevice, 0600);
        d->rdev_major = 4096;
        add(*root, "dev", d);
        CHECK(build_error(*root, {}).find("/dev") != std::string::npos);
    }
    SUBCASE("hardlinked directory, root not a directory, bad chunk_bits") {
        auto root = make_implicit_dir(-1);
        auto sub = make_implicit_dir(-1);
        auto dirinode = sub->inode;
        root->children["a"] = std::move(sub);
        add(*root, "b", dirinode);
        CHECK(build_error(*root, {}).find("hardlinked") != std::string::npos);

        Node not_dir;
        not_dir.inode = reg_inline("x");
        CHECK_FALSE(build_erofs_image(not_dir, {}).has_value());

        ErofsBuildOptions opt;
        opt.chunk_bits = 25;
        CHECK_FALSE(build_erofs_image(*make_implicit_dir(-1), opt).has_value());
    }
    SUBCASE("inline size mismatch, symlink too long") {
        auto root = make_implicit_dir(-1);
        auto f = reg_inline("abc");
        f->size = 4;
        add(*root, "f", f);
        CHECK(build_error(*root, {}).find("/f") != std::string::npos);
        f->size = 3;
        auto l = SampleImage::inode(FileType::Symlink, 0777);
        l->symlink_target = std::string(4096, 'x');
        add(*root, "l", l);
        CHECK(build_error(*root, {}).find("/l") != std::string::npos);
    }
}

TEST_CASE("erofs: xattrs larger than a block keep the inode readable") {
    auto root = make_implicit_dir(-1);
    auto f = reg_inline("tail");
    for (int i = 0; i < 40; ++i) f->xattrs.push_back({fmt::format("user.x{:02}", i), pattern_bytes(i, 1000)});
    add(*root, "a", reg_inline("small"));
    add(*root, "f", f);
    const std::string image = build_ok(*root, {});
    auto r = ErofsReader::open(image);
    REQUIRE(r.has_value());
    auto info = inode_at(*r, "/f");
    CHECK(info.inode_offset % 4096 == 0);  // a header larger than a block starts a block
    CHECK(info.xattrs == f->xattrs);
    auto data = r->read_inline_or_plain_data(info);
    REQUIRE(data.has_value());
    CHECK(*data == "tail");
}

TEST_CASE("erofs: inline tails never cross a block and headers stay in their block") {
    SampleImage s = make_sample_image(12, 2000);
    const std::string image = build_ok(*s.root, s.opt);
    auto r = ErofsReader::open(image);
    REQUIRE(r.has_value());
    auto res = r->walk([&](const std::string& path, const ErofsInodeInfo& i) -> Result<void> {
        const uint64_t head_end = i.inode_offset + i.inode_isize + i.xattr_isize;
        uint64_t end = head_end;
        if (i.datalayout == EROFS_INODE_FLAT_INLINE) end += i.size % 4096;
        if (end - i.inode_offset <= 4096 && i.inode_offset / 4096 != (end - 1) / 4096)
            return failf("{}: inode {}..{} crosses a block", path, i.inode_offset, end);
        return {};
    });
    CHECK_MESSAGE(res.has_value(), (res ? "" : res.error().what()));
}

TEST_CASE("erofs: fsck.erofs accepts the images") {
    for (uint32_t bits : {12u, 20u}) {
        INFO("chunk_bits " << bits);
        TempDir tmp;
        SampleImage s = make_sample_image(bits);
        fsck_image(tmp, s, build_ok(*s.root, s.opt));
    }
    SUBCASE("no extra devices") {
        TempDir tmp;
        SampleImage s(12, 0);
        s.inline_file("/a/b", "hello");
        s.symlink("/a/l", "b");
        fsck_image(tmp, s, build_ok(*s.root, s.opt));
    }
}

TEST_CASE("erofs: fsck.erofs extracts the same content") {
    TempDir tmp;
    SampleImage s = make_sample_image(12, 300, /*device_nodes=*/false);
    const std::string out = (tmp.path / "out").string();
    fsck_image(tmp, s, build_ok(*s.root, s.opt), out);
    for (const auto& [path, in] : s.entries) {
        INFO("path " << path);
        const std::string p = out + path;
        struct stat st {};
        REQUIRE(lstat(p.c_str(), &st) == 0);
        switch (in->type) {
        case FileType::Regular: {
            CHECK(S_ISREG(st.st_mode));
            std::ifstream f(p, std::ios::binary);
            std::string got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
            // fsck.erofs 1.5 skips unmapped chunks while extracting (no seek, no truncate), so
            // what it writes is the content without its holes.
            std::string want = s.contents.at(path);
            if (!in->is_inline) {
                const uint64_t cs = s.chunk_size();
                for (size_t i = in->chunks.size(); i-- > 0;)
                    if (in->chunks[i].is_hole()) want.erase(i * cs, cs);
            }
            CHECK(got == want);
            break;
        }
        case FileType::Symlink: {
            CHECK(S_ISLNK(st.st_mode));
            std::string buf(8192, '\0');
            ssize_t n = readlink(p.c_str(), buf.data(), buf.size());
            REQUIRE(n >= 0);
            buf.resize(n);
            CHECK(buf == in->symlink_target);
            break;
        }
        case FileType::Directory: CHECK(S_ISDIR(st.st_mode)); break;
        case FileType::Fifo: CHECK(S_ISFIFO(st.st_mode)); break;
        case FileType::Socket: CHECK(S_ISSOCK(st.st_mode)); break;
        default: break;
        }
    }
}

namespace {

// A small image with /a (directory) holding b, c (directories) and f (a file).
struct Small {
    std::string image;
    uint64_t a_tail = 0;  // byte offset of /a's inline dirent block
    Small() {
        SampleImage s(12, 1);
        s.mkdir("/a/b", 0755);
        s.mkdir("/a/c", 0755);
        s.chunked_file("/a/f", 5000, {1});
        s.inline_file("/g", "g");
        s.opt.build_time = 1;
        image = build_ok(*s.root, s.opt);
        auto r = ErofsReader::open(image);
        REQUIRE(r.has_value());
        auto a = inode_at(*r, "/a");
        REQUIRE(a.datalayout == EROFS_INODE_FLAT_INLINE);
        a_tail = a.inode_offset + a.inode_isize + a.xattr_isize;
    }
    // Dirents of /a in order: ".", "..", "b", "c", "f".
    uint64_t dirent(int i) const { return a_tail + i * sizeof(erofs_dirent); }
};

std::string walk_error(const std::string& image) {
    auto r = ErofsReader::open(image);
    if (!r) return r.error().what();
    auto res = r->walk([](const std::string&, const ErofsInodeInfo&) -> Result<void> { return {}; });
    if (res) return "";
    return res.error().what();
}

}  // namespace

TEST_CASE("erofs reader: rejects damaged images with a reason") {
    Small sm;
    REQUIRE(walk_error(sm.image).empty());
    auto r = ErofsReader::open(sm.image);
    REQUIRE(r.has_value());
    const uint64_t root = r->root_nid();

    SUBCASE("truncated, bad magic, unknown features") {
        CHECK_FALSE(ErofsReader::open(std::string_view(sm.image).substr(0, 1100)).has_value());
        CHECK_FALSE(ErofsReader::open(std::string_view(sm.image).substr(0, sm.image.size() - 4096)).has_value());
        std::string bad = sm.image;
        bad[1024] ^= 1;
        CHECK(walk_error(bad).find("magic") != std::string::npos);
        bad = sm.image;
        bad[1024 + offsetof(erofs_super_block, feature_incompat)] |= 0x40;
        CHECK(walk_error(bad).find("features") != std::string::npos);
    }
    SUBCASE("a directory entry pointing back to the root: a loop") {
        std::string bad = sm.image;
        std::memcpy(bad.data() + sm.dirent(2), &root, 8);  // /a/b -> root
        const std::string e = walk_error(bad);
        CHECK(e.find("/a/b") != std::string::npos);
    }
    SUBCASE("unsorted names") {
        std::string bad = sm.image;
        erofs_dirent b, c;
        std::memcpy(&b, bad.data() + sm.dirent(2), sizeof(b));
        std::memcpy(&c, bad.data() + sm.dirent(3), sizeof(c));
        std::swap(bad[sm.a_tail + b.nameoff], bad[sm.a_tail + c.nameoff]);
        CHECK(walk_error(bad).find("sorted") != std::string::npos);
    }
    SUBCASE("nameoff out of range") {
        std::string bad = sm.image;
        uint16_t off = 5000;
        std::memcpy(bad.data() + sm.dirent(3) + 8, &off, 2);
        CHECK(walk_error(bad).find("nid") != std::string::npos);
    }
    SUBCASE("wrong file type in the dirent") {
        std::string bad = sm.image;
        bad[sm.dirent(4) + 10] = EROFS_FT_SYMLINK;
        CHECK(walk_error(bad).find("/a/f") != std::string::npos);
    }
    SUBCASE("nid beyond the image") {
        std::string bad = sm.image;
        uint64_t far = 1ull << 40;
        std::memcpy(bad.data() + sm.dirent(4), &far, 8);
        CHECK(walk_error(bad).find("/a/f") != std::string::npos);
    }
    SUBCASE("chunk index naming a missing device") {
        auto f = inode_at(*r, "/a/f");
        const uint64_t idx = (f.inode_offset + 64 + f.xattr_isize + 7) / 8 * 8;
        std::string bad = sm.image;
        uint16_t dev = 3;
        std::memcpy(bad.data() + idx + 2, &dev, 2);
        CHECK(walk_error(bad).find("device 3") != std::string::npos);
    }
}

TEST_CASE("erofs reader: random corruption never crashes") {
    SampleImage s = make_sample_image(12, 200);
    const std::string image = build_ok(*s.root, s.opt);
    std::mt19937_64 rng(42);
    // Only the meta area is interesting: data blocks are directory blocks and file tails.
    const size_t span = std::min<size_t>(image.size(), 64 * 4096);
    int failures = 0;
    for (int iter = 0; iter < 1500; ++iter) {
        std::string bad = image;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < flips; ++k) bad[rng() % span] ^= static_cast<char>(1u << (rng() % 8));
        auto r = ErofsReader::open(bad);
        if (!r) {
            ++failures;
            continue;
        }
        auto res = r->walk([&](const std::string&, const ErofsInodeInfo& i) -> Result<void> {
            if (i.datalayout != EROFS_INODE_CHUNK_BASED && i.type != FileType::Directory)
                (void)r->read_inline_or_plain_data(i);
            return {};
        });
        if (!res) ++failures;
    }
    CHECK(failures > 0);  // the flips do hit checked fields
}

TEST_CASE("erofs reader: reads images made by mkfs.erofs (compact inodes, block maps)") {
    TempDir tmp;
    const auto src = tmp.path / "src";
    std::filesystem::create_directories(src / "sub" / "deeper");
    std::map<std::string, std::string> files = {
        {"/a", "hello\n"},
        {"/big", pattern_bytes(1, 10000)},
        {"/blocks", pattern_bytes(2, 3 * 4096)},
        {"/sub/deeper/empty", ""},
    };
    for (int i = 0; i < 400; ++i) files[fmt::format("/sub/f{}", i)] = fmt::format("{}\n", i);
    for (const auto& [p, c] : files) write_file(src.string() + p, c);
    REQUIRE(symlink("a", (src / "link").c_str()) == 0);
    REQUIRE(link((src / "a").c_str(), (src / "sub" / "hard").c_str()) == 0);
    files["/sub/hard"] = files["/a"];

    for (const char* chunk_opt : {"", "--chunksize=4096"}) {
        INFO("mkfs.erofs " << chunk_opt);
        const std::string img_path = (tmp.path / "mkfs.erofs").string();
        std::vector<std::string> argv = {"mkfs.erofs", "--quiet", "-T0"};
        if (*chunk_opt) argv.push_back(chunk_opt);
        argv.push_back(img_path);
        argv.push_back(src.string());
        auto [rc, out] = run(argv);
        INFO(out);
        REQUIRE_MESSAGE(rc != 127, "mkfs.erofs is not installed (erofs-utils)");
        REQUIRE(rc == 0);
        std::ifstream f(img_path, std::ios::binary);
        const std::string image((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        auto r = ErofsReader::open(image);
        REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().what()));
        std::map<std::string, std::string> got;
        std::set<uint64_t> hard_nids;
        int chunked = 0;
        auto res = r->walk([&](const std::string& path, const ErofsInodeInfo& i) -> Result<void> {
            if (path == "/a" || path == "/sub/hard") hard_nids.insert(i.nid);
            if (i.type == FileType::Symlink) {
                got[path] = EROS_TRY(r->read_inline_or_plain_data(i));
            } else if (i.type == FileType::Regular) {
                if (i.datalayout == EROFS_INODE_CHUNK_BASED) {
                    ++chunked;
                    std::string data;
                    const uint64_t cs = 1ull << i.chunk_bits;
                    for (size_t k = 0; k < i.chunks.size(); ++k) {
                        const uint64_t len = std::min(cs, i.size - k * cs);
                        if (i.chunks[k].is_hole()) data.append(len, '\0');
                        else data += image.substr(uint64_t(i.chunks[k].blkaddr) * 4096, len);
                    }
                    got[path] = data;
                } else {
                    got[path] = EROS_TRY(r->read_inline_or_plain_data(i));
                }
                if (path == "/a") CHECK(i.nlink == 2);
            }
            return {};
        });
        REQUIRE_MESSAGE(res.has_value(), (res ? "" : res.error().what()));
        CHECK(hard_nids.size() == 1);
        CHECK((chunked > 0) == (*chunk_opt != 0));
        CHECK(got["/link"] == "a");
        got.erase("/link");
        CHECK(got == files);
    }
}

TEST_CASE("erofs: root placement with a big root directory or a long device table") {
    SUBCASE("root tail too big for the rest of block 0") {
        auto root = make_implicit_dir(-1);
        for (int i = 0; i < 60; ++i) add(*root, fmt::format("{:040}", i), reg_inline("x"));
        const std::string image = build_ok(*root, {});
        auto r = ErofsReader::open(image);
        REQUIRE(r.has_value());
        CHECK(r->root_nid() == 4096 / 32);
        auto info = r->read_inode(r->root_nid());
        REQUIRE(info.has_value());
        CHECK(info->datalayout == EROFS_INODE_FLAT_INLINE);
        CHECK(walk_all(*r).size() == 61);
    }
    SUBCASE("40 devices: the table runs into block 1") {
        SampleImage s(12, 40);
        s.chunked_file("/f", 40 * 4096, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                          18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
                                          32, 33, 34, 35, 36, 37, 38, 39, 40});
        const std::string image = build_ok(*s.root, s.opt);
        auto r = ErofsReader::open(image);
        REQUIRE(r.has_value());
        CHECK(r->devices() == s.opt.devices);
        CHECK(r->root_nid() == (1152 + 40 * 128) / 32);
        compare_with_sample(s, image);
    }
}
