#include "object_copier.h"

#include <cstring>

namespace erostream {

ObjectCopier::ObjectCopier(EventLoop& loop, Options opt) : loop_(loop), opt_(opt) {
    opt_.piece_bytes = std::max<uint64_t>(4096, page_down(opt_.piece_bytes));
    if (opt_.urgent_inflight == 0) opt_.urgent_inflight = 1;
    if (opt_.background_inflight == 0) opt_.background_inflight = 1;
}

ObjectCopier::~ObjectCopier() {
    *alive_ = false;
    // Jobs never started: their owners hear about it (their READs are completed by their tokens).
    auto fail_all = [](std::deque<CopyJob>& q) {
        auto jobs = std::move(q);
        q.clear();
        for (auto& j : jobs)
            if (j.done) j.done(fail("the daemon is stopping", ECANCELED));
    };
    fail_all(urgent_);
    fail_all(background_);
}

void ObjectCopier::copy(CopyJob job, bool urgent) {
    if (job.length == 0) {
        auto done = std::move(job.done);
        if (done) done({});
        return;
    }
    if (job.offset % 4096 || job.length % 4096) {
        auto done = std::move(job.done);
        if (done) done(failf("copy of {}+{}: not page aligned", job.offset, job.length));
        return;
    }
    (urgent ? urgent_ : background_).push_back(std::move(job));
    pump();
}

void ObjectCopier::pump() {
    while (!urgent_.empty() && urgent_running_ < opt_.urgent_inflight) {
        CopyJob j = std::move(urgent_.front());
        urgent_.pop_front();
        start(std::move(j), true);
    }
    // Background copies yield to urgent ones: none starts while a READ's copy waits.
    while (urgent_.empty() && !background_.empty() && background_running_ < opt_.background_inflight) {
        CopyJob j = std::move(background_.front());
        background_.pop_front();
        start(std::move(j), false);
    }
}

void ObjectCopier::start(CopyJob job, bool urgent) {
    auto r = std::make_shared<Running>();
    r->urgent = urgent;
    r->buf_size = std::min(job.length, opt_.piece_bytes);
    void* p = nullptr;
    if (::posix_memalign(&p, 4096, r->buf_size) != 0) {
        auto done = std::move(job.done);
        if (done) done(fail("no memory for a copy buffer", ENOMEM));
        return;
    }
    r->buf.reset(static_cast<uint8_t*>(p));
    r->job = std::move(job);
    (urgent ? urgent_running_ : background_running_)++;
    next_piece(std::move(r));
}

void ObjectCopier::next_piece(std::shared_ptr<Running> r) {
    if (r->pos >= r->job.length) {
        finish(std::move(r), {});
        return;
    }
    r->piece = std::min(r->buf_size, r->job.length - r->pos);
    r->filled = 0;
    r->flushed = 0;
    read_more(std::move(r));
}

void ObjectCopier::read_more(std::shared_ptr<Running> r) {
    const uint64_t at = r->job.offset + r->pos + r->filled;
    // Past the source's end: zeros (a metadata blob whose size is not a multiple of 4096).
    if (at >= r->job.src_size || r->filled >= r->piece) {
        if (r->filled < r->piece) std::memset(r->buf.get() + r->filled, 0, r->piece - r->filled);
        r->filled = r->piece;
        write_more(std::move(r));
        return;
    }
    const uint64_t want = std::min(r->piece - r->filled, r->job.src_size - at);
    std::weak_ptr<bool> alive = alive_;
    int fd = r->job.src_fd;
    uint8_t* dst = r->buf.get() + r->filled;
    loop_.submit([fd, dst, want, at](io_uring_sqe* sqe) { io_uring_prep_read(sqe, fd, dst, static_cast<unsigned>(want), at); },
                 [this, alive, r](int res, uint32_t) mutable {
                     if (alive.expired()) return;
                     if (res < 0) return finish(std::move(r), fail_errno("read the source of a cache object copy", -res));
                     if (res == 0) {
                         // The source is shorter than it said: its tail reads as zeros.
                         r->job.src_size = r->job.offset + r->pos + r->filled;
                     }
                     r->filled += static_cast<uint64_t>(res);
                     read_more(std::move(r));
                 });
}

void ObjectCopier::write_more(std::shared_ptr<Running> r) {
    if (r->flushed >= r->piece) {
        r->pos += r->piece;
        next_piece(std::move(r));
        return;
    }
    const uint64_t at = r->job.offset + r->pos + r->flushed;
    const uint64_t n = r->piece - r->flushed;
    std::weak_ptr<bool> alive = alive_;
    int fd = r->job.dst_fd;
    const uint8_t* src = r->buf.get() + r->flushed;
    loop_.submit([fd, src, n, at](io_uring_sqe* sqe) { io_uring_prep_write(sqe, fd, src, static_cast<unsigned>(n), at); },
                 [this, alive, r](int res, uint32_t) mutable {
                     if (alive.expired()) return;
                     if (res < 0) return finish(std::move(r), fail_errno("write into the cache object", -res));
                     // Direct I/O: a write that stops short must stop on a page boundary.
                     if (res == 0 || res % 4096 != 0)
                         return finish(std::move(r), failf("write into the cache object: {} bytes written", res));
                     r->flushed += static_cast<uint64_t>(res);
                     bytes_written_ += static_cast<uint64_t>(res);
                     write_more(std::move(r));
                 });
}

void ObjectCopier::finish(std::shared_ptr<Running> r, Result<void> res) {
    (r->urgent ? urgent_running_ : background_running_)--;
    auto done = std::move(r->job.done);
    r->job.keep.reset();
    if (done) done(std::move(res));
    pump();
}

}  // namespace erostream
