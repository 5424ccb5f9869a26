#include <doctest.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "byte_stream.h"
#include "decompress.h"
#include "sha256.h"
#include "tar_reader.h"

using namespace erostream;

namespace {

// A tiny tar writer for the tests: headers built field by field, so that each test can produce
// exactly the variant it needs (ustar, GNU, V7, base-256 numbers, odd typeflags).
enum class Fmt { Ustar, Gnu, V7 };

struct H {
    std::string name;
    char type = '0';
    uint32_t mode = 0644;
    uint64_t uid = 0, gid = 0;
    int64_t mtime = 1700000000;
    std::optional<uint64_t> size;  // default: the content's length
    std::string linkname;
    std::string prefix;
    uint32_t devmajor = 0, devminor = 0;
    Fmt fmt = Fmt::Ustar;
    bool b256_size = false, b256_uid = false, b256_mtime = false;
};

void put_octal(std::string& b, size_t off, size_t len, uint64_t v) {
    char tmp[32];
    std::snprintf(tmp, sizeof tmp, "%0*llo", static_cast<int>(len - 1),
                  static_cast<unsigned long long>(v));
    REQUIRE(std::strlen(tmp) == len - 1);
    std::memcpy(&b[off], tmp, len - 1);
    b[off + len - 1] = '\0';
}

void put_base256(std::string& b, size_t off, size_t len, int64_t v) {
    uint64_t u = static_cast<uint64_t>(v);
    for (size_t i = 0; i < len; ++i) {
        size_t shift = 8 * (len - 1 - i);
        uint8_t byte = shift >= 64 ? (v < 0 ? 0xff : 0x00) : static_cast<uint8_t>(u >> shift);
        b[off + i] = static_cast<char>(byte);
    }
    b[off] = static_cast<char>(static_cast<uint8_t>(b[off]) | 0x80);
}

void put_str(std::string& b, size_t off, size_t len, const std::string& s) {
    REQUIRE(s.size() <= len);
    std::memcpy(&b[off], s.data(), s.size());
}

void set_checksum(std::string& b) {
    std::memset(&b[148], ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < 512; ++i) sum += static_cast<unsigned char>(b[i]);
    char tmp[16];
    std::snprintf(tmp, sizeof tmp, "%06o", sum);
    std::memcpy(&b[148], tmp, 6);
    b[154] = '\0';
    b[155] = ' ';
}

std::string header(const H& h, uint64_t size) {
    std::string b(512, '\0');
    put_str(b, 0, 100, h.name);
    put_octal(b, 100, 8, h.mode);
    if (h.b256_uid) {
        put_base256(b, 108, 8, static_cast<int64_t>(h.uid));
        put_base256(b, 116, 8, static_cast<int64_t>(h.gid));
    } else {
        put_octal(b, 108, 8, h.uid);
        put_octal(b, 116, 8, h.gid);
    }
    if (h.b256_size)
        put_base256(b, 124, 12, static_cast<int64_t>(size));
    else
        put_octal(b, 124, 12, size);
    if (h.b256_mtime)
        put_base256(b, 136, 12, h.mtime);
    else
        put_octal(b, 136, 12, static_cast<uint64_t>(h.mtime));
    b[156] = h.type;
    put_str(b, 157, 100, h.linkname);
    if (h.fmt == Fmt::Ustar)
        put_str(b, 257, 8,
                std::string("ustar\0"
                            "00",
                            8));
    if (h.fmt == Fmt::Gnu) put_str(b, 257, 8, std::string("ustar  \0", 8));
    if (h.fmt != Fmt::V7) {
        put_str(b, 265, 32, "root");
        put_str(b, 297, 32, "root");
        put_octal(b, 329, 8, h.devmajor);
        put_octal(b, 337, 8, h.devminor);
    }
    if (!h.prefix.empty()) put_str(b, 345, 155, h.prefix);
    set_checksum(b);
    return b;
}

std::string padded(std::string s) {
    s.resize((s.size() + 511) / 512 * 512, '\0');
    return s;
}

std::string entry(const H& h, const std::string& content = "") {
    return header(h, h.size.value_or(content.size())) + padded(content);
}

std::string pax_record(const std::string& k, const std::string& v) {
    size_t body = 1 + k.size() + 1 + v.size() + 1;  // " k=v\n"
    size_t len = body + 1;
    while (std::to_string(len).size() + body != len) ++len;
    return std::to_string(len) + " " + k + "=" + v + "\n";
}

std::string pax(char type, const std::vector<std::pair<std::string, std::string>>& recs) {
    std::string data;
    for (auto& [k, v] : recs) data += pax_record(k, v);
    H h{.name = "./PaxHeaders/x", .type = type};
    return entry(h, data);
}

std::string gnu_long(char type, const std::string& s) {
    H h{.name = "././@LongLink", .type = type, .mode = 0, .fmt = Fmt::Gnu};
    return entry(h, s + std::string(1, '\0'));
}

const std::string kEnd(1024, '\0');

struct Item {
    TarEntry e;
    std::string content;
};

Result<std::vector<Item>> read_archive(ByteStream& s, size_t chunk = 1 << 20) {
    TarReader tr(s);
    std::vector<Item> items;
    std::vector<char> buf(chunk);
    for (;;) {
        auto e = EROS_TRY(tr.next());
        if (!e) break;
        Item it{std::move(*e), {}};
        for (;;) {
            size_t got = EROS_TRY(tr.read(buf.data(), buf.size()));
            if (got == 0) break;
            it.content.append(buf.data(), got);
        }
        items.push_back(std::move(it));
    }
    auto again = EROS_TRY(tr.next());
    if (again) return fail("entry after the end");
    return items;
}

Result<std::vector<Item>> read_archive(std::string tar, size_t max_read = SIZE_MAX,
                                       size_t chunk = 1 << 20) {
    MemoryStream s(std::move(tar), max_read);
    return read_archive(s, chunk);
}

std::string sv(const char* p, size_t n) { return std::string(p, n); }

bool contains(const std::string& hay, const std::string& needle) {
    return hay.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("parse_tar_number: octal, base-256, errors") {
    CHECK(parse_tar_number(sv("0000644\0", 8)).value() == 0644);
    CHECK(parse_tar_number(sv("   644 \0", 8)).value() == 0644);
    CHECK(parse_tar_number(sv("644\0\0\0\0\0", 8)).value() == 0644);
    CHECK(parse_tar_number(sv("77777777777\0", 12)).value() == 077777777777ull);
    CHECK(parse_tar_number("777777777777").value() == 0777777777777ull);  // no terminator
    CHECK(parse_tar_number(sv("\0\0\0\0\0\0\0\0", 8)).value() == 0);
    CHECK(parse_tar_number("        ").value() == 0);
    CHECK(parse_tar_number("").value() == 0);
    CHECK(!parse_tar_number(sv("0000648\0", 8)));
    CHECK(!parse_tar_number(sv("12 34\0\0\0", 8)));
    CHECK(!parse_tar_number(sv("-1\0\0\0\0\0\0", 8)));
    CHECK(!parse_tar_number(sv("x", 1)));
    CHECK(!parse_tar_number("7777777777777777777777777"));  // beyond 64 bits
    CHECK(parse_tar_number("1777777777777777777777").value() == ~uint64_t{0});

    // Base-256: 5 GiB in a 12-byte size field.
    std::string f(12, '\0');
    f[0] = '\x80';
    f[7] = '\x01';
    f[8] = '\x40';
    CHECK(parse_tar_number(f).value() == (uint64_t{5} << 30));
    CHECK(parse_tar_number(sv("\x80\0\0\0\0\x01\x11\x70", 8)).value() == 70000);
    CHECK(!parse_tar_number(sv("\xff\xff\xff\xff\xff\xff\xff\xff", 8)));  // -1
    std::string big(12, '\xff');
    big[0] = '\x80';
    CHECK(!parse_tar_number(big));  // 95 bits

    CHECK(parse_tar_signed_number(sv("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 12))
              .value() == -1);
    std::string neg(12, '\0');
    put_base256(neg, 0, 12, -86400);
    CHECK(parse_tar_signed_number(neg).value() == -86400);
    put_base256(neg, 0, 12, std::numeric_limits<int64_t>::min());
    CHECK(parse_tar_signed_number(neg).value() == std::numeric_limits<int64_t>::min());
    std::string too_neg(12, '\xff');
    too_neg[4] = '\x7f';  // needs more than 64 bits
    CHECK(!parse_tar_signed_number(too_neg));
    CHECK(parse_tar_signed_number(sv("00000000017\0", 12)).value() == 15);
    CHECK(!parse_tar_signed_number("1777777777777777777777"));
}

TEST_CASE("parse_pax_records: strict records") {
    std::map<std::string, std::string> m;
    std::string data = pax_record("path", "a/b") +
                       pax_record("SCHILY.xattr.user.x", std::string("v=1\n\0z", 6)) +
                       pax_record("path", "c") + pax_record("empty", "");
    REQUIRE(parse_pax_records(data, m));
    CHECK(m.size() == 3);
    CHECK(m["path"] == "c");
    CHECK(m["SCHILY.xattr.user.x"] == std::string("v=1\n\0z", 6));
    CHECK(m["empty"].empty());
    CHECK(parse_pax_records("", m));

    std::map<std::string, std::string> x;
    CHECK(!parse_pax_records("10 path=ab\n", x));   // length one too small
    CHECK(!parse_pax_records("13 path=abc\n", x));  // too long for the data
    CHECK(!parse_pax_records("12 path=abc", x));
    CHECK(!parse_pax_records("12 path abc\n", x));  // no '='
    CHECK(!parse_pax_records("7 =abc\n", x));       // empty key
    CHECK(!parse_pax_records("1x path=abc\n", x));
    CHECK(!parse_pax_records("path=abc\n", x));
    CHECK(!parse_pax_records("0 \n", x));
    CHECK(!parse_pax_records("12 path=abc\n3", x));  // trailing garbage
    CHECK(!parse_pax_records("99999999999999999999999 a=b\n", x));
    CHECK(x.count("path") <= 1);
}

TEST_CASE("parse_pax_time: fractions and negative times") {
    auto t = parse_pax_time("1700000000.123456789");
    REQUIRE(t);
    CHECK(t->sec == 1700000000);
    CHECK(t->nsec == 123456789);
    CHECK(parse_pax_time("1.5")->nsec == 500000000);
    CHECK(parse_pax_time("12")->sec == 12);
    CHECK(parse_pax_time("12.")->nsec == 0);
    CHECK(parse_pax_time("1.12345678999")->nsec == 123456789);
    auto n = parse_pax_time("-1.5");
    REQUIRE(n);
    CHECK(n->sec == -2);
    CHECK(n->nsec == 500000000);
    CHECK(parse_pax_time("-3")->sec == -3);
    CHECK(!parse_pax_time(""));
    CHECK(!parse_pax_time(".5"));
    CHECK(!parse_pax_time("1e9"));
    CHECK(!parse_pax_time("1.5x"));
    CHECK(!parse_pax_time("99999999999999999999"));
}

TEST_CASE("tar_checksum_ok: unsigned and historic signed sums") {
    H h{.name = "caf\xc3\xa9"};
    std::string b = header(h, 0);
    auto block = [&](const std::string& s) {
        return std::span<const uint8_t, 512>(reinterpret_cast<const uint8_t*>(s.data()), 512);
    };
    CHECK(tar_checksum_ok(block(b)));
    std::string bad = b;
    bad[0] = 'C';
    CHECK(!tar_checksum_ok(block(bad)));
    // Rewrite the checksum as the signed sum (bytes >= 0x80 count negative).
    std::string s = b;
    std::memset(&s[148], ' ', 8);
    int sum = 0;
    for (char c : s) sum += static_cast<signed char>(c);
    char tmp[16];
    std::snprintf(tmp, sizeof tmp, "%06o", sum);
    std::memcpy(&s[148], tmp, 6);
    s[154] = '\0';
    CHECK(tar_checksum_ok(block(s)));
    std::string zero(512, '\0');
    CHECK(!tar_checksum_ok(block(zero)));
}

TEST_CASE("ustar entries of every type") {
    std::string content = "hello world\n";
    std::string tar =
        entry({.name = "etc/", .type = '5', .mode = 040755, .uid = 0, .gid = 0}) +
        entry({.name = "etc/hosts", .mode = 0100644, .uid = 1000, .gid = 100, .mtime = 1234567890},
              content) +
        entry({.name = "etc/link", .type = '2', .mode = 0777, .linkname = "hosts"}) +
        entry({.name = "etc/hard", .type = '1', .linkname = "etc/hosts"}) +
        entry({.name = "dev/null", .type = '3', .mode = 0666, .devmajor = 1, .devminor = 3}) +
        entry({.name = "dev/sda", .type = '4', .mode = 0660, .devmajor = 8, .devminor = 0}) +
        entry({.name = "run/fifo", .type = '6', .mode = 0600}) +
        entry({.name = "bin/suid", .type = '7', .mode = 06755}, "x") + kEnd;
    for (size_t max_read : {size_t{SIZE_MAX}, size_t{1}, size_t{100}}) {
        auto r = read_archive(tar, max_read);
        REQUIRE_MESSAGE(r, r.error().what());
        auto& v = *r;
        REQUIRE(v.size() == 8);
        CHECK(v[0].e.path == "etc/");
        CHECK(v[0].e.type == TarEntryType::Directory);
        CHECK(v[0].e.mode == 0755);
        CHECK(v[0].e.header_offset == 0);
        CHECK(v[1].e.path == "etc/hosts");
        CHECK(v[1].e.type == TarEntryType::Regular);
        CHECK(v[1].e.mode == 0644);
        CHECK(v[1].e.uid == 1000);
        CHECK(v[1].e.gid == 100);
        CHECK(v[1].e.mtime == 1234567890);
        CHECK(v[1].e.mtime_nsec == 0);
        CHECK(v[1].e.size == content.size());
        CHECK(v[1].content == content);
        CHECK(v[1].e.header_offset == 512);
        CHECK(v[2].e.type == TarEntryType::Symlink);
        CHECK(v[2].e.linkname == "hosts");
        CHECK(v[2].e.size == 0);
        CHECK(v[2].e.header_offset == 1536);
        CHECK(v[3].e.type == TarEntryType::Hardlink);
        CHECK(v[3].e.linkname == "etc/hosts");
        CHECK(v[4].e.type == TarEntryType::CharDevice);
        CHECK(v[4].e.devmajor == 1);
        CHECK(v[4].e.devminor == 3);
        CHECK(v[5].e.type == TarEntryType::BlockDevice);
        CHECK(v[5].e.devmajor == 8);
        CHECK(v[6].e.type == TarEntryType::Fifo);
        CHECK(v[6].e.mode == 0600);
        CHECK(v[7].e.type == TarEntryType::Regular);
        CHECK(v[7].e.mode == 06755);
        CHECK(v[7].content == "x");
        for (auto& it : v) CHECK(it.e.xattrs.empty());
    }
}

TEST_CASE("ustar prefix field; GNU headers have none") {
    std::string prefix(150, 'p');
    std::string tar = entry({.name = "file.txt", .prefix = prefix}, "a") +
                      entry({.name = "gnu.txt", .prefix = "atime-and-such", .fmt = Fmt::Gnu}, "b") +
                      kEnd;
    auto r = read_archive(tar);
    REQUIRE(r);
    REQUIRE(r->size() == 2);
    CHECK((*r)[0].e.path == prefix + "/file.txt");
    CHECK((*r)[1].e.path == "gnu.txt");
}

TEST_CASE("V7 headers: NUL typeflag, trailing slash directories") {
    std::string tar =
        entry({.name = "old/", .type = '\0', .mode = 0755, .fmt = Fmt::V7}) +
        entry({.name = "old/file", .type = '\0', .devmajor = 9, .fmt = Fmt::V7}, "v7 data") +
        entry({.name = "dir0/", .type = '0'}) +
        entry({.name = "full", .type = '0', .mode = 0600}, "") +
        std::string(512, '\0');  // a single zero block ends the archive too
    auto r = read_archive(tar);
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->size() == 4);
    CHECK((*r)[0].e.type == TarEntryType::Directory);
    CHECK((*r)[0].e.path == "old/");
    CHECK((*r)[1].e.type == TarEntryType::Regular);
    CHECK((*r)[1].content == "v7 data");
    CHECK((*r)[1].e.devmajor == 0);  // only devices carry device numbers
    CHECK((*r)[2].e.type == TarEntryType::Directory);
    CHECK((*r)[3].e.type == TarEntryType::Regular);
    CHECK((*r)[3].e.size == 0);
}

TEST_CASE("GNU long names and long link names") {
    std::string long_name = "usr/share/" + std::string(200, 'n') + "/" + std::string(150, 'm');
    std::string long_link = "/opt/" + std::string(300, 'l');
    std::string tar = gnu_long('L', long_name) + gnu_long('K', long_link) +
                      entry({.name = "truncated-name",
                             .type = '2',
                             .linkname = "truncated-link",
                             .fmt = Fmt::Gnu}) +
                      gnu_long('L', long_name + "/file") +
                      entry({.name = "short", .fmt = Fmt::Gnu}, "data") +
                      entry({.name = "next", .fmt = Fmt::Gnu}) + kEnd;
    auto r = read_archive(tar);
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->size() == 3);
    CHECK((*r)[0].e.path == long_name);
    CHECK((*r)[0].e.linkname == long_link);
    CHECK((*r)[0].e.type == TarEntryType::Symlink);
    CHECK((*r)[0].e.header_offset == 0);
    CHECK((*r)[1].e.path == long_name + "/file");
    CHECK((*r)[1].content == "data");
    CHECK((*r)[2].e.path == "next");  // the overrides do not leak into later entries
    CHECK((*r)[2].e.linkname.empty());
}

TEST_CASE("PAX per-entry records") {
    std::string big_name(250, 'q');
    std::string bin_value("\x01\x00\x02=\n\xff", 6);
    std::string content(1000, 'c');
    std::string tar =
        pax('x', {{"path", big_name},
                  {"size", "1000"},
                  {"mtime", "1700000000.123456789"},
                  {"uid", "100000"},
                  {"gid", "4000000000"},
                  {"SCHILY.xattr.user.zeta", "z"},
                  {"SCHILY.xattr.security.capability", bin_value},
                  {"SCHILY.xattr.user.alpha", "first"},
                  {"atime", "1.5"},
                  {"uname", "someone"},
                  {"comment", "ignored"}}) +
        pax('x', {{"SCHILY.xattr.user.alpha", "second"}, {"SCHILY.xattr.user.empty", ""}}) +
        entry({.name = "short-name", .size = 0}, content) +
        pax('x', {{"linkpath", "/" + big_name}}) +
        entry({.name = "lnk", .type = '2', .linkname = "short"}) + entry({.name = "plain"}, "p") +
        kEnd;
    // The first header claims size 0 but PAX says 1000: the content must be read by PAX size.
    auto r = read_archive(tar);
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->size() == 3);
    const TarEntry& e = (*r)[0].e;
    CHECK(e.path == big_name);
    CHECK(e.size == 1000);
    CHECK((*r)[0].content == content);
    CHECK(e.mtime == 1700000000);
    CHECK(e.mtime_nsec == 123456789);
    CHECK(e.uid == 100000);
    CHECK(e.gid == 4000000000u);
    CHECK(e.header_offset == 0);
    // An empty value deletes the xattr, as in Go's archive/tar (what containerd extracts with).
    REQUIRE(e.xattrs.size() == 3);
    CHECK(e.xattrs[0] == Xattr{"security.capability", bin_value});
    CHECK(e.xattrs[1] == Xattr{"user.alpha", "second"});
    CHECK(e.xattrs[2] == Xattr{"user.zeta", "z"});
    CHECK((*r)[1].e.linkname == "/" + big_name);
    CHECK((*r)[1].e.path == "lnk");
    CHECK((*r)[2].e.path == "plain");
    CHECK((*r)[2].e.uid == 0);
    CHECK((*r)[2].e.xattrs.empty());
    CHECK((*r)[2].e.mtime_nsec == 0);
}

TEST_CASE("PAX global headers apply to all later entries") {
    std::string tar =
        entry({.name = "before"}) +
        pax('g', {{"uid", "70000"}, {"mtime", "5.25"}, {"SCHILY.xattr.user.g", "global"}}) +
        entry({.name = "a", .uid = 1}) +
        pax('x', {{"uid", "42"}, {"mtime", ""}, {"SCHILY.xattr.user.g", "mine"}}) +
        entry({.name = "b", .mtime = 99}) + pax('g', {{"uid", ""}}) +
        entry({.name = "c", .uid = 7}) + kEnd;
    auto r = read_archive(tar);
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->size() == 4);
    auto& v = *r;
    CHECK(v[0].e.uid == 0);
    CHECK(v[0].e.xattrs.empty());
    CHECK(v[1].e.uid == 70000);
    CHECK(v[1].e.mtime == 5);
    CHECK(v[1].e.mtime_nsec == 250000000);
    CHECK(v[1].e.header_offset == 1536);  // the global header is not part of the entry
    REQUIRE(v[1].e.xattrs.size() == 1);
    CHECK(v[1].e.xattrs[0] == Xattr{"user.g", "global"});
    CHECK(v[2].e.uid == 42);
    CHECK(v[2].e.mtime == 99);  // empty per-entry value: back to the header field
    CHECK(v[2].e.mtime_nsec == 0);
    REQUIRE(v[2].e.xattrs.size() == 1);
    CHECK(v[2].e.xattrs[0].value == "mine");
    CHECK(v[3].e.uid == 7);  // global uid cancelled
    CHECK(v[3].e.mtime == 5);
}

