// The chunk cache and the fetch scheduler against an in-memory backend: hits and misses, one
// request per chunk however many readers wait, coalescing, refetch of chunks that fail
// verification (never written), giving up, prefetch, presence surviving a reopen.
#include <doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include "blob_cache.h"
#include "fetch_scheduler.h"
#include "file_util.h"
#include "test_daemon_fixtures.h"

using namespace erostream;
using namespace erostream::testing;
using namespace std::chrono_literals;

namespace {

struct Rig {
    ScratchDir dir;
    MemBlob blob;
    std::unique_ptr<EventLoop> loop = std::move(*EventLoop::create());
    ThreadPool cpu{2};
    Stats stats;
    std::shared_ptr<BlobCache> cache;
    std::shared_ptr<MemBackend> backend;
    std::unique_ptr<FetchScheduler> sched;

    explicit Rig(std::vector<uint32_t> chunks, SchedulerOptions opt = {}) : blob(make_blob(chunks)) {
        opt.retry_base = 1ms;
        auto c = BlobCache::open(dir.path, blob.dev, UniqueFd());
        REQUIRE(c);
        cache = *c;
        backend = std::make_shared<MemBackend>(blob, *loop);
        sched = std::make_unique<FetchScheduler>(*loop, cpu, stats, opt);
        sched->add_source(cache, blob.desc, backend, "m1");
    }
    // Runs the loop until `n` ensure() calls completed.
    std::vector<Result<void>> ensure_all(std::vector<std::pair<uint64_t, uint64_t>> ranges) {
        std::vector<Result<void>> out(ranges.size(), fail("not done"));
        size_t done = 0;
        for (size_t k = 0; k < ranges.size(); ++k)
            sched->ensure(cache->hex(), ranges[k].first, ranges[k].second, "t", [&, k](Result<void> r) {
                out[k] = std::move(r);
                if (++done == ranges.size()) loop->stop();
            });
        if (done < ranges.size()) REQUIRE(loop->run());
        return out;
    }
    std::string file_bytes(uint64_t off, uint64_t len) {
        std::string s(len, '\0');
        REQUIRE(::pread(cache->data_fd(), s.data(), len, static_cast<off_t>(off)) == static_cast<ssize_t>(len));
        return s;
    }
};

}  // namespace

TEST_CASE("scheduler: a miss fetches, verifies and writes the chunk; the next read is a hit") {
    Rig rig({2, 3, 1});
    auto r = rig.ensure_all({{4096 * 2 + 10, 100}});  // inside chunk 1
    REQUIRE(r[0]);
    CHECK(rig.backend->requests.size() == 1);
    CHECK(rig.cache->present(1));
    CHECK_FALSE(rig.cache->present(0));
    CHECK(rig.file_bytes(2 * 4096, 3 * 4096) == rig.blob.device.substr(2 * 4096, 3 * 4096));
    CHECK(rig.stats.cache_misses == 1);
    CHECK(rig.stats.chunks_fetched == 1);
    CHECK(rig.stats.bytes_fetched == uint64_t{rig.blob.dev.chunks[1].compressed_size});
    r = rig.ensure_all({{4096 * 2, 4096}});
    REQUIRE(r[0]);
    CHECK(rig.stats.cache_hits == 1);
    CHECK(rig.backend->requests.size() == 1);
}

