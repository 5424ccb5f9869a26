// The fscache front end without a kernel: the cachefiles message parser and EROFS key naming
// (pure), and CachefilesFrontend fed with requests directly, its kernel calls (copen writes,
// READ_COMPLETE ioctls) recorded, its "anonymous fds" plain files. What must hold: every OPEN is
// answered and every READ completed exactly once, on every path (unknown keys, fetch failures,
// malformed requests, a front end torn down with reads in flight), and the bytes in the object
// are the verified device bytes.
#include <doctest.h>
#include <fcntl.h>
#include <linux/cachefiles.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "blob_cache.h"
#include "cachefiles_frontend.h"
#include "cachefiles_msg.h"
#include "fetch_scheduler.h"
#include "file_util.h"
#include "test_daemon_fixtures.h"

using namespace erostream;
using namespace erostream::testing;
using namespace std::chrono_literals;

namespace {

std::vector<uint8_t> msg_bytes(uint32_t msg_id, uint32_t opcode, uint32_t object_id, const std::string& payload) {
    cachefiles_msg h{};
    h.msg_id = msg_id;
    h.opcode = opcode;
    h.len = static_cast<uint32_t>(sizeof h + payload.size());
    h.object_id = object_id;
    std::vector<uint8_t> out(sizeof h + payload.size());
    std::memcpy(out.data(), &h, sizeof h);
    std::memcpy(out.data() + sizeof h, payload.data(), payload.size());
    return out;
}

std::vector<uint8_t> open_msg(uint32_t msg_id, uint32_t object_id, const std::string& volume, const std::string& cookie,
                              int fd) {
    cachefiles_open o{};
    o.volume_key_size = static_cast<uint32_t>(volume.size() + 1);
    o.cookie_key_size = static_cast<uint32_t>(cookie.size());
    o.fd = static_cast<uint32_t>(fd);
    std::string p(reinterpret_cast<const char*>(&o), sizeof o);
    p += volume;
    p += '\0';
    p += cookie;
    return msg_bytes(msg_id, CACHEFILES_OP_OPEN, object_id, p);
}

std::vector<uint8_t> read_msg(uint32_t msg_id, uint32_t object_id, uint64_t off, uint64_t len) {
    cachefiles_read r{off, len};
    return msg_bytes(msg_id, CACHEFILES_OP_READ, object_id, std::string(reinterpret_cast<const char*>(&r), sizeof r));
}

const std::string kVol = "erofs,erostream";

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

std::string read_file_bytes(const std::string& path, uint64_t off, uint64_t len) {
    std::string s(len, '\0');
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(fd);
    ssize_t n = ::pread(fd.get(), s.data(), len, static_cast<off_t>(off));
    s.resize(n < 0 ? 0 : static_cast<size_t>(n));
    return s;
}

}  // namespace

TEST_CASE("cachefiles parser: OPEN, READ, CLOSE as the kernel lays them out") {
    auto o = parse_cachefiles_msg(open_msg(7, 3, kVol, std::string(64, 'a'), 42));
    REQUIRE(o);
    auto& open = std::get<CachefilesOpen>(*o);
    CHECK(open.msg_id == 7);
    CHECK(open.object_id == 3);
    CHECK(open.volume_key == kVol);
    CHECK(open.cookie_key == std::string(64, 'a'));
    CHECK(open.fd == 42);

    auto r = parse_cachefiles_msg(read_msg(9, 3, 8192, 131072));
    REQUIRE(r);
    CHECK(std::get<CachefilesRead>(*r) == CachefilesRead{9, 3, 8192, 131072});

    auto c = parse_cachefiles_msg(msg_bytes(11, CACHEFILES_OP_CLOSE, 3, ""));
    REQUIRE(c);
    CHECK(std::get<CachefilesClose>(*c) == CachefilesClose{11, 3});
}