TEST_CASE("base-256 numbers in headers") {
    std::string tar = entry({.name = "big-ids",
                             .uid = 3000000000u,
                             .gid = 70000,
                             .mtime = -86400,
                             .b256_size = true,
                             .b256_uid = true,
                             .b256_mtime = true},
                            "content") +
                      kEnd;
    auto r = read_archive(tar);
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->size() == 1);
    CHECK((*r)[0].e.uid == 3000000000u);
    CHECK((*r)[0].e.gid == 70000);
    CHECK((*r)[0].e.mtime == -86400);
    CHECK((*r)[0].content == "content");

    // uid beyond 32 bits
    auto r2 =
        read_archive(entry({.name = "huge", .uid = uint64_t{1} << 33, .b256_uid = true}) + kEnd);
    REQUIRE(!r2);
    CHECK(contains(r2.error().message, "entry huge at offset 0: uid"));

    // A file over 4 GiB: the size comes through; the content is not there, so reading it fails.
    std::string big =
        entry({.name = "big", .size = (uint64_t{5} << 30) + 3, .b256_size = true}) + "partial";
    MemoryStream s(big);
    TarReader tr(s);
    auto e = tr.next();
    REQUIRE(e);
    REQUIRE(*e);
    CHECK((*e)->size == (uint64_t{5} << 30) + 3);
    char buf[64];
    auto got = tr.read(buf, sizeof buf);
    REQUIRE(got);
    CHECK(*got == 7);
    auto bad = tr.read(buf, sizeof buf);
    REQUIRE(!bad);
    CHECK(contains(bad.error().message, "entry big at offset 0: truncated tar stream"));
}