TEST_CASE("scheduler: readers of one chunk share one request; adjacent misses share one range") {
    Rig rig({1, 1, 1, 1});
    rig.backend->hold = true;
    size_t done = 0;
    for (int k = 0; k < 5; ++k)
        rig.sched->ensure(rig.cache->hex(), 0, 4096, "t", [&](Result<void> r) {
            CHECK(r);
            ++done;
        });
    rig.sched->ensure(rig.cache->hex(), 4096, 3 * 4096, "t", [&](Result<void> r) {
        CHECK(r);
        ++done;
    });
    // Chunk 0 is one request; chunks 1..3 (adjacent) a second one.
    REQUIRE(rig.backend->requests.size() == 2);
    const auto& c = rig.blob.dev.chunks;
    CHECK(rig.backend->requests[1].first == uint64_t{c[1].compressed_offset});
    CHECK(rig.backend->requests[1].second == uint64_t{c[1].compressed_size} + c[2].compressed_size + c[3].compressed_size);
    rig.backend->hold = false;
    rig.backend->release_held();
    while (done < 6) {
        rig.loop->add_timer(1ms, [&] { rig.loop->stop(); });
        REQUIRE(rig.loop->run());
    }
    CHECK(rig.backend->requests.size() == 2);
    CHECK(rig.file_bytes(0, 4 * 4096) == rig.blob.device);
}

TEST_CASE("scheduler: a chunk failing verification is fetched again and never written wrong") {
    Rig rig({2, 2});
    rig.backend->corrupt_offsets.insert(uint64_t{rig.blob.dev.chunks[1].compressed_offset});
    rig.backend->corrupt_budget = 2;
    auto r = rig.ensure_all({{2 * 4096, 4096}});
    REQUIRE(r[0]);
    CHECK(rig.backend->requests.size() == 3);
    CHECK(rig.stats.verify_failures == 2);
    CHECK(rig.file_bytes(2 * 4096, 2 * 4096) == rig.blob.device.substr(2 * 4096));
}

TEST_CASE("scheduler: when every try fails, the reader gets the error and nothing is written") {
    SchedulerOptions opt;
    opt.max_attempts = 3;
    Rig rig({1, 1}, opt);
    rig.backend->corrupt_offsets.insert(0);
    rig.backend->corrupt_budget = 100;
    auto r = rig.ensure_all({{0, 4096}});
    REQUIRE_FALSE(r[0]);
    CHECK(rig.backend->requests.size() == 3);
    CHECK_FALSE(rig.cache->present(0));
    CHECK(rig.file_bytes(0, 4096) == std::string(4096, '\0'));
    // A later read starts over with fresh tries.
    rig.backend->corrupt_budget = 0;
    r = rig.ensure_all({{0, 4096}});
    CHECK(r[0]);
    CHECK(rig.file_bytes(0, 4096) == rig.blob.device.substr(0, 4096));
}

TEST_CASE("scheduler: transport failures are retried") {
    Rig rig({1});
    rig.backend->fail_next = 2;
    auto r = rig.ensure_all({{0, 1}});
    REQUIRE(r[0]);
    CHECK(rig.backend->requests.size() == 3);
    CHECK(rig.stats.errors == 2);
}

TEST_CASE("scheduler: prefetch fills the whole blob, in runs no larger than the cap") {
    SchedulerOptions opt;
    Rig rig0({1});
    uint64_t one = rig0.blob.dev.chunks[0].compressed_size;
    opt.max_run_bytes = one * 3;  // roughly 2-3 chunks per request
    Rig rig(std::vector<uint32_t>(10, 1), opt);
    bool complete = false;
    rig.sched->on_blob_complete = [&](const std::shared_ptr<BlobCache>& c) {
        CHECK(c->complete());
        complete = true;
        rig.loop->stop();
    };
    rig.sched->set_prefetch(rig.cache->hex(), "m1", true);
    REQUIRE(rig.loop->run());
    CHECK(complete);
    CHECK(rig.backend->requests.size() >= 4);
    for (auto& [off, len] : rig.backend->requests) CHECK(len <= opt.max_run_bytes);
    CHECK(rig.stats.prefetch_bytes == rig.blob.bytes.size());
    CHECK(rig.file_bytes(0, rig.blob.device.size()) == rig.blob.device);
}

