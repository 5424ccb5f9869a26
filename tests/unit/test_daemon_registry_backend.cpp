// The registry backend: what a range response must look like (pure checks), and the whole path
// (RequestFlow -> CurlMulti -> the event loop) against small HTTP servers in this process: 206
// ranges, a server that ignores Range, retries, Basic auth with a redirect to a storage host that
// must not see the credentials, a cached storage URL, a bearer token, and shutdown answering a
// range still in flight.
#include <doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "curl_multi.h"
#include "daemon_registry.h"
#include "event_loop.h"
#include "registry/http_parsers.h"
#include "registry/url.h"
#include "registry_backend.h"
#include "unique_fd.h"

using namespace erostream;
using namespace std::chrono_literals;

namespace {

HttpResponse response(int status, std::vector<std::pair<std::string, std::string>> headers = {},
                      std::string body = {}) {
    HttpResponse r;
    r.status = status;
    for (auto& [k, v] : headers) r.headers.add(k, v);
    r.body = std::move(body);
    return r;
}

// A tiny HTTP/1.1 server on 127.0.0.1: one connection at a time, "Connection: close" on every
// answer. The handler returns the raw response, or nullopt to say nothing until the client
// hangs up.
class TestServer {
public:
    struct Request {
        std::string method, target;
        HttpHeaders headers;
    };
    using Handler = std::function<std::optional<std::string>(const Request&)>;

    explicit TestServer(Handler h) : handler_(std::move(h)) {
        int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(s >= 0);
        fd_.reset(s);
        int one = 1;
        ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        socklen_t len = sizeof a;
        REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port_ = ntohs(a.sin_port);
        REQUIRE(::listen(s, 16) == 0);
        thread_ = std::thread([this] { serve(); });
    }
    ~TestServer() {
        stop_ = true;
        ::shutdown(fd_.get(), SHUT_RDWR);
        thread_.join();
    }

    std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
    std::vector<Request> requests() {
        std::lock_guard lk(mu_);
        return requests_;
    }

private:
    void serve() {
        while (!stop_) {
            int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) return;
            UniqueFd conn(c);
            std::string buf;
            char tmp[4096];
            size_t end;
            while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
                ssize_t n = ::recv(c, tmp, sizeof tmp, 0);
                if (n <= 0) break;
                buf.append(tmp, static_cast<size_t>(n));
            }
            if (end == std::string::npos) continue;
            Request req;
            std::string head = buf.substr(0, end);
            size_t eol = head.find("\r\n");
            std::string line = head.substr(0, eol);
            size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
            req.method = line.substr(0, sp1);
            req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
            size_t pos = eol == std::string::npos ? head.size() : eol + 2;
            while (pos < head.size()) {
                size_t e = head.find("\r\n", pos);
                if (e == std::string::npos) e = head.size();
                std::string h = head.substr(pos, e - pos);
                size_t colon = h.find(':');
                if (colon != std::string::npos) {
                    size_t v = h.find_first_not_of(' ', colon + 1);
                    req.headers.add(h.substr(0, colon), v == std::string::npos ? "" : h.substr(v));
                }
                pos = e + 2;
            }
            {
                std::lock_guard lk(mu_);
                requests_.push_back(req);
            }
            auto out = handler_(req);
            if (!out) {
                while (::recv(c, tmp, sizeof tmp, 0) > 0) {
                }
                continue;
            }
            size_t off = 0;
            while (off < out->size()) {
                ssize_t n = ::send(c, out->data() + off, out->size() - off, MSG_NOSIGNAL);
                if (n <= 0) break;
                off += static_cast<size_t>(n);
            }
        }
    }

    Handler handler_;
    UniqueFd fd_;
    uint16_t port_ = 0;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::vector<Request> requests_;
};

std::string http(int status, const std::string& reason, std::vector<std::pair<std::string, std::string>> headers,
                 const std::string& body) {
    std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
    for (auto& [k, v] : headers) out += k + ": " + v + "\r\n";
    out += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    return out;
}

const std::string kDigest = "sha256:" + std::string(64, 'a');

// Bytes of the test blob: a pattern that shows any offset error.
std::string blob_bytes(size_t n) {
    std::string b(n, '\0');
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<char>((i * 7 + i / 251) & 0xff);
    return b;
}

