// The daemon's one io_uring event loop. It owns the ring; everything the daemon waits for (holder
// and control sockets, cache-file writes and fdatasyncs, timers, work finished on the worker
// pools) completes here, on the thread that calls run(). Callbacks run on that thread only, so
// daemon state needs no locks; the one thread-safe entry point is post().
//
// An operation is an SQE plus a callback, keyed by the SQE's user_data. A one-shot op's callback
// runs once; a multishot op's runs for every CQE and the op ends with the first CQE that lacks
// IORING_CQE_F_MORE. watch_fd() builds on multishot poll and re-arms it when the kernel ends it
// (it may, e.g. on CQ overflow), so a watched fd is never silently dropped.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "result.h"
#include "unique_fd.h"

namespace erostream {

class EventLoop {
public:
    // res and flags of the CQE.
    using CompletionFn = std::function<void(int res, uint32_t flags)>;
    using PrepFn = std::function<void(io_uring_sqe*)>;

    static Result<std::unique_ptr<EventLoop>> create(unsigned entries = 256);
    ~EventLoop();
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // Queues one SQE (prepared by `prep`, whose user_data is then set) and returns its id. The
    // SQE goes to the kernel at the loop's next turn at the latest.
    uint64_t submit(const PrepFn& prep, CompletionFn done);
    uint64_t submit_multishot(const PrepFn& prep, CompletionFn done);
    // Asks the kernel to cancel op `id` (any kind). The op's callback still sees its final CQE
    // (usually -ECANCELED), except for watches and timers, which just stop.
    void cancel(uint64_t id);

    // Calls fn(revents) whenever fd is ready for `events` (POLLIN...), until cancel(id). A
    // negative revents is an error from the kernel; the watch is then over.
    uint64_t watch_fd(int fd, unsigned events, std::function<void(int revents)> fn);
    // The same, level-triggered: a one-shot poll armed again after each callback, so an fd that
    // is still ready (its owner read only part of what is buffered) is reported again. A
    // multishot poll reports wake-ups, not readiness; libcurl reads one buffer per call and
    // needs this.
    uint64_t watch_fd_level(int fd, unsigned events, std::function<void(int revents)> fn);

    // Runs fn once after `delay`, unless cancel(id) comes first.
    uint64_t add_timer(std::chrono::nanoseconds delay, std::function<void()> fn);

    // Thread-safe: runs fn on the loop thread soon (wakes the loop through an eventfd). Work that
    // is posted after stop() is dropped when the loop is destroyed.
    void post(std::function<void()> fn);

    // Runs until stop() (a stop() before run() does not count). Errors only for a broken ring.
    Result<void> run();
    // From the loop thread (or through post()): run() returns after the current turn.
    void stop() { stopping_ = true; }
    bool stopping() const { return stopping_; }
    // After run() returned: cancels watches, timers and multishot ops, then keeps running
    // callbacks until every one-shot op (writes, fsyncs) has completed or `limit` has passed, so
    // that no buffer is freed while the kernel still reads it.
    void drain(std::chrono::milliseconds limit);

    // Ops whose callbacks are registered (for tests and shutdown diagnostics).
    size_t pending_ops() const { return ops_.size(); }

private:
    enum class Kind { OneShot, Multishot, Watch, Timer, Internal };
    struct Op {
        Kind kind = Kind::OneShot;
        CompletionFn done;
        bool cancelled = false;
        // Watch: what to re-arm.
        int fd = -1;
        unsigned events = 0;
        bool level = false;  // one-shot poll, re-armed after each callback
        // Timer: the kernel reads the timespec at submission; it lives as long as the op.
        __kernel_timespec ts{};
    };

    EventLoop() = default;
    io_uring_sqe* get_sqe();
    uint64_t add_op(std::unique_ptr<Op> op);
    void arm_watch(uint64_t id, Op& op);
    void arm_wakeup();
    void dispatch(uint64_t id, int res, uint32_t flags);
    void run_posted();

    io_uring ring_{};
    bool ring_ok_ = false;
    UniqueFd wake_fd_;
    uint64_t wake_buf_ = 0;
    uint64_t next_id_ = 1;
    std::unordered_map<uint64_t, std::unique_ptr<Op>> ops_;
    bool stopping_ = false;

    std::mutex post_mu_;
    std::vector<std::function<void()>> posted_;
};

}  // namespace erostream
