// Kernel check of the EROFS builder: builds an image with every kind of entry, writes the extra
// devices its chunked files point into, mounts it file-backed with this machine's kernel
// (mount(2), image file as source, "device=" options: no loop device) and compares what the
// kernel shows with the tree. Needs root and a kernel with file-backed EROFS (6.12+). Exit 0 when
// everything matches, 1 on any mismatch or when the mount is refused (never a skip).
#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "erofs_builder.h"
#include "erofs_sample_tree.h"
#include "unique_fd.h"

using namespace erostream;
using erostream::testing::make_sample_image;
using erostream::testing::SampleImage;

namespace {

std::vector<std::string> g_failures;

template <class... Args>
void mismatch(fmt::format_string<Args...> f, Args&&... args) {
    g_failures.push_back(fmt::format(f, std::forward<Args>(args)...));
}

bool write_file(const std::string& path, std::string_view data) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return false;
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
        if (n <= 0) return false;
        done += static_cast<size_t>(n);
    }
    return ::fsync(fd.get()) == 0;
}

// Removes the scratch directory; declared before the mount guard so that it runs after umount.
struct TempDir {
    std::string path;
    ~TempDir() {
        if (path.empty()) return;
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// Unmounts on every exit path once mounted.
struct MountGuard {
    std::string target;
    bool mounted = false;
    ~MountGuard() {
        if (!mounted) return;
        if (::umount2(target.c_str(), 0) != 0) {
            std::fprintf(stderr, "umount %s: %s; detaching\n", target.c_str(), std::strerror(errno));
            ::umount2(target.c_str(), MNT_DETACH);
        }
    }
};

std::string read_all(const std::string& path, int* err) {
    std::string out;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        *err = errno;
        return out;
    }
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd.get(), buf, sizeof(buf));
        if (n < 0) {
            *err = errno;
            return out;
        }
        if (n == 0) break;
        out.append(buf, static_cast<size_t>(n));
    }
    *err = 0;
    return out;
}

unsigned char dtype_of(FileType t) {
    switch (t) {
    case FileType::Regular: return DT_REG;
    case FileType::Directory: return DT_DIR;
    case FileType::Symlink: return DT_LNK;
    case FileType::CharDevice: return DT_CHR;
    case FileType::BlockDevice: return DT_BLK;
    case FileType::Fifo: return DT_FIFO;
    case FileType::Socket: return DT_SOCK;
    }
    return DT_UNKNOWN;
}

void check_xattrs(const std::string& path, const std::string& real, const Inode& in) {
    std::set<std::string> want;
    for (const auto& x : in.xattrs) want.insert(x.name);
    std::set<std::string> got;
    ssize_t n = ::llistxattr(real.c_str(), nullptr, 0);
    if (n < 0) {
        mismatch("{}: llistxattr: {}", path, std::strerror(errno));
        return;
    }
    std::string list(static_cast<size_t>(n), '\0');
    n = ::llistxattr(real.c_str(), list.data(), list.size());
    if (n < 0) {
        mismatch("{}: llistxattr: {}", path, std::strerror(errno));
        return;
    }
    list.resize(static_cast<size_t>(n));
    for (size_t p = 0; p < list.size();) {
        size_t end = list.find('\0', p);
        if (end == std::string::npos) end = list.size();
        got.insert(list.substr(p, end - p));
        p = end + 1;
    }
    if (got != want) {
        std::string g, w;
        for (const auto& s : got) g += s + " ";
        for (const auto& s : want) w += s + " ";
        mismatch("{}: xattr names [{}], want [{}]", path, g, w);
    }
    for (const auto& x : in.xattrs) {
        std::string buf(70000, '\0');
        ssize_t len = ::lgetxattr(real.c_str(), x.name.c_str(), buf.data(), buf.size());
        if (len < 0) {
            mismatch("{}: getxattr {}: {}", path, x.name, std::strerror(errno));
            continue;
        }
        buf.resize(static_cast<size_t>(len));
        if (buf != x.value)
            mismatch("{}: xattr {} has {} bytes, want {} bytes (or different content)", path,
                     x.name, buf.size(), x.value.size());
    }
}

