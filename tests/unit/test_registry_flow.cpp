// The request flow's decisions, driven by hand with made-up responses: no network, no sleeps.
#include <doctest.h>

#include <deque>

#include "registry/request_flow.h"
#include "registry/transport.h"

using namespace erostream;
using Step = RequestFlow::Step;

namespace {

struct Fixture {
    AuthCache auth;
    FlowContext ctx;
    Clock::time_point now = Clock::time_point{} + std::chrono::hours(10);
    Fixture() {
        ctx.auth = &auth;
        ctx.retry.max_retries = 3;
        ctx.retry.base = std::chrono::milliseconds(100);
        ctx.retry.cap = std::chrono::milliseconds(1000);
        ctx.retry.retry_after_cap = std::chrono::milliseconds(5000);
        ctx.random01 = [] { return 0.5; };
        ctx.now = [this] { return now; };
        ctx.wall_now = [] { return std::time_t(1000000); };
    }
    FlowSpec spec(std::string method = "GET", std::string path = "/v2/lib/x/manifests/1") {
        FlowSpec s;
        s.what = "test";
        s.endpoint = default_endpoint("reg.example");
        s.endpoint.headers.add("X-Mirror-Token", "cfg");
        s.request.method = std::move(method);
        s.request.url = "https://reg.example" + path;
        s.scopes = {"repository:lib/x:pull"};
        return s;
    }
};

HttpResponse resp(int status, std::vector<std::pair<std::string, std::string>> headers = {}, std::string body = {}) {
    HttpResponse r;
    r.status = status;
    for (auto& [k, v] : headers) r.headers.add(k, v);
    r.body = std::move(body);
    return r;
}

const char* kBearer = R"(Bearer realm="https://auth.example/token",service="reg.example",scope="repository:lib/x:pull")";

}  // namespace

TEST_CASE("flow: anonymous bearer token, then the cached token is sent at once") {
    Fixture f;
    RequestFlow flow(f.ctx, f.spec());
    auto a = flow.start();
    REQUIRE(a.step == Step::Send);
    CHECK(!a.request.headers.has("Authorization"));
    CHECK(a.request.headers.get("X-Mirror-Token") == "cfg");
    a = flow.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
    REQUIRE(a.step == Step::Send);
    CHECK(a.buffer_body);
    CHECK(a.request.method == "GET");
    CHECK(a.request.url.starts_with("https://auth.example/token?service=reg.example&scope=repository%3Alib%2Fx%3Apull"));
    a = flow.on_response(resp(200, {}, R"({"token":"T1","expires_in":120})"));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://reg.example/v2/lib/x/manifests/1");
    CHECK(a.request.headers.get("Authorization") == "Bearer T1");
    a = flow.on_response(resp(200, {}, "{}"));
    CHECK(a.step == Step::Done);
    CHECK(flow.response().status == 200);

    RequestFlow again(f.ctx, f.spec());
    a = again.start();
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.headers.get("Authorization") == "Bearer T1");

    // A new scope on the same origin: the token request comes first, without a 401 round trip.
    auto s = f.spec();
    s.scopes = {"repository:lib/y:pull"};
    RequestFlow other(f.ctx, s);
    a = other.start();
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url.starts_with("https://auth.example/token"));

    // After expiry the token is fetched again.
    f.now += std::chrono::seconds(200);
    RequestFlow later(f.ctx, f.spec());
    a = later.start();
    CHECK(a.request.url.starts_with("https://auth.example/token"));
}

TEST_CASE("flow: a rejected token is fetched once more, then the 401 is final") {
    Fixture f;
    RequestFlow flow(f.ctx, f.spec());
    auto a = flow.start();
    for (int round = 0; round < 2; ++round) {
        a = flow.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
        REQUIRE(a.step == Step::Send);
        CHECK(a.request.url.starts_with("https://auth.example/token"));
        a = flow.on_response(resp(200, {}, R"({"token":"bad"})"));
        REQUIRE(a.step == Step::Send);
    }
    a = flow.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
    CHECK(a.step == Step::Done);
    CHECK(flow.response().status == 401);
}

