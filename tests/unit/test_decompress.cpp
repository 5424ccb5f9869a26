#include <doctest.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <string>
#include <vector>

#include "byte_stream.h"
#include "decompress.h"
#include "sha256.h"

using namespace erostream;

namespace {

std::string gzip_bytes(const std::string& data, int level = 6) {
    z_stream zs{};
    REQUIRE(deflateInit2(&zs, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    std::string out(deflateBound(&zs, data.size()) + 64, '\0');
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs.avail_in = static_cast<uInt>(data.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    return out;
}

std::string zstd_bytes(const std::string& data, int level = 3, bool checksum = false) {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, checksum ? 1 : 0);
    std::string out(ZSTD_compressBound(data.size()), '\0');
    size_t n = ZSTD_compress2(c, out.data(), out.size(), data.data(), data.size());
    ZSTD_freeCCtx(c);
    REQUIRE(!ZSTD_isError(n));
    out.resize(n);
    return out;
}

std::string skippable_frame(const std::string& payload) {
    std::string f = "\x50\x2a\x4d\x18";
    uint32_t n = static_cast<uint32_t>(payload.size());
    for (int i = 0; i < 4; ++i) f.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    return f + payload;
}

// Compressible but not trivial: words from a small vocabulary picked by an LCG.
std::string sample_data(size_t n, uint32_t seed = 1) {
    static const char* words[] = {"usr",       "lib", "x86_64-linux-gnu", "share",
                                  "doc",       "\n",  "\0\0\0",           "ELF",
                                  "libc.so.6", " ",   "copyright",        "\xff\xfe"};
    std::string s;
    s.reserve(n + 32);
    uint32_t x = seed;
    while (s.size() < n) {
        x = x * 1664525u + 1013904223u;
        const char* w = words[(x >> 16) % 12];
        s.append(w, std::max<size_t>(std::strlen(w), 1));
        if ((x & 0xff) == 7) s.push_back(static_cast<char>(x >> 8));  // some entropy
    }
    s.resize(n);
    return s;
}

Result<std::string> read_all(ByteStream& s, size_t chunk = 1 << 20) {
    std::string out;
    std::vector<char> buf(chunk);
    for (;;) {
        size_t got = EROS_TRY(s.read(buf.data(), buf.size()));
        if (got == 0) return out;
        out.append(buf.data(), got);
    }
}

Result<std::string> decode(Compression c, std::string data, size_t max_read = SIZE_MAX,
                           size_t chunk = 1 << 20) {
    auto d = EROS_TRY(make_decoder(c, std::make_unique<MemoryStream>(std::move(data), max_read)));
    return read_all(*d, chunk);
}

Result<std::string> auto_decode(std::string data, size_t max_read = SIZE_MAX) {
    auto d = EROS_TRY(make_auto_decoder(std::make_unique<MemoryStream>(std::move(data), max_read)));
    return read_all(*d);
}

std::span<const uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

TEST_CASE("compression names and magic detection") {
    CHECK(std::string(compression_name(Compression::None)) == "none");
    CHECK(std::string(compression_name(Compression::Gzip)) == "gzip");
    CHECK(std::string(compression_name(Compression::Zstd)) == "zstd");
    CHECK(detect_compression(bytes_of(std::string("\x1f\x8b\x08\x00", 4))) == Compression::Gzip);
    CHECK(detect_compression(bytes_of(std::string("\x1f\x8b", 2))) == Compression::Gzip);
    CHECK(detect_compression(bytes_of(std::string("\x28\xb5\x2f\xfd", 4))) == Compression::Zstd);
    CHECK(detect_compression(bytes_of(std::string("\x5e\x2a\x4d\x18", 4))) == Compression::Zstd);
    CHECK(detect_compression(bytes_of(std::string("\x28\xb5\x2f", 3))) == Compression::None);
    CHECK(detect_compression(bytes_of(std::string("\x1f", 1))) == Compression::None);
    CHECK(detect_compression(bytes_of(std::string("usr/", 4))) == Compression::None);
    CHECK(detect_compression({}) == Compression::None);
}

TEST_CASE("gzip round trip, large and with short reads") {
    std::string data = sample_data(3 << 20);
    std::string gz = gzip_bytes(data);
    auto r = decode(Compression::Gzip, gz);
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK(*r == data);
    // A source that returns 7 bytes at a time and a reader asking 4093 bytes at a time.
    std::string small = sample_data(200000, 3);
    auto r2 = decode(Compression::Gzip, gzip_bytes(small, 1), 7, 4093);
    REQUIRE_MESSAGE(r2, r2.error().what());
    CHECK(*r2 == small);
    // Single-byte output reads.
    std::string tiny = "hello, gzip\n";
    auto r3 = decode(Compression::Gzip, gzip_bytes(tiny), 1, 1);
    REQUIRE(r3);
    CHECK(*r3 == tiny);
}

TEST_CASE("gzip multi-member streams are concatenated") {
    std::string a = sample_data(1500000, 5), b = "second member", c = sample_data(70000, 9);
    std::string gz = gzip_bytes(a) + gzip_bytes(b, 9) + gzip_bytes("") + gzip_bytes(c, 1);
    for (size_t max_read : {size_t{SIZE_MAX}, size_t{1000}, size_t{3}}) {
        auto r = decode(Compression::Gzip, gz, max_read, 65536);
        REQUIRE_MESSAGE(r, r.error().what());
        CHECK(*r == a + b + c);
    }
}

TEST_CASE("gzip trailing zero padding is ignored, other trailing bytes are not") {
    std::string data = "padded";
    auto ok = decode(Compression::Gzip, gzip_bytes(data) + std::string(3000, '\0'));
    REQUIRE(ok);
    CHECK(*ok == data);

    auto garbage = decode(Compression::Gzip, gzip_bytes(data) + std::string(10, '\0') + "junk");
    REQUIRE(!garbage);
    CHECK(garbage.error().message.find("corrupt gzip stream") != std::string::npos);

    auto not_gzip = decode(Compression::Gzip, gzip_bytes(data) + "junk after member");
    REQUIRE(!not_gzip);
    CHECK(not_gzip.error().message.find("corrupt gzip stream") != std::string::npos);
}

TEST_CASE("truncated gzip streams are errors at every cut") {
    std::string data = sample_data(20000, 11);
    std::string one = gzip_bytes(data);
    std::string gz = one + gzip_bytes("tail member");
    for (size_t cut = 0; cut < gz.size(); ++cut) {
        if (cut == one.size()) continue;  // a complete first member is a valid stream
        auto r = decode(Compression::Gzip, gz.substr(0, cut), 997);
        REQUIRE_MESSAGE(!r, "cut at " << cut);
        CHECK_MESSAGE(r.error().message == "truncated gzip stream",
                      "cut at " << cut << ": " << r.error().message);
    }
    // A large stream cut in the middle of its deflate data, read in big pieces.
    std::string big = gzip_bytes(sample_data(3 << 20, 2));
    auto r = decode(Compression::Gzip, big.substr(0, big.size() / 2));
    REQUIRE(!r);
    CHECK(r.error().message == "truncated gzip stream");
}

TEST_CASE("corrupt gzip streams are errors") {
    std::string data = sample_data(100000, 4);
    std::string gz = gzip_bytes(data);

    std::string bad_crc = gz;
    bad_crc[bad_crc.size() - 8] ^= 0x01;
    auto r1 = decode(Compression::Gzip, bad_crc);
    REQUIRE(!r1);
    CHECK(r1.error().message.starts_with("corrupt gzip stream: "));

    std::string bad_isize = gz;
    bad_isize[bad_isize.size() - 1] ^= 0x40;
    auto r2 = decode(Compression::Gzip, bad_isize);
    REQUIRE(!r2);
    CHECK(r2.error().message.starts_with("corrupt gzip stream: "));

    std::string bad_header = gz;
    bad_header[2] = 7;  // compression method other than deflate
    auto r3 = decode(Compression::Gzip, bad_header);
    REQUIRE(!r3);
    CHECK(r3.error().message.starts_with("corrupt gzip stream: "));

    // Damage in the deflate data: either invalid codes or a CRC mismatch, never silent success.
    for (size_t pos : {size_t{40}, gz.size() / 3, gz.size() / 2, gz.size() - 20}) {
        std::string bad = gz;
        bad[pos] ^= 0x5a;
        auto r = decode(Compression::Gzip, bad);
        CHECK_MESSAGE(!r, "flip at " << pos);
    }
}

TEST_CASE("empty input is a truncated stream for gzip and zstd") {
    auto g = decode(Compression::Gzip, "");
    REQUIRE(!g);
    CHECK(g.error().message == "truncated gzip stream");
    auto z = decode(Compression::Zstd, "");
    REQUIRE(!z);
    CHECK(z.error().message == "truncated zstd stream");
}

TEST_CASE("zstd round trip, multiple frames, skippable frames") {
    std::string a = sample_data(2500000, 21), b = sample_data(1000, 22), c = "third";
    std::string zs = skippable_frame("meta") + zstd_bytes(a, 3, true) + zstd_bytes(b, 19) +
                     skippable_frame(std::string(100, 'x')) + zstd_bytes("") + zstd_bytes(c) +
                     skippable_frame("");
    for (size_t max_read : {size_t{SIZE_MAX}, size_t{4096}, size_t{5}}) {
        for (size_t chunk : {size_t{1} << 20, size_t{777}}) {
            auto r = decode(Compression::Zstd, zs, max_read, chunk);
            REQUIRE_MESSAGE(r, r.error().what());
            CHECK(*r == a + b + c);
        }
    }
    auto only_skippable = decode(Compression::Zstd, skippable_frame("nothing"));
    REQUIRE(only_skippable);
    CHECK(only_skippable->empty());
}

TEST_CASE("truncated and corrupt zstd streams are errors") {
    std::string one = zstd_bytes(sample_data(30000, 31), 3, true);
    std::string zs = one + zstd_bytes("tail frame");
    for (size_t cut = 0; cut < zs.size(); ++cut) {
        if (cut == one.size()) continue;
        auto r = decode(Compression::Zstd, zs.substr(0, cut), 501);
        REQUIRE_MESSAGE(!r, "cut at " << cut);
        CHECK_MESSAGE(r.error().message == "truncated zstd stream",
                      "cut at " << cut << ": " << r.error().message);
    }
    std::string bad = one;
    bad[bad.size() - 2] ^= 0x11;  // content checksum
    auto r1 = decode(Compression::Zstd, bad);
    REQUIRE(!r1);
    CHECK(r1.error().message.starts_with("corrupt zstd stream: "));

    auto r2 = decode(Compression::Zstd, one + std::string(8, '\0'));
    REQUIRE(!r2);
    CHECK(r2.error().message.starts_with("corrupt zstd stream: "));
}

TEST_CASE("auto decoder sniffs the format and passes raw bytes through") {
    std::string data = sample_data(300000, 41);
    for (size_t max_read : {size_t{SIZE_MAX}, size_t{1}, size_t{3}}) {
        auto raw = auto_decode(data, max_read);
        REQUIRE(raw);
        CHECK(*raw == data);
        auto gz = auto_decode(gzip_bytes(data), max_read == 1 ? 2 : max_read);
        REQUIRE(gz);
        CHECK(*gz == data);
        auto z = auto_decode(zstd_bytes(data), max_read == 1 ? 2 : max_read);
        REQUIRE_MESSAGE(z, "max_read " << max_read << ": " << z.error().what());
        CHECK(*z == data);
    }
    auto empty = auto_decode("");
    REQUIRE(empty);
    CHECK(empty->empty());
    auto two = auto_decode("ab", 1);
    REQUIRE(two);
    CHECK(*two == "ab");
    auto gz_truncated = auto_decode(std::string("\x1f\x8b", 2));
    REQUIRE(!gz_truncated);
    CHECK(gz_truncated.error().message == "truncated gzip stream");
}

TEST_CASE("make_decoder(None) returns the source unchanged") {
    auto d = make_decoder(Compression::None, std::make_unique<MemoryStream>("plain"));
    REQUIRE(d);
    auto r = read_all(**d);
    REQUIRE(r);
    CHECK(*r == "plain");
}

TEST_CASE("DigestingStream checks digest and size at the end") {
    std::string data = sample_data(1 << 20, 51);
    Sha256Digest good = sha256(data);

    SUBCASE("match") {
        DigestingStream s(std::make_unique<MemoryStream>(data, 10000), good,
                          static_cast<int64_t>(data.size()));
        auto r = read_all(s, 4096);
        REQUIRE_MESSAGE(r, r.error().what());
        CHECK(*r == data);
        CHECK(s.finished());
        CHECK(s.digest() == good);
        CHECK(s.bytes() == data.size());
        char c;
        auto again = s.read(&c, 1);
        REQUIRE(again);
        CHECK(*again == 0);
    }
    SUBCASE("no expectation: digest is computed") {
        DigestingStream s(std::make_unique<MemoryStream>("abc"), std::nullopt);
        auto r = read_all(s);
        REQUIRE(r);
        CHECK(to_hex(s.digest()) ==
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        CHECK(s.bytes() == 3);
    }
    SUBCASE("digest mismatch") {
        std::string other = data;
        other[12345] ^= 1;
        DigestingStream s(std::make_unique<MemoryStream>(other), good);
        auto r = read_all(s);
        REQUIRE(!r);
        std::string want = fmt::format("digest mismatch: expected {} got {}", digest_string(good),
                                       digest_string(sha256(other)));
        CHECK(r.error().message == want);
        char c;
        auto again = s.read(&c, 1);  // stays failed
        REQUIRE(!again);
        CHECK(again.error().message == want);
    }
    SUBCASE("stream shorter than expected") {
        DigestingStream s(std::make_unique<MemoryStream>(data.substr(0, 100)), std::nullopt, 101);
        auto r = read_all(s);
        REQUIRE(!r);
        CHECK(r.error().message == "size mismatch: expected 101 bytes, got 100");
    }
    SUBCASE("stream longer than expected fails as soon as it runs past") {
        DigestingStream s(std::make_unique<MemoryStream>(data), good, 1000);
        std::vector<char> buf(4096);
        auto r = s.read(buf.data(), buf.size());
        REQUIRE(!r);
        CHECK(r.error().message == "size mismatch: expected 1000 bytes, got more");
    }
}

TEST_CASE("digest of compressed and uncompressed bytes in one stack") {
    std::string data = sample_data(500000, 61);
    std::string gz = gzip_bytes(data);
    auto outer = std::make_unique<DigestingStream>(std::make_unique<MemoryStream>(gz), sha256(gz),
                                                   static_cast<int64_t>(gz.size()));
    DigestingStream* outer_ptr = outer.get();
    auto dec = make_auto_decoder(std::move(outer));
    REQUIRE(dec);
    DigestingStream inner(std::move(*dec), sha256(data));
    auto r = read_all(inner);
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK(*r == data);
    CHECK(outer_ptr->finished());
    CHECK(outer_ptr->bytes() == gz.size());
    CHECK(inner.digest() == sha256(data));
}