// Answers GET .../blobs/<digest> from `blob`, honouring a Range header unless told not to.
std::string serve_blob(const TestServer::Request& r, const std::string& blob, bool honour_range = true) {
    auto range = r.headers.get("Range");
    if (!range || !honour_range) return http(200, "OK", {}, blob);
    uint64_t a = 0, b = 0;
    std::sscanf(std::string(*range).c_str(), "bytes=%lu-%lu", &a, &b);
    if (a >= blob.size()) return http(416, "Range Not Satisfiable", {{"Content-Range", fmt::format("bytes */{}", blob.size())}}, "");
    b = std::min<uint64_t>(b, blob.size() - 1);
    return http(206, "Partial Content", {{"Content-Range", fmt::format("bytes {}-{}/{}", a, b, blob.size())}},
                blob.substr(a, b - a + 1));
}

struct Rig {
    std::unique_ptr<EventLoop> loop = std::move(*EventLoop::create());
    std::unique_ptr<CurlMulti> curl;
    Stats stats;
    std::shared_ptr<AuthCache> auth = std::make_shared<AuthCache>();
    std::shared_ptr<RegistryBackend> backend;
    Descriptor blob;

    Rig(const std::string& registry, size_t blob_size, Credential cred = {}) {
        CurlMultiOptions o;
        o.max_host_connections = 2;
        o.curl.getenv = [](const char*) -> const char* { return nullptr; };  // no proxies
        curl = std::move(*CurlMulti::create(*loop, o));
        RegistryAccess access;
        access.registry = registry;
        access.endpoints = {default_endpoint(registry)};
        access.credentials = {cred};
        RegistryBackendOptions bo;
        bo.max_inflight = 2;
        bo.retry.max_retries = 2;
        bo.retry.base = 1ms;
        backend = std::make_shared<RegistryBackend>(*loop, *curl, stats, auth, access, "lib/app", bo);
        blob.digest = kDigest;
        blob.size = static_cast<int64_t>(blob_size);
    }

    // Fetches one range, running the loop until it is answered (10 s at most).
    Result<std::string> fetch(uint64_t offset, uint64_t len) {
        std::optional<Result<std::string>> got;
        backend->fetch_range(blob, offset, len, "test-1", [&](Result<std::string> r) {
            got = std::move(r);
            loop->stop();
        });
        uint64_t guard = loop->add_timer(10s, [&] { loop->stop(); });
        REQUIRE(loop->run());
        loop->cancel(guard);
        REQUIRE_MESSAGE(got.has_value(), "the range was not answered within 10 s");
        return std::move(*got);
    }
};

}  // namespace

TEST_CASE("registry backend: body plans for range answers") {
    auto p = range_body_plan(206, true, 1000, 500);
    CHECK(p.skip == 0);
    CHECK(p.keep == 500);
    CHECK(p.overflow == BodyPlan::Overflow::Fail);
    p = range_body_plan(200, true, 1000, 500);  // Range ignored: our window of the whole blob
    CHECK(p.skip == 1000);
    CHECK(p.keep == 500);
    CHECK(p.overflow == BodyPlan::Overflow::Stop);
    p = range_body_plan(200, false, 1000, 500);  // a token answer
    CHECK(p.skip == 0);
    CHECK(p.overflow == BodyPlan::Overflow::Fail);
    p = range_body_plan(404, true, 1000, 500);
    CHECK(p.skip == 0);
    CHECK(p.overflow == BodyPlan::Overflow::Truncate);
}