TEST_CASE("PAX size over 4 GiB and uid/gid in PAX") {
    std::string tar =
        pax('x', {{"size", "5368709123"}, {"uid", "4294967295"}}) + entry({.name = "f"}, "");
    MemoryStream s(tar);
    TarReader tr(s);
    auto e = tr.next();
    REQUIRE(e);
    REQUIRE(*e);
    CHECK((*e)->size == 5368709123ull);
    CHECK((*e)->uid == 4294967295u);
    auto n = tr.next();  // skipping 5 GiB that are not there
    REQUIRE(!n);
    CHECK(contains(n.error().message, "entry f at offset 0: truncated tar stream"));

    auto r = read_archive(pax('x', {{"uid", "4294967296"}}) + entry({.name = "g"}) + kEnd);
    REQUIRE(!r);
    CHECK(contains(r.error().message, "entry g at offset 0: uid"));
    auto r2 = read_archive(pax('x', {{"size", "12x"}}) + entry({.name = "h"}) + kEnd);
    REQUIRE(!r2);
    CHECK(contains(r2.error().message, "entry h at offset 0"));
}

TEST_CASE("unread content and padding are skipped") {
    std::string big(700000, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 % 253);
    std::string tar = entry({.name = "big"}, big) + entry({.name = "small"}, "s") +
                      entry({.name = "big2"}, big) + entry({.name = "last"}, "end") + kEnd;
    for (size_t max_read : {size_t{SIZE_MAX}, size_t{4096}, size_t{333}}) {
        MemoryStream s(tar, max_read);
        TarReader tr(s);
        auto e1 = tr.next();
        REQUIRE(e1);
        REQUIRE(*e1);
        char buf[10];
        REQUIRE(tr.read(buf, 10).value() == 10);
        CHECK(std::string(buf, 10) == big.substr(0, 10));
        auto e2 = tr.next();
        REQUIRE(e2);
        REQUIRE(*e2);
        CHECK((*e2)->path == "small");
        auto e3 = tr.next();  // "small" not read at all
        REQUIRE(e3);
        REQUIRE(*e3);
        CHECK((*e3)->path == "big2");
        // Read in 1 MiB pieces, as the converter does.
        std::string got;
        std::vector<char> mb(1 << 20);
        for (;;) {
            auto n = tr.read(mb.data(), mb.size());
            REQUIRE(n);
            if (*n == 0) break;
            got.append(mb.data(), *n);
        }
        CHECK(got == big);
        auto e4 = tr.next();
        REQUIRE(e4);
        REQUIRE(*e4);
        CHECK((*e4)->path == "last");
        CHECK((*e4)->header_offset == 512 + 700416 + 1024 + 512 + 700416);
        auto end = tr.next();
        REQUIRE(end);
        CHECK(!*end);
        CHECK(s.position() == tar.size());  // read to the end
    }
}

