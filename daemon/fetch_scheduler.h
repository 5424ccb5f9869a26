// Turns "make device bytes [off, off+len) of blob B present" into range requests, and range
// responses into verified chunks in the cache. On the loop thread, except decompression and
// hashing, which run on the CPU pool.
//
//  - A range maps to chunks; present chunks are cache hits. A missing chunk is requested once:
//    while it is queued or in flight, later asks just wait for it.
//  - Missing chunks with adjacent frames are fetched with one range request, up to a cap.
//  - Sequential readahead: a miss whose first chunk follows a chunk that was fetched on demand (a
//    file read front to back, also while other files are read in between) extends its last
//    range with the missing chunks that follow, a window that doubles along the stream up to the
//    range cap. A request costs a round trip, so one bigger range beats several in a row; the
//    chunks asked for only wait for that one range. A first or random miss reads no more.
//  - Requests in flight are bounded per backend limit key (a registry host).
//  - Every chunk is decompressed and checked against its sha256 before a byte is written; a chunk
//    that fails is fetched again (it is never written), up to max_attempts, then its waiters fail.
//    A failed range is tried again the same way, unless its backend retries by itself (the
//    registry backend does, with backoff and Retry-After): then the failure is final.
//  - Prefetch fills whole blobs in the background, one request at a time under a bandwidth cap,
//    and only while no on-demand request is waiting: kernel reads always go first. It also waits
//    until kernel reads have been quiet for a moment, and asks for small ranges: a request cannot
//    be taken back, so a prefetch range in flight shares the link with the reads that follow and
//    holds back every read that needs one of its chunks until all of it has arrived (measured by
//    scripts/bench-daemon: 4 MiB prefetch ranges from the mount on made a cold start's command
//    take up to 1.8 times as long).
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "blob_cache.h"
#include "chunk_map.h"
#include "event_loop.h"
#include "fetch_backend.h"
#include "stats.h"
#include "thread_pool.h"

namespace erostream {

struct SchedulerOptions {
    uint64_t max_run_bytes = 4u << 20;         // compressed bytes per range request
    unsigned max_attempts = 6;                  // per chunk: the first try and the retries
    std::chrono::milliseconds retry_base{200};  // backoff: base * 2^attempt, capped
    std::chrono::milliseconds retry_cap{10000};
    uint64_t prefetch_rate = 0;                 // bytes per second; 0: no cap
    unsigned prefetch_inflight = 1;             // prefetch requests in flight at most
    uint64_t prefetch_run_bytes = 1u << 20;     // compressed bytes per prefetch request (at most max_run_bytes),
    std::chrono::milliseconds prefetch_grow_after{1000};  // up to max_run_bytes after this long without reads
    std::chrono::milliseconds prefetch_quiet{100};  // no prefetch until no kernel read was waiting for this long
    bool readahead = true;                      // sequential readahead on on-demand misses
};

class FetchScheduler {
public:
    using Done = std::function<void(Result<void>)>;

    FetchScheduler(EventLoop& loop, ThreadPool& cpu, Stats& stats, SchedulerOptions opt);
    ~FetchScheduler();
    FetchScheduler(const FetchScheduler&) = delete;
    FetchScheduler& operator=(const FetchScheduler&) = delete;

    // `owner` (a mount) serves `cache` from `backend`. A blob may have several owners; the first
    // one's backend is used.
    void add_source(std::shared_ptr<BlobCache> cache, const Descriptor& desc,
                    std::shared_ptr<FetchBackend> backend, const std::string& owner);
    // Returns true when the blob has no owner left and was dropped (its waiters fail).
    bool remove_source(const std::string& hex, const std::string& owner);
    std::shared_ptr<BlobCache> blob(const std::string& hex) const;

    // done runs on the loop thread: at once when everything is present, else after the missing
    // chunks were written (or failed for good).
    void ensure(const std::string& hex, uint64_t offset, uint64_t len, const std::string& req_id, Done done);

