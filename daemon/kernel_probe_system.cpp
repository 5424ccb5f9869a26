// The impure half of the kernel probe: reads the config and /proc, and asks the kernel directly.
// Every active probe is side-effect free: no mount is made, no cache is bound, no file is left.
#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/fanotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zlib.h>

#include <fmt/format.h>

#include <cstring>
#include <memory>

#include "fanotify_abi.h"
#include "file_util.h"
#include "kernel_probe.h"
#include "unique_fd.h"

namespace erostream {

namespace {

constexpr size_t kMaxConfigSize = 8u << 20;  // a distribution config is ~300 KiB

std::string errno_text(int err) { return std::strerror(err); }

Result<std::string> read_gzip_file(const std::string& path) {
    struct GzClose {
        void operator()(gzFile f) const { gzclose(f); }
    };
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return fail_errno("open " + path);
    std::unique_ptr<gzFile_s, GzClose> gz(gzdopen(fd.get(), "rb"));
    if (!gz) return fail("gzdopen " + path, ENOMEM);
    fd.release();  // gzclose closes it
    std::string out;
    char buf[65536];
    for (;;) {
        int n = gzread(gz.get(), buf, sizeof buf);
        if (n < 0) {
            int zerr = 0;
            const char* msg = gzerror(gz.get(), &zerr);
            return fail(fmt::format("{}: gzip: {}", path, msg ? msg : "read error"), zerr == Z_ERRNO ? errno : EIO);
        }
        if (n == 0) break;
        out.append(buf, static_cast<size_t>(n));
        if (out.size() > kMaxConfigSize) return fail(path + ": larger than a kernel config can be", EFBIG);
    }
    return out;
}

void read_config(const KernelProbeOptions& opts, KernelFacts& f) {
    std::vector<std::string> tried;
    for (std::string path : opts.config_paths) {
        if (auto pos = path.find("{release}"); pos != std::string::npos) path.replace(pos, 9, f.release);
        auto text = path.ends_with(".gz") ? read_gzip_file(path) : read_small_file(path, kMaxConfigSize);
        if (!text) {
            tried.push_back(text.error().err == ENOENT ? path + " absent" : text.error().what());
            continue;
        }
        auto cfg = parse_kernel_config(*text);
        if (!cfg) {
            tried.push_back(path + ": " + cfg.error().what());
            continue;
        }
        f.config = std::move(*cfg);
        f.config_source = path;
        return;
    }
    std::string why;
    for (const auto& t : tried) why += (why.empty() ? "" : "; ") + t;
    f.config_source = "none (" + why + ")";
}

// The directory to probe: the cache dir, or its nearest existing parent before it is created.
std::string existing_dir(const std::string& dir) {
    std::string d = dir.empty() ? std::string(".") : dir;
    for (;;) {
        struct stat st{};
        if (::stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return d;
        auto slash = d.find_last_of('/');
        if (slash == std::string::npos) return ".";
        if (slash == 0) return "/";
        d.resize(slash);
    }
}

// A file to put a test mark on: unnamed (O_TMPFILE) when the filesystem can, else named and
// unlinked at once.
Result<UniqueFd> scratch_file(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) return UniqueFd(fd);
    std::string path = fmt::format("{}/.erostream-probe-{}", dir, ::getpid());
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return fail_errno("create a test file in " + dir);
    ::unlink(path.c_str());
    return UniqueFd(fd);
}

// "pid 812 (cachefilesd)" for every process with `dev` open; needs root to see other processes.
std::string device_holders(const std::string& dev) {
    std::string out;
    std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
    if (!proc) return out;
    while (dirent* e = ::readdir(proc.get())) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        std::string fddir = fmt::format("/proc/{}/fd", e->d_name);
        std::unique_ptr<DIR, int (*)(DIR*)> fds(::opendir(fddir.c_str()), ::closedir);
        if (!fds) continue;
        bool holds = false;
        while (dirent* fe = ::readdir(fds.get())) {
            if (fe->d_name[0] == '.') continue;
            char target[256];
            ssize_t n = ::readlinkat(::dirfd(fds.get()), fe->d_name, target, sizeof target - 1);
            if (n > 0 && std::string_view(target, static_cast<size_t>(n)) == dev) {
                holds = true;
                break;
            }
        }
        if (!holds) continue;
        std::string comm = "?";
        if (auto c = read_small_file(fmt::format("/proc/{}/comm", e->d_name), 256)) {
            comm = *c;
            while (!comm.empty() && comm.back() == '\n') comm.pop_back();
        }
        out += fmt::format("{}pid {} ({})", out.empty() ? "" : ", ", e->d_name, comm);
    }
    return out;
}

void probe_cachefiles(KernelFacts& f, bool active) {
    const std::string dev = "/dev/cachefiles";
    struct stat st{};
    if (::stat(dev.c_str(), &st) != 0) {
        f.cachefiles_dev.state = DeviceFact::State::absent;
        f.cachefiles_dev.err = errno;
        f.cachefiles_ondemand = {Support::no, "/dev/cachefiles does not exist"};
        return;
    }
    if (!active) {
        f.cachefiles_ondemand.detail = "not probed";
        return;
    }
    UniqueFd fd(::open(dev.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) {
        int err = errno;
        f.cachefiles_dev.err = err;
        if (err == EBUSY) {
            f.cachefiles_dev.state = DeviceFact::State::busy;
            f.cachefiles_dev.holders = device_holders(dev);
            f.cachefiles_ondemand.detail = "/dev/cachefiles is held by another process";
        } else if (err == EPERM || err == EACCES) {
            f.cachefiles_dev.state = DeviceFact::State::no_permission;
            f.cachefiles_ondemand.detail = "opening /dev/cachefiles needs root";
        } else {
            f.cachefiles_dev.state = DeviceFact::State::error;
            f.cachefiles_ondemand.detail = "open /dev/cachefiles: " + errno_text(err);
        }
        return;
    }
    f.cachefiles_dev.state = DeviceFact::State::ok;
    // "bind ondemand" is checked before the cache directory is looked up: a kernel without
    // CONFIG_CACHEFILES_ONDEMAND answers EINVAL, one with it gets as far as looking up the
    // directory, which cannot exist (ENOENT). Nothing is bound; the kernel logs one line that the
    // registration failed. Closing the fd drops the half-configured cache.
    auto command = [&](std::string_view c) -> int {
        ssize_t n = ::write(fd.get(), c.data(), c.size());
        return n == static_cast<ssize_t>(c.size()) ? 0 : errno;
    };
    if (int e = command("dir /proc/self/erostream-ondemand-probe"); e != 0) {
        f.cachefiles_ondemand = {Support::unknown, "cachefiles 'dir' command: " + errno_text(e)};
        return;
    }
    command("tag erostream-probe");
    int e = command("bind ondemand");
    if (e == ENOENT)
        f.cachefiles_ondemand = {Support::yes, "cachefiles accepts 'bind ondemand'"};
    else if (e == EINVAL)
        f.cachefiles_ondemand = {Support::no, "cachefiles refuses 'bind ondemand': built without CONFIG_CACHEFILES_ONDEMAND"};
    else
        f.cachefiles_ondemand = {Support::unknown, "cachefiles 'bind ondemand' probe: " + errno_text(e == 0 ? EIO : e)};
}

// Messages the kernel left on an fs context ("e erofs: fsid option not supported").
std::string fs_context_log(int fsfd) {
    std::string all;
    char buf[512];
    for (;;) {
        ssize_t n = ::read(fsfd, buf, sizeof buf);
        if (n <= 0) break;
        all.append(buf, static_cast<size_t>(n));
        all += '\n';
    }
    return all;
}

void probe_erofs(KernelFacts& f) {
    // EROFS over fscache: without CONFIG_EROFS_FS_ONDEMAND, fsid= is accepted but logged as "not
    // supported" on the fs context (removed kernels may refuse it outright). No mount is made.
    {
        UniqueFd fs(::fsopen("erofs", FSOPEN_CLOEXEC));
        if (!fs) {
            int err = errno;
            ProbeFact p{err == EPERM ? Support::unknown : Support::no,
                        err == ENODEV ? std::string("the kernel has no EROFS (CONFIG_EROFS_FS; module erofs)")
                                      : "fsopen(erofs): " + errno_text(err)};
            f.erofs_ondemand = p;
            f.erofs_file_backed = p;
            return;
        }
        if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, "fsid", "erostream-probe", 0) != 0) {
            f.erofs_ondemand = {Support::no, "EROFS refuses the fsid= option: no EROFS over fscache (CONFIG_EROFS_FS_ONDEMAND): " +
                                                 errno_text(errno)};
        } else {
            std::string log = fs_context_log(fs.get());
            if (log.find("not supported") != std::string::npos)
                f.erofs_ondemand = {Support::no, "EROFS has no fscache mode: built without CONFIG_EROFS_FS_ONDEMAND"};
            else
                f.erofs_ondemand = {Support::yes, "EROFS accepts fsid="};
        }
    }
    // File-backed: give EROFS a regular file (this program) as its source and create the
    // superblock. Without file backing the kernel wants a block device (ENOTBLK); with it, it reads
    // the file and rejects it as no EROFS image (EINVAL), which is the answer we want.
    UniqueFd fs(::fsopen("erofs", FSOPEN_CLOEXEC));
    if (!fs) {
        f.erofs_file_backed = {Support::unknown, "fsopen(erofs): " + errno_text(errno)};
        return;
    }
    if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, "source", "/proc/self/exe", 0) != 0) {
        f.erofs_file_backed = {Support::unknown, "fsconfig(source): " + errno_text(errno)};
        return;
    }
    if (::fsconfig(fs.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) == 0) {
        f.erofs_file_backed = {Support::yes, "EROFS mounts regular files"};
        return;
    }
    int err = errno;
    if (err == ENOTBLK)
        f.erofs_file_backed = {Support::no, "EROFS mounts block devices only: no file-backed mounts (CONFIG_EROFS_FS_BACKED_BY_FILE, Linux 6.12+)"};
    else
        f.erofs_file_backed = {Support::yes, fmt::format("EROFS reads regular files (a non-image was refused: {})", errno_text(err))};
}