TEST_CASE("cachefiles parser: inconsistent messages are errors, never a crash") {
    auto good = open_msg(1, 1, kVol, "cookie", 5);
    // Every truncation, and every single-byte corruption of the length fields.
    for (size_t n = 0; n < good.size(); ++n)
        CHECK_FALSE(parse_cachefiles_msg(std::span<const uint8_t>(good.data(), n)));
    CHECK_FALSE(parse_cachefiles_msg(msg_bytes(1, 7, 1, "")));                     // unknown opcode
    CHECK_FALSE(parse_cachefiles_msg(msg_bytes(1, CACHEFILES_OP_CLOSE, 1, "x")));  // CLOSE with payload
    CHECK_FALSE(parse_cachefiles_msg(read_msg(1, 1, 0, 0)));                      // empty READ
    CHECK_FALSE(parse_cachefiles_msg(read_msg(1, 1, ~uint64_t{0} - 10, 100)));   // wraps around
    auto bad = good;
    bad[sizeof(cachefiles_msg)] = 100;  // volume_key_size past the end
    CHECK_FALSE(parse_cachefiles_msg(bad));
    bad = good;
    bad[sizeof(cachefiles_msg) + sizeof(cachefiles_open) + 3] = 0;  // NUL inside the volume key
    CHECK_FALSE(parse_cachefiles_msg(bad));
    bad = good;
    bad[sizeof(cachefiles_msg) + sizeof(cachefiles_open) + kVol.size()] = 'x';  // no NUL
    CHECK_FALSE(parse_cachefiles_msg(bad));
    std::mt19937 rng(5);
    for (int k = 0; k < 20000; ++k) {
        auto m = good;
        m[rng() % m.size()] = static_cast<uint8_t>(rng());
        (void)parse_cachefiles_msg(m);
        (void)peek_cachefiles_header(m);
    }
    // What a broken OPEN still tells: its msg_id and the fd to close.
    bad = good;
    bad[sizeof(cachefiles_msg)] = 100;
    auto h = peek_cachefiles_header(bad);
    REQUIRE(h);
    CHECK(h->opcode == CACHEFILES_OP_OPEN);
    CHECK(h->msg_id == 1);
    CHECK(h->open_fd == 5);
}

TEST_CASE("fscache keys: domain volume, fsid of the metadata blob, device tags of data blobs") {
    const std::string hex(64, 'c');
    CHECK(fscache_volume_key("erostream") == kVol);
    CHECK(fscache_fsid(hex, 0) == hex);
    CHECK(fscache_fsid(hex, 1) == "2-" + hex);
    CHECK(fscache_fsid(hex, 15) == "16-" + hex);
    CHECK(cachefiles_copen(4, 8192) == "copen 4,8192");
    CHECK(cachefiles_copen(4, -ENOENT) == "copen 4,-2");

    auto d = parse_fscache_cookie(kVol, hex, "erostream");
    REQUIRE(d);
    CHECK(*d == FscacheCookie{FscacheCookie::Kind::Data, hex});
    auto m = parse_fscache_cookie(kVol, "2-" + hex, "erostream");
    REQUIRE(m);
    CHECK(*m == FscacheCookie{FscacheCookie::Kind::Meta, hex});
    CHECK(parse_fscache_cookie(kVol, "17-" + hex, "erostream"));

    for (const std::string& bad : {"0-" + hex, "02-" + hex, "1-" + hex, "-" + hex, "x-" + hex, hex + "-2",
                                   "1234567-" + hex, "2-" + hex + "0", std::string(64, 'C'), std::string(63, 'c'),
                                   std::string("")}) {
        auto r = parse_fscache_cookie(kVol, bad, "erostream");
        CHECK_FALSE(r);
        if (!r) CHECK(r.error().err == ENOENT);
    }
    auto other = parse_fscache_cookie("erofs," + hex, hex, "erostream");  // a mount without our domain
    REQUIRE_FALSE(other);
    CHECK(other.error().err == ENOENT);
}

namespace {

// A front end over one data blob (chunks of 2, 3 and 1 blocks) and one metadata blob, with the
// kernel's side recorded.
struct Rig {
    ScratchDir dir;
    MemBlob blob = make_blob({2, 3, 1}, 3);
    std::unique_ptr<EventLoop> loop = std::move(*EventLoop::create());
    ThreadPool cpu{2};
    ThreadPool io{1};
    Stats stats;
    std::shared_ptr<BlobCache> cache;
    std::shared_ptr<MemBackend> backend;
    std::unique_ptr<FetchScheduler> sched;
    std::unique_ptr<CachefilesFrontend> fe;
    std::vector<std::string> commands;
    std::vector<std::pair<uint32_t, int>> completions;  // msg_id, anon fd
    std::string meta_path, meta_bytes;
    std::string meta_hex = std::string(64, 'e');