    // Background fill of a whole blob while any owner wants it.
    void set_prefetch(const std::string& hex, const std::string& owner, bool on);

    // A chunk was verified and written to its cache (after the reads waiting for it were told);
    // `readers_waited`: some were.
    std::function<void(const std::shared_ptr<BlobCache>&, size_t, bool readers_waited)> on_chunk_ready;
    // A blob just became complete (every chunk written and present).
    std::function<void(const std::shared_ptr<BlobCache>&)> on_blob_complete;

    size_t inflight() const { return inflight_total_; }
    size_t queued() const { return queue_.size(); }

private:
    struct Waiter {
        size_t remaining = 0;
        bool finished = false;
        std::string req_id;
        Done done;
    };
    enum ChunkState : uint8_t { kIdle = 0, kBusy = 1 };
    struct Source {
        std::string owner;
        std::shared_ptr<FetchBackend> backend;
    };
    struct Blob {
        std::shared_ptr<BlobCache> cache;
        Descriptor desc;
        std::vector<Source> sources;
        std::vector<uint8_t> state;     // ChunkState per chunk
        std::vector<uint8_t> attempts;  // failed tries per chunk
        std::unordered_map<size_t, std::vector<std::shared_ptr<Waiter>>> waiters;
        std::set<std::string> prefetchers;
        size_t prefetch_cursor = 0;
        std::vector<uint8_t> demanded;  // per chunk: was in an on-demand request (or its readahead)
        // Sequential streams: the chunk right after an on-demand request -> that request's
        // readahead window in compressed bytes (0: none yet); at most 64 of them.
        std::map<size_t, uint64_t> stream_windows;
        uint64_t generation = 0;  // tells stale completions from a re-added blob's
    };
    struct Job {
        std::string hex;
        uint64_t generation = 0;
        FetchRun run;
        bool prefetch = false;
        // The backend retried transient failures itself: a failed range is final (a chunk that
        // fails verification is still fetched again).
        bool backend_retried = false;
    };

    void pump();
    bool host_has_room(const Blob& b, bool prefetch) const;
    void issue(Blob& b, Job job);
    void on_range(const Job& job, Result<std::string> data, const std::string& req_id);
    void on_decoded(const std::string& hex, uint64_t generation, size_t i, Result<std::string> bytes,
                    bool prefetch, const std::string& req_id);
    // `final`: trying again cannot help (the backend retried already; the cache cannot be written).
    // A chunk nobody waits for (prefetch, readahead) is left for a later read to ask again.
    void chunk_failed(Blob& b, size_t i, const Error& e, const std::string& req_id, bool final = false);
    void finish_chunk(Blob& b, size_t i, const Result<void>& r);
    // Extends the last of an on-demand miss's runs when the miss continues a sequential stream.
    void readahead(Blob& b, std::vector<FetchRun>& runs);
    bool next_prefetch_job(Job& out);
    bool prefetch_tokens_for(uint64_t bytes);
    bool demand_quiet();
    void note_demand() { last_demand_ = std::chrono::steady_clock::now(); }
    Blob* find(const std::string& hex, uint64_t generation);

    EventLoop& loop_;
    ThreadPool& cpu_;
    Stats& stats_;
    SchedulerOptions opt_;
    std::map<std::string, Blob> blobs_;
    std::deque<Job> queue_;  // on-demand jobs, oldest first
    std::map<std::string, unsigned> inflight_;  // per backend limit key
    size_t inflight_total_ = 0;
    unsigned prefetch_inflight_ = 0;
    uint64_t next_generation_ = 1;
    uint64_t next_req_ = 1;
    std::string prefetch_rr_;  // round robin: the blob prefetched last
    double tokens_ = 0;
    std::chrono::steady_clock::time_point tokens_at_{};
    uint64_t prefetch_timer_ = 0;
    std::chrono::steady_clock::time_point last_demand_{};  // a kernel read last waited or was served
    uint64_t quiet_timer_ = 0;
    size_t demand_inflight_ = 0;  // on-demand requests in flight
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace erostream
