#include "http_types.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace erostream {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

void HttpHeaders::set(std::string_view name, std::string value) {
    remove(name);
    add(std::string(name), std::move(value));
}

void HttpHeaders::remove(std::string_view name) {
    std::erase_if(items_, [&](const auto& kv) { return iequals(kv.first, name); });
}

std::optional<std::string_view> HttpHeaders::get(std::string_view name) const {
    for (const auto& [k, v] : items_)
        if (iequals(k, name)) return std::string_view(v);
    return std::nullopt;
}

std::vector<std::string_view> HttpHeaders::get_all(std::string_view name) const {
    std::vector<std::string_view> out;
    for (const auto& [k, v] : items_)
        if (iequals(k, name)) out.emplace_back(v);
    return out;
}

Result<size_t> HttpBody::read_at(uint64_t pos, void* buf, size_t n) const {
    uint64_t total = size();
    if (pos >= total) return 0;
    n = static_cast<size_t>(std::min<uint64_t>(n, total - pos));
    if (fd < 0) {
        std::memcpy(buf, bytes.data() + pos, n);
        return n;
    }
    for (;;) {
        ssize_t r = ::pread(fd, buf, n, static_cast<off_t>(offset + pos));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail_errno("reading the request body");
        if (r == 0) return fail("request body file is shorter than expected");
        return static_cast<size_t>(r);
    }
}

const char* transport_error_kind_name(TransportErrorKind k) {
    switch (k) {
    case TransportErrorKind::Connect: return "connect";
    case TransportErrorKind::Timeout: return "timeout";
    case TransportErrorKind::Tls: return "tls";
    case TransportErrorKind::Truncated: return "truncated";
    case TransportErrorKind::Network: return "network";
    case TransportErrorKind::Other: return "other";
    }
    return "other";
}

}  // namespace erostream