TEST_CASE("end of archive: zero blocks, EOF at a boundary, bytes after the marker") {
    std::string one = entry({.name = "a"}, "1");
    for (std::string tail :
         {std::string(), std::string(512, '\0'), kEnd, kEnd + std::string(9216, '\0'),
          kEnd + "anything after the end marker is ignored"}) {
        MemoryStream s(one + tail);
        auto r = read_archive(s);
        REQUIRE_MESSAGE(r, r.error().what());
        REQUIRE(r->size() == 1);
        CHECK(s.position() == one.size() + tail.size());
    }
    auto empty = read_archive("");
    REQUIRE(empty);
    CHECK(empty->empty());
    auto only_end = read_archive(kEnd);
    REQUIRE(only_end);
    CHECK(only_end->empty());
}

TEST_CASE("the end of the tar reads the whole stream so digests are checked") {
    std::string tar = entry({.name = "a"}, "1") + kEnd + std::string(8192, '\0');
    Sha256Digest wrong{};
    DigestingStream bad(std::make_unique<MemoryStream>(tar), wrong);
    auto r = read_archive(bad);
    REQUIRE(!r);
    CHECK(r.error().message.starts_with("digest mismatch"));

    // The same through gzip, with the right digests of both views.
    z_stream zs{};
    REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    std::string gz(deflateBound(&zs, tar.size()), '\0');
    zs.next_in = reinterpret_cast<Bytef*>(tar.data());
    zs.avail_in = static_cast<uInt>(tar.size());
    zs.next_out = reinterpret_cast<Bytef*>(gz.data());
    zs.avail_out = static_cast<uInt>(gz.size());
    REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    gz.resize(zs.total_out);
    deflateEnd(&zs);
    auto outer = std::make_unique<DigestingStream>(std::make_unique<MemoryStream>(gz), sha256(gz));
    DigestingStream* outer_ptr = outer.get();
    auto dec = make_auto_decoder(std::move(outer));
    REQUIRE(dec);
    DigestingStream inner(std::move(*dec), sha256(tar));
    auto ok = read_archive(inner);
    REQUIRE_MESSAGE(ok, ok.error().what());
    CHECK(ok->size() == 1);
    CHECK(inner.finished());
    CHECK(outer_ptr->finished());
}

