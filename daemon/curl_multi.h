// libcurl's multi interface driven by the daemon's event loop: libcurl tells us which sockets to
// watch (CURLMOPT_SOCKETFUNCTION -> EventLoop::watch_fd_level) and when to wake it
// (CURLMOPT_TIMERFUNCTION -> EventLoop::add_timer); readiness and timeouts go back in through
// curl_multi_socket_action, and finished transfers are collected with curl_multi_info_read after
// every action. Nothing here blocks and no thread is started on the loop's behalf (names are
// resolved by libcurl's threaded resolver, which reports through a socket like any other).
//
// One HTTP exchange per transfer, without redirects: the caller (a RequestFlow) decides where a
// redirect goes and which headers follow it. Response bodies are buffered in memory as far as the
// caller's BodyPlan says, decided once the final status is known.
#pragma once

#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>

#include "registry/curl_transport.h"
#include "event_loop.h"
#include "registry/http_types.h"
#include "result.h"

namespace erostream {

struct CurlMultiOptions {
    // Connections open at once to one host (CURLMOPT_MAX_HOST_CONNECTIONS); transfers beyond it
    // wait inside libcurl for a free connection.
    unsigned max_host_connections = 8;
    // Idle connections kept for reuse (CURLMOPT_MAXCONNECTS).
    unsigned max_cached_connections = 32;
    CurlOptions curl;  // timeouts, user agent, proxy environment
};

// How much of a response body a transfer keeps, decided from the response head.
struct BodyPlan {
    enum class Overflow {
        Truncate,  // drop the rest, the transfer still succeeds (error bodies: the status matters)
        Fail,      // the transfer fails: the server sent more than it should have
        Stop,      // end the transfer with what was kept (the rest of a whole blob is not wanted)
    };
    uint64_t skip = 0;          // leading body bytes dropped
    uint64_t keep = 64u << 10;  // body bytes kept after them
    Overflow overflow = Overflow::Truncate;
};

struct TransferResult {
    std::expected<HttpResponse, TransportError> response;
    uint64_t body_bytes = 0;  // body bytes received from the network, dropped ones included
};

class CurlMulti {
public:
    using Planner = std::function<BodyPlan(const HttpResponse& head)>;
    using Done = std::function<void(TransferResult)>;

    static Result<std::unique_ptr<CurlMulti>> create(EventLoop& loop, CurlMultiOptions opt);
    // Fails what is still running (shutdown), then releases libcurl's handles, watches and timer.
    ~CurlMulti();
    CurlMulti(const CurlMulti&) = delete;
    CurlMulti& operator=(const CurlMulti&) = delete;

    // Sends `req`. `done` runs on the loop thread exactly once, never before start() returned,
    // unless cancel(id) comes first. `plan` (null: keep 64 KiB, truncate) sees the final head.
    uint64_t start(const HttpRequest& req, Planner plan, Done done);
    // Abandons transfer `id`: its done never runs.
    void cancel(uint64_t id);
    // Ends every transfer now: each done runs with an error saying `why`; transfers started
    // later fail the same way (asynchronously).
    void shutdown(const std::string& why);

    size_t active() const { return transfers_.size(); }
    const CurlMultiOptions& options() const { return opt_; }

    struct Transfer;

private:
    CurlMulti(EventLoop& loop, CurlMultiOptions opt);
    static int on_socket(void* easy, int fd, int what, void* self, void* socketp);
    static int on_timer(void* multi, long timeout_ms, void* self);
    void socket_ready(int fd, int revents);
    void timer_fired();
    void action(int fd, int mask);
    void collect();
    void fail_later(uint64_t id, TransportError e, Done done);
    const std::string* ca_blob(const std::vector<std::string>& files, std::string* error);

    struct Watch {
        uint64_t id = 0;
        unsigned events = 0;
    };

    EventLoop& loop_;
    CurlMultiOptions opt_;
    void* multi_ = nullptr;  // CURLM*
    uint64_t next_id_ = 1;
    std::unordered_map<uint64_t, std::unique_ptr<Transfer>> transfers_;
    std::set<uint64_t> failing_;  // transfers that failed before they started; done is posted
    std::unordered_map<int, Watch> sockets_;
    uint64_t timer_ = 0;
    bool closing_ = false;
    std::string closing_why_;
    std::map<std::string, std::string> ca_blobs_;  // joined CA files, by their list
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace erostream