TEST_CASE("scheduler: prefetch waits while kernel reads queue for the connection") {
    Rig rig(std::vector<uint32_t>(6, 1));
    rig.backend->max = 1;
    rig.backend->hold = true;
    rig.sched->ensure(rig.cache->hex(), 0, 4096, "t", [](Result<void>) {});
    rig.sched->ensure(rig.cache->hex(), 5 * 4096, 4096, "t", [](Result<void>) {});
    rig.sched->set_prefetch(rig.cache->hex(), "m1", true);
    // One connection: the first read is in flight, the second queued, prefetch not started.
    CHECK(rig.backend->requests.size() == 1);
    CHECK(rig.sched->queued() == 1);
}

TEST_CASE("blob cache: presence survives a reopen; a replaced cache file starts over") {
    ScratchDir dir;
    MemBlob blob = make_blob({1, 2, 1});
    {
        auto loop = std::move(*EventLoop::create());
        auto c = std::move(*BlobCache::open(dir.path, blob.dev, UniqueFd()));
        int done = 0;
        c->write_chunk(1, blob.device.substr(4096, 2 * 4096), *loop, [&](Result<void> r) {
            CHECK(r);
            ++done;
        });
        loop->stop();
        loop->drain(2000ms);
        CHECK(done == 1);
        CHECK(c->present(1));
        CHECK(c->persisted_count() == 1);
    }
    {
        std::string note;
        auto c = std::move(*BlobCache::open(dir.path, blob.dev, UniqueFd(), &note));
        CHECK(note.empty());
        CHECK(c->present(1));
        CHECK_FALSE(c->present(0));
        CHECK(c->present_bytes() == 2 * 4096);
    }
    // Another chunk table for the same digest (a lying artifact): bits are not trusted.
    {
        DeviceChunks other = blob.dev;
        other.chunks[2].sha256[0] ^= 1;
        std::string note;
        auto c = std::move(*BlobCache::open(dir.path, other, UniqueFd(), &note));
        CHECK_FALSE(c->present(1));
        CHECK(note.find("another chunk table") != std::string::npos);
    }
    // The cache file replaced (new inode) behind the daemon's back.
    {
        auto c = std::move(*BlobCache::open(dir.path, blob.dev, UniqueFd()));
        auto loop = std::move(*EventLoop::create());
        c->write_chunk(0, blob.device.substr(0, 4096), *loop, [](Result<void>) {});
        loop->stop();
        loop->drain(2000ms);
    }
    std::string img = dir.path + "/" + to_hex(blob.dev.blob_digest) + ".img";
    ::unlink(img.c_str());
    {
        std::string note;
        auto c = std::move(*BlobCache::open(dir.path, blob.dev, UniqueFd(), &note));
        CHECK_FALSE(c->present(0));
    }
}

TEST_CASE("scheduler: a backend that retries by itself: a failed range is final, a bad chunk is fetched again") {
    Rig rig({2, 2});
    rig.backend->retries = true;
    rig.backend->fail_next = 1;
    auto r = rig.ensure_all({{0, 4096}});
    CHECK_FALSE(r[0]);
    CHECK(rig.backend->requests.size() == 1);  // no second try on top of the backend's own
    CHECK_FALSE(rig.cache->present(0));
    // A later read starts over.
    r = rig.ensure_all({{0, 4096}});
    CHECK(r[0]);
    CHECK(rig.backend->requests.size() == 2);
    // Verification failures are the scheduler's to retry, whoever fetched the bytes.
    rig.backend->corrupt_offsets.insert(uint64_t{rig.blob.dev.chunks[1].compressed_offset});
    rig.backend->corrupt_budget = 1;
    r = rig.ensure_all({{2 * 4096, 4096}});
    REQUIRE(r[0]);
    CHECK(rig.backend->requests.size() == 4);
    CHECK(rig.stats.verify_failures == 1);
    CHECK(rig.file_bytes(2 * 4096, 2 * 4096) == rig.blob.device.substr(2 * 4096, 2 * 4096));
}