TEST_CASE("bad checksum, unsupported types, bad fields") {
    std::string a = entry({.name = "a"}, "1");
    std::string b = entry({.name = "b"});
    b[10] = 'X';
    auto r = read_archive(a + b + kEnd);
    REQUIRE(!r);
    CHECK(r.error().message == "bad tar header checksum at offset 1024");

    auto s = read_archive(a + entry({.name = "usr/sparse", .type = 'S', .fmt = Fmt::Gnu}) + kEnd);
    REQUIRE(!s);
    CHECK(s.error().message == "entry usr/sparse at offset 1024: unsupported tar entry type 'S'");

    auto v = read_archive(entry({.name = "vol", .type = 'V'}) + kEnd);
    REQUIRE(!v);
    CHECK(contains(v.error().message, "unsupported tar entry type 'V'"));

    auto sp = read_archive(pax('x', {{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}}) +
                           entry({.name = "sp"}) + kEnd);
    REQUIRE(!sp);
    CHECK(contains(sp.error().message, "entry sp at offset 0: unsupported GNU sparse"));

    std::string badmode = header({.name = "m"}, 0);
    std::memcpy(&badmode[100], "0009999", 7);
    set_checksum(badmode);
    auto m = read_archive(badmode + kEnd);
    REQUIRE(!m);
    CHECK(contains(m.error().message, "entry m at offset 0: mode field"));

    std::string badsize = header({.name = "z"}, 0);
    std::memcpy(&badsize[124], "1x", 2);
    set_checksum(badsize);
    auto z = read_archive(a + badsize + kEnd);
    REQUIRE(!z);
    CHECK(contains(z.error().message, "entry z at offset 1024: size field"));
    // With a PAX size the size field is not needed.
    auto zp = read_archive(pax('x', {{"size", "0"}}) + badsize + kEnd);
    REQUIRE_MESSAGE(zp, zp.error().what());
    CHECK(zp->size() == 1);
    std::string badlong = gnu_long('L', "name");
    std::memcpy(&badlong[124], "1x", 2);
    set_checksum(badlong);
    auto zl = read_archive(badlong + a + kEnd);
    REQUIRE(!zl);
    CHECK(contains(zl.error().message, "tar header at offset 0: size field"));

    auto p = read_archive(pax('x', {{"path", "bad"}}).replace(512, 2, "99") + entry({.name = "p"}) +
                          kEnd);
    REQUIRE(!p);
    CHECK(contains(p.error().message, "tar header at offset 0"));

    auto nul =
        read_archive(pax('x', {{"path", std::string("a\0b", 3)}}) + entry({.name = "p"}) + kEnd);
    REQUIRE(!nul);
    CHECK(contains(nul.error().message, "NUL"));

    auto orphan = read_archive(pax('x', {{"path", "x"}}) + kEnd);
    REQUIRE(!orphan);
    CHECK(contains(orphan.error().message, "not followed by an entry"));

    // Not a tar at all (e.g. compressed data that was not detected).
    auto junk = read_archive(std::string(2048, 'j'));
    REQUIRE(!junk);
    CHECK(junk.error().message == "bad tar header checksum at offset 0");
}

