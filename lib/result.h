// Errors as values at library boundaries: every failure keeps the errno (when there is one) and a
// reason a person can act on ("layer 2 (sha256:ab..): entry usr/bin/x: truncated gzip stream").
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace erostream {

struct Error {
    int err = 0;          // errno, 0 when the failure is not a system call's
    std::string message;  // what failed and where; never contains secrets

    std::string what() const {
        if (err == 0) return message;
        return fmt::format("{}: {}", message, std::strerror(err));
    }
    // Adds context in front: "layer 2: " + "entry x: bad checksum".
    Error& prefix(std::string_view ctx) {
        message = fmt::format("{}: {}", ctx, message);
        return *this;
    }
};

template <class T = void>
using Result = std::expected<T, Error>;

inline std::unexpected<Error> fail(std::string message, int err = 0) {
    return std::unexpected(Error{err, std::move(message)});
}
template <class... Args>
std::unexpected<Error> failf(fmt::format_string<Args...> f, Args&&... args) {
    return std::unexpected(Error{0, fmt::format(f, std::forward<Args>(args)...)});
}
// For a failed system call: keeps errno.
inline std::unexpected<Error> fail_errno(std::string message, int err = errno) {
    return std::unexpected(Error{err, std::move(message)});
}

}  // namespace erostream

// Propagates an error from an expression returning Result<T>; yields the value otherwise.
#define EROS_TRY(expr)                                                   \
    ({                                                                   \
        auto eros_try_r_ = (expr);                                       \
        if (!eros_try_r_) return std::unexpected(std::move(eros_try_r_.error())); \
        std::move(*eros_try_r_);                                         \
    })
#define EROS_TRYV(expr)                                                  \
    do {                                                                 \
        auto eros_try_r_ = (expr);                                       \
        if (!eros_try_r_) return std::unexpected(std::move(eros_try_r_.error())); \
    } while (0)
