// Sending HTTP requests: the interface the registry client drives (one request at a time, the
// response body pulled as a stream), and run_flow(), the blocking driver of a RequestFlow.
#pragma once

#include <chrono>
#include <expected>
#include <functional>
#include <memory>

#include "http_types.h"
#include "request_flow.h"
#include "result.h"

namespace erostream {

// One request in flight. The body is pulled: nothing is buffered beyond what libcurl hands over in
// one callback, so a slow consumer slows the download instead of filling memory.
class HttpExchange {
public:
    virtual ~HttpExchange() = default;
    // Waits for the response status and headers.
    virtual std::expected<HttpResponse, TransportError> head() = 0;
    // Reads up to n body bytes; 0 at the end. A body cut short is a Truncated error.
    virtual std::expected<size_t, TransportError> read(void* buf, size_t n) = 0;
};

class HttpTransport {
public:
    virtual ~HttpTransport() = default;
    virtual std::expected<std::unique_ptr<HttpExchange>, TransportError> start(const HttpRequest& req) = 0;
};

struct FlowOutcome {
    HttpResponse response;                // the final response; body filled if buffered
    std::unique_ptr<HttpExchange> stream;  // the live body when not buffered (null otherwise)
    std::optional<std::string> storage_url;
    bool direct_url_failed = false;
    bool fell_back_to_http = false;
};

// Buffered bodies larger than this are refused (manifests are limited to 4 MiB by the spec).
inline constexpr size_t kMaxBufferedBody = 16u << 20;

// Runs a flow to its end with blocking sends and sleeps. `sleep` defaults to this thread's sleep.
Result<FlowOutcome> run_flow(HttpTransport& transport, RequestFlow& flow,
                             const std::function<void(std::chrono::milliseconds)>& sleep = nullptr);

}  // namespace erostream
