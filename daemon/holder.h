// The fd holder: a small process, started by erostreamd (the same binary, `erostreamd --holder`)
// in its own session, that keeps the fanotify group and the cache files' pre-mark fds open while
// daemons come and go. It is the group's only reader: it forwards events to the connected daemon
// and writes the daemon's answers back, so every event's fd number stays valid in one process
// until it is answered. Without a daemon, events wait; after `deny_after` they are answered with
// EIO (never ALLOW: a hole must not read as zeros). docs/daemon.md has the full reasoning.
#pragma once

#include <chrono>
#include <string>

#include "result.h"
#include "unique_fd.h"

namespace erostream {

struct HolderConfig {
    std::string socket_path;
    int ready_fd = -1;  // "READY\n" is written here once the socket listens
    std::chrono::milliseconds deny_after{30000};
    // Without a daemon and with none of the announced mount points mounted, exit after this.
    std::chrono::milliseconds exit_grace{2000};
};

// Runs the holder until it is told to shut down or has nothing left to protect. Returns the exit
// status.
int run_holder(const HolderConfig& cfg);

// The daemon side of starting one: a double fork (the holder is nobody's child, so it outlives
// the daemon and leaves no zombie), a new session (a signal to the daemon's process group does
// not reach it), stdio on /dev/null except stderr on `log_path`, then exec of `exe` with the
// holder flags. Waits until the holder is ready (or says why it is not).
struct HolderSpawn {
    std::string exe = "/proc/self/exe";
    std::string socket_path;
    std::string log_path;
    std::chrono::milliseconds deny_after{30000};
    std::string log_level = "info";
};
Result<void> spawn_holder(const HolderSpawn& s);

}  // namespace erostream
