#include "chunk_map.h"

#include <algorithm>

namespace erostream {

ChunkSpan chunks_for_range(std::span<const erostream_chunk_record> chunks, uint64_t offset, uint64_t len) {
    if (len == 0 || chunks.empty()) return {};
    const auto& last = chunks.back();
    uint64_t device_end = chunk_device_offset(last) + chunk_device_bytes(last);
    if (offset >= device_end) return {};
    uint64_t end = len > device_end - offset ? device_end : offset + len;
    uint64_t first_block = offset / kBlockSize;
    uint64_t last_block = (end - 1) / kBlockSize;
    // The chunk holding a block is the last one starting at or before it.
    auto starts_after = [](uint64_t block, const erostream_chunk_record& c) { return block < c.blkaddr; };
    auto it_first = std::upper_bound(chunks.begin(), chunks.end(), first_block, starts_after);
    auto it_last = std::upper_bound(chunks.begin(), chunks.end(), last_block, starts_after);
    ChunkSpan s;
    s.first = static_cast<size_t>(it_first - chunks.begin()) - 1;
    s.last = static_cast<size_t>(it_last - chunks.begin());
    return s;
}

std::vector<FetchRun> plan_runs(std::span<const erostream_chunk_record> chunks,
                                std::span<const size_t> sorted_indexes, uint64_t max_bytes) {
    std::vector<FetchRun> runs;
    for (size_t idx : sorted_indexes) {
        const auto& c = chunks[idx];
        if (!runs.empty()) {
            FetchRun& r = runs.back();
            bool next_index = r.first + r.count == idx;
            bool adjacent = r.offset + r.length == c.compressed_offset;
            if (next_index && adjacent && r.length + c.compressed_size <= max_bytes) {
                r.count++;
                r.length += c.compressed_size;
                continue;
            }
        }
        runs.push_back({idx, 1, c.compressed_offset, c.compressed_size});
    }
    return runs;
}

}  // namespace erostream
