#include "event_loop.h"

#include <poll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <tuple>

namespace erostream {

namespace {
// user_data of SQEs whose completion nobody waits for (cancel requests).
constexpr uint64_t kNoCallback = 0;
// user_data of the eventfd read that post() completes.
constexpr uint64_t kWakeId = ~uint64_t{0};
}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::create(unsigned entries) {
    std::unique_ptr<EventLoop> loop(new EventLoop());
    io_uring_params p{};
    // COOP_TASKRUN: completions are run when we enter the kernel anyway, no IPI per completion.
    p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    int r = io_uring_queue_init_params(entries, &loop->ring_, &p);
    if (r == -EINVAL) {
        p = io_uring_params{};
        r = io_uring_queue_init_params(entries, &loop->ring_, &p);
    }
    if (r < 0) return fail_errno("io_uring_queue_init", -r);
    loop->ring_ok_ = true;
    int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return fail_errno("eventfd");
    loop->wake_fd_.reset(efd);
    loop->arm_wakeup();
    return loop;
}

EventLoop::~EventLoop() {
    // Closing the ring cancels what is still in flight; callbacks are not run any more.
    if (ring_ok_) io_uring_queue_exit(&ring_);
}

io_uring_sqe* EventLoop::get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (!sqe) {
        // The SQ ring is full: hand what is queued to the kernel and try again.
        io_uring_submit(&ring_);
        sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
}

uint64_t EventLoop::add_op(std::unique_ptr<Op> op) {
    uint64_t id = next_id_++;
    if (next_id_ == kWakeId) next_id_ = 1;
    ops_.emplace(id, std::move(op));
    return id;
}

uint64_t EventLoop::submit(const PrepFn& prep, CompletionFn done) {
    auto op = std::make_unique<Op>();
    op->kind = Kind::OneShot;
    op->done = std::move(done);
    uint64_t id = add_op(std::move(op));
    io_uring_sqe* sqe = get_sqe();
    prep(sqe);
    io_uring_sqe_set_data64(sqe, id);
    return id;
}

uint64_t EventLoop::submit_multishot(const PrepFn& prep, CompletionFn done) {
    auto op = std::make_unique<Op>();
    op->kind = Kind::Multishot;
    op->done = std::move(done);
    uint64_t id = add_op(std::move(op));
    io_uring_sqe* sqe = get_sqe();
    prep(sqe);
    io_uring_sqe_set_data64(sqe, id);
    return id;
}

void EventLoop::cancel(uint64_t id) {
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    Op& op = *it->second;
    if (op.cancelled) return;
    op.cancelled = true;
    io_uring_sqe* sqe = get_sqe();
    switch (op.kind) {
    case Kind::Watch: io_uring_prep_poll_remove(sqe, id); break;
    case Kind::Timer: io_uring_prep_timeout_remove(sqe, id, 0); break;
    default: io_uring_prep_cancel64(sqe, id, 0); break;
    }
    io_uring_sqe_set_data64(sqe, kNoCallback);
}

void EventLoop::arm_watch(uint64_t id, Op& op) {
    io_uring_sqe* sqe = get_sqe();
    if (op.level) io_uring_prep_poll_add(sqe, op.fd, op.events);
    else io_uring_prep_poll_multishot(sqe, op.fd, op.events);
    io_uring_sqe_set_data64(sqe, id);
}

uint64_t EventLoop::watch_fd(int fd, unsigned events, std::function<void(int revents)> fn) {
    auto op = std::make_unique<Op>();
    op->kind = Kind::Watch;
    op->fd = fd;
    op->events = events;
    op->done = [fn = std::move(fn)](int res, uint32_t) { fn(res); };
    Op& ref = *op;
    uint64_t id = add_op(std::move(op));
    arm_watch(id, ref);
    return id;
}

uint64_t EventLoop::watch_fd_level(int fd, unsigned events, std::function<void(int revents)> fn) {
    auto op = std::make_unique<Op>();
    op->kind = Kind::Watch;
    op->fd = fd;
    op->events = events;
    op->level = true;
    op->done = [fn = std::move(fn)](int res, uint32_t) { fn(res); };
    Op& ref = *op;
    uint64_t id = add_op(std::move(op));
    arm_watch(id, ref);
    return id;
}

uint64_t EventLoop::add_timer(std::chrono::nanoseconds delay, std::function<void()> fn) {
    auto op = std::make_unique<Op>();
    op->kind = Kind::Timer;
    if (delay.count() < 0) delay = std::chrono::nanoseconds(0);
    op->ts.tv_sec = delay.count() / 1000000000;
    op->ts.tv_nsec = delay.count() % 1000000000;
    op->done = [fn = std::move(fn)](int, uint32_t) { fn(); };
    Op& ref = *op;
    uint64_t id = add_op(std::move(op));
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_timeout(sqe, &ref.ts, 0, 0);
    io_uring_sqe_set_data64(sqe, id);
    return id;
}

void EventLoop::post(std::function<void()> fn) {
    {
        std::lock_guard lk(post_mu_);
        posted_.push_back(std::move(fn));
    }
    uint64_t one = 1;
    // EAGAIN means the counter is saturated: the loop is woken anyway.
    [[maybe_unused]] ssize_t w = ::write(wake_fd_.get(), &one, sizeof one);
}

void EventLoop::arm_wakeup() {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_read(sqe, wake_fd_.get(), &wake_buf_, sizeof wake_buf_, 0);
    io_uring_sqe_set_data64(sqe, kWakeId);
}

void EventLoop::run_posted() {
    std::vector<std::function<void()>> work;
    {
        std::lock_guard lk(post_mu_);
        work.swap(posted_);
    }
    for (auto& fn : work) fn();
}

void EventLoop::dispatch(uint64_t id, int res, uint32_t flags) {
    if (id == kNoCallback) return;
    if (id == kWakeId) {
        // The eventfd is non-blocking: -EAGAIN only means another read drained it first.
        arm_wakeup();
        run_posted();
        return;
    }
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    Op& op = *it->second;
    const bool more = (flags & IORING_CQE_F_MORE) != 0;
    switch (op.kind) {
    case Kind::OneShot: {
        auto done = std::move(op.done);
        ops_.erase(it);
        if (done) done(res, flags);
        return;
    }
    case Kind::Multishot: {
        if (more) {
            auto done = op.done;  // the callback may cancel its own op
            if (done) done(res, flags);
            return;
        }
        auto done = std::move(op.done);
        ops_.erase(it);
        if (done) done(res, flags);
        return;
    }
    case Kind::Timer: {
        auto done = std::move(op.done);
        bool fire = !op.cancelled && res == -ETIME;
        ops_.erase(it);
        if (fire && done) done(0, 0);
        return;
    }
    case Kind::Watch: {
        if (op.cancelled) {
            if (!more) ops_.erase(it);
            return;
        }
        if (res < 0) {
            // The poll is over; -ECANCELED without our cancel() would mean the ring is going
            // away. Anything else is an error the owner must hear about.
            auto done = std::move(op.done);
            bool ended = !more;
            if (ended) ops_.erase(it);
            if (res != -ECANCELED && done) done(res, 0);
            return;
        }
        auto done = op.done;
        done(res, 0);
        if (!more) {
            // The kernel ended the multishot poll (or a level watch's one-shot poll fired); keep
            // watching unless the owner cancelled.
            auto again = ops_.find(id);
            if (again == ops_.end()) return;
            if (again->second->cancelled) {
                ops_.erase(again);
                return;
            }
            arm_watch(id, *again->second);
        }
        return;
    }
    case Kind::Internal: ops_.erase(it); return;
    }
}

void EventLoop::drain(std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    std::vector<uint64_t> ids;
    for (auto& [id, op] : ops_)
        if (op->kind != Kind::OneShot) ids.push_back(id);
    for (uint64_t id : ids) cancel(id);
    auto busy = [&] {
        for (auto& [id, op] : ops_)
            if (op->kind == Kind::OneShot) return true;
        return false;
    };
    while (busy() && std::chrono::steady_clock::now() < deadline) {
        __kernel_timespec ts{0, 100 * 1000 * 1000};
        io_uring_cqe* cqe = nullptr;
        io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
        io_uring_cqe* cqes[64];
        unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 64);
        std::vector<std::tuple<uint64_t, int, uint32_t>> batch;
        for (unsigned i = 0; i < n; ++i)
            batch.emplace_back(io_uring_cqe_get_data64(cqes[i]), cqes[i]->res, cqes[i]->flags);
        io_uring_cq_advance(&ring_, n);
        for (auto& [id, res, flags] : batch)
            if (id != kWakeId) dispatch(id, res, flags);
        run_posted();
    }
}

Result<void> EventLoop::run() {
    constexpr unsigned kBatch = 64;
    io_uring_cqe* cqes[kBatch];
    struct Done {
        uint64_t id;
        int res;
        uint32_t flags;
    };
    std::vector<Done> batch;
    batch.reserve(kBatch);
    stopping_ = false;
    while (!stopping_) {
        int r = io_uring_submit_and_wait(&ring_, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) return fail_errno("io_uring_submit_and_wait", -r);
        for (;;) {
            unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kBatch);
            if (n == 0) break;
            batch.clear();
            for (unsigned i = 0; i < n; ++i)
                batch.push_back({io_uring_cqe_get_data64(cqes[i]), cqes[i]->res, cqes[i]->flags});
            // Free the CQ slots before running callbacks: they may take long and submit more.
            io_uring_cq_advance(&ring_, n);
            for (const auto& d : batch) dispatch(d.id, d.res, d.flags);
            if (n < kBatch) break;
        }
    }
    return {};
}

}  // namespace erostream
