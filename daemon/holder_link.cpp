#include "holder_link.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include "unix_socket.h"

namespace erostream {

namespace {
// Waits for one message during the (blocking) handover.
Result<ReceivedHolderMsg> recv_blocking(int sock, int timeout_ms) {
    for (;;) {
        auto r = recv_holder_msg(sock);
        if (!r) return std::unexpected(r.error());
        if (*r) return std::move(**r);
        pollfd p{sock, POLLIN, 0};
        int n = ::poll(&p, 1, timeout_ms);
        if (n == 0) return fail("the holder did not answer within the time allowed", ETIMEDOUT);
        if (n < 0 && errno != EINTR) return fail_errno("poll holder socket");
    }
}
}  // namespace

Result<std::pair<std::unique_ptr<HolderLink>, HolderLink::Handover>> HolderLink::attach(const HolderSpawn& spawn) {
    auto [sock, h] = EROS_TRY(handover(spawn));
    auto link = std::unique_ptr<HolderLink>(new HolderLink());
    link->sock_ = std::move(sock);
    return std::make_pair(std::move(link), std::move(h));
}

Result<HolderLink::Handover> HolderLink::reattach(const HolderSpawn& spawn) {
    auto [sock, h] = EROS_TRY(handover(spawn));
    sock_ = std::move(sock);
    outbox_.clear();
    if (loop_) start(*loop_, on_event_, on_lost_);
    return std::move(h);
}

Result<std::pair<UniqueFd, HolderLink::Handover>> HolderLink::handover(const HolderSpawn& spawn) {
    Handover h;
    auto conn = connect_unix(spawn.socket_path, SOCK_SEQPACKET);
    if (!conn && (conn.error().err == ENOENT || conn.error().err == ECONNREFUSED)) {
        spdlog::info("no fd holder at {}: starting one", spawn.socket_path);
        EROS_TRYV(spawn_holder(spawn));
        h.spawned = true;
        conn = connect_unix(spawn.socket_path, SOCK_SEQPACKET);
    }
    if (!conn) return std::unexpected(conn.error().prefix("fd holder"));
    UniqueFd sock = std::move(*conn);
    int fl = ::fcntl(sock.get(), F_GETFL);
    ::fcntl(sock.get(), F_SETFL, fl | O_NONBLOCK);
    HolderMsg hello;
    hello.op = HolderOp::Hello;
    hello.a = kHolderProtocolVersion;
    EROS_TRYV(send_holder_msg(sock.get(), hello));
    for (;;) {
        auto m = recv_blocking(sock.get(), 10000);
        if (!m) {
            if (m.error().err == ECONNRESET)
                return fail(fmt::format("the fd holder at {} closed the connection: another erostreamd is attached to it",
                                        spawn.socket_path), EBUSY);
            return std::unexpected(m.error().prefix("fd holder handover"));
        }
        switch (m->msg.op) {
        case HolderOp::Group:
            h.group = std::move(m->fd);
            h.group_errno = static_cast<int>(m->msg.a);
            if (!h.group && h.group_errno == 0) return fail("fd holder: Group without an fd or a reason");
            break;
        case HolderOp::Cachefiles:
            if (!m->fd) return fail("fd holder: Cachefiles without an fd");
            h.cachefiles = std::move(m->fd);
            break;
        case HolderOp::Blob:
            if (!m->fd) return fail("fd holder: Blob without an fd");
            h.blobs[m->msg.text] = std::move(m->fd);
            break;
        case HolderOp::Ready: {
            h.pending_events = m->msg.a;
            return std::make_pair(std::move(sock), std::move(h));
        }
        default: return failf("fd holder: unexpected message {} during the handover", static_cast<int>(m->msg.op));
        }
    }
}

void HolderLink::start(EventLoop& loop, std::function<void(const HolderMsg&)> on_event,
                       std::function<void(const Error&)> on_lost) {
    loop_ = &loop;
    on_event_ = std::move(on_event);
    on_lost_ = std::move(on_lost);
    watch_ = loop.watch_fd(sock_.get(), POLLIN, [this](int revents) {
        if (revents < 0) {
            lost(Error{-revents, "poll holder socket"});
            return;
        }
        on_readable();
    });
    // Events may have arrived with the handover already.
    on_readable();
}

void HolderLink::on_readable() {
    while (sock_) {
        auto r = recv_holder_msg(sock_.get());
        if (!r) {
            lost(r.error());
            return;
        }
        if (!*r) return;
        if ((*r)->msg.op == HolderOp::Event) on_event_((*r)->msg);
        else spdlog::warn("fd holder: unexpected message {}", static_cast<int>((*r)->msg.op));
    }
}

void HolderLink::lost(const Error& e) {
    if (!sock_) return;
    if (loop_ && watch_) loop_->cancel(watch_);
    if (loop_ && out_watch_) loop_->cancel(out_watch_);
    watch_ = out_watch_ = 0;
    sock_.reset();
    outbox_.clear();
    if (on_lost_) on_lost_(e);
}

void HolderLink::send(HolderMsg m, int fd) {
    if (!sock_) return;
    Outgoing o;
    o.msg = std::move(m);
    if (fd >= 0) o.fd.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    outbox_.push_back(std::move(o));
    flush();
}

void HolderLink::answer(uint64_t event_id, uint32_t response) {
    HolderMsg m;
    m.op = HolderOp::Answer;
    m.id = event_id;
    m.a = response;
    send(std::move(m));
}

void HolderLink::flush() {
    while (sock_ && !outbox_.empty()) {
        auto& o = outbox_.front();
        auto r = send_holder_msg(sock_.get(), o.msg, o.fd ? o.fd.get() : -1);
        if (!r) {
            if (r.error().err == EAGAIN) {
                if (loop_ && !out_watch_)
                    out_watch_ = loop_->watch_fd(sock_.get(), POLLOUT, [this](int revents) {
                        if (out_watch_) loop_->cancel(out_watch_);
                        out_watch_ = 0;
                        if (revents < 0) return;
                        flush();
                    });
                return;
            }
            lost(r.error());
            return;
        }
        outbox_.pop_front();
    }
}

void HolderLink::flush_blocking() {
    while (sock_ && !outbox_.empty()) {
        auto& o = outbox_.front();
        auto r = send_holder_msg(sock_.get(), o.msg, o.fd ? o.fd.get() : -1);
        if (!r) {
            if (r.error().err != EAGAIN) return;
            pollfd p{sock_.get(), POLLOUT, 0};
            if (::poll(&p, 1, 2000) <= 0) return;
            continue;
        }
        outbox_.pop_front();
    }
}

}  // namespace erostream
