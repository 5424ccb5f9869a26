// Holder messages, fd passing over a socketpair, fanotify event buffers, mountinfo lines.
#include <doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "fanotify_abi.h"
#include "holder_protocol.h"

using namespace erostream;

TEST_CASE("holder protocol: messages round trip; damage is refused") {
    HolderMsg m;
    m.op = HolderOp::Event;
    m.id = 17;
    m.a = 1;
    m.b = 2;
    m.c = 3;
    m.d = 4;
    m.e = 5;
    m.text = "abc";
    auto bytes = encode_holder_msg(m);
    auto back = decode_holder_msg(bytes);
    REQUIRE(back);
    CHECK(*back == m);
    CHECK_FALSE(decode_holder_msg(bytes.substr(0, 10)));
    CHECK_FALSE(decode_holder_msg(bytes + "x"));
    auto bad = bytes;
    bad[0] ^= 1;
    CHECK_FALSE(decode_holder_msg(bad));
    bad = bytes;
    bad[6] = 99;  // operation
    CHECK_FALSE(decode_holder_msg(bad));
}

TEST_CASE("holder protocol: an fd travels with its message") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
    UniqueFd a(sv[0]), b(sv[1]);
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    UniqueFd rd(p[0]), wr(p[1]);
    HolderMsg m;
    m.op = HolderOp::Blob;
    m.text = "deadbeef";
    REQUIRE(send_holder_msg(a.get(), m, wr.get()));
    auto got = recv_holder_msg(b.get());
    REQUIRE(got);
    REQUIRE(*got);
    CHECK((*got)->msg == m);
    REQUIRE((*got)->fd);
    // The received fd is the pipe's write end.
    REQUIRE(::write((*got)->fd.get(), "z", 1) == 1);
    char c = 0;
    REQUIRE(::read(rd.get(), &c, 1) == 1);
    CHECK(c == 'z');
    // Nothing more waiting; then the peer goes away.
    auto none = recv_holder_msg(b.get());
    REQUIRE(none);
    CHECK_FALSE(*none);
    a.reset();
    auto gone = recv_holder_msg(b.get());
    REQUIRE_FALSE(gone);
    CHECK(gone.error().err == ECONNRESET);
}

namespace {
std::string event(int fd, uint64_t mask, bool range, uint64_t off, uint64_t count) {
    fanotify_event_metadata md{};
    md.vers = FANOTIFY_METADATA_VERSION;
    md.metadata_len = sizeof md;
    md.mask = mask;
    md.fd = fd;
    md.pid = 42;
    std::string out(reinterpret_cast<const char*>(&md), sizeof md);
    if (range) {
        fan::event_info_range r{};
        r.hdr.info_type = fan::kEventInfoTypeRange;
        r.hdr.len = sizeof r;
        r.offset = off;
        r.count = count;
        out.append(reinterpret_cast<const char*>(&r), sizeof r);
    }
    uint32_t len = static_cast<uint32_t>(out.size());
    std::memcpy(out.data(), &len, 4);
    return out;
}
}  // namespace

TEST_CASE("fanotify events: ranges are read; a bad record stops the parse after the good ones") {
    std::string buf = event(7, fan::kPreAccess, true, 8192, 4096) + event(8, fan::kPreAccess, false, 0, 0);
    auto evs = parse_fanotify_events(buf);
    CHECK_FALSE(evs.error);
    REQUIRE(evs.events.size() == 2);
    CHECK(evs.events[0].fd == 7);
    CHECK(evs.events[0].has_range);
    CHECK(evs.events[0].offset == 8192);
    CHECK(evs.events[0].count == 4096);
    CHECK(evs.events[0].pid == 42);
    CHECK_FALSE(evs.events[1].has_range);

    std::string broken = event(9, fan::kPreAccess, true, 0, 1);
    uint32_t huge = 4096;
    std::memcpy(broken.data(), &huge, 4);
    evs = parse_fanotify_events(event(3, fan::kPreAccess, true, 0, 1) + broken);
    REQUIRE(evs.events.size() == 1);
    CHECK(evs.events[0].fd == 3);
    CHECK(evs.error);
    evs = parse_fanotify_events("short");
    CHECK(evs.events.empty());
    CHECK(evs.error);
}

TEST_CASE("mountinfo: mount points, types and sources, with escapes") {
    std::string text =
        "42 27 0:39 / /tmp/ed/mnt ro,relatime - erofs /cache/meta/ab.erofs ro,user_xattr\n"
        "43 27 0:40 / /mnt/with\\040space rw shared:5 master:2 - ext4 /dev/vda rw\n"
        "garbage\n";
    auto e = parse_mountinfo(text);
    REQUIRE(e.size() == 2);
    CHECK(e[0].mount_point == "/tmp/ed/mnt");
    CHECK(e[0].fstype == "erofs");
    CHECK(e[0].source == "/cache/meta/ab.erofs");
    CHECK(e[1].mount_point == "/mnt/with space");
    CHECK(e[1].fstype == "ext4");
}

TEST_CASE("fanotify abi: the deny-with-errno encoding") {
    CHECK(fan::deny_errno(EIO) == (FAN_DENY | (5u << 24)));
}
