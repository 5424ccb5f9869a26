#include <doctest.h>

#include "registry/auth.h"
#include "registry/curl_transport.h"
#include "registry/retry_policy.h"

using namespace erostream;
using std::chrono::milliseconds;

TEST_CASE("backoff: full jitter within capped exponential bounds") {
    RetryPolicy p;
    p.base = milliseconds(200);
    p.cap = milliseconds(5000);
    p.retry_after_cap = milliseconds(30000);
    for (unsigned attempt = 0; attempt < 40; ++attempt) {
        auto ceiling = std::min<int64_t>(200ll << std::min(attempt, 20u), 5000);
        CHECK(p.delay(attempt, 0.0, std::nullopt) == milliseconds(0));
        auto hi = p.delay(attempt, 0.999999, std::nullopt);
        CHECK(hi <= milliseconds(ceiling));
        CHECK(hi >= milliseconds(ceiling - 1));
    }
    CHECK(p.delay(0, 0.5, std::nullopt) == milliseconds(100));
    CHECK(p.delay(2, 0.5, std::nullopt) == milliseconds(400));
    // Retry-After wins when longer, and is capped.
    CHECK(p.delay(0, 0.5, milliseconds(3000)) == milliseconds(3000));
    CHECK(p.delay(5, 0.99, milliseconds(10)) >= milliseconds(4900));
    CHECK(p.delay(0, 0.0, milliseconds(3600000)) == milliseconds(30000));
    // Out-of-range random numbers are clamped.
    CHECK(p.delay(0, 7.0, std::nullopt) == milliseconds(200));
}

TEST_CASE("retry policy from the environment") {
    auto p = RetryPolicy::from_env([](const char* n) -> const char* {
        std::string_view s(n);
        if (s == "EROSTREAM_RETRY_MAX") return "2";
        if (s == "EROSTREAM_RETRY_BASE_MS") return "15";
        return nullptr;
    });
    CHECK(p.max_retries == 2);
    CHECK(p.base == milliseconds(15));
    auto d = RetryPolicy::from_env([](const char*) -> const char* { return "x1"; });
    CHECK(d.max_retries == 5);
    CHECK(d.base == milliseconds(200));
}

TEST_CASE("which failures are retried") {
    CHECK(is_retryable_status(408));
    CHECK(is_retryable_status(429));
    CHECK(is_retryable_status(500));
    CHECK(is_retryable_status(503));
    CHECK(!is_retryable_status(501));
    CHECK(!is_retryable_status(505));
    CHECK(!is_retryable_status(404));
    CHECK(!is_retryable_status(401));
    CHECK(!is_retryable_status(200));
    CHECK(is_retryable_transport(TransportErrorKind::Connect, false));
    CHECK(is_retryable_transport(TransportErrorKind::Timeout, true));
    CHECK(!is_retryable_transport(TransportErrorKind::Timeout, false));
    CHECK(is_retryable_transport(TransportErrorKind::Truncated, true));
    CHECK(!is_retryable_transport(TransportErrorKind::Tls, true));
    CHECK(!is_retryable_transport(TransportErrorKind::Other, true));
    CHECK(is_idempotent_method("GET"));
    CHECK(is_idempotent_method("PUT"));
    CHECK(!is_idempotent_method("POST"));
    CHECK(!is_idempotent_method("PATCH"));
}

TEST_CASE("scopes are merged per repository") {
    auto s = merge_scopes({"repository:b:pull", "repository:a:push", "repository:a:pull", "repository:a:pull",
                           "registry:catalog:*"});
    REQUIRE(s.size() == 3);
    CHECK(s[0] == "registry:catalog:*");
    CHECK(s[1] == "repository:a:pull,push");
    CHECK(s[2] == "repository:b:pull");
    CHECK(repository_scope("x/y", true) == "repository:x/y:pull,push");
}

TEST_CASE("token requests: anonymous GET, password POST, GET fallback, refresh token") {
    AuthChallenge ch;
    ch.scheme = "bearer";
    ch.params = {{"realm", "https://auth.example/token"}, {"service", "reg"}};
    std::vector<std::string> scopes = {"repository:a:pull", "repository:b:pull"};

    auto anon = build_token_request(ch, scopes, Credential{}, "", TokenMethod::Post);
    REQUIRE(anon);
    CHECK(anon->method == "GET");
    CHECK(anon->url ==
          "https://auth.example/token?service=reg&scope=repository%3Aa%3Apull&scope=repository%3Ab%3Apull&client_id=erostream");
    CHECK(!anon->headers.has("Authorization"));

    Credential pw{"u", "p w", "", ""};
    auto post = build_token_request(ch, scopes, pw, "", TokenMethod::Post);
    REQUIRE(post);
    CHECK(post->method == "POST");
    CHECK(post->url == "https://auth.example/token");
    REQUIRE(post->body);
    CHECK(post->body->bytes ==
          "grant_type=password&username=u&password=p%20w&access_type=offline&service=reg&scope=repository%3Aa%3Apull&"
          "scope=repository%3Ab%3Apull&client_id=erostream");
    CHECK(post->headers.get("Content-Type") == "application/x-www-form-urlencoded");

    auto get = build_token_request(ch, scopes, pw, "", TokenMethod::Get);
    REQUIRE(get);
    CHECK(get->method == "GET");
    CHECK(get->headers.get("Authorization") == basic_authorization("u", "p w"));
    CHECK(get->url.find("p%20w") == std::string::npos);  // the password is never in a URL

    Credential idt{"", "", "refresh-me", ""};
    auto rt = build_token_request(ch, scopes, idt, "", TokenMethod::Get);
    REQUIRE(rt);
    CHECK(rt->method == "POST");  // a refresh token never goes into a URL
    CHECK(rt->body->bytes.starts_with("grant_type=refresh_token&refresh_token=refresh-me&"));
    // A server-issued refresh token wins over the configured identity token.
    auto rt2 = build_token_request(ch, scopes, idt, "newer", TokenMethod::Post);
    CHECK(rt2->body->bytes.starts_with("grant_type=refresh_token&refresh_token=newer&"));

    AuthChallenge norealm;
    norealm.scheme = "bearer";
    CHECK(!build_token_request(norealm, scopes, pw, "", TokenMethod::Post));

    auto ex = build_aad_exchange_request("https://acr.example", "acr.example", "aad tok");
    CHECK(ex.method == "POST");
    CHECK(ex.url == "https://acr.example/oauth2/exchange");
    CHECK(ex.body->bytes == "grant_type=access_token&service=acr.example&access_token=aad%20tok");
}