TEST_CASE("flow: password POST to the token endpoint, GET with Basic when POST is refused") {
    Fixture f;
    auto s = f.spec();
    s.credential.username = "u";
    s.credential.password = "pw";
    RequestFlow flow(f.ctx, s);
    auto a = flow.start();
    a = flow.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.method == "POST");
    a = flow.on_response(resp(405));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.method == "GET");
    CHECK(a.request.headers.get("Authorization") == basic_authorization("u", "pw"));
    a = flow.on_response(resp(200, {}, R"({"access_token":"T","refresh_token":"R"})"));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.headers.get("Authorization") == "Bearer T");
    AuthChallenge key;
    key.scheme = "bearer";
    key.params = {{"realm", "https://auth.example/token"}, {"service", "reg.example"}};
    CHECK(f.auth.post_unsupported(key));
    CHECK(f.auth.refresh_token(key) == "R");

    // Wrong credentials: the token endpoint's 401 is an error that names no secret.
    Fixture g;
    RequestFlow bad(g.ctx, s);
    bad.start();
    bad.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
    a = bad.on_response(resp(401));  // POST refused
    REQUIRE(a.step == Step::Send);
    a = bad.on_response(resp(401));  // GET refused too
    REQUIRE(a.step == Step::Failed);
    CHECK(a.error.message.find("credentials rejected") != std::string::npos);
    CHECK(a.error.message.find("pw") == std::string::npos);
}

TEST_CASE("flow: ACR refresh token and AAD exchange") {
    Fixture f;
    auto s = f.spec();
    s.credential.aad_access_token = "aad";
    RequestFlow flow(f.ctx, s);
    flow.start();
    auto a = flow.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://reg.example/oauth2/exchange");
    CHECK(a.request.body->bytes == "grant_type=access_token&service=reg.example&access_token=aad");
    a = flow.on_response(resp(200, {}, R"({"refresh_token":"acr-rt"})"));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.method == "POST");
    CHECK(a.request.body->bytes.starts_with("grant_type=refresh_token&refresh_token=acr-rt&service=reg.example"));
    a = flow.on_response(resp(200, {}, R"({"access_token":"T"})"));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.headers.get("Authorization") == "Bearer T");

    Fixture g;
    RequestFlow fail_ex(g.ctx, s);
    fail_ex.start();
    fail_ex.on_response(resp(401, {{"WWW-Authenticate", kBearer}}));
    a = fail_ex.on_response(resp(401));
    REQUIRE(a.step == Step::Failed);
    CHECK(a.error.message.find("oauth2/exchange") != std::string::npos);
    CHECK(a.error.message.find("aad") == a.error.message.find("aad"));  // only in the URL path
}

TEST_CASE("flow: Basic auth") {
    Fixture f;
    auto s = f.spec();
    s.credential.username = "u";
    s.credential.password = "p";
    RequestFlow flow(f.ctx, s);
    flow.start();
    auto a = flow.on_response(resp(401, {{"WWW-Authenticate", "Basic realm=\"Registry Realm\""}}));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.headers.get("Authorization") == basic_authorization("u", "p"));
    a = flow.on_response(resp(401, {{"WWW-Authenticate", "Basic realm=\"Registry Realm\""}}));
    CHECK(a.step == Step::Done);  // wrong password: no loop
    // Later requests send Basic right away.
    RequestFlow next(f.ctx, s);
    a = next.start();
    CHECK(a.request.headers.get("Authorization") == basic_authorization("u", "p"));

    Fixture g;
    RequestFlow anon(g.ctx, g.spec());
    anon.start();
    a = anon.on_response(resp(401, {{"WWW-Authenticate", "Basic realm=x"}}));
    CHECK(a.step == Step::Done);
}

