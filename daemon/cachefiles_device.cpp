#include "cachefiles_device.h"

#include <fcntl.h>
#include <unistd.h>

namespace erostream {

Result<void> cachefiles_command(int fd, std::string_view cmd) {
    for (;;) {
        ssize_t n = ::write(fd, cmd.data(), cmd.size());
        if (n == static_cast<ssize_t>(cmd.size())) return {};
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno(fmt::format("cachefiles command '{}'", cmd));
        return failf("cachefiles command '{}': {} of {} bytes taken", cmd, n, cmd.size());
    }
}

Result<UniqueFd> bind_cachefiles_ondemand(const std::string& dir, const std::string& tag, const std::string& device) {
    int fd = ::open(device.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == EBUSY)
            return fail_errno(fmt::format("{} is held by another process (cachefilesd, or another erostreamd); the "
                                          "fscache front end needs it for itself",
                                          device),
                              e);
        if (e == ENOENT || e == ENODEV || e == ENXIO)
            return fail_errno(fmt::format("{}: this kernel has no cachefiles (CONFIG_CACHEFILES)", device), e);
        return fail_errno("open " + device, e);
    }
    UniqueFd dev(fd);
    EROS_TRYV(cachefiles_command(dev.get(), "dir " + dir));
    EROS_TRYV(cachefiles_command(dev.get(), "tag " + tag));
    auto b = cachefiles_command(dev.get(), "bind ondemand");
    if (!b) {
        Error e = b.error();
        if (e.err == EINVAL)
            e.prefix("this kernel's cachefiles has no on-demand mode (CONFIG_CACHEFILES_ONDEMAND)");
        else
            e.prefix(fmt::format("bind the cache in {} (a disk filesystem with xattrs: ext4, xfs, btrfs)", dir));
        return std::unexpected(e);
    }
    return dev;
}

}  // namespace erostream