    explicit Rig(SchedulerOptions so = {}) {
        so.retry_base = 1ms;
        cache = *BlobCache::open(dir.path, blob.dev, UniqueFd());
        backend = std::make_shared<MemBackend>(blob, *loop);
        sched = std::make_unique<FetchScheduler>(*loop, cpu, stats, so);
        sched->add_source(cache, blob.desc, backend, "m1");
        meta_path = dir.path + "/meta.erofs";
        meta_bytes.resize(10000);
        std::mt19937 rng(9);
        for (auto& c : meta_bytes) c = static_cast<char>(rng());
        REQUIRE(replace_file(meta_path, meta_bytes));
        make_frontend();
    }
    void make_frontend() {
        CachefilesOptions opt;
        opt.complete_read = [this](int fd, uint32_t id) {
            completions.emplace_back(id, fd);
            return 0;
        };
        opt.write_command = [this](int, const std::string& cmd) {
            commands.push_back(cmd);
            return 0;
        };
        fe = std::make_unique<CachefilesFrontend>(*loop, *sched, io, stats, UniqueFd(::open("/dev/null", O_RDWR)), opt);
        sched->on_chunk_ready = [this](const std::shared_ptr<BlobCache>& b, size_t i, bool w) {
            if (fe) fe->chunk_ready(b, i, w);
        };
        FrontendMount fm;
        fm.id = "m1";
        fm.meta_hex = meta_hex;
        fm.meta_path = meta_path;
        fm.meta_size = meta_bytes.size();
        fm.blobs.push_back(cache);
        REQUIRE(fe->attach(fm, {}));
    }
    // A file standing in for the kernel's cache object; returns its fd number (the front end
    // owns it once the OPEN is delivered).
    int object_file(const std::string& name) {
        int fd = ::open((dir.path + "/" + name).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        return fd;
    }
    void deliver(const std::vector<uint8_t>& m) { fe->on_message(m); }
    // Runs the loop until pred() or a deadline.
    bool run_until(const std::function<bool()>& pred, std::chrono::milliseconds limit = 5000ms) {
        auto deadline = std::chrono::steady_clock::now() + limit;
        while (!pred()) {
            if (std::chrono::steady_clock::now() > deadline) return false;
            loop->add_timer(1ms, [this] { loop->stop(); });
            REQUIRE(loop->run());
        }
        return true;
    }
    std::string read_back(const std::string& name, uint64_t off, uint64_t len) {
        return read_file_bytes(dir.path + "/" + name, off, len);
    }
    size_t completed(uint32_t msg_id) const {
        size_t n = 0;
        for (auto& [id, fd] : completions) n += id == msg_id;
        return n;
    }
};

}  // namespace

TEST_CASE("fscache front end: OPEN of keys that are not ours fails with ENOENT and closes the fd") {
    Rig rig;
    int fd = rig.object_file("o1");
    rig.deliver(open_msg(1, 1, kVol, std::string(64, 'd'), fd));
    REQUIRE(rig.commands.size() == 1);
    CHECK(rig.commands[0] == "copen 1,-2");
    CHECK_FALSE(fd_open(fd));
    int fd2 = rig.object_file("o2");
    rig.deliver(open_msg(2, 2, "erofs,other", rig.cache->hex(), fd2));
    CHECK(rig.commands.back() == "copen 2,-2");
    CHECK_FALSE(fd_open(fd2));
    CHECK(rig.fe->open_objects() == 0);
}

TEST_CASE("fscache front end: a data READ fetches, copies whole chunks into the object, then completes") {
    Rig rig;
    int fd = rig.object_file("data");
    rig.deliver(open_msg(1, 5, kVol, rig.cache->hex(), fd));
    REQUIRE(rig.commands.size() == 1);
    CHECK(rig.commands[0] == fmt::format("copen 1,{}", 6 * 4096));
    // 100 bytes inside chunk 1 (blocks 2..4).
    rig.deliver(read_msg(2, 5, 2 * 4096 + 10, 100));
    REQUIRE(rig.run_until([&] { return rig.completed(2) > 0; }));
    CHECK(rig.completed(2) == 1);
    CHECK(rig.completions[0].second == fd);
    CHECK(rig.read_back("data", 2 * 4096, 3 * 4096) == rig.blob.device.substr(2 * 4096, 3 * 4096));
    CHECK(rig.read_back("data", 0, 4096) == std::string(4096, '\0'));  // chunk 0 not asked for
    CHECK(rig.stats.cachefiles_reads == 1);
    CHECK(rig.stats.events_denied == 0);
    CHECK(rig.stats.cachefiles_bytes_written == 3 * 4096);
    // A second READ of the same chunk: a cache hit, copied and completed again.
    rig.deliver(read_msg(3, 5, 3 * 4096, 4096));
    REQUIRE(rig.run_until([&] { return rig.completed(3) > 0; }));
    CHECK(rig.backend->requests.size() == 1);
}

TEST_CASE("fscache front end: a READ whose fetch fails is completed (the reader gets EIO), once") {
    SchedulerOptions so;
    so.max_attempts = 2;
    Rig rig(so);
    rig.backend->fail_next = 100;
    int fd = rig.object_file("data");
    rig.deliver(open_msg(1, 5, kVol, rig.cache->hex(), fd));
    rig.deliver(read_msg(2, 5, 0, 4096));
    REQUIRE(rig.run_until([&] { return rig.completed(2) > 0; }));
    rig.run_until([] { return false; }, 50ms);
    CHECK(rig.completed(2) == 1);
    CHECK(rig.stats.events_denied == 1);
    CHECK(rig.read_back("data", 0, 8192) == std::string());  // nothing written: a hole
}

TEST_CASE("fscache front end: a metadata READ copies an aligned window, zeros past the blob's end") {
    Rig rig;
    int fd = rig.object_file("meta");
    rig.deliver(open_msg(1, 8, kVol, rig.meta_hex, fd));
    // The metadata file is opened through the ring before the answer.
    REQUIRE(rig.run_until([&] { return !rig.commands.empty(); }));
    CHECK(rig.commands[0] == "copen 1,10000");
    rig.deliver(read_msg(2, 8, 4096, 4096));
    REQUIRE(rig.run_until([&] { return rig.completed(2) > 0; }));
    std::string got = rig.read_back("meta", 0, 3 * 4096);
    REQUIRE(got.size() == 3 * 4096);
    CHECK(got.substr(0, 10000) == rig.meta_bytes);
    CHECK(got.substr(10000) == std::string(3 * 4096 - 10000, '\0'));
    // The same blob under a second mount's fsid ("2-<hex>") is the same metadata.
    int fd2 = rig.object_file("meta2");
    rig.deliver(open_msg(3, 9, kVol, "2-" + rig.meta_hex, fd2));
    REQUIRE(rig.run_until([&] { return rig.commands.size() == 2; }));
    CHECK(rig.commands[1] == "copen 3,10000");
}

TEST_CASE("fscache front end: malformed requests are still answered") {
    Rig rig;
    int fd = rig.object_file("o");
    auto bad = open_msg(4, 1, kVol, rig.cache->hex(), fd);
    bad[sizeof(cachefiles_msg)] = 200;  // volume_key_size past the end
    rig.deliver(bad);
    REQUIRE(rig.commands.size() == 1);
    CHECK(rig.commands[0] == "copen 4,-5");
    CHECK_FALSE(fd_open(fd));
    // A broken READ for an open object is completed (EIO for the reader).
    int fd2 = rig.object_file("data");
    rig.deliver(open_msg(5, 6, kVol, rig.cache->hex(), fd2));
    auto r = read_msg(6, 6, 0, 4096);
    r.push_back(0);  // length mismatch
    rig.deliver(r);
    CHECK(rig.completed(6) == 1);
    CHECK(rig.stats.events_denied == 1);
}

TEST_CASE("fscache front end: READs in flight when the front end goes away are completed, unless left to "
          "the next daemon") {
    for (bool leave : {false, true}) {
        CAPTURE(leave);
        Rig rig;
        rig.backend->hold = true;
        int fd = rig.object_file("data");
        rig.deliver(open_msg(1, 5, kVol, rig.cache->hex(), fd));
        rig.deliver(read_msg(2, 5, 0, 4096));
        rig.deliver(read_msg(3, 5, 6 * 4096 - 4096, 4096));
        rig.run_until([&] { return !rig.backend->held.empty(); });
        REQUIRE(rig.completions.empty());
        if (leave) rig.fe->leave_pending_to_next_daemon();
        // The front end and the scheduler (which holds the waiting READs' callbacks) go, as in
        // the daemon's shutdown.
        rig.fe.reset();
        rig.sched.reset();
        if (leave) {
            CHECK(rig.completions.empty());
        } else {
            CHECK(rig.completed(2) == 1);
            CHECK(rig.completed(3) == 1);
        }
    }
}

TEST_CASE("fscache front end: READ for an object after its CLOSE, and CLOSE of unknown objects") {
    Rig rig;
    int fd = rig.object_file("data");
    rig.deliver(open_msg(1, 5, kVol, rig.cache->hex(), fd));
    rig.deliver(msg_bytes(2, CACHEFILES_OP_CLOSE, 5, ""));
    CHECK(rig.fe->open_objects() == 0);
    rig.deliver(msg_bytes(3, CACHEFILES_OP_CLOSE, 77, ""));
    rig.deliver(read_msg(4, 5, 0, 4096));  // the kernel never does this; it must not crash
    CHECK(rig.completions.empty());
    CHECK(rig.stats.errors == 1);
}

TEST_CASE("fscache front end: prefetched chunks are copied into the open object without READs") {
    Rig rig;
    int fd = rig.object_file("data");
    rig.deliver(open_msg(1, 5, kVol, rig.cache->hex(), fd));
    rig.sched->set_prefetch(rig.cache->hex(), "m1", true);
    REQUIRE(rig.run_until([&] { return rig.cache->complete() && rig.fe->bytes_written() == 6 * 4096; }));
    CHECK(rig.read_back("data", 0, 6 * 4096) == rig.blob.device);
    CHECK(rig.completions.empty());
}

TEST_CASE("fscache front end: an object opened when the daemon has chunks gets them copied in") {
    Rig rig;
    // Chunk 0 and 2 in the daemon's cache before the object exists.
    rig.sched->ensure(rig.cache->hex(), 0, 4096, "t", [](Result<void>) {});
    rig.sched->ensure(rig.cache->hex(), 5 * 4096, 4096, "t", [](Result<void>) {});
    REQUIRE(rig.run_until([&] { return rig.cache->present(0) && rig.cache->present(2); }));
    // The kernel's object already holds chunk 2 (kept from before): only chunk 0 is copied.
    int fd = rig.object_file("data");
    std::string marker(4096, 'k');
    REQUIRE(::pwrite(fd, marker.data(), marker.size(), 5 * 4096) == 4096);
    rig.deliver(open_msg(1, 5, kVol, rig.cache->hex(), fd));
    REQUIRE(rig.run_until([&] { return rig.fe->bytes_written() >= 2 * 4096; }));
    rig.run_until([] { return false; }, 50ms);
    CHECK(rig.fe->bytes_written() == 2 * 4096);
    CHECK(rig.read_back("data", 0, 2 * 4096) == rig.blob.device.substr(0, 2 * 4096));
    CHECK(rig.read_back("data", 5 * 4096, 4096) == marker);
}

TEST_CASE("fscache front end: mount(2) options name the fsid, the domain and each device") {
    Rig rig;
    auto calls = rig.fe->mount_calls("m1");
    REQUIRE(calls.size() == 16);
    CHECK(calls[0].source == "none");
    CHECK(calls[0].data == fmt::format("fsid={},domain_id=erostream,device={}", rig.meta_hex, rig.cache->hex()));
    CHECK(calls[1].data.starts_with(fmt::format("fsid=2-{},domain_id=erostream", rig.meta_hex)));
    rig.fe->detach("m1");
    CHECK(rig.fe->mount_calls("m1").empty());
    // Detached: its keys are unknown again.
    int fd = rig.object_file("o");
    rig.deliver(open_msg(1, 1, kVol, rig.cache->hex(), fd));
    CHECK(rig.commands.back() == "copen 1,-2");
}
