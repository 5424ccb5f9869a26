// The fanotify pre-content ABI that Debian 12's linux-libc-dev (6.1) lacks. Values and layouts
// are those of the kernel's include/uapi/linux/fanotify.h as of Linux 6.14, where pre-content
// events (FAN_PRE_ACCESS), the range info record and FAN_DENY_ERRNO arrived together; 6.18 (this
// machine) has them unchanged. Everything else comes from <sys/fanotify.h>.
#pragma once

#include <sys/fanotify.h>

#include <cstdint>

namespace erostream::fan {

// Linux 6.14: permission to access a file range before its content is read; the listener may
// fill the range first. Needs a FAN_CLASS_PRE_CONTENT group.
inline constexpr uint64_t kPreAccess = 0x00100000;

// Linux 6.14: info record carried by FAN_PRE_ACCESS events: the range being accessed.
inline constexpr uint8_t kEventInfoTypeRange = 6;
struct event_info_range {
    fanotify_event_info_header hdr;
    uint32_t pad;
    uint64_t offset;
    uint64_t count;
};
static_assert(sizeof(event_info_range) == 24);

// Linux 6.14: FAN_DENY with an errno in the top 8 bits of the response (pre-content groups).
inline constexpr uint32_t kErrnoBits = 8;
inline constexpr uint32_t kErrnoShift = 32 - kErrnoBits;
inline constexpr uint32_t kErrnoMask = (1u << kErrnoBits) - 1;
constexpr uint32_t deny_errno(int err) {
    return FAN_DENY | ((static_cast<uint32_t>(err) & kErrnoMask) << kErrnoShift);
}

}  // namespace erostream::fan
