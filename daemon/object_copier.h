// Copies byte ranges from a file the daemon owns (a BlobCache's cache file, a metadata blob) into
// a cachefiles object's anonymous fd, with io_uring only: a read of the source into a page-aligned
// buffer, then a write of the buffer at the same offset into the object. cachefiles writes the
// object with direct I/O (fs/cachefiles/io.c: __cachefiles_write, IOCB_DIRECT) and refuses an
// offset that is not page aligned, so offsets, lengths and the buffer are all multiples of 4096;
// the source's tail past its end is written as zeros.
//
// Two queues: urgent copies (a kernel READ waits for them) go first and run side by side;
// background copies (prefetch: chunks written ahead of READs) run only while no urgent copy
// waits, at most `background_inflight` at a time.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>

#include "event_loop.h"
#include "result.h"

namespace erostream {

struct CopyJob {
    std::shared_ptr<void> keep;  // keeps both fds below open until the job is over
    int src_fd = -1;
    int dst_fd = -1;
    uint64_t offset = 0;    // page aligned
    uint64_t length = 0;    // a multiple of 4096
    uint64_t src_size = 0;  // bytes of the source; what lies past it is written as zeros
    std::function<void(Result<void>)> done;  // on the loop
};

class ObjectCopier {
public:
    struct Options {
        uint64_t piece_bytes = 1u << 20;  // one read + one write at a time, at most this much
        unsigned urgent_inflight = 16;
        unsigned background_inflight = 1;
    };
    ObjectCopier(EventLoop& loop, Options opt);
    ~ObjectCopier();
    ObjectCopier(const ObjectCopier&) = delete;
    ObjectCopier& operator=(const ObjectCopier&) = delete;

    void copy(CopyJob job, bool urgent);

    uint64_t bytes_written() const { return bytes_written_; }
    size_t queued() const { return urgent_.size() + background_.size(); }
    size_t inflight() const { return urgent_running_ + background_running_; }

private:
    struct FreeDeleter {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    using AlignedBytes = std::unique_ptr<uint8_t, FreeDeleter>;
    struct Running {
        CopyJob job;
        bool urgent = false;
        AlignedBytes buf;
        uint64_t buf_size = 0;
        uint64_t pos = 0;        // next byte of the job to copy (relative to job.offset)
        uint64_t piece = 0;      // bytes of the current piece
        uint64_t filled = 0;     // bytes of the piece read so far
        uint64_t flushed = 0;    // bytes of the piece written so far
    };

    void pump();
    void start(CopyJob job, bool urgent);
    void next_piece(std::shared_ptr<Running> r);
    void read_more(std::shared_ptr<Running> r);
    void write_more(std::shared_ptr<Running> r);
    void finish(std::shared_ptr<Running> r, Result<void> res);

    EventLoop& loop_;
    Options opt_;
    std::deque<CopyJob> urgent_, background_;
    unsigned urgent_running_ = 0, background_running_ = 0;
    uint64_t bytes_written_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

inline uint64_t page_down(uint64_t v) { return v & ~uint64_t{4095}; }
inline uint64_t page_up(uint64_t v) { return (v + 4095) & ~uint64_t{4095}; }

}  // namespace erostream
