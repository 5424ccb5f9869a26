// The io_uring event loop: one-shot ops, timers, cross-thread post(), fd watches that survive
// the kernel ending a multishot poll, cancellation, drain.
#include <doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "event_loop.h"

using namespace erostream;
using namespace std::chrono_literals;

TEST_CASE("event loop: nop completes and run() returns after stop()") {
    auto loop = EventLoop::create();
    REQUIRE(loop);
    int seen = -1;
    (*loop)->submit([](io_uring_sqe* s) { io_uring_prep_nop(s); },
                    [&](int res, uint32_t) {
                        seen = res;
                        (*loop)->stop();
                    });
    REQUIRE((*loop)->run());
    CHECK(seen == 0);
    CHECK((*loop)->pending_ops() == 0);
}

TEST_CASE("event loop: timers fire in order; a cancelled timer does not fire") {
    auto loop = std::move(*EventLoop::create());
    std::vector<int> order;
    loop->add_timer(20ms, [&] {
        order.push_back(2);
        loop->stop();
    });
    uint64_t never = loop->add_timer(5ms, [&] { order.push_back(99); });
    loop->add_timer(1ms, [&] { order.push_back(1); });
    loop->cancel(never);
    REQUIRE(loop->run());
    CHECK(order == std::vector<int>{1, 2});
}

TEST_CASE("event loop: post() from other threads runs on the loop thread") {
    auto loop = std::move(*EventLoop::create());
    std::thread::id loop_thread = std::this_thread::get_id();
    int count = 0;
    bool all_on_loop = true;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 100; ++i)
                loop->post([&] {
                    all_on_loop &= std::this_thread::get_id() == loop_thread;
                    if (++count == 400) loop->stop();
                });
        });
    REQUIRE(loop->run());
    for (auto& t : threads) t.join();
    CHECK(count == 400);
    CHECK(all_on_loop);
}

TEST_CASE("event loop: a watched pipe reports every write until cancelled") {
    auto loop = std::move(*EventLoop::create());
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
    UniqueFd rd(p[0]), wr(p[1]);
    int wakeups = 0;
    std::string got;
    uint64_t id = 0;
    id = loop->watch_fd(rd.get(), POLLIN, [&](int revents) {
        REQUIRE(revents > 0);
        char buf[16];
        ssize_t n = ::read(rd.get(), buf, sizeof buf);
        if (n > 0) got.append(buf, static_cast<size_t>(n));
        ++wakeups;
        if (got.size() < 3) {
            REQUIRE(::write(wr.get(), "x", 1) == 1);
        } else {
            loop->cancel(id);
            loop->add_timer(2ms, [&] { loop->stop(); });
        }
    });
    REQUIRE(::write(wr.get(), "x", 1) == 1);
    REQUIRE(loop->run());
    CHECK(got == "xxx");
    CHECK(wakeups == 3);
    // Cancelled: a later write is not reported.
    REQUIRE(::write(wr.get(), "y", 1) == 1);
    loop->add_timer(5ms, [&] { loop->stop(); });
    REQUIRE(loop->run());
    CHECK(wakeups == 3);
}

TEST_CASE("event loop: a level watch reports an fd again while it is still ready") {
    // libcurl reads one buffer per call; data left behind must be reported without a new write.
    auto loop = std::move(*EventLoop::create());
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
    UniqueFd rd(p[0]), wr(p[1]);
    REQUIRE(::write(wr.get(), "abcde", 5) == 5);  // one write, read a byte at a time
    std::string got;
    uint64_t id = 0;
    id = loop->watch_fd_level(rd.get(), POLLIN, [&](int revents) {
        REQUIRE(revents > 0);
        char c;
        if (::read(rd.get(), &c, 1) == 1) got += c;
        if (got.size() == 5) {
            loop->cancel(id);
            loop->add_timer(5ms, [&] { loop->stop(); });
        }
    });
    uint64_t guard = loop->add_timer(5s, [&] { loop->stop(); });
    REQUIRE(loop->run());
    loop->cancel(guard);
    CHECK(got == "abcde");
    REQUIRE(::write(wr.get(), "z", 1) == 1);  // cancelled: not reported
    loop->add_timer(5ms, [&] { loop->stop(); });
    REQUIRE(loop->run());
    CHECK(got == "abcde");
    CHECK(loop->pending_ops() == 0);
}

TEST_CASE("event loop: file writes complete with their byte count; drain waits for them") {
    auto loop = std::move(*EventLoop::create());
    char tmpl[] = "/tmp/eros-loop-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    UniqueFd f(fd);
    ::unlink(tmpl);
    std::vector<std::string> bufs(16, std::string(4096, 'a'));
    int done = 0;
    for (size_t i = 0; i < bufs.size(); ++i) {
        bufs[i][0] = static_cast<char>('A' + i);
        loop->submit([&, i](io_uring_sqe* s) { io_uring_prep_write(s, f.get(), bufs[i].data(), 4096, i * 4096); },
                     [&](int res, uint32_t) {
                         CHECK(res == 4096);
                         ++done;
                     });
    }
    loop->stop();
    loop->drain(2000ms);
    CHECK(done == 16);
    char c = 0;
    REQUIRE(::pread(f.get(), &c, 1, 15 * 4096) == 1);
    CHECK(c == 'A' + 15);
}
