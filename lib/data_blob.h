// Builds one data blob: file contents cut into chunks, each chunk hashed, checked for zeros
// (holes), deduplicated against every chunk stored so far in the image, compressed into its own
// zstd frame on the worker pool, and appended in submission order, so that the blob's bytes do
// not depend on thread timing. Memory stays bounded: at most a few chunks per worker are in
// flight; submit() retires the oldest when the window is full.
#pragma once

#include <zstd.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "artifact_format.h"
#include "fs_tree.h"
#include "result.h"
#include "sha256.h"
#include "thread_pool.h"

namespace erostream {

struct DigestHash {
    size_t operator()(const Sha256Digest& d) const {
        size_t h;
        static_assert(sizeof(h) <= sizeof(d));
        __builtin_memcpy(&h, d.data(), sizeof(h));
        return h;
    }
};
// Every chunk stored so far in the image being converted: its digest -> where it lives.
using ChunkDedupMap = std::unordered_map<Sha256Digest, ChunkRef, DigestHash>;

struct DataBlobStats {
    uint64_t logical_bytes = 0;  // file bytes submitted
    uint64_t zero_chunks = 0;    // became holes
    uint64_t dedup_chunks = 0;   // found stored already
    uint64_t dedup_bytes = 0;
    uint64_t stored_chunks = 0;
    uint64_t stored_bytes = 0;   // uncompressed, padded
};

struct DataBlobResult {
    std::vector<erostream_chunk_record> chunks;  // in device order
    uint64_t device_blocks = 0;
    uint64_t blob_size = 0;  // frames + seek table
    DataBlobStats stats;
};

class DataBlobBuilder {
public:
    using Sink = std::function<Result<void>(const void* data, size_t n)>;

    DataBlobBuilder(Sink sink, uint16_t device_id, uint32_t chunk_bits, int zstd_level,
                    ThreadPool& pool, ChunkDedupMap& dedup);
    ~DataBlobBuilder();
    DataBlobBuilder(const DataBlobBuilder&) = delete;
    DataBlobBuilder& operator=(const DataBlobBuilder&) = delete;

    size_t chunk_size() const { return size_t{1} << chunk_bits_; }
    // A buffer of chunk_size() bytes to fill with one chunk's content.
    std::vector<uint8_t> take_buffer();
    // Queues chunk `index` of `inode` (its first `len` bytes of `buf` are the content). The
    // inode's chunks[index] is filled in when the chunk is retired.
    Result<void> submit(std::shared_ptr<Inode> inode, uint32_t index, std::vector<uint8_t> buf,
                        size_t len);
    // Retires everything and appends the seek table. The builder is spent afterwards.
    Result<DataBlobResult> finish();

private:
    struct Job;
    Result<void> retire_one();
    void process(Job& job, unsigned worker);

    Sink sink_;
    uint16_t device_id_;
    uint32_t chunk_bits_;
    int level_;
    ThreadPool& pool_;
    ChunkDedupMap& dedup_;
    std::vector<ZSTD_CCtx*> cctx_;  // one per worker, owned
    std::deque<std::unique_ptr<Job>> inflight_;
    size_t max_inflight_;
    std::vector<std::vector<uint8_t>> free_buffers_;
    DataBlobResult result_;
    uint64_t offset_ = 0;
};

// The zstd seekable-format seek table for frames of the given sizes (no checksums).
std::string make_seek_table(const std::vector<erostream_chunk_record>& chunks);

}  // namespace erostream