TEST_CASE("errors stick") {
    std::string b = entry({.name = "b"});
    b[10] = 'X';
    MemoryStream s(b);
    TarReader tr(s);
    auto r1 = tr.next();
    REQUIRE(!r1);
    auto r2 = tr.next();
    REQUIRE(!r2);
    CHECK(r2.error().message == r1.error().message);
    char c;
    CHECK(!tr.read(&c, 1));
}

TEST_CASE("truncation at every byte is an error unless it falls on an entry boundary") {
    std::string tar;
    std::set<size_t> boundaries{0};
    // A stream that ends inside the zero padding after an entry's complete content ends the
    // archive (umoci insert writes such layers; Go's reader accepts them).
    std::vector<std::pair<size_t, size_t>> paddings;
    auto add = [&](const std::string& piece, bool boundary_after, size_t content = 0) {
        if (content > 0) paddings.emplace_back(tar.size() + 512 + content, tar.size() + piece.size());
        tar += piece;
        if (boundary_after) boundaries.insert(tar.size());
    };
    add(gnu_long('L', std::string(120, 'L')), false);
    add(entry({.name = "x", .fmt = Fmt::Gnu}, "gnu content"), true, 11);
    add(pax('g', {{"mtime", "1.5"}}), true);
    add(pax('x', {{"path", "pax/file"}, {"SCHILY.xattr.user.a", "b"}}), false);
    add(entry({.name = "p"}, std::string(1500, 'c')), true, 1500);
    add(entry({.name = "d/", .type = '5'}), true);
    add(entry({.name = "empty"}), true);
    tar += kEnd;
    for (size_t cut = 0; cut <= tar.size(); ++cut) {
        // One whole zero block ends the archive; whatever follows it is not looked at.
        size_t marker = tar.size() - kEnd.size();
        bool at_end_marker = cut == marker || cut >= marker + 512;
        auto r = read_archive(tar.substr(0, cut), 61);
        bool in_padding = false;
        for (auto [from, to] : paddings) in_padding = in_padding || (cut >= from && cut < to);
        if (boundaries.count(cut) || at_end_marker || in_padding) {
            CHECK_MESSAGE(r, "cut at " << cut << ": " << r.error().message);
        } else {
            REQUIRE_MESSAGE(!r, "cut at " << cut);
            CHECK_MESSAGE(contains(r.error().message, "truncated tar stream"),
                          "cut at " << cut << ": " << r.error().message);
        }
    }
}

