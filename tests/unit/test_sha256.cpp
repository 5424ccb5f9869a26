#include <doctest.h>

#include "sha256.h"

using namespace erostream;

TEST_CASE("sha256 of known inputs") {
    CHECK(to_hex(sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    Sha256 h;
    h.update("ab");
    h.update("c");
    CHECK(digest_string(h.finish()) ==
          "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("digest strings are parsed strictly") {
    auto d = parse_digest("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    REQUIRE(d);
    CHECK(d->at(0) == 0xba);
    CHECK(!parse_digest("sha512:00"));
    CHECK(!parse_digest("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
    CHECK(!parse_digest("sha256:abc"));
}