void probe_fanotify(KernelFacts& f) {
    int g = ::fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
    if (g < 0) {
        int err = errno;
        if (err == EPERM)
            f.fanotify_pre_content = {Support::unknown, "fanotify_init(FAN_CLASS_PRE_CONTENT) needs root (CAP_SYS_ADMIN)"};
        else if (err == ENOSYS)
            f.fanotify_pre_content = {Support::no, "the kernel has no fanotify (CONFIG_FANOTIFY)"};
        else if (err == EINVAL)
            f.fanotify_pre_content = {Support::no, "fanotify has no permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"};
        else
            f.fanotify_pre_content = {Support::no, "fanotify_init(FAN_CLASS_PRE_CONTENT): " + errno_text(err)};
        return;
    }
    UniqueFd group(g);
    auto file = scratch_file(f.cache_probe_dir);
    if (!file) {
        f.fanotify_pre_content = {Support::unknown, file.error().what()};
        return;
    }
    if (::fanotify_mark(g, FAN_MARK_ADD, fan::kPreAccess, file->get(), nullptr) != 0) {
        f.fanotify_pre_content = {Support::no, fmt::format("fanotify_mark(FAN_PRE_ACCESS) on a file in {} ({}): {}",
                                                           f.cache_probe_dir, f.cache_fs, errno_text(errno))};
        return;
    }
    f.fanotify_pre_content = {Support::yes, fmt::format("FAN_PRE_ACCESS marks work in {}", f.cache_probe_dir)};
}

