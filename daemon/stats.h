// The daemon's counters (updated on the loop thread only) and their two renderings: the JSON of
// GET /v1/stats and the Prometheus text of GET /metrics.
#pragma once

#include <cstdint>
#include <string>

namespace erostream {

struct Stats {
    // Response body bytes received from registries (or read from layouts) since start: data
    // ranges (every try, also the ones that failed or were thrown away), and what mounting read
    // from registries (manifests, referrers, metadata blobs). The scheduler counts the ranges it
    // is handed, a backend whatever else it received; the blocking clients' bytes are added when
    // the counters are shown.
    uint64_t bytes_fetched = 0;
    uint64_t chunks_fetched = 0;  // chunks verified and written to a cache
    uint64_t cache_hits = 0;      // chunks a kernel read needed that were present
    uint64_t cache_misses = 0;    // chunks a kernel read needed that were not
    uint64_t errors = 0;          // failed fetches (ranges, and mounts that could not fetch their
                                  // artifact), verifications, writes, syncs
    uint64_t events = 0;          // kernel access events answered
    uint64_t events_denied = 0;   // ... of which denied (EIO)
    uint64_t prefetch_bytes = 0;  // of bytes_fetched, fetched by background prefetch
    uint64_t readahead_bytes = 0; // compressed bytes of chunks added to on-demand ranges by
                                  // sequential readahead (counted when requested)
    uint64_t verify_failures = 0; // chunks whose bytes did not match their digest
    uint64_t retries = 0;         // range requests issued again
    uint64_t mounts = 0;          // current mounts (a gauge)
    uint64_t cachefiles_opens = 0;          // fscache: OPEN requests answered
    uint64_t cachefiles_reads = 0;          // fscache: READ requests completed (also counted in events)
    uint64_t cachefiles_bytes_written = 0;  // fscache: bytes copied into the kernel's cache objects
};

std::string stats_json(const Stats& s);
std::string stats_prometheus(const Stats& s);

}  // namespace erostream
