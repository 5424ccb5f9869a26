// The daemon's end of the holder connection. At start-up (blocking, before the loop runs) it
// connects to the holder, starting one if none listens, says Hello and takes what the holder
// kept: the fanotify group and the cache-file fds. Then, on the loop, it delivers events and
// sends answers and fd registrations; a full socket buffer queues them.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "event_loop.h"
#include "holder.h"
#include "holder_protocol.h"
#include "result.h"
#include "unique_fd.h"

namespace erostream {

class HolderLink {
public:
    struct Handover {
        UniqueFd group;         // none when the kernel refused the holder a fanotify group
        int group_errno = 0;    // ... and why
        std::map<std::string, UniqueFd> blobs;  // blob hex -> fd opened before its mark
        UniqueFd cachefiles;    // /dev/cachefiles a previous daemon bound, if the holder kept it
        uint64_t pending_events = 0;
        bool spawned = false;  // a new holder: nothing was kept, no mark exists in its group
    };

    // Connects (spawning the holder when nobody listens) and takes the handover.
    static Result<std::pair<std::unique_ptr<HolderLink>, Handover>> attach(const HolderSpawn& spawn);
    // After the holder died: attach to a new one (blocking) and keep delivering on the same loop.
    Result<Handover> reattach(const HolderSpawn& spawn);

    // Starts delivering events on the loop. on_lost runs once if the holder goes away.
    void start(EventLoop& loop, std::function<void(const HolderMsg&)> on_event, std::function<void(const Error&)> on_lost);
    // Queues a message (with a dup of fd, when given) for the holder.
    void send(HolderMsg m, int fd = -1);
    void answer(uint64_t event_id, uint32_t response);
    bool connected() const { return static_cast<bool>(sock_); }
    // Blocking flush of what is queued, for shutdown.
    void flush_blocking();

private:
    static Result<std::pair<UniqueFd, Handover>> handover(const HolderSpawn& spawn);
    struct Outgoing {
        HolderMsg msg;
        UniqueFd fd;
    };
    void flush();
    void lost(const Error& e);
    void on_readable();

    UniqueFd sock_;
    EventLoop* loop_ = nullptr;
    uint64_t watch_ = 0;
    uint64_t out_watch_ = 0;
    std::deque<Outgoing> outbox_;
    std::function<void(const HolderMsg&)> on_event_;
    std::function<void(const Error&)> on_lost_;
};

}  // namespace erostream
