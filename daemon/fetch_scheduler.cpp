#include "fetch_scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "artifact_reader.h"

namespace erostream {

namespace {
std::string short_hex(const std::string& hex) { return hex.substr(0, 12); }
}  // namespace

FetchScheduler::FetchScheduler(EventLoop& loop, ThreadPool& cpu, Stats& stats, SchedulerOptions opt)
    : loop_(loop), cpu_(cpu), stats_(stats), opt_(opt) {
    if (opt_.max_attempts == 0) opt_.max_attempts = 1;
    if (opt_.prefetch_inflight == 0) opt_.prefetch_inflight = 1;
    tokens_at_ = std::chrono::steady_clock::now();
}

FetchScheduler::~FetchScheduler() {
    *alive_ = false;
    if (prefetch_timer_) loop_.cancel(prefetch_timer_);
    if (quiet_timer_) loop_.cancel(quiet_timer_);
}

void FetchScheduler::add_source(std::shared_ptr<BlobCache> cache, const Descriptor& desc,
                                std::shared_ptr<FetchBackend> backend, const std::string& owner) {
    auto it = blobs_.find(cache->hex());
    if (it == blobs_.end()) {
        Blob b;
        b.cache = cache;
        b.desc = desc;
        b.state.assign(cache->chunks().size(), kIdle);
        b.attempts.assign(cache->chunks().size(), 0);
        b.demanded.assign(cache->chunks().size(), 0);
        b.generation = next_generation_++;
        it = blobs_.emplace(cache->hex(), std::move(b)).first;
    }
    for (auto& s : it->second.sources)
        if (s.owner == owner) return;
    it->second.sources.push_back({owner, std::move(backend)});
}

bool FetchScheduler::remove_source(const std::string& hex, const std::string& owner) {
    auto it = blobs_.find(hex);
    if (it == blobs_.end()) return true;
    Blob& b = it->second;
    std::erase_if(b.sources, [&](const Source& s) { return s.owner == owner; });
    b.prefetchers.erase(owner);
    if (!b.sources.empty()) return false;
    auto waiters = std::move(b.waiters);
    blobs_.erase(it);
    std::erase_if(queue_, [&](const Job& j) { return j.hex == hex; });
    Error e{EIO, "blob sha256:" + hex + " is no longer served (its mounts went away)"};
    for (auto& [i, ws] : waiters)
        for (auto& w : ws)
            if (!w->finished) {
                w->finished = true;
                w->done(std::unexpected(e));
            }
    return true;
}

std::shared_ptr<BlobCache> FetchScheduler::blob(const std::string& hex) const {
    auto it = blobs_.find(hex);
    return it == blobs_.end() ? nullptr : it->second.cache;
}

FetchScheduler::Blob* FetchScheduler::find(const std::string& hex, uint64_t generation) {
    auto it = blobs_.find(hex);
    if (it == blobs_.end() || it->second.generation != generation) return nullptr;
    return &it->second;
}

void FetchScheduler::ensure(const std::string& hex, uint64_t offset, uint64_t len, const std::string& req_id,
                            Done done) {
    auto it = blobs_.find(hex);
    if (it == blobs_.end()) {
        done(fail(fmt::format("blob sha256:{} is not served by this daemon", hex), ENOENT));
        return;
    }
    Blob& b = it->second;
    auto chunks = b.cache->chunks();
    ChunkSpan span = chunks_for_range(chunks, offset, len);
    auto w = std::make_shared<Waiter>();
    w->req_id = req_id;
    w->done = std::move(done);
    std::vector<size_t> missing;
    for (size_t i = span.first; i < span.last; ++i) {
        if (b.cache->present(i)) {
            stats_.cache_hits++;
            continue;
        }
        stats_.cache_misses++;
        w->remaining++;
        b.waiters[i].push_back(w);
        if (b.state[i] == kIdle) {
            b.state[i] = kBusy;
            missing.push_back(i);
        }
    }
    if (w->remaining == 0) {
        w->finished = true;
        w->done({});
        return;
    }
    note_demand();
    auto runs = plan_runs(chunks, missing, opt_.max_run_bytes);
    if (!runs.empty()) readahead(b, runs);
    for (const FetchRun& r : runs) queue_.push_back({hex, b.generation, r, false});
    pump();
}

void FetchScheduler::readahead(Blob& b, std::vector<FetchRun>& runs) {
    constexpr size_t kStreams = 64;  // streams remembered per blob
    size_t first = runs.front().first;
    // Sequential: the first chunk to fetch follows one fetched on demand: present, or in flight
    // (then this read waits for it too and goes on where it ends).
    bool sequential = opt_.readahead && first > 0 && b.demanded[first - 1];
    FetchRun& last = runs.back();
    uint64_t window = 0;
    if (sequential) {
        auto it = b.stream_windows.find(first);
        uint64_t before = it == b.stream_windows.end() ? 0 : it->second;
        if (it != b.stream_windows.end()) b.stream_windows.erase(it);
        uint64_t demand = 0;
        for (const FetchRun& r : runs) demand += r.length;
        // Starts with as much as the read itself needed, doubles along the stream.
        window = before == 0 ? std::max<uint64_t>(demand, 1) : std::min(opt_.max_run_bytes, 2 * before);
        auto chunks = b.cache->chunks();
        uint64_t added = 0;
        for (size_t k = last.first + last.count; k < chunks.size(); ++k) {
            const auto& c = chunks[k];
            if (b.cache->present(k) || b.state[k] != kIdle) break;
            if (last.offset + last.length != c.compressed_offset) break;
            if (last.length + c.compressed_size > opt_.max_run_bytes) break;
            if (added > 0 && added + c.compressed_size > window) break;
            b.state[k] = kBusy;
            last.count++;
            last.length += c.compressed_size;
            added += c.compressed_size;
        }
        stats_.readahead_bytes += added;
    }
    for (const FetchRun& r : runs)
        for (size_t k = r.first; k < r.first + r.count; ++k) b.demanded[k] = 1;
    b.stream_windows[last.first + last.count] = window;
    if (b.stream_windows.size() > kStreams) b.stream_windows.erase(b.stream_windows.begin());
}

void FetchScheduler::set_prefetch(const std::string& hex, const std::string& owner, bool on) {
    auto it = blobs_.find(hex);
    if (it == blobs_.end()) return;
    if (on) {
        it->second.prefetchers.insert(owner);
        note_demand();  // a new mount is about to be read: let its first reads go first
    } else {
        it->second.prefetchers.erase(owner);
    }
    pump();
}

bool FetchScheduler::host_has_room(const Blob& b, bool prefetch) const {
    const auto& backend = b.sources.front().backend;
    auto it = inflight_.find(backend->limit_key());
    unsigned used = it == inflight_.end() ? 0 : it->second;
    unsigned max = std::max(1u, backend->max_inflight());
    if (!prefetch) return used < max;
    // Prefetch leaves a connection free for kernel reads, unless there is only one.
    return max == 1 ? used == 0 : used + 1 < max;
}

void FetchScheduler::pump() {
    // On-demand first: every job whose host has room, oldest first.
    for (auto it = queue_.begin(); it != queue_.end();) {
        Blob* b = find(it->hex, it->generation);
        if (!b) {
            it = queue_.erase(it);
            continue;
        }
        if (!host_has_room(*b, false)) {
            ++it;
            continue;
        }
        Job job = std::move(*it);
        it = queue_.erase(it);
        issue(*b, std::move(job));
    }
    // Then prefetch, only when no kernel read is waiting for a connection, and none was lately.
    if (!queue_.empty() || prefetch_inflight_ >= opt_.prefetch_inflight || !demand_quiet()) return;
    while (queue_.empty() && prefetch_inflight_ < opt_.prefetch_inflight) {
        Job job;
        if (!next_prefetch_job(job)) break;
        Blob* b = find(job.hex, job.generation);
        if (!prefetch_tokens_for(job.run.length)) {
            // Not now: give the chunks back; the timer set by prefetch_tokens_for comes back here.
            for (size_t k = 0; k < job.run.count; ++k) b->state[job.run.first + k] = kIdle;
            break;
        }
        issue(*b, std::move(job));
    }
}

bool FetchScheduler::prefetch_tokens_for(uint64_t bytes) {
    if (opt_.prefetch_rate == 0) return true;
    auto now = std::chrono::steady_clock::now();
    double rate = static_cast<double>(opt_.prefetch_rate);
    double burst = std::max(rate, static_cast<double>(opt_.max_run_bytes));
    tokens_ = std::min(burst, tokens_ + rate * std::chrono::duration<double>(now - tokens_at_).count());
    tokens_at_ = now;
    // A request may run the bucket into debt; the next one waits until it is paid back.
    if (tokens_ > 0) {
        tokens_ -= static_cast<double>(bytes);
        return true;
    }
    if (!prefetch_timer_) {
        auto wait = std::chrono::duration<double>((1.0 - tokens_) / rate);
        std::weak_ptr<bool> alive = alive_;
        prefetch_timer_ = loop_.add_timer(std::chrono::duration_cast<std::chrono::nanoseconds>(wait), [this, alive] {
            if (alive.expired()) return;
            prefetch_timer_ = 0;
            pump();
        });
    }
    return false;
}

bool FetchScheduler::demand_quiet() {
    if (opt_.prefetch_quiet.count() <= 0) return true;
    if (demand_inflight_ > 0) return false;  // its completion notes the time and pumps again
    auto since = std::chrono::steady_clock::now() - last_demand_;
    if (since >= opt_.prefetch_quiet) return true;
    bool wanted = std::ranges::any_of(blobs_, [](const auto& kv) {
        return !kv.second.prefetchers.empty() && !kv.second.cache->complete();
    });
    if (wanted && !quiet_timer_) {
        std::weak_ptr<bool> alive = alive_;
        quiet_timer_ = loop_.add_timer(opt_.prefetch_quiet - since, [this, alive] {
            if (alive.expired()) return;
            quiet_timer_ = 0;
            pump();
        });
    }
    return false;
}

bool FetchScheduler::next_prefetch_job(Job& out) {
    if (blobs_.empty()) return false;
    // Round robin over the blobs that want prefetch, starting after the last one served.
    auto start = blobs_.upper_bound(prefetch_rr_);
    for (size_t step = 0; step < blobs_.size(); ++step, ++start) {
        if (start == blobs_.end()) start = blobs_.begin();
        Blob& b = start->second;
        if (b.prefetchers.empty() || b.cache->complete() || b.sources.empty()) continue;
        if (!host_has_room(b, true)) continue;
        auto chunks = b.cache->chunks();
        size_t n = chunks.size();
        // From the cursor on, the first chunk nobody has or asked for, then its idle neighbours.
        for (size_t scanned = 0; scanned < n; ++scanned) {
            size_t i = (b.prefetch_cursor + scanned) % n;
            if (b.cache->present(i) || b.state[i] != kIdle) continue;
            std::vector<size_t> idx;
            uint64_t bytes = 0;
            // Small ranges while reads come and go; whole max_run_bytes ranges (less per-request
            // latency) once they have stopped for a while.
            bool idle = std::chrono::steady_clock::now() - last_demand_ >= opt_.prefetch_grow_after;
            uint64_t cap = idle ? opt_.max_run_bytes
                                : std::min(opt_.max_run_bytes, std::max<uint64_t>(opt_.prefetch_run_bytes, 1));
            for (size_t k = i; k < n && !b.cache->present(k) && b.state[k] == kIdle; ++k) {
                if (!idx.empty() && bytes + chunks[k].compressed_size > cap) break;
                idx.push_back(k);
                bytes += chunks[k].compressed_size;
            }
            auto runs = plan_runs(chunks, idx, cap);
            const FetchRun& r = runs.front();
            for (size_t k = 0; k < r.count; ++k) b.state[r.first + k] = kBusy;
            b.prefetch_cursor = (r.first + r.count) % n;
            out = Job{start->first, b.generation, r, true};
            prefetch_rr_ = start->first;
            return true;
        }
    }
    return false;
}

void FetchScheduler::issue(Blob& b, Job job) {
    auto backend = b.sources.front().backend;
    std::string key = backend->limit_key();
    inflight_[key]++;
    inflight_total_++;
    if (job.prefetch) prefetch_inflight_++;
    else demand_inflight_++;
    std::string req_id = fmt::format("fetch-{}", next_req_++);
    spdlog::debug("[{}] blob {} chunks {}..{} bytes {}+{} from {}{}", req_id, short_hex(job.hex), job.run.first,
                  job.run.first + job.run.count - 1, job.run.offset, job.run.length, backend->describe(),
                  job.prefetch ? " (prefetch)" : "");
    std::weak_ptr<bool> alive = alive_;
    Job copy = job;
    copy.backend_retried = backend->retries_itself();
    // The callback keeps the backend alive until it answered: a mount going away while its
    // range is in flight must not cancel the range for the other mounts of the blob.
    backend->fetch_range(b.desc, job.run.offset, job.run.length, req_id,
                         [this, alive, copy, key, req_id, backend](Result<std::string> data) {
                             if (alive.expired()) return;
                             inflight_[key]--;
                             inflight_total_--;
                             if (copy.prefetch) {
                                 prefetch_inflight_--;
                             } else {
                                 demand_inflight_--;
                                 note_demand();
                             }
                             on_range(copy, std::move(data), req_id);
                             pump();
                         });
}

void FetchScheduler::on_range(const Job& job, Result<std::string> data, const std::string& req_id) {
    Blob* b = find(job.hex, job.generation);
    if (!b) return;
    if (data && data->size() != job.run.length)
        data = failf("got {} bytes for a range of {}", data->size(), job.run.length);
    if (!data) {
        stats_.errors++;
        Error e = data.error();
        e.prefix(fmt::format("range {}+{} of blob sha256:{}", job.run.offset, job.run.length, job.hex));
        spdlog::warn("[{}] {}", req_id, e.what());
        for (size_t k = 0; k < job.run.count; ++k)
            chunk_failed(*b, job.run.first + k, e, req_id, job.backend_retried);
        return;
    }
    stats_.bytes_fetched += data->size();
    if (job.prefetch) stats_.prefetch_bytes += data->size();
    auto shared = std::make_shared<const std::string>(std::move(*data));
    auto chunks = b->cache->chunks();
    std::weak_ptr<bool> alive = alive_;
    for (size_t k = 0; k < job.run.count; ++k) {
        size_t i = job.run.first + k;
        erostream_chunk_record rec = chunks[i];
        uint64_t at = rec.compressed_offset - job.run.offset;
        std::string hex = job.hex;
        uint64_t gen = job.generation;
        bool prefetch = job.prefetch;
        EventLoop* loop = &loop_;
        cpu_.submit([this, alive, shared, rec, at, hex, gen, i, prefetch, req_id, loop](unsigned) {
            std::string out;
            auto r = decode_chunk(std::string_view(*shared).substr(at, rec.compressed_size), rec, out);
            Result<std::string> res = r ? Result<std::string>(std::move(out)) : std::unexpected(r.error());
            loop->post([this, alive, hex, gen, i, prefetch, req_id, res = std::move(res)]() mutable {
                if (alive.expired()) return;
                on_decoded(hex, gen, i, std::move(res), prefetch, req_id);
            });
        });
    }
}

void FetchScheduler::on_decoded(const std::string& hex, uint64_t generation, size_t i, Result<std::string> bytes,
                                bool prefetch, const std::string& req_id) {
    Blob* b = find(hex, generation);
    if (!b) return;
    if (!bytes) {
        stats_.errors++;
        stats_.verify_failures++;
        Error e = bytes.error();
        e.prefix(fmt::format("blob sha256:{} chunk {} (device offset {})", hex, i,
                             chunk_device_offset(b->cache->chunks()[i])));
        spdlog::warn("[{}] {}: not written, fetching it again", req_id, e.what());
        chunk_failed(*b, i, e, req_id);
        return;
    }
    std::weak_ptr<bool> alive = alive_;
    b->cache->write_chunk(i, std::move(*bytes), loop_, [this, alive, hex, generation, i, prefetch, req_id](Result<void> r) {
        if (alive.expired()) return;
        Blob* b = find(hex, generation);
        if (!b) return;
        if (!r) {
            stats_.errors++;
            spdlog::error("[{}] {}", req_id, r.error().what());
            // A cache file that cannot be written will not get better by fetching again.
            chunk_failed(*b, i, r.error(), req_id, true);
            return;
        }
        stats_.chunks_fetched++;
        const bool waited = b->waiters.count(i) > 0;
        auto cache = b->cache;
        finish_chunk(*b, i, {});
        if (on_chunk_ready) on_chunk_ready(cache, i, waited);
        // The callbacks may have removed the blob.
        b = find(hex, generation);
        if (b && b->cache->complete() && on_blob_complete) on_blob_complete(b->cache);
        pump();
    });
}

void FetchScheduler::chunk_failed(Blob& b, size_t i, const Error& e, const std::string& req_id, bool final) {
    unsigned tries = ++b.attempts[i];
    bool wanted = b.waiters.count(i) > 0;
    if (!final && tries < opt_.max_attempts && wanted) {
        stats_.retries++;
        auto delay = std::min(opt_.retry_cap, opt_.retry_base * (1u << std::min(tries - 1, 16u)));
        std::string hex = b.cache->hex();
        uint64_t gen = b.generation;
        std::weak_ptr<bool> alive = alive_;
        const auto& rec = b.cache->chunks()[i];
        FetchRun run{i, 1, rec.compressed_offset, rec.compressed_size};
        spdlog::debug("[{}] chunk {} of {}: try {} of {} in {} ms", req_id, i, short_hex(hex), tries + 1,
                      opt_.max_attempts, delay.count());
        loop_.add_timer(delay, [this, alive, hex, gen, run] {
            if (alive.expired()) return;
            if (!find(hex, gen)) return;
            queue_.push_front({hex, gen, run, false});
            pump();
        });
        return;
    }
    if (!wanted) {
        // Prefetch or readahead nobody reads yet: leave it for a kernel read to ask again (with
        // fresh tries).
        b.state[i] = kIdle;
        b.attempts[i] = 0;
        return;
    }
    if (final)
        spdlog::error("[{}] blob sha256:{} chunk {}: failed: {}", req_id, b.cache->hex(), i, e.what());
    else
        spdlog::error("[{}] blob sha256:{} chunk {}: giving up after {} tries: {}", req_id, b.cache->hex(), i, tries,
                      e.what());
    finish_chunk(b, i, std::unexpected(e));
}

void FetchScheduler::finish_chunk(Blob& b, size_t i, const Result<void>& r) {
    b.state[i] = kIdle;
    b.attempts[i] = 0;
    auto it = b.waiters.find(i);
    if (it == b.waiters.end()) return;
    auto ws = std::move(it->second);
    b.waiters.erase(it);
    for (auto& w : ws) {
        if (w->finished) continue;
        if (!r) {
            w->finished = true;
            w->done(std::unexpected(r.error()));
        } else if (--w->remaining == 0) {
            w->finished = true;
            w->done({});
        }
    }
}

}  // namespace erostream
