// What erostreamd and its fd holder say to each other over the holder socket (AF_UNIX,
// SOCK_SEQPACKET: one message per record, fds riding along with SCM_RIGHTS). docs/daemon.md tells
// why the holder exists; in short, it keeps the fanotify group and the cache files' pre-mark fds
// open across daemon deaths, is the group's only reader, and re-sends unanswered events to the
// next daemon.
//
//   daemon -> holder                          holder -> daemon
//   Hello {a: protocol version}               Group [+ fd]      (the fanotify group; no fd when
//                                                                this kernel has none: a = errno)
//                                             Blob + fd, text   (each kept cache-file fd: hex)
//                                             Cachefiles + fd   (/dev/cachefiles, if kept)
//                                             Ready {a: events pending}
//                                             Event ... (pending ones first, then live ones)
//   Blob + fd, text = blob hex   keep this fd (replaces one kept under that hex)
//   Release, text = blob hex     close the kept fd (after the daemon removed the blob's mark)
//   Cachefiles + fd              keep this /dev/cachefiles fd (bound in on-demand mode): while it
//                                is open the kernel keeps the cache and its pending requests, so
//                                that a restarted daemon can `restore` them (fscache front end)
//   Answer {id: event, a: fanotify response}  the holder writes it and closes the event fd
//   Mounts, text = mount points, one per line: while they are mounted the holder must stay
//   Shutdown                     exit now (the daemon stops cleanly and has no mounts)
//
// Event: id = the event's fd number in the holder (what the kernel matches the response by),
// a = st_dev, b = st_ino of the accessed file, c = offset, d = count, e = pid of the reader.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"
#include "unique_fd.h"

namespace erostream {

inline constexpr uint16_t kHolderProtocolVersion = 1;
inline constexpr size_t kHolderMaxMessage = 64 * 1024;

enum class HolderOp : uint16_t {
    Hello = 1,
    Group = 2,
    Blob = 3,
    Ready = 4,
    Event = 5,
    Answer = 6,
    Release = 7,
    Mounts = 8,
    Shutdown = 9,
    Cachefiles = 10,
};

struct HolderMsg {
    HolderOp op = HolderOp::Hello;
    uint64_t id = 0, a = 0, b = 0, c = 0, d = 0, e = 0;
    std::string text;
    bool operator==(const HolderMsg&) const = default;
};

std::string encode_holder_msg(const HolderMsg& m);
// Pure, for fuzzing: a message as received (without its fd).
Result<HolderMsg> decode_holder_msg(std::string_view bytes);

// Sends one message, with `fd` attached unless it is -1. A full socket buffer is an error with
// errno EAGAIN (the socket is non-blocking) and nothing sent.
Result<void> send_holder_msg(int sock, const HolderMsg& m, int fd = -1);

struct ReceivedHolderMsg {
    HolderMsg msg;
    UniqueFd fd;  // the attached fd, if any
};
// Receives one message: nullopt when none is waiting (EAGAIN); an error with errno ECONNRESET
// when the peer is gone. Extra fds beyond one are closed.
Result<std::optional<ReceivedHolderMsg>> recv_holder_msg(int sock);

// One permission event out of a fanotify read buffer.
struct FanEvent {
    int fd = -1;
    uint64_t mask = 0;
    int32_t pid = 0;
    bool has_range = false;
    uint64_t offset = 0, count = 0;
};
// Splits what read(2) on a fanotify group returned. Pure: a malformed record ends the parse with
// an error, after the events before it (their fds must still be answered and closed).
struct FanEvents {
    std::vector<FanEvent> events;
    std::optional<Error> error;
};
FanEvents parse_fanotify_events(std::string_view buf);

// One line of /proc/self/mountinfo, the fields the daemon needs (escapes like \040 decoded).
struct MountInfoEntry {
    std::string mount_point, fstype, source;
};
std::vector<MountInfoEntry> parse_mountinfo(std::string_view text);

}  // namespace erostream
