// The blocking HttpTransport over libcurl. Each request runs on a "channel": one easy handle in
// its own multi handle, pumped by the reader (so the response body is pulled, and a slow consumer
// applies back-pressure by pausing the transfer). Idle channels are pooled and keep their
// connections open for the next request. DNS answers and TLS sessions are shared between channels
// through a CURLSH; the connection cache is not, because libcurl does not support sharing it
// between concurrently running threads and layers are downloaded from several threads at once.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "transport.h"
#include "url.h"

namespace erostream {

struct CurlOptions {
    std::chrono::milliseconds connect_timeout{15000};
    // A transfer slower than low_speed_limit bytes/s for low_speed_time is a timeout (a stalled
    // connection); there is no total timeout, layers can be large.
    long low_speed_limit = 1024;
    std::chrono::seconds low_speed_time{30};
    std::string user_agent = "erostream/0.1";
    // Environment lookups (proxies); std::getenv when empty.
    std::function<const char*(const char*)> getenv;
};

// The proxy to use for `url` according to the environment, "" for none: http_proxy/HTTP_PROXY for
// http, https_proxy/HTTPS_PROXY for https, all_proxy/ALL_PROXY otherwise, unless no_proxy/NO_PROXY
// ("*", host names matching by suffix, IP addresses, IPv4 CIDR ranges, optional ":port") excludes
// the host. Lowercase wins over uppercase, as in libcurl; unlike libcurl, HTTP_PROXY in upper
// case is honoured too (this is no CGI program, which is why libcurl ignores it).
std::string select_proxy(const Url& url, const std::function<const char*(const char*)>& getenv);

// What a libcurl result code (a CURLcode, as int so that this header needs no curl.h) means for
// retries: `got_headers` tells a body cut short from a request that never got an answer.
TransportErrorKind curl_error_kind(int curl_code, bool got_headers);

class CurlTransport final : public HttpTransport {
public:
    explicit CurlTransport(CurlOptions opt = {});
    ~CurlTransport() override;
    CurlTransport(const CurlTransport&) = delete;
    CurlTransport& operator=(const CurlTransport&) = delete;

    std::expected<std::unique_ptr<HttpExchange>, TransportError> start(const HttpRequest& req) override;

    struct Channel;
    struct Share;

private:
    friend class CurlExchange;
    std::unique_ptr<Channel> acquire();
    void release(std::unique_ptr<Channel> ch);

    CurlOptions opt_;
    std::unique_ptr<Share> share_;
    std::mutex pool_mu_;
    std::vector<std::unique_ptr<Channel>> idle_;
};

}  // namespace erostream