void check_entry(const SampleImage& s, const std::string& mnt, const std::string& path,
                 const Inode& in, const Node* node, uint32_t nlink,
                 std::map<const Inode*, ino_t>& ino_of, std::map<ino_t, const Inode*>& inode_of) {
    const std::string real = mnt + (path == "/" ? "" : path);
    struct stat st {};
    if (::lstat(real.c_str(), &st) != 0) {
        mismatch("{}: lstat: {}", path, std::strerror(errno));
        return;
    }
    if ((st.st_mode & S_IFMT) != mode_type_bits(in.type))
        mismatch("{}: type {:o}, want {}", path, st.st_mode & S_IFMT, file_type_name(in.type));
    if ((st.st_mode & 07777) != in.mode)
        mismatch("{}: mode {:o}, want {:o}", path, st.st_mode & 07777, in.mode);
    if (st.st_uid != in.uid || st.st_gid != in.gid)
        mismatch("{}: owner {}:{}, want {}:{}", path, st.st_uid, st.st_gid, in.uid, in.gid);
    if (st.st_mtim.tv_sec != in.mtime || uint64_t(st.st_mtim.tv_nsec) != in.mtime_nsec)
        mismatch("{}: mtime {}.{:09}, want {}.{:09}", path, st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                 in.mtime, in.mtime_nsec);
    if (st.st_nlink != nlink) mismatch("{}: nlink {}, want {}", path, st.st_nlink, nlink);

    // Hardlink groups: one st_ino per inode, and no two inodes share one.
    auto [it, fresh] = ino_of.emplace(&in, st.st_ino);
    if (it->second != st.st_ino)
        mismatch("{}: st_ino {} differs from its hardlink's {}", path, st.st_ino, it->second);
    auto [jt, fresh2] = inode_of.emplace(st.st_ino, &in);
    if (jt->second != &in) mismatch("{}: st_ino {} shared with another inode", path, st.st_ino);

    switch (in.type) {
    case FileType::Regular: {
        if (uint64_t(st.st_size) != in.size)
            mismatch("{}: size {}, want {}", path, st.st_size, in.size);
        int err = 0;
        const std::string got = read_all(real, &err);
        const std::string& want = s.contents.at(path);
        if (err) {
            mismatch("{}: read: {}", path, std::strerror(err));
        } else if (got != want) {
            size_t at = 0;
            while (at < std::min(got.size(), want.size()) && got[at] == want[at]) ++at;
            mismatch("{}: content differs at byte {} (read {} bytes, want {})", path, at,
                     got.size(), want.size());
        }
        // A read that spans a chunk boundary, through pread.
        const uint64_t cs = s.chunk_size();
        if (in.size > cs + 100) {
            UniqueFd fd(::open(real.c_str(), O_RDONLY | O_CLOEXEC));
            std::string buf(200, '\0');
            ssize_t n = fd ? ::pread(fd.get(), buf.data(), buf.size(), off_t(cs - 100)) : -1;
            if (n != 200 || buf != want.substr(cs - 100, 200))
                mismatch("{}: pread across the chunk boundary at {} differs", path, cs);
        }
        break;
    }
    case FileType::Symlink: {
        std::string buf(8192, '\0');
        ssize_t n = ::readlink(real.c_str(), buf.data(), buf.size());
        if (n < 0) {
            mismatch("{}: readlink: {}", path, std::strerror(errno));
            break;
        }
        buf.resize(static_cast<size_t>(n));
        if (buf != in.symlink_target)
            mismatch("{}: symlink target of {} bytes, want {} bytes", path, buf.size(),
                     in.symlink_target.size());
        if (uint64_t(st.st_size) != in.symlink_target.size())
            mismatch("{}: symlink size {}", path, st.st_size);
        break;
    }
    case FileType::CharDevice:
    case FileType::BlockDevice:
        if (major(st.st_rdev) != in.rdev_major || minor(st.st_rdev) != in.rdev_minor)
            mismatch("{}: rdev {}:{}, want {}:{}", path, major(st.st_rdev), minor(st.st_rdev),
                     in.rdev_major, in.rdev_minor);
        break;
    case FileType::Directory: {
        DIR* d = ::opendir(real.c_str());
        if (!d) {
            mismatch("{}: opendir: {}", path, std::strerror(errno));
            break;
        }
        std::map<std::string, unsigned char> got;
        errno = 0;
        while (dirent* e = ::readdir(d)) got[e->d_name] = e->d_type;
        if (errno) mismatch("{}: readdir: {}", path, std::strerror(errno));
        ::closedir(d);
        std::map<std::string, unsigned char> want{{".", DT_DIR}, {"..", DT_DIR}};
        for (const auto& [name, child] : node->children) want[name] = dtype_of(child->inode->type);
        if (got != want)
            mismatch("{}: readdir gives {} entries, want {} (or names/types differ)", path,
                     got.size(), want.size());
        break;
    }
    default:
        if (st.st_size != 0) mismatch("{}: size {}, want 0", path, st.st_size);
        break;
    }
    check_xattrs(path, real, in);
}

