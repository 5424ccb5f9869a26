// Helpers for the daemon's unit tests: a data blob made in memory (zstd frames, chunk records
// with digests), a scratch directory, and a FetchBackend over the blob that counts requests and
// can corrupt or fail them.
#pragma once

#include <zstd.h>

#include <filesystem>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "chunk_table.h"
#include "event_loop.h"
#include "fetch_backend.h"
#include "sha256.h"

namespace erostream::testing {

struct ScratchDir {
    std::string path;
    ScratchDir() {
        char tmpl[] = "/tmp/eros-daemon-test-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

struct MemBlob {
    std::string bytes;     // the data blob: frames (no seek table: nothing here reads it)
    std::string device;    // the uncompressed device
    DeviceChunks dev;
    Descriptor desc;
};

// Chunks of the given sizes in blocks, each filled with a pattern from `seed`.
inline MemBlob make_blob(const std::vector<uint32_t>& blocks_per_chunk, unsigned seed = 1) {
    MemBlob b;
    std::mt19937 rng(seed);
    uint32_t blkaddr = 0;
    for (uint32_t blocks : blocks_per_chunk) {
        std::string plain(size_t{blocks} * 4096, '\0');
        for (auto& c : plain) c = static_cast<char>('a' + rng() % 26);
        std::string frame(ZSTD_compressBound(plain.size()), '\0');
        size_t n = ZSTD_compress(frame.data(), frame.size(), plain.data(), plain.size(), 1);
        frame.resize(n);
        erostream_chunk_record r{};
        r.compressed_offset = b.bytes.size();
        r.compressed_size = static_cast<uint32_t>(n);
        r.blocks = blocks;
        r.blkaddr = blkaddr;
        auto d = sha256(plain);
        std::memcpy(r.sha256, d.data(), 32);
        b.dev.chunks.push_back(r);
        b.bytes += frame;
        b.device += plain;
        blkaddr += blocks;
    }
    b.dev.device_blocks = blkaddr;
    b.dev.blob_size = b.bytes.size();
    b.dev.blob_digest = sha256(b.bytes);
    b.desc.digest = digest_string(b.dev.blob_digest);
    b.desc.size = static_cast<int64_t>(b.bytes.size());
    b.desc.media_type = "application/vnd.erostream.data.v1.zstd";
    return b;
}

// Answers from memory, asynchronously (through post), like a real backend.
class MemBackend final : public FetchBackend {
public:
    MemBackend(const MemBlob& blob, EventLoop& loop) : blob_(blob), loop_(loop) {}
    std::string describe() const override { return "memory"; }
    void fetch_range(const Descriptor&, uint64_t offset, uint64_t len, const std::string&, RangeDone done) override {
        requests.push_back({offset, len});
        Result<std::string> r = blob_.bytes.substr(offset, len);
        if (fail_next > 0) {
            --fail_next;
            r = fail("injected failure", EIO);
        } else if (corrupt_offsets.count(offset) && corrupt_budget > 0) {
            --corrupt_budget;
            (*r)[r->size() / 2] ^= 0x55;
        }
        if (hold) {
            held.push_back([r = std::move(r), done = std::move(done)]() mutable { done(std::move(r)); });
            return;
        }
        loop_.post([r = std::move(r), done = std::move(done)]() mutable { done(std::move(r)); });
    }
    unsigned max_inflight() const override { return max; }
    std::string limit_key() const override { return "mem"; }
    bool retries_itself() const override { return retries; }
    void release_held() {
        auto h = std::move(held);
        held.clear();
        for (auto& f : h) loop_.post(std::move(f));
    }

    std::vector<std::pair<uint64_t, uint64_t>> requests;
    int fail_next = 0;
    std::set<uint64_t> corrupt_offsets;  // ranges starting here come back corrupted
    int corrupt_budget = 0;
    bool hold = false;
    std::vector<std::function<void()>> held;
    unsigned max = 4;
    bool retries = false;  // a backend that retries by itself (the registry backend)

private:
    const MemBlob& blob_;
    EventLoop& loop_;
};

}  // namespace erostream::testing
