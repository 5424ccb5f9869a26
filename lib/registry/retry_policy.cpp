#include "retry_policy.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace erostream {

namespace {

std::optional<uint64_t> env_number(const std::function<const char*(const char*)>& getenv, const char* name) {
    const char* v = getenv ? getenv(name) : std::getenv(name);
    if (!v || !*v) return std::nullopt;
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(v, v + std::strlen(v), n);
    if (ec != std::errc() || *p != '\0') return std::nullopt;
    return n;
}

}  // namespace

RetryPolicy RetryPolicy::from_env(const std::function<const char*(const char*)>& getenv) {
    RetryPolicy p;
    if (auto n = env_number(getenv, "EROSTREAM_RETRY_MAX")) p.max_retries = static_cast<unsigned>(std::min<uint64_t>(*n, 100));
    if (auto n = env_number(getenv, "EROSTREAM_RETRY_BASE_MS")) {
        p.base = std::chrono::milliseconds(std::min<uint64_t>(*n, 600000));
        p.cap = std::max(p.cap, p.base);
    }
    return p;
}

std::chrono::milliseconds RetryPolicy::delay(unsigned attempt, double random01,
                                             std::optional<std::chrono::milliseconds> retry_after) const {
    random01 = std::clamp(random01, 0.0, 1.0);
    // base * 2^attempt without overflow: past 2^30 the cap has long been reached
    double ceiling = static_cast<double>(base.count()) * std::ldexp(1.0, static_cast<int>(std::min(attempt, 30u)));
    ceiling = std::min(ceiling, static_cast<double>(cap.count()));
    auto d = std::chrono::milliseconds(static_cast<int64_t>(ceiling * random01));
    if (retry_after) d = std::max(d, std::min(*retry_after, retry_after_cap));
    return d;
}

bool is_retryable_status(int status) {
    if (status == 408 || status == 429) return true;
    return status >= 500 && status <= 599 && status != 501 && status != 505;
}

bool is_retryable_transport(TransportErrorKind k, bool idempotent) {
    switch (k) {
    case TransportErrorKind::Connect: return true;
    case TransportErrorKind::Timeout:
    case TransportErrorKind::Truncated:
    case TransportErrorKind::Network: return idempotent;
    case TransportErrorKind::Tls:
    case TransportErrorKind::Other: return false;
    }
    return false;
}

bool is_idempotent_method(std::string_view m) {
    return m == "GET" || m == "HEAD" || m == "PUT" || m == "DELETE" || m == "OPTIONS";
}

}  // namespace erostream