TEST_CASE("registry backend: checking range answers") {
    const std::string what = "GET blob lib/app@sha256:aa bytes 100-199";
    SUBCASE("206 with the range asked for") {
        CHECK(check_range_response(response(206, {{"Content-Range", "bytes 100-199/1000"}}, std::string(100, 'x')),
                                   100, 100, what));
        CHECK(check_range_response(response(206, {{"Content-Range", "bytes 100-199/*"}}, std::string(100, 'x')), 100,
                                   100, what));
    }
    SUBCASE("206 for another range, without Content-Range, or short") {
        auto r = check_range_response(response(206, {{"Content-Range", "bytes 0-99/1000"}}, std::string(100, 'x')),
                                      100, 100, what);
        REQUIRE(!r);
        CHECK(r.error().message.find(what) != std::string::npos);
        CHECK(r.error().message.find("0-99") != std::string::npos);
        CHECK(!check_range_response(response(206, {}, std::string(100, 'x')), 100, 100, what));
        CHECK(!check_range_response(response(206, {{"Content-Range", "bytes */1000"}}, ""), 100, 100, what));
        CHECK(!check_range_response(response(206, {{"Content-Range", "bytes 100-199/1000"}}, std::string(99, 'x')),
                                    100, 100, what));
    }
    SUBCASE("200 (Range ignored): the kept window must be complete") {
        CHECK(check_range_response(response(200, {}, std::string(100, 'x')), 100, 100, what));
        auto r = check_range_response(response(200, {}, std::string(40, 'x')), 100, 100, what);
        REQUIRE(!r);
        CHECK(r.error().err == ERANGE);
        CHECK(r.error().message.find("140 bytes") != std::string::npos);
    }
    SUBCASE("416 and errors name the blob, the range and the status") {
        auto r = check_range_response(response(416, {{"Content-Range", "bytes */150"}}), 100, 100, what);
        REQUIRE(!r);
        CHECK(r.error().err == ERANGE);
        CHECK(r.error().message.find("150 bytes") != std::string::npos);
        r = check_range_response(
            response(404, {}, R"({"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]})"), 100,
            100, what);
        REQUIRE(!r);
        CHECK(r.error().err == ENOENT);
        CHECK(r.error().message.find(what) != std::string::npos);
        CHECK(r.error().message.find("HTTP 404") != std::string::npos);
        CHECK(r.error().message.find("BLOB_UNKNOWN") != std::string::npos);
        r = check_range_response(response(503), 100, 100, what);
        REQUIRE(!r);
        CHECK(r.error().err == EIO);
        CHECK(r.error().message.find("HTTP 503") != std::string::npos);
    }
}

TEST_CASE("registry backend: ranges over HTTP from the event loop") {
    const std::string blob = blob_bytes(300000);
    bool honour = true;
    int fail_first = 0;
    TestServer reg([&](const TestServer::Request& r) -> std::optional<std::string> {
        if (fail_first > 0) {
            --fail_first;
            return http(503, "Unavailable", {}, "busy");
        }
        if (r.target != "/v2/lib/app/blobs/" + kDigest) return http(404, "Not Found", {}, "");
        return serve_blob(r, blob, honour);
    });
    Rig rig(reg.host(), blob.size());

    SUBCASE("206") {
        auto r = rig.fetch(12345, 70000);
        REQUIRE(r);
        CHECK(*r == blob.substr(12345, 70000));
        auto reqs = reg.requests();
        REQUIRE(reqs.size() == 1);
        CHECK(reqs[0].headers.get("Range") == std::optional<std::string_view>("bytes=12345-82344"));
        CHECK(rig.stats.bytes_fetched == 0);  // all delivered: the scheduler counts those
    }
    SUBCASE("a server that ignores Range: the window is cut out, the rest not read") {
        honour = false;
        auto r = rig.fetch(100000, 5000);
        REQUIRE(r);
        CHECK(*r == blob.substr(100000, 5000));
        // received before the window and maybe a little after it: counted as overhead
        CHECK(rig.stats.bytes_fetched >= 100000);
        CHECK(rig.stats.bytes_fetched < blob.size());
        r = rig.fetch(0, blob.size());  // the whole blob as a 200 is fine
        REQUIRE(r);
        CHECK(*r == blob);
    }
    SUBCASE("503 twice, then the range: retried by the flow") {
        fail_first = 2;
        auto r = rig.fetch(0, 4096);
        REQUIRE(r);
        CHECK(*r == blob.substr(0, 4096));
        CHECK(reg.requests().size() == 3);
        CHECK(rig.stats.retries == 2);
        CHECK(rig.backend->retries_itself());
    }
    SUBCASE("503 for ever: the error names blob, range and status") {
        fail_first = 100;
        auto r = rig.fetch(0, 4096);
        REQUIRE(!r);
        CHECK(r.error().message.find(kDigest) != std::string::npos);
        CHECK(r.error().message.find("bytes 0-4095") != std::string::npos);
        CHECK(r.error().message.find("HTTP 503") != std::string::npos);
        CHECK(reg.requests().size() == 3);  // the first try and two retries
    }
    SUBCASE("beyond the end: 416") {
        auto r = rig.fetch(blob.size() + 10, 100);
        REQUIRE(!r);
        CHECK(r.error().err == ERANGE);
    }
    CHECK(rig.backend->inflight() == 0);
    CHECK(rig.curl->active() == 0);
}

