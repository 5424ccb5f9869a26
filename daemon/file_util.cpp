#include "file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "unique_fd.h"

namespace erostream {

Result<std::string> read_small_file(const std::string& path, size_t max_size) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return fail_errno("open " + path);
    // Read to EOF rather than trust st_size: files under /proc report 0.
    std::string out;
    char buf[65536];
    for (;;) {
        ssize_t r = ::read(fd.get(), buf, sizeof buf);
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read " + path);
        }
        if (r == 0) break;
        if (out.size() + static_cast<size_t>(r) > max_size)
            return failf("{}: more than the {} bytes allowed", path, max_size);
        out.append(buf, static_cast<size_t>(r));
    }
    return out;
}

Result<void> pwrite_all(int fd, const void* data, size_t n, uint64_t off) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (w < 0) {
            if (errno == EINTR) continue;
            return fail_errno("write");
        }
        if (w == 0) return fail("write: no progress", EIO);
        p += w;
        n -= static_cast<size_t>(w);
        off += static_cast<uint64_t>(w);
    }
    return {};
}

Result<void> replace_file(const std::string& path, std::string_view bytes, unsigned mode) {
    std::string tmp = path + ".tmp";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd) return fail_errno("create " + tmp);
    auto w = pwrite_all(fd.get(), bytes.data(), bytes.size(), 0);
    if (!w) {
        ::unlink(tmp.c_str());
        return std::unexpected(w.error().prefix(tmp));
    }
    if (::fsync(fd.get()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return fail_errno("fsync " + tmp, e);
    }
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return fail_errno("rename " + tmp, e);
    }
    size_t slash = path.find_last_of('/');
    std::string dir = slash == std::string::npos ? std::string(".") : path.substr(0, std::max<size_t>(slash, 1));
    UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd) ::fsync(dfd.get());
    return {};
}

Result<void> make_dirs(const std::string& path, unsigned mode) {
    if (path.empty()) return fail("empty directory path");
    size_t pos = 0;
    while (pos != std::string::npos) {
        pos = path.find('/', pos + 1);
        std::string part = path.substr(0, pos);
        if (part.empty()) continue;
        if (::mkdir(part.c_str(), mode) != 0 && errno != EEXIST) return fail_errno("mkdir " + part);
    }
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return fail_errno("stat " + path);
    if (!S_ISDIR(st.st_mode)) return failf("{} is not a directory", path);
    return {};
}

}  // namespace erostream
