// Device ranges to chunks, and missing chunks to range requests.
#include <doctest.h>

#include "chunk_map.h"

using namespace erostream;

namespace {
std::vector<erostream_chunk_record> records(std::vector<uint32_t> blocks, std::vector<uint32_t> csize) {
    std::vector<erostream_chunk_record> v;
    uint32_t addr = 0;
    uint64_t off = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
        erostream_chunk_record r{};
        r.blkaddr = addr;
        r.blocks = blocks[i];
        r.compressed_offset = off;
        r.compressed_size = csize[i];
        addr += blocks[i];
        off += csize[i];
        v.push_back(r);
    }
    return v;
}
}  // namespace

TEST_CASE("chunks_for_range: block-granular, clipped at the device end") {
    auto c = records({256, 256, 10}, {100, 200, 50});  // device: 522 blocks
    auto s = chunks_for_range(c, 0, 1);
    CHECK(s.first == 0);
    CHECK(s.last == 1);
    s = chunks_for_range(c, 256 * 4096 - 1, 2);  // straddles chunks 0 and 1
    CHECK(s.first == 0);
    CHECK(s.last == 2);
    s = chunks_for_range(c, 256 * 4096, 4096);
    CHECK(s.first == 1);
    CHECK(s.last == 2);
    s = chunks_for_range(c, 0, ~uint64_t{0} / 2);  // everything, clipped
    CHECK(s.first == 0);
    CHECK(s.last == 3);
    CHECK(chunks_for_range(c, 522 * 4096, 4096).empty());  // past the end
    CHECK(chunks_for_range(c, 100, 0).empty());
    s = chunks_for_range(c, 521 * 4096 + 5, 1 << 20);
    CHECK(s.first == 2);
    CHECK(s.last == 3);
    std::vector<erostream_chunk_record> none;
    CHECK(chunks_for_range(none, 0, 4096).empty());
}

TEST_CASE("plan_runs: adjacent chunks coalesce up to the cap") {
    auto c = records({1, 1, 1, 1, 1, 1}, {100, 100, 100, 100, 500, 100});
    std::vector<size_t> idx{0, 1, 2, 4, 5};
    auto runs = plan_runs(c, idx, 250);
    REQUIRE(runs.size() == 4);
    CHECK(runs[0] == FetchRun{0, 2, 0, 200});
    CHECK(runs[1] == FetchRun{2, 1, 200, 100});
    CHECK(runs[2] == FetchRun{4, 1, 400, 500});  // bigger than the cap: alone
    CHECK(runs[3] == FetchRun{5, 1, 900, 100});
    runs = plan_runs(c, idx, 1 << 20);
    REQUIRE(runs.size() == 2);
    CHECK(runs[0] == FetchRun{0, 3, 0, 300});
    CHECK(runs[1] == FetchRun{4, 2, 400, 600});
}

TEST_CASE("plan_runs: frames that are not adjacent in the blob are separate requests") {
    auto c = records({1, 1}, {100, 100});
    c[1].compressed_offset = 5000;  // as if the blob were laid out otherwise
    std::vector<size_t> idx{0, 1};
    auto runs = plan_runs(c, idx, 1 << 20);
    CHECK(runs.size() == 2);
}
