// Data blobs: frames in order, holes, dedup, a seek table, and a chunk table that parses back.
#include <doctest.h>
#include <zstd.h>

#include <cstring>

#include "chunk_table.h"
#include "data_blob.h"

using namespace erostream;

namespace {

struct Built {
    std::string blob;
    DataBlobResult result;
    std::vector<std::shared_ptr<Inode>> files;
};

Built build(const std::vector<std::string>& contents, unsigned workers, ChunkDedupMap& dedup,
            uint16_t device = 1) {
    Built b;
    ThreadPool pool(workers);
    DataBlobBuilder builder([&](const void* p, size_t n) -> Result<void> {
        b.blob.append(static_cast<const char*>(p), n);
        return {};
    }, device, 13 /* 8 KiB chunks */, 3, pool, dedup);
    for (const auto& c : contents) {
        auto ino = std::make_shared<Inode>();
        ino->size = c.size();
        size_t n = (c.size() + 8191) / 8192;
        ino->chunks.assign(n, ChunkRef{});
        for (size_t i = 0; i < n; ++i) {
            auto buf = builder.take_buffer();
            size_t len = std::min<size_t>(8192, c.size() - i * 8192);
            std::memcpy(buf.data(), c.data() + i * 8192, len);
            REQUIRE(builder.submit(ino, static_cast<uint32_t>(i), std::move(buf), len));
        }
        b.files.push_back(ino);
    }
    auto r = builder.finish();
    REQUIRE(r);
    b.result = std::move(*r);
    return b;
}

std::string pattern(size_t n, char seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + (i >> 9));
    return s;
}

}  // namespace

TEST_CASE("a data blob decompresses to its device image, with holes and dedup") {
    ChunkDedupMap dedup;
    std::string a = pattern(20000, 1);                       // 3 chunks, last one short
    std::string zeros(16384, '\0');                          // 2 hole chunks
    std::string dup = a.substr(0, 8192) + pattern(100, 5);   // first chunk dedups against a
    auto b = build({a, zeros, dup}, 2, dedup);

    CHECK(b.result.stats.zero_chunks == 2);
    CHECK(b.result.stats.dedup_chunks == 1);
    CHECK(b.result.stats.stored_chunks == 4);
    CHECK(b.files[1]->chunks[0].is_hole());
    CHECK(b.files[2]->chunks[0] == b.files[0]->chunks[0]);
    CHECK(b.files[0]->chunks[0].device_id == 1);

    // zstd -d equivalent: decompress every frame in sequence; skippable frames vanish.
    std::string device(b.result.device_blocks * 4096, '\0');
    size_t out = ZSTD_decompress(device.data(), device.size(), b.blob.data(), b.blob.size());
    REQUIRE(!ZSTD_isError(out));
    CHECK(out == device.size());
    // file a's chunk 2 (3616 bytes) starts at its chunk's blkaddr
    auto ref = b.files[0]->chunks[2];
    CHECK(device.compare(ref.blkaddr * 4096ull, 20000 - 16384, a, 16384, 20000 - 16384) == 0);
    // padding is zero
    CHECK(device[ref.blkaddr * 4096ull + 3616] == '\0');

    // seek table at the end: entries match the records
    auto table = make_seek_table(b.result.chunks);
    CHECK(b.blob.compare(b.blob.size() - table.size(), table.size(), table) == 0);
}

TEST_CASE("blob bytes do not depend on the number of workers") {
    std::vector<std::string> files;
    for (int i = 0; i < 20; ++i) files.push_back(pattern(5000 + i * 3001, static_cast<char>(i)));
    ChunkDedupMap d1, d4;
    auto one = build(files, 1, d1);
    auto four = build(files, 4, d4);
    CHECK(one.blob == four.blob);
}

TEST_CASE("chunks dedup across devices and the chunk table round-trips") {
    ChunkDedupMap dedup;
    std::string a = pattern(9000, 3);
    auto first = build({a}, 2, dedup, 1);
    auto second = build({a, pattern(10, 9)}, 2, dedup, 2);
    CHECK(second.files[0]->chunks[0].device_id == 1);
    CHECK(second.files[1]->chunks[0].device_id == 2);

    std::vector<DeviceChunks> devs(2);
    devs[0].blob_digest = sha256(first.blob);
    devs[0].blob_size = first.result.blob_size;
    devs[0].device_blocks = first.result.device_blocks;
    devs[0].chunks = first.result.chunks;
    devs[1].blob_digest = sha256(second.blob);
    devs[1].blob_size = second.result.blob_size;
    devs[1].device_blocks = second.result.device_blocks;
    devs[1].chunks = second.result.chunks;
    std::string erofs(8192, 'E');
    std::string meta = assemble_metadata_blob(erofs, 13, devs);
    auto parsed = parse_metadata_blob(meta);
    REQUIRE_MESSAGE(parsed, (parsed ? "" : parsed.error().what()));
    CHECK(parsed->erofs.size() == 8192);
    CHECK(parsed->chunk_bits == 13);
    REQUIRE(parsed->devices.size() == 2);
    CHECK(parsed->devices[1].chunks.size() == second.result.chunks.size());
    CHECK(parsed->devices[0].blob_digest == devs[0].blob_digest);

    // any flipped byte in the table or footer is caught
    for (size_t pos = 8192; pos < meta.size(); pos += 7) {
        std::string bad = meta;
        bad[pos] ^= 0x20;
        CHECK_MESSAGE(!parse_metadata_blob(bad), "flip at ", pos);
    }
    CHECK(!parse_metadata_blob(meta.substr(0, meta.size() - 1)));
}
