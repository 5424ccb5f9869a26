#include "unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace erostream {

namespace {
Result<sockaddr_un> address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof a.sun_path)
        return failf("socket path '{}' is empty or longer than {} bytes", path, sizeof a.sun_path - 1);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    return a;
}
}  // namespace

Result<UniqueFd> connect_unix(const std::string& path, int type) {
    sockaddr_un a = EROS_TRY(address(path));
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!fd) return fail_errno("socket");
    while (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        if (errno == EINTR) continue;
        return fail_errno("connect to " + path);
    }
    return fd;
}

Result<UniqueFd> listen_unix(const std::string& path, int type, unsigned mode) {
    sockaddr_un a = EROS_TRY(address(path));
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return fail_errno("socket");
    // The mode applies from the start: no window where the socket is open to everybody.
    mode_t old = ::umask(static_cast<mode_t>(~mode & 0777));
    int r = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    int err = errno;
    ::umask(old);
    if (r != 0 && err == EADDRINUSE) {
        auto probe = connect_unix(path, type);
        if (probe) return fail(fmt::format("{}: something is listening there already", path), EADDRINUSE);
        struct stat st{};
        if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode))
            return fail(fmt::format("{} exists and is not a socket", path), EEXIST);
        ::unlink(path.c_str());
        old = ::umask(static_cast<mode_t>(~mode & 0777));
        r = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
        err = errno;
        ::umask(old);
    }
    if (r != 0) return fail_errno("bind " + path, err);
    if (::chmod(path.c_str(), mode) != 0) return fail_errno("chmod " + path);
    if (::listen(fd.get(), 64) != 0) return fail_errno("listen " + path);
    return fd;
}

}  // namespace erostream