TEST_CASE("flow: redirects never carry the Authorization header to another origin") {
    Fixture f;
    AuthChallenge basic;
    basic.scheme = "basic";
    f.auth.remember_challenge("https://reg.example", basic);
    auto s = f.spec("GET", "/v2/lib/x/blobs/sha256:aa");
    s.credential.username = "u";
    s.credential.password = "p";
    s.request.headers.add("Range", "bytes=0-9");
    RequestFlow flow(f.ctx, s);
    auto a = flow.start();
    REQUIRE(a.request.headers.has("Authorization"));
    // Same origin (relative Location): credentials stay.
    a = flow.on_response(resp(307, {{"Location", "/v2/lib/x/blobs/sha256:aa?mirror=1"}}));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://reg.example/v2/lib/x/blobs/sha256:aa?mirror=1");
    CHECK(a.request.headers.has("Authorization"));
    // Storage host: no Authorization, no configured endpoint headers, the Range stays.
    a = flow.on_response(resp(302, {{"Location", "https://storage.example/blob?sig=SECRET"}}));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://storage.example/blob?sig=SECRET");
    CHECK(!a.request.headers.has("Authorization"));
    CHECK(!a.request.headers.has("X-Mirror-Token"));
    CHECK(a.request.headers.get("Range") == "bytes=0-9");
    // Back to the registry's origin from storage: Authorization is not restored from a foreign hop.
    a = flow.on_response(resp(307, {{"Location", "https://storage.example:8443/other"}}));
    REQUIRE(a.step == Step::Send);
    CHECK(!a.request.headers.has("Authorization"));
    a = flow.on_response(resp(206));
    REQUIRE(a.step == Step::Done);
    CHECK(flow.storage_url() == std::string("https://storage.example:8443/other"));

    // Scheme change on the same host is another origin too.
    RequestFlow down(f.ctx, s);
    down.start();
    a = down.on_response(resp(301, {{"Location", "http://reg.example/v2/lib/x/blobs/sha256:aa"}}));
    CHECK(!a.request.headers.has("Authorization"));

    RequestFlow loop(f.ctx, s);
    loop.start();
    for (int i = 0; i < 10; ++i) {
        a = loop.on_response(resp(302, {{"Location", "/again"}}));
        REQUIRE(a.step == Step::Send);
    }
    a = loop.on_response(resp(302, {{"Location", "/again"}}));
    CHECK(a.step == Step::Failed);
    RequestFlow noloc(f.ctx, s);
    noloc.start();
    CHECK(noloc.on_response(resp(302)).step == Step::Failed);
}

TEST_CASE("flow: a cached storage URL is tried first and abandoned when refused") {
    Fixture f;
    auto s = f.spec("GET", "/v2/lib/x/blobs/sha256:aa");
    s.direct_url = "https://storage.example/blob?sig=old";
    s.request.headers.add("Range", "bytes=5-9");
    RequestFlow flow(f.ctx, s);
    auto a = flow.start();
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://storage.example/blob?sig=old");
    CHECK(!a.request.headers.has("Authorization"));
    a = flow.on_response(resp(403, {}, "<Error>AuthenticationFailed</Error>"));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://reg.example/v2/lib/x/blobs/sha256:aa");
    CHECK(flow.direct_url_failed());
    a = flow.on_response(resp(307, {{"Location", "https://storage.example/blob?sig=new"}}));
    a = flow.on_response(resp(206));
    REQUIRE(a.step == Step::Done);
    CHECK(flow.storage_url() == std::string("https://storage.example/blob?sig=new"));

    RequestFlow unreachable(f.ctx, s);
    unreachable.start();
    a = unreachable.on_transport_error({TransportErrorKind::Connect, "refused"});
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url.starts_with("https://reg.example/"));

    RequestFlow ok(f.ctx, s);
    ok.start();
    a = ok.on_response(resp(206));
    CHECK(a.step == Step::Done);
    CHECK(!ok.direct_url_failed());
}