void probe_io_uring(KernelFacts& f) {
    io_uring ring{};
    int r = io_uring_queue_init(2, &ring, 0);
    if (r == 0) {
        io_uring_queue_exit(&ring);
        f.io_uring = {Support::yes, "io_uring_setup works"};
    } else if (r == -ENOSYS) {
        f.io_uring = {Support::no, "the kernel has no io_uring (CONFIG_IO_URING)"};
    } else if (r == -EPERM) {
        f.io_uring = {Support::no, "io_uring is disabled for this process (sysctl kernel.io_uring_disabled)"};
    } else {
        f.io_uring = {Support::unknown, "io_uring_setup: " + errno_text(-r)};
    }
}

}  // namespace

KernelProbe probe_kernel(const KernelProbeOptions& opts) {
    KernelFacts f;
    utsname u{};
    if (::uname(&u) == 0) f.release = u.release;
    if (auto v = parse_kernel_release(f.release)) f.version = *v;
    read_config(opts, f);
    if (auto t = read_small_file("/proc/filesystems", 1u << 20)) f.filesystems = parse_proc_filesystems(*t);
    f.privileged = ::geteuid() == 0;

    f.cache_dir = opts.cache_dir;
    f.cache_probe_dir = existing_dir(opts.cache_dir);
    struct statfs sf{};
    if (::statfs(f.cache_probe_dir.c_str(), &sf) == 0) f.cache_fs = filesystem_name(static_cast<uint64_t>(sf.f_type));

    struct stat st{};
    f.ublk_control.state = ::stat("/dev/ublk-control", &st) == 0 ? DeviceFact::State::ok : DeviceFact::State::absent;

    probe_io_uring(f);
    probe_cachefiles(f, opts.active_probes);
    if (opts.active_probes) {
        probe_erofs(f);
        probe_fanotify(f);
    } else {
        f.erofs_ondemand.detail = f.erofs_file_backed.detail = f.fanotify_pre_content.detail = "not probed";
    }
    return evaluate_kernel(std::move(f));
}

}  // namespace erostream