const Node* node_at(const Node& root, const std::string& path) {
    const Node* n = &root;
    size_t pos = 1;
    while (pos < path.size()) {
        size_t end = std::min(path.find('/', pos), path.size());
        n = n->children.at(path.substr(pos, end - pos)).get();
        pos = end + 1;
    }
    return n;
}

}  // namespace

int main() {
    SampleImage s = make_sample_image(14, 3000);
    ErofsBuildStats stats;
    auto image = build_erofs_image(*s.root, s.opt, &stats);
    if (!image) {
        std::fprintf(stderr, "build failed: %s\n", image.error().what().c_str());
        return 1;
    }

    TempDir tmp;
    std::string templ = (std::filesystem::temp_directory_path() / "erofs-mount-XXXXXX").string();
    if (!::mkdtemp(templ.data())) {
        std::perror("mkdtemp");
        return 1;
    }
    tmp.path = templ;
    const std::string img_path = tmp.path + "/meta.erofs";
    const std::string mnt = tmp.path + "/mnt";
    if (!write_file(img_path, *image) || ::mkdir(mnt.c_str(), 0755) != 0) {
        std::perror("writing the image");
        return 1;
    }
    std::string options;
    for (size_t i = 0; i < s.device_data.size(); ++i) {
        const std::string dev = fmt::format("{}/dev{}.blob", tmp.path, i + 1);
        if (!write_file(dev, s.device_data[i])) {
            std::perror("writing a device");
            return 1;
        }
        options += (options.empty() ? "device=" : ",device=") + dev;
    }

    MountGuard guard{mnt};
    if (::mount(img_path.c_str(), mnt.c_str(), "erofs", MS_RDONLY, options.c_str()) != 0) {
        std::fprintf(stderr,
                     "FAIL: mount(%s, erofs, ro, \"%s\") refused: %s (needs root and a kernel with "
                     "file-backed EROFS)\n",
                     img_path.c_str(), options.c_str(), std::strerror(errno));
        return 1;
    }
    guard.mounted = true;

    struct statfs sfs {};
    if (::statfs(mnt.c_str(), &sfs) != 0 || uint32_t(sfs.f_type) != EROFS_SUPER_MAGIC_V1)
        mismatch("statfs: f_type {:#x}, want EROFS", uint32_t(sfs.f_type));

    const auto nlinks = s.expected_nlink();
    std::map<const Inode*, ino_t> ino_of;
    std::map<ino_t, const Inode*> inode_of;
    check_entry(s, mnt, "/", *s.root->inode, s.root.get(), nlinks.at(s.root->inode.get()), ino_of,
                inode_of);
    for (const auto& [path, in] : s.entries)
        check_entry(s, mnt, path, *in, in->type == FileType::Directory ? node_at(*s.root, path) : nullptr,
                    nlinks.at(in.get()), ino_of, inode_of);

    std::printf("checked %zu entries (%llu inodes, %llu directories, %llu chunked, %llu inline) "
                "of a %llu-byte image with %zu devices\n",
                s.entries.size() + 1, (unsigned long long)stats.inodes,
                (unsigned long long)stats.directories, (unsigned long long)stats.chunked_files,
                (unsigned long long)stats.inline_files, (unsigned long long)stats.image_bytes,
                s.device_data.size());
    if (g_failures.empty()) {
        std::printf("OK\n");
        return 0;
    }
    for (size_t i = 0; i < g_failures.size() && i < 100; ++i)
        std::fprintf(stderr, "FAIL: %s\n", g_failures[i].c_str());
    std::fprintf(stderr, "%zu mismatches\n", g_failures.size());
    return 1;
}
