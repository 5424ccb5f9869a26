#include "data_blob.h"

#include <algorithm>
#include <cstring>

#include "erofs_format.h"

namespace erostream {

struct DataBlobBuilder::Job {
    std::shared_ptr<Inode> inode;
    uint32_t index = 0;
    std::vector<uint8_t> buf;
    size_t len = 0;
    size_t padded = 0;
    bool zero = false;
    Sha256Digest digest{};
    std::vector<uint8_t> frame;
    std::string error;
    Completion done;
};

namespace {

bool all_zero(const uint8_t* p, size_t n) {
    // Word-at-a-time; chunks are block multiples so n is a multiple of 8.
    const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
    uint64_t acc = 0;
    for (size_t i = 0; i < n / 8; ++i) {
        acc |= w[i];
        if ((i & 511) == 511 && acc) return false;
    }
    return acc == 0;
}

void put_le32(std::string& s, uint32_t v) {
    char b[4];
    std::memcpy(b, &v, 4);
    s.append(b, 4);
}

}  // namespace

DataBlobBuilder::DataBlobBuilder(Sink sink, uint16_t device_id, uint32_t chunk_bits,
                                 int zstd_level, ThreadPool& pool, ChunkDedupMap& dedup)
    : sink_(std::move(sink)),
      device_id_(device_id),
      chunk_bits_(chunk_bits),
      level_(zstd_level),
      pool_(pool),
      dedup_(dedup),
      max_inflight_(2 * pool.size() + 2) {
    for (unsigned i = 0; i < pool.size(); ++i) cctx_.push_back(ZSTD_createCCtx());
}

DataBlobBuilder::~DataBlobBuilder() {
    for (auto& j : inflight_) j->done.wait();  // tasks reference the jobs and contexts
    for (auto* c : cctx_) ZSTD_freeCCtx(c);
}

std::vector<uint8_t> DataBlobBuilder::take_buffer() {
    if (!free_buffers_.empty()) {
        auto b = std::move(free_buffers_.back());
        free_buffers_.pop_back();
        return b;
    }
    return std::vector<uint8_t>(chunk_size());
}

void DataBlobBuilder::process(Job& job, unsigned worker) {
    job.padded = (job.len + EROFS_BLKSIZ - 1) & ~size_t{EROFS_BLKSIZ - 1};
    std::memset(job.buf.data() + job.len, 0, job.padded - job.len);
    job.zero = all_zero(job.buf.data(), job.padded);
    if (job.zero) return;
    job.digest = sha256(job.buf.data(), job.padded);
    job.frame.resize(ZSTD_compressBound(job.padded));
    size_t r = ZSTD_compressCCtx(cctx_[worker], job.frame.data(), job.frame.size(), job.buf.data(),
                                 job.padded, level_);
    if (ZSTD_isError(r)) {
        job.error = ZSTD_getErrorName(r);
        return;
    }
    job.frame.resize(r);
}

Result<void> DataBlobBuilder::submit(std::shared_ptr<Inode> inode, uint32_t index,
                                     std::vector<uint8_t> buf, size_t len) {
    if (buf.size() < chunk_size() || len > chunk_size() || len == 0)
        return fail("internal: bad chunk buffer");
    auto job = std::make_unique<Job>();
    job->inode = std::move(inode);
    job->index = index;
    job->buf = std::move(buf);
    job->len = len;
    Job* raw = job.get();
    inflight_.push_back(std::move(job));
    pool_.submit([this, raw](unsigned worker) {
        process(*raw, worker);
        raw->done.set();
    });
    result_.stats.logical_bytes += len;
    while (inflight_.size() > max_inflight_) EROS_TRYV(retire_one());
    return {};
}

Result<void> DataBlobBuilder::retire_one() {
    auto job = std::move(inflight_.front());
    inflight_.pop_front();
    job->done.wait();
    if (!job->error.empty()) return failf("zstd compression failed: {}", job->error);

    ChunkRef ref;  // a hole unless stored or found
    if (job->zero) {
        ++result_.stats.zero_chunks;
    } else if (auto it = dedup_.find(job->digest); it != dedup_.end()) {
        ref = it->second;
        ++result_.stats.dedup_chunks;
        result_.stats.dedup_bytes += job->len;
    } else {
        EROS_TRYV(sink_(job->frame.data(), job->frame.size()));
        erostream_chunk_record rec{};
        rec.compressed_offset = offset_;
        rec.compressed_size = static_cast<uint32_t>(job->frame.size());
        rec.blocks = static_cast<uint32_t>(job->padded / EROFS_BLKSIZ);
        if (result_.device_blocks + rec.blocks >= EROFS_NULL_ADDR)
            return fail("data device would exceed 16 TiB");
        rec.blkaddr = static_cast<uint32_t>(result_.device_blocks);
        std::memcpy(rec.sha256, job->digest.data(), 32);
        offset_ += rec.compressed_size;
        result_.device_blocks += rec.blocks;
        result_.chunks.push_back(rec);
        ref = ChunkRef{device_id_, rec.blkaddr};
        dedup_.emplace(job->digest, ref);
        ++result_.stats.stored_chunks;
        result_.stats.stored_bytes += job->padded;
    }
    job->inode->chunks.at(job->index) = ref;
    free_buffers_.push_back(std::move(job->buf));
    return {};
}

Result<DataBlobResult> DataBlobBuilder::finish() {
    while (!inflight_.empty()) EROS_TRYV(retire_one());
    std::string table = make_seek_table(result_.chunks);
    EROS_TRYV(sink_(table.data(), table.size()));
    result_.blob_size = offset_ + table.size();
    free_buffers_.clear();
    return std::move(result_);
}

std::string make_seek_table(const std::vector<erostream_chunk_record>& chunks) {
    std::string s;
    s.reserve(8 + chunks.size() * 8 + 9);
    put_le32(s, ZSTD_SKIPPABLE_SEEKTABLE_MAGIC);
    put_le32(s, static_cast<uint32_t>(chunks.size() * 8 + 9));
    for (const auto& c : chunks) {
        put_le32(s, c.compressed_size);
        put_le32(s, c.blocks * EROFS_BLKSIZ);
    }
    put_le32(s, static_cast<uint32_t>(chunks.size()));
    s.push_back('\0');  // descriptor: no checksums
    put_le32(s, ZSTD_SEEKABLE_MAGIC);
    return s;
}

}  // namespace erostream
