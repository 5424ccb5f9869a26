#include "stats.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace erostream {

std::string stats_json(const Stats& s) {
    nlohmann::ordered_json j;
    j["bytes_fetched"] = s.bytes_fetched;
    j["chunks_fetched"] = s.chunks_fetched;
    j["cache_hits"] = s.cache_hits;
    j["cache_misses"] = s.cache_misses;
    j["errors"] = s.errors;
    j["events"] = s.events;
    j["events_denied"] = s.events_denied;
    j["prefetch_bytes"] = s.prefetch_bytes;
    j["readahead_bytes"] = s.readahead_bytes;
    j["verify_failures"] = s.verify_failures;
    j["retries"] = s.retries;
    j["mounts"] = s.mounts;
    j["cachefiles_opens"] = s.cachefiles_opens;
    j["cachefiles_reads"] = s.cachefiles_reads;
    j["cachefiles_bytes_written"] = s.cachefiles_bytes_written;
    return j.dump();
}

std::string stats_prometheus(const Stats& s) {
    std::string out;
    auto counter = [&](const char* name, const char* help, uint64_t v) {
        out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
    };
    counter("erostream_bytes_fetched_total", "Bytes received from registries since start.", s.bytes_fetched);
    counter("erostream_chunks_fetched_total", "Chunks verified and written to the cache.", s.chunks_fetched);
    counter("erostream_cache_hits_total", "Chunks needed by kernel reads that were cached.", s.cache_hits);
    counter("erostream_cache_misses_total", "Chunks needed by kernel reads that were not cached.", s.cache_misses);
    counter("erostream_errors_total", "Failed fetches, verifications, cache writes and syncs.", s.errors);
    counter("erostream_events_total", "Kernel access events answered.", s.events);
    counter("erostream_events_denied_total", "Kernel access events answered with EIO.", s.events_denied);
    counter("erostream_prefetch_bytes_total", "Bytes fetched by background prefetch.", s.prefetch_bytes);
    counter("erostream_readahead_bytes_total", "Bytes requested by sequential readahead.", s.readahead_bytes);
    counter("erostream_verify_failures_total", "Chunks whose bytes did not match their digest.", s.verify_failures);
    counter("erostream_retries_total", "Range requests issued again.", s.retries);
    counter("erostream_cachefiles_opens_total", "fscache: OPEN requests answered.", s.cachefiles_opens);
    counter("erostream_cachefiles_reads_total", "fscache: READ requests completed.", s.cachefiles_reads);
    counter("erostream_cachefiles_bytes_written_total", "fscache: bytes copied into the kernel's cache objects.",
            s.cachefiles_bytes_written);
    out += fmt::format("# HELP erostream_mounts Images mounted.\n# TYPE erostream_mounts gauge\nerostream_mounts {}\n",
                       s.mounts);
    return out;
}

}  // namespace erostream