TEST_CASE("registry backend: Basic auth, a redirect to storage without the credentials, the storage URL reused") {
    const std::string blob = blob_bytes(50000);
    TestServer storage([&](const TestServer::Request& r) -> std::optional<std::string> {
        if (r.target.rfind("/signed/blob?sig=", 0) != 0) return http(404, "Not Found", {}, "");
        return serve_blob(r, blob);
    });
    const std::string expect_auth = basic_authorization("user", "secret");
    TestServer reg([&](const TestServer::Request& r) -> std::optional<std::string> {
        if (r.headers.get("Authorization") != std::optional<std::string_view>(expect_auth))
            return http(401, "Unauthorized", {{"WWW-Authenticate", "Basic realm=\"test\""}}, "");
        return http(307, "Temporary Redirect", {{"Location", "http://" + storage.host() + "/signed/blob?sig=xyz"}}, "");
    });
    Credential cred;
    cred.username = "user";
    cred.password = "secret";
    Rig rig(reg.host(), blob.size(), cred);

    auto r = rig.fetch(1000, 2000);
    REQUIRE(r);
    CHECK(*r == blob.substr(1000, 2000));
    auto reg_reqs = reg.requests();
    REQUIRE(reg_reqs.size() == 2);  // anonymous, then with the credentials
    CHECK(!reg_reqs[0].headers.has("Authorization"));
    CHECK(reg_reqs[1].headers.get("Authorization") == std::optional<std::string_view>(expect_auth));
    auto st = storage.requests();
    REQUIRE(st.size() == 1);
    CHECK(!st[0].headers.has("Authorization"));
    CHECK(st[0].headers.get("Range") == std::optional<std::string_view>("bytes=1000-2999"));

    // The next range of the blob goes to the storage URL at once.
    r = rig.fetch(40000, 10000);
    REQUIRE(r);
    CHECK(*r == blob.substr(40000, 10000));
    CHECK(reg.requests().size() == 2);
    CHECK(storage.requests().size() == 2);
}

TEST_CASE("registry backend: bearer token from the token server, reused") {
    const std::string blob = blob_bytes(20000);
    TestServer tokens([&](const TestServer::Request& r) -> std::optional<std::string> {
        if (r.target.rfind("/token?", 0) != 0) return http(404, "Not Found", {}, "");
        return http(200, "OK", {{"Content-Type", "application/json"}}, R"({"token":"tok-1","expires_in":300})");
    });
    TestServer reg([&](const TestServer::Request& r) -> std::optional<std::string> {
        if (r.headers.get("Authorization") != std::optional<std::string_view>("Bearer tok-1"))
            return http(401, "Unauthorized",
                        {{"WWW-Authenticate", "Bearer realm=\"http://" + tokens.host() +
                                                  "/token\",service=\"test\",scope=\"repository:lib/app:pull\""}},
                        "");
        return serve_blob(r, blob);
    });
    Rig rig(reg.host(), blob.size());
    auto r = rig.fetch(0, 8192);
    REQUIRE(r);
    CHECK(*r == blob.substr(0, 8192));
    r = rig.fetch(8192, 8192);
    REQUIRE(r);
    CHECK(*r == blob.substr(8192, 8192));
    CHECK(tokens.requests().size() == 1);
    auto tr = tokens.requests()[0].target;
    CHECK(tr.find("scope=repository%3Alib%2Fapp%3Apull") != std::string::npos);
    CHECK(reg.requests().size() == 3);  // 401, the first range with the token, the second range
}