TEST_CASE("flow: retries with backoff and Retry-After, then the last answer") {
    Fixture f;
    RequestFlow flow(f.ctx, f.spec());
    auto a = flow.start();
    a = flow.on_response(resp(503, {{"Retry-After", "2"}}));
    REQUIRE(a.step == Step::Wait);
    CHECK(a.wait == std::chrono::milliseconds(2000));
    a = flow.after_wait();
    REQUIRE(a.step == Step::Send);
    a = flow.on_response(resp(429));
    REQUIRE(a.step == Step::Wait);
    CHECK(a.wait == std::chrono::milliseconds(100));  // 0.5 * 100 * 2^1
    flow.after_wait();
    a = flow.on_transport_error({TransportErrorKind::Timeout, "slow"});
    REQUIRE(a.step == Step::Wait);
    flow.after_wait();
    a = flow.on_response(resp(500));
    CHECK(a.step == Step::Done);  // 3 retries used
    CHECK(flow.retries() == 3);
    CHECK(flow.response().status == 500);

    RequestFlow t(f.ctx, f.spec());
    t.start();
    for (int i = 0; i < 3; ++i) {
        REQUIRE(t.on_transport_error({TransportErrorKind::Connect, "refused"}).step == Step::Wait);
        t.after_wait();
    }
    a = t.on_transport_error({TransportErrorKind::Connect, "connection refused"});
    REQUIRE(a.step == Step::Failed);
    CHECK(a.error.message.find("gave up after 3 retries") != std::string::npos);
    CHECK(a.error.err == ECONNREFUSED);

    // A 4xx is final at once.
    RequestFlow nf(f.ctx, f.spec());
    nf.start();
    CHECK(nf.on_response(resp(404)).step == Step::Done);
}

TEST_CASE("flow: requests that are not idempotent are retried only when nothing was sent") {
    Fixture f;
    RequestFlow patch(f.ctx, f.spec("PATCH", "/v2/lib/x/blobs/uploads/u"));
    patch.start();
    CHECK(patch.on_response(resp(503)).step == Step::Done);
    RequestFlow p2(f.ctx, f.spec("PATCH", "/v2/lib/x/blobs/uploads/u"));
    p2.start();
    CHECK(p2.on_transport_error({TransportErrorKind::Network, "reset"}).step == Step::Failed);
    RequestFlow p3(f.ctx, f.spec("PATCH", "/v2/lib/x/blobs/uploads/u"));
    p3.start();
    CHECK(p3.on_transport_error({TransportErrorKind::Connect, "refused"}).step == Step::Wait);
    auto s = f.spec("POST", "/v2/lib/x/blobs/uploads/");
    s.retry_non_idempotent = true;
    RequestFlow post(f.ctx, s);
    post.start();
    CHECK(post.on_response(resp(502)).step == Step::Wait);
}

TEST_CASE("flow: --insecure falls back to plain http after a TLS failure") {
    Fixture f;
    auto s = f.spec();
    s.endpoint.http_fallback = true;
    RequestFlow flow(f.ctx, s);
    flow.start();
    auto a = flow.on_transport_error({TransportErrorKind::Tls, "wrong version number"});
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "http://reg.example:443/v2/lib/x/manifests/1");
    CHECK(flow.fell_back_to_http());

    RequestFlow strict(f.ctx, f.spec());
    strict.start();
    CHECK(strict.on_transport_error({TransportErrorKind::Tls, "bad cert"}).step == Step::Failed);
}

TEST_CASE("error bodies become short messages") {
    auto r = resp(404, {}, R"({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]})");
    CHECK(describe_http_error(r) == "HTTP 404 MANIFEST_UNKNOWN: manifest unknown");
    CHECK(describe_http_error(resp(500, {}, "<html>")) == "HTTP 500");
    CHECK(errno_for_status(404) == ENOENT);
    CHECK(errno_for_status(403) == EACCES);
    CHECK(errno_for_status(416) == ERANGE);
}

// --- the blocking driver with a scripted transport ------------------------------------------

namespace {

struct Scripted {
    HttpResponse head;
    std::string body;
    std::optional<TransportError> start_error;
    std::optional<TransportError> body_error;  // after the body bytes
};

class ScriptedExchange final : public HttpExchange {
public:
    explicit ScriptedExchange(Scripted s) : s_(std::move(s)) {}
    std::expected<HttpResponse, TransportError> head() override { return s_.head; }
    std::expected<size_t, TransportError> read(void* buf, size_t n) override {
        if (pos_ == s_.body.size()) {
            if (s_.body_error) return std::unexpected(*s_.body_error);
            return 0;
        }
        n = std::min(n, s_.body.size() - pos_);
        std::memcpy(buf, s_.body.data() + pos_, n);
        pos_ += n;
        return n;
    }

private:
    Scripted s_;
    size_t pos_ = 0;
};

class ScriptedTransport final : public HttpTransport {
public:
    std::deque<Scripted> script;
    std::vector<HttpRequest> sent;
    std::expected<std::unique_ptr<HttpExchange>, TransportError> start(const HttpRequest& req) override {
        sent.push_back(req);
        REQUIRE(!script.empty());
        Scripted s = std::move(script.front());
        script.pop_front();
        if (s.start_error) return std::unexpected(*s.start_error);
        return std::make_unique<ScriptedExchange>(std::move(s));
    }
};

Scripted answer(int status, std::string body = {}, std::vector<std::pair<std::string, std::string>> headers = {}) {
    Scripted s;
    s.head = resp(status, std::move(headers));
    s.body = std::move(body);
    return s;
}

}  // namespace