namespace {
// Serves `data`, then fails (as a corrupt compressed layer would) instead of ending.
class FailingStream final : public ByteStream {
public:
    explicit FailingStream(std::string data) : data_(std::move(data)) {}
    Result<size_t> read(void* buf, size_t n) override {
        if (pos_ == data_.size()) return fail("corrupt gzip stream: boom", EIO);
        n = std::min(n, data_.size() - pos_);
        std::memcpy(buf, data_.data() + pos_, n);
        pos_ += n;
        return n;
    }

private:
    std::string data_;
    size_t pos_ = 0;
};
}  // namespace

TEST_CASE("errors of the stream below are kept, with the entry named") {
    std::string content(2000, 'c');
    std::string tar = entry({.name = "a"}, content) + entry({.name = "b"}, "b") + kEnd;

    SUBCASE("while skipping content") {
        FailingStream s(tar.substr(0, 1500));
        TarReader tr(s);
        REQUIRE(tr.next().value());
        auto r = tr.next();
        REQUIRE(!r);
        CHECK(r.error().message == "entry a at offset 0: corrupt gzip stream: boom");
        CHECK(r.error().err == EIO);
    }
    SUBCASE("while reading content") {
        FailingStream s(tar.substr(0, 1500));
        TarReader tr(s);
        REQUIRE(tr.next().value());
        std::vector<char> buf(4096);
        Result<size_t> r = 0;
        while ((r = tr.read(buf.data(), buf.size())) && *r > 0) {
        }
        REQUIRE(!r);
        CHECK(r.error().message == "entry a at offset 0: corrupt gzip stream: boom");
    }
    SUBCASE("while reading a header") {
        FailingStream s(tar.substr(0, 2560 + 100));
        TarReader tr(s);
        REQUIRE(tr.next().value());
        auto r = tr.next();
        REQUIRE(!r);
        CHECK(r.error().message == "tar header at offset 2560: corrupt gzip stream: boom");
        MemoryStream m(tar.substr(0, 2560 + 100));
        TarReader tm(m);
        REQUIRE(tm.next().value());
        auto t = tm.next();
        REQUIRE(!t);
        CHECK(t.error().message == "tar header at offset 2560: truncated tar stream");
    }
    SUBCASE("while reading an extension header") {
        std::string p = pax('x', {{"path", std::string(600, 'p')}}) + entry({.name = "x"});
        FailingStream s(p.substr(0, 700));
        TarReader tr(s);
        auto r = tr.next();
        REQUIRE(!r);
        CHECK(r.error().message == "tar header at offset 0: corrupt gzip stream: boom");
    }
    SUBCASE("the truncation message says how much content was there") {
        MemoryStream s(tar.substr(0, 512 + 1000));
        TarReader tr(s);
        REQUIRE(tr.next().value());
        auto r = tr.next();
        REQUIRE(!r);
        CHECK(r.error().message ==
              "entry a at offset 0: truncated tar stream (content ends after 1000 of 2000 bytes)");
    }
}
