// Pure arithmetic between device byte ranges and a data blob's chunk records: which chunks a
// kernel read touches, and how missing chunks group into range requests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "artifact_format.h"

namespace erostream {

inline constexpr uint64_t kBlockSize = 4096;

// Chunk indexes [first, last) overlapping device bytes [offset, offset + len). `chunks` are one
// device's records (blkaddr order, tiling the device from block 0, as parse_metadata_blob
// guarantees). Empty for len 0 or a range starting past the device's end; a range running past
// the end is clipped.
struct ChunkSpan {
    size_t first = 0, last = 0;
    bool empty() const { return first >= last; }
    size_t size() const { return empty() ? 0 : last - first; }
};
ChunkSpan chunks_for_range(std::span<const erostream_chunk_record> chunks, uint64_t offset, uint64_t len);

// One range request: chunks [first, first + count) whose frames are adjacent in the blob,
// compressed bytes [offset, offset + length).
struct FetchRun {
    size_t first = 0, count = 0;
    uint64_t offset = 0, length = 0;
    bool operator==(const FetchRun&) const = default;
};

// Groups sorted, distinct chunk indexes into runs: consecutive indexes with adjacent frames, at
// most `max_bytes` compressed per run (a chunk bigger than that is a run of its own).
std::vector<FetchRun> plan_runs(std::span<const erostream_chunk_record> chunks,
                                std::span<const size_t> sorted_indexes, uint64_t max_bytes);

// Device bytes of a chunk.
inline uint64_t chunk_device_offset(const erostream_chunk_record& c) { return uint64_t{c.blkaddr} * kBlockSize; }
inline uint64_t chunk_device_bytes(const erostream_chunk_record& c) { return uint64_t{c.blocks} * kBlockSize; }

}  // namespace erostream
