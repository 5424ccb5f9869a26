#include "control_server.h"

#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "unix_socket.h"

namespace erostream {

namespace {
constexpr size_t kMaxBody = 1u << 20;
constexpr size_t kMaxConns = 256;
constexpr auto kIdleTimeout = std::chrono::seconds(30);
}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::listen(const std::string& path, EventLoop& loop, Handler handler) {
    std::unique_ptr<ControlServer> s(new ControlServer(loop, std::move(handler)));
    s->path_ = path;
    s->listen_fd_ = EROS_TRY(listen_unix(path, SOCK_STREAM, 0600));
    return s;
}

ControlServer::~ControlServer() { *alive_ = false; }

void ControlServer::start() {
    accepting_ = true;
    std::weak_ptr<bool> alive = alive_;
    int fd = listen_fd_.get();
    accept_op_ = loop_.submit_multishot(
        [fd](io_uring_sqe* sqe) { io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC); },
        [this, alive](int res, uint32_t flags) {
            if (alive.expired()) {
                if (res >= 0) ::close(res);
                return;
            }
            on_accept(res);
            if (!(flags & IORING_CQE_F_MORE) && accepting_) {
                // The kernel ended the multishot accept (an error or overflow): accept again.
                accept_op_ = 0;
                start();
            }
        });
}

void ControlServer::stop() {
    accepting_ = false;
    if (accept_op_) loop_.cancel(accept_op_);
    accept_op_ = 0;
}

void ControlServer::on_accept(int res) {
    if (res < 0) {
        if (res != -ECANCELED) spdlog::warn("control socket accept: {}", std::strerror(-res));
        return;
    }
    UniqueFd fd(res);
    if (!accepting_ || conns_.size() >= kMaxConns) return;
    auto c = std::make_unique<Conn>();
    c->id = next_conn_++;
    c->fd = std::move(fd);
    c->recv_buf.resize(16 * 1024);
    Conn& ref = *c;
    conns_[c->id] = std::move(c);
    std::weak_ptr<bool> alive = alive_;
    uint64_t id = ref.id;
    ref.timer = loop_.add_timer(kIdleTimeout, [this, alive, id] {
        if (alive.expired()) return;
        auto it = conns_.find(id);
        if (it == conns_.end() || it->second->responded) return;
        it->second->timer = 0;
        spdlog::warn("control connection {}: no complete request within {} s, closed", id, kIdleTimeout.count());
        close(id);
    });
    read_more(ref);
}

void ControlServer::read_more(Conn& c) {
    std::weak_ptr<bool> alive = alive_;
    uint64_t id = c.id;
    int fd = c.fd.get();
    char* buf = c.recv_buf.data();
    size_t len = c.recv_buf.size();
    c.recv_op = loop_.submit([fd, buf, len](io_uring_sqe* sqe) { io_uring_prep_recv(sqe, fd, buf, len, 0); },
                             [this, alive, id](int res, uint32_t) {
                                 if (alive.expired()) return;
                                 on_data(id, res);
                             });
}

void ControlServer::on_data(uint64_t id, int res) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    c.recv_op = 0;
    if (res <= 0 || c.closing) {
        if (c.timer) loop_.cancel(c.timer);
        conns_.erase(it);
        return;
    }
    c.in.append(c.recv_buf.data(), static_cast<size_t>(res));
    ControlParse p = parse_control_request(c.in, kMaxBody);
    if (p.state == ControlParse::State::NeedMore) {
        read_more(c);
        return;
    }
    if (c.timer) loop_.cancel(c.timer);
    c.timer = 0;
    std::string req_id = fmt::format("http-{}", id);
    if (p.state == ControlParse::State::Bad) {
        spdlog::warn("[{}] bad request: {}", req_id, p.error);
        nlohmann::json j;
        j["error"] = p.error;
        j["request_id"] = req_id;
        std::string body = j.dump();
        respond(id, p.status, "application/json", body);
        return;
    }
    std::weak_ptr<bool> alive = alive_;
    handler_(p.request, req_id, [this, alive, id](int status, std::string ct, std::string body) {
        if (alive.expired()) return;
        respond(id, status, std::move(ct), std::move(body));
    });
}

void ControlServer::respond(uint64_t id, int status, std::string content_type, std::string body) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    if (c.responded) return;
    c.responded = true;
    c.out = http_response(status, content_type, body);
    c.sent = 0;
    send_more(id);
}

void ControlServer::send_more(uint64_t id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    if (c.sent >= c.out.size()) {
        close(id);
        return;
    }
    std::weak_ptr<bool> alive = alive_;
    int fd = c.fd.get();
    const char* p = c.out.data() + c.sent;
    size_t n = c.out.size() - c.sent;
    loop_.submit([fd, p, n](io_uring_sqe* sqe) { io_uring_prep_send(sqe, fd, p, n, MSG_NOSIGNAL); },
                 [this, alive, id](int res, uint32_t) {
                     if (alive.expired()) return;
                     auto it = conns_.find(id);
                     if (it == conns_.end()) return;
                     if (res <= 0) {
                         close(id);
                         return;
                     }
                     it->second->sent += static_cast<size_t>(res);
                     send_more(id);
                 });
}

void ControlServer::close(uint64_t id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    if (c.timer) loop_.cancel(c.timer);
    c.timer = 0;
    if (c.recv_op) {
        // The kernel still holds the receive buffer: on_data closes once that op has ended.
        loop_.cancel(c.recv_op);
        c.closing = true;
        c.responded = true;
        return;
    }
    conns_.erase(it);
}

}  // namespace erostream
