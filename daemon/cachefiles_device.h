// /dev/cachefiles, the cachefiles kernel module's control device, set up for on-demand mode:
// open (one opener at a time in the whole system: EBUSY means cachefilesd or another erostreamd
// has it), `dir <cache dir>`, `tag <name>`, `bind ondemand`. Blocking; start-up only. The fd then
// stays with erostreamd and, for restarts, with its holder (docs/daemon.md).
#pragma once

#include <string>
#include <string_view>

#include "result.h"
#include "unique_fd.h"

namespace erostream {

inline constexpr const char* kCachefilesDevice = "/dev/cachefiles";

// `dir` must exist and be on a disk filesystem (cachefiles refuses tmpfs).
Result<UniqueFd> bind_cachefiles_ondemand(const std::string& dir, const std::string& tag,
                                          const std::string& device = kCachefilesDevice);

// One command, one write(2).
Result<void> cachefiles_command(int fd, std::string_view cmd);

}  // namespace erostream