TEST_CASE("token responses") {
    auto t = parse_token_response(R"({"token":"T","expires_in":300,"refresh_token":"R"})");
    REQUIRE(t);
    CHECK(t->token == "T");
    CHECK(t->refresh_token == "R");
    CHECK(t->expires_in == std::chrono::seconds(300));
    t = parse_token_response(R"({"access_token":"A"})");
    REQUIRE(t);
    CHECK(t->token == "A");
    CHECK(t->expires_in == std::chrono::seconds(60));
    CHECK(!parse_token_response(R"({"expires_in":3})"));
    CHECK(!parse_token_response("<html>"));
    CHECK(parse_exchange_response(R"({"refresh_token":"X"})") == std::string("X"));
    CHECK(!parse_exchange_response(R"({})"));
}

TEST_CASE("token cache: keyed by realm, service and scopes; expires early") {
    AuthCache c;
    AuthChallenge ch;
    ch.scheme = "bearer";
    ch.params = {{"realm", "https://a/t"}, {"service", "s"}};
    AuthChallenge other = ch;
    other.params["service"] = "s2";
    auto t0 = Clock::time_point{} + std::chrono::hours(1);
    c.store_token(ch, {"repository:a:pull"}, "tok", std::chrono::seconds(100), t0);
    CHECK(c.token(ch, {"repository:a:pull"}, t0) == std::string("tok"));
    CHECK(!c.token(ch, {"repository:a:pull,push"}, t0));
    CHECK(!c.token(other, {"repository:a:pull"}, t0));
    CHECK(c.token(ch, {"repository:a:pull"}, t0 + std::chrono::seconds(89)));
    CHECK(!c.token(ch, {"repository:a:pull"}, t0 + std::chrono::seconds(90)));
    c.drop_token(ch, {"repository:a:pull"});
    CHECK(!c.token(ch, {"repository:a:pull"}, t0));
    c.store_refresh_token(ch, "r");
    CHECK(c.refresh_token(ch) == "r");
    CHECK(c.refresh_token(other).empty());
    CHECK(!c.post_unsupported(ch));
    c.mark_post_unsupported(ch);
    CHECK(c.post_unsupported(ch));
}

TEST_CASE("proxy selection from the environment") {
    std::map<std::string, std::string> env;
    auto getenv = [&](const char* n) -> const char* {
        auto it = env.find(n);
        return it == env.end() ? nullptr : it->second.c_str();
    };
    auto http = *parse_url("http://reg.example:5000/v2/");
    auto https = *parse_url("https://reg.example/v2/");
    CHECK(select_proxy(http, getenv).empty());
    env["HTTP_PROXY"] = "http://upper:3128";
    CHECK(select_proxy(http, getenv) == "http://upper:3128");
    env["http_proxy"] = "http://lower:3128";
    CHECK(select_proxy(http, getenv) == "http://lower:3128");
    CHECK(select_proxy(https, getenv).empty());
    env["HTTPS_PROXY"] = "http://sec:3128";
    CHECK(select_proxy(https, getenv) == "http://sec:3128");
    env["NO_PROXY"] = "other.example, .example";
    CHECK(select_proxy(https, getenv).empty());
    env["no_proxy"] = "reg.example:443";
    CHECK(select_proxy(https, getenv).empty());
    CHECK(select_proxy(http, getenv) == "http://lower:3128");  // port 5000 is not excluded
    env["no_proxy"] = "10.0.0.0/8";
    CHECK(select_proxy(*parse_url("http://10.1.2.3/"), getenv).empty());
    CHECK(select_proxy(*parse_url("http://11.1.2.3/"), getenv) == "http://lower:3128");
    env["no_proxy"] = "*";
    CHECK(select_proxy(http, getenv).empty());
    env.clear();
    env["ALL_PROXY"] = "socks5://s:1080";
    CHECK(select_proxy(https, getenv) == "socks5://s:1080");
}
