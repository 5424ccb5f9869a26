// The plain data a registry exchange is made of: requests, response heads, header lists. Shared by
// the decision logic (request_flow.h), which never does I/O, and the drivers that send the bytes
// (curl_transport.h today, a libcurl-multi driver inside the daemon's event loop later).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "result.h"

namespace erostream {

// Header names compare case-insensitively; order and repeats are kept (WWW-Authenticate, Link).
class HttpHeaders {
public:
    void add(std::string name, std::string value) {
        items_.emplace_back(std::move(name), std::move(value));
    }
    void set(std::string_view name, std::string value);  // replaces every earlier value
    void remove(std::string_view name);
    std::optional<std::string_view> get(std::string_view name) const;  // the first value
    std::vector<std::string_view> get_all(std::string_view name) const;
    bool has(std::string_view name) const { return get(name).has_value(); }
    const std::vector<std::pair<std::string, std::string>>& items() const { return items_; }
    void clear() { items_.clear(); }

private:
    std::vector<std::pair<std::string, std::string>> items_;
};

bool iequals(std::string_view a, std::string_view b);

// A request body that can be sent again from its start (retries, redirects): bytes held in memory,
// or a window of a file read with pread.
struct HttpBody {
    std::string bytes;
    int fd = -1;  // borrowed; when >= 0 the body is [offset, offset+length) of this file
    uint64_t offset = 0;
    uint64_t length = 0;

    static HttpBody from_bytes(std::string b) {
        HttpBody h;
        h.bytes = std::move(b);
        return h;
    }
    static HttpBody from_file(int fd, uint64_t offset, uint64_t length) {
        HttpBody h;
        h.fd = fd;
        h.offset = offset;
        h.length = length;
        return h;
    }
    uint64_t size() const { return fd >= 0 ? length : bytes.size(); }
    // Copies up to n bytes starting at body position pos; 0 at the end.
    Result<size_t> read_at(uint64_t pos, void* buf, size_t n) const;
};

struct HttpRequest {
    std::string method = "GET";
    std::string url;  // absolute
    HttpHeaders headers;
    std::optional<HttpBody> body;  // PUT/POST/PATCH; none: no request body at all
    // TLS for this request's host: a registry endpoint's settings never apply to other hosts.
    bool verify_tls = true;
    std::vector<std::string> ca_files;
    // Open a new connection instead of reusing a pooled one (after a transport failure the pooled
    // connections to that host are suspect).
    bool fresh_connection = false;
};

struct HttpResponse {
    int status = 0;
    HttpHeaders headers;
    std::string body;  // filled only when the body was asked to be buffered
    std::string url;   // the URL this response came from
};

// How a transfer failed below HTTP. The kind decides retries and the insecure http fallback.
enum class TransportErrorKind {
    Connect,    // refused, unreachable, DNS: nothing was sent
    Timeout,    // connect timeout or a transfer slower than the low-speed limit
    Tls,        // handshake or certificate failure
    Truncated,  // the connection closed before the body was complete
    Network,    // send/receive failure after the request went out
    Other,      // bad URL, out of memory, aborted by us: not retried
};

struct TransportError {
    TransportErrorKind kind = TransportErrorKind::Other;
    std::string message;  // never holds a URL's query string (signed URLs carry secrets there)
    // Requests libcurl sent again on its own (a reused connection that turned out dead): they
    // count against the retry budget like the flow's own retries.
    unsigned extra_attempts = 0;
};

const char* transport_error_kind_name(TransportErrorKind k);

}  // namespace erostream
