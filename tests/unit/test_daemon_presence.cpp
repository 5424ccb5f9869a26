// The presence file format: round trip and every way it can refuse.
#include <doctest.h>

#include "presence_file.h"

using namespace erostream;

namespace {
PresenceIdentity ident() {
    PresenceIdentity id;
    id.chunk_count = 11;
    id.device_blocks = 300;
    id.img_ino = 4242;
    id.blob_sha256[0] = 1;
    id.table_sha256[0] = 2;
    return id;
}
}  // namespace

TEST_CASE("presence file: round trip") {
    auto id = ident();
    std::string f = encode_presence_header(id);
    CHECK(f.size() == kPresenceHeaderSize);
    f += std::string("\x05\x04", 2);  // chunks 0, 2, 10
    auto bits = parse_presence_file(f, id);
    REQUIRE(bits);
    CHECK(bits->test(0));
    CHECK_FALSE(bits->test(1));
    CHECK(bits->test(2));
    CHECK(bits->test(10));
    CHECK(bits->count() == 3);
}

TEST_CASE("presence file: mismatches and damage are refused") {
    auto id = ident();
    std::string good = encode_presence_header(id) + std::string(2, '\0');
    REQUIRE(parse_presence_file(good, id));
    CHECK_FALSE(parse_presence_file(good.substr(0, 50), id));
    CHECK_FALSE(parse_presence_file(good.substr(0, good.size() - 1), id));
    CHECK_FALSE(parse_presence_file(good + "x", id));
    std::string bad = good;
    bad[0] = 'X';
    CHECK_FALSE(parse_presence_file(bad, id));
    bad = good;
    bad.back() = '\x08';  // bit 11: past chunk_count
    CHECK_FALSE(parse_presence_file(bad, id));
    for (int field = 0; field < 5; ++field) {
        auto other = id;
        switch (field) {
        case 0: other.chunk_count = 12; break;
        case 1: other.device_blocks = 301; break;
        case 2: other.img_ino = 1; break;
        case 3: other.blob_sha256[5] = 9; break;
        case 4: other.table_sha256[5] = 9; break;
        }
        CHECK_FALSE(parse_presence_file(good, other));
    }
}
