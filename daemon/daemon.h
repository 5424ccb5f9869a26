// erostreamd put together: start-up checks, the holder, the loop, the pools, the scheduler, the
// front end, the mount manager and the control API; shutdown.
#pragma once

#include "daemon_config.h"

namespace erostream {

// Runs the daemon until SIGTERM/SIGINT. `ready_fd` (or -1) gets "READY\n" once the control
// socket accepts. Returns the process exit status (0 after a clean stop).
int run_daemon(const DaemonConfig& cfg, int ready_fd);

// The cache directory must be on a filesystem whose files fanotify pre-content events work on
// and that keeps sparse files sparse: ext4, xfs or btrfs. Returns the filesystem's name.
Result<std::string> check_cache_filesystem(const std::string& dir);

}  // namespace erostream