TEST_CASE("registry backend: shutdown answers a range still in flight, later ranges fail at once") {
    TestServer silent([](const TestServer::Request&) -> std::optional<std::string> { return std::nullopt; });
    Rig rig(silent.host(), 100000);
    std::optional<Result<std::string>> got;
    rig.backend->fetch_range(rig.blob, 0, 4096, "test-2", [&](Result<std::string> r) { got = std::move(r); });
    // Once the server has the request, stop everything.
    std::function<void()> poll = [&] {
        if (silent.requests().empty()) {
            rig.loop->add_timer(5ms, poll);
            return;
        }
        rig.backend->shutdown("erostreamd is stopping");
        rig.curl->shutdown("erostreamd is stopping");
        rig.loop->stop();
    };
    rig.loop->add_timer(5ms, poll);
    uint64_t guard = rig.loop->add_timer(10s, [&] { rig.loop->stop(); });
    REQUIRE(rig.loop->run());
    rig.loop->cancel(guard);
    REQUIRE(got.has_value());
    REQUIRE(!*got);
    CHECK(got->error().message.find("stopping") != std::string::npos);
    CHECK(rig.backend->inflight() == 0);
    CHECK(rig.curl->active() == 0);

    // After shutdown: answered (asynchronously), never silently dropped.
    got.reset();
    rig.backend->fetch_range(rig.blob, 0, 4096, "test-3", [&](Result<std::string> r) {
        got = std::move(r);
        rig.loop->stop();
    });
    CHECK(!got.has_value());  // never before fetch_range returned
    REQUIRE(rig.loop->run());
    REQUIRE(got.has_value());
    CHECK(!*got);
}

TEST_CASE("daemon registry: [registry] settings reach the clients and the loop") {
    char dir[] = "/tmp/eros-reg-test-XXXXXX";
    REQUIRE(::mkdtemp(dir));
    const std::string cfg_path = std::string(dir) + "/config.json";
    {
        FILE* f = std::fopen(cfg_path.c_str(), "w");
        REQUIRE(f);
        // user:pass for reg.example:5000
        std::fputs(R"({"auths":{"reg.example:5000":{"auth":"dXNlcjpwYXNz"}}})", f);
        std::fclose(f);
    }
    DaemonConfig cfg;
    cfg.docker_config = cfg_path;
    cfg.hosts_dir = "";
    cfg.insecure_registries = {"reg.example:5000"};
    cfg.http_proxy = "http://proxy.example:3128";
    cfg.no_proxy = "internal.example";
    cfg.retry_max = 7;
    cfg.retry_base_ms = 30;
    DaemonRegistry reg(cfg, [](const char* name) -> const char* {
        return std::string_view(name) == "HTTPS_PROXY" ? "http://env-proxy.example:8080" : nullptr;
    });
    const auto& opt = reg.options();
    CHECK(opt.retry.max_retries == 7);
    CHECK(opt.retry.base == 30ms);
    CHECK(select_proxy(*parse_url("http://reg.example:5000/v2/"), opt.curl.getenv) == "http://proxy.example:3128");
    CHECK(select_proxy(*parse_url("https://reg.example/v2/"), opt.curl.getenv) == "http://env-proxy.example:8080");
    CHECK(select_proxy(*parse_url("http://internal.example/v2/"), opt.curl.getenv).empty());

    CHECK(!reg.access("reg.example:5000"));  // prepared by client() only
    auto c = reg.client("reg.example:5000");
    REQUIRE(c);
    auto a = reg.access("reg.example:5000");
    REQUIRE(a);
    REQUIRE(a->endpoints.size() == 1);
    CHECK(a->endpoints[0].skip_verify);  // insecure
    REQUIRE(a->credentials.size() == 1);
    CHECK(a->credentials[0].username == "user");
    CHECK(a->credentials[0].password == "pass");
    auto other = reg.client("other.example");
    REQUIRE(other);
    REQUIRE(reg.access("other.example"));
    CHECK(!reg.access("other.example")->endpoints[0].skip_verify);
    CHECK(reg.access("other.example")->credentials[0].empty());
    std::remove(cfg_path.c_str());
    ::rmdir(dir);

    auto s = split_registry_source("docker://127.0.0.1:5000/a/b/c");
    REQUIRE(s);
    CHECK(s->first == "127.0.0.1:5000");
    CHECK(s->second == "a/b/c");
    CHECK(!split_registry_source("docker://host"));
    CHECK(!split_registry_source("oci:/x"));
}
