// The control socket's server on the event loop: multishot accept, then per connection io_uring
// recv until one request is complete, the handler, io_uring send of the response, close. One
// request per connection; idle connections are closed after a timeout.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "control_http.h"
#include "event_loop.h"
#include "result.h"
#include "unique_fd.h"

namespace erostream {

class ControlServer {
public:
    using Respond = std::function<void(int status, std::string content_type, std::string body)>;
    using Handler = std::function<void(const ControlRequest& req, const std::string& req_id, Respond respond)>;

    // Listens on `path` (mode 0600; a stale socket file is replaced).
    static Result<std::unique_ptr<ControlServer>> listen(const std::string& path, EventLoop& loop, Handler handler);
    ~ControlServer();
    // Starts accepting on the loop.
    void start();
    // Stops accepting; connections under way finish.
    void stop();
    const std::string& path() const { return path_; }

private:
    struct Conn {
        uint64_t id = 0;
        UniqueFd fd;
        std::string in;
        std::string out;
        size_t sent = 0;
        std::string recv_buf;
        uint64_t timer = 0;
        uint64_t recv_op = 0;
        bool responded = false;
        bool closing = false;
    };
    ControlServer(EventLoop& loop, Handler handler) : loop_(loop), handler_(std::move(handler)) {}
    void on_accept(int res);
    void read_more(Conn& c);
    void on_data(uint64_t id, int res);
    void respond(uint64_t id, int status, std::string content_type, std::string body);
    void send_more(uint64_t id);
    void close(uint64_t id);

    EventLoop& loop_;
    Handler handler_;
    std::string path_;
    UniqueFd listen_fd_;
    uint64_t accept_op_ = 0;
    bool accepting_ = false;
    std::map<uint64_t, std::unique_ptr<Conn>> conns_;
    uint64_t next_conn_ = 1;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace erostream