TEST_CASE("run_flow: buffered bodies, a body cut short is retried, waits go through the sleeper") {
    Fixture f;
    ScriptedTransport t;
    t.script.push_back(answer(503, R"({"errors":[]})", {{"Retry-After", "1"}}));
    Scripted cut = answer(200, "{\"sche");
    cut.body_error = TransportError{TransportErrorKind::Truncated, "closed"};
    t.script.push_back(cut);
    t.script.push_back(answer(200, "{\"schemaVersion\":2}"));
    auto s = f.spec();
    s.buffer_body = true;
    RequestFlow flow(f.ctx, s);
    std::vector<std::chrono::milliseconds> slept;
    auto out = run_flow(t, flow, [&](std::chrono::milliseconds d) { slept.push_back(d); });
    REQUIRE(out);
    CHECK(out->response.status == 200);
    CHECK(out->response.body == "{\"schemaVersion\":2}");
    CHECK(!out->stream);
    CHECK(t.sent.size() == 3);
    REQUIRE(slept.size() == 2);
    CHECK(slept[0] == std::chrono::milliseconds(1000));
}

TEST_CASE("run_flow: a streamed final body is handed over live") {
    Fixture f;
    ScriptedTransport t;
    t.script.push_back(answer(307, "", {{"Location", "https://storage.example/b?sig=1"}}));
    t.script.push_back(answer(200, "blob bytes"));
    RequestFlow flow(f.ctx, f.spec("GET", "/v2/lib/x/blobs/sha256:aa"));
    auto out = run_flow(t, flow, [](std::chrono::milliseconds) {});
    REQUIRE(out);
    REQUIRE(out->stream);
    char buf[32];
    auto n = out->stream->read(buf, sizeof buf);
    REQUIRE(n);
    CHECK(std::string(buf, *n) == "blob bytes");
    CHECK(out->storage_url == std::string("https://storage.example/b?sig=1"));

    ScriptedTransport dead;
    Scripted refused;
    refused.start_error = TransportError{TransportErrorKind::Connect, "connection refused"};
    for (int i = 0; i < 4; ++i) dead.script.push_back(refused);
    RequestFlow f2(f.ctx, f.spec());
    auto failed = run_flow(dead, f2, [](std::chrono::milliseconds) {});
    REQUIRE(!failed);
    CHECK(failed.error().message.find("https://reg.example/v2/lib/x/manifests/1: connection refused") != std::string::npos);
}

TEST_CASE("flow: a storage URL refused right after the redirect sends the flow back to the registry") {
    Fixture f;
    RequestFlow flow(f.ctx, f.spec("GET", "/v2/lib/x/blobs/sha256:aa"));
    flow.start();
    auto a = flow.on_response(resp(307, {{"Location", "http://storage.example/s?sig=1"}}));
    REQUIRE(a.step == Step::Send);
    a = flow.on_response(resp(403));
    REQUIRE(a.step == Step::Send);
    CHECK(a.request.url == "https://reg.example/v2/lib/x/blobs/sha256:aa");
    a = flow.on_response(resp(307, {{"Location", "http://storage.example/s?sig=2"}}));
    a = flow.on_response(resp(200));
    CHECK(a.step == Step::Done);
    // A 416 from a cached URL is an answer about the range, not about the URL.
    auto s = f.spec("GET", "/v2/lib/x/blobs/sha256:aa");
    s.direct_url = "http://storage.example/s?sig=2";
    RequestFlow direct(f.ctx, s);
    direct.start();
    CHECK(direct.on_response(resp(416)).step == Step::Done);
    CHECK(!direct.direct_url_failed());
}
