// When to try a registry request again and how long to wait first: capped exponential backoff with
// full jitter (a random delay in [0, min(cap, base * 2^attempt)]), so that many nodes failing at
// once do not come back at once; Retry-After from the server wins when it says more (capped too).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "http_types.h"

namespace erostream {

struct RetryPolicy {
    unsigned max_retries = 5;                       // EROSTREAM_RETRY_MAX
    std::chrono::milliseconds base{200};            // EROSTREAM_RETRY_BASE_MS
    std::chrono::milliseconds cap{10000};           // backoff never waits longer than this
    std::chrono::milliseconds retry_after_cap{60000};  // nor does a server's Retry-After

    // Reads EROSTREAM_RETRY_MAX and EROSTREAM_RETRY_BASE_MS through `getenv` (std::getenv by
    // default); invalid values keep the defaults.
    static RetryPolicy from_env(const std::function<const char*(const char*)>& getenv = nullptr);

    // The wait before retry number `attempt` (0 = the first retry). `random01` is a uniform
    // random number in [0, 1); `retry_after` is the server's Retry-After, if any.
    std::chrono::milliseconds delay(unsigned attempt, double random01,
                                    std::optional<std::chrono::milliseconds> retry_after) const;
};

// Statuses worth another try: 408, 429 and 5xx except 501 Not Implemented and 505.
bool is_retryable_status(int status);
// Transport failures worth another try. For a request that is not idempotent only failures that
// guarantee nothing reached the server qualify.
bool is_retryable_transport(TransportErrorKind k, bool idempotent);
// GET, HEAD, PUT, DELETE, OPTIONS.
bool is_idempotent_method(std::string_view method);

}  // namespace erostream
