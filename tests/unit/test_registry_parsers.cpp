#include <doctest.h>

#include "registry/http_parsers.h"
#include "registry/reference.h"
#include "registry/url.h"

using namespace erostream;

TEST_CASE("image references: Docker Hub defaults, registries, tags, digests") {
    auto r = parse_image_reference("debian");
    REQUIRE(r);
    CHECK(r->registry == "docker.io");
    CHECK(r->repository == "library/debian");
    CHECK(r->tag == "latest");
    CHECK(!r->digest);
    CHECK(r->api_host() == "registry-1.docker.io");

    r = parse_image_reference("docker://localhost:5000/a/b:v1");
    REQUIRE(r);
    CHECK(r->registry == "localhost:5000");
    CHECK(r->repository == "a/b");
    CHECK(r->tag == "v1");
    CHECK(r->api_host() == "localhost:5000");

    const std::string d = "sha256:" + std::string(64, 'a');
    r = parse_image_reference("ghcr.io/org/img:1.2@" + d);
    REQUIRE(r);
    CHECK(r->registry == "ghcr.io");
    CHECK(r->repository == "org/img");
    CHECK(r->tag == "1.2");
    CHECK(r->digest == d);
    CHECK(r->reference() == d);
    CHECK(r->str() == "ghcr.io/org/img:1.2@" + d);

    r = parse_image_reference("127.0.0.1:5000/x@" + d);
    REQUIRE(r);
    CHECK(!r->tag);  // pinned: no default tag
    CHECK(r->repository == "x");

    r = parse_image_reference("user/app");
    REQUIRE(r);
    CHECK(r->registry == "docker.io");
    CHECK(r->repository == "user/app");
    r = parse_image_reference("index.docker.io/library/busybox:1");
    REQUIRE(r);
    CHECK(r->registry == "docker.io");
    r = parse_image_reference("localhost/app");
    REQUIRE(r);
    CHECK(r->registry == "localhost");

    CHECK(!parse_image_reference(""));
    CHECK(!parse_image_reference("docker://"));
    CHECK(!parse_image_reference("Upper/case"));
    CHECK(!parse_image_reference("a/b:bad:tag"));
    CHECK(!parse_image_reference("a/b@sha256:123"));
    CHECK(!parse_image_reference("a//b"));
    CHECK(!parse_image_reference("a/b:" + std::string(129, 't')));
    CHECK(!parse_image_reference("a/-b"));
    CHECK(is_valid_repository("a__b/c.d/e-f"));
    CHECK(!is_valid_repository("a..b"));
}

TEST_CASE("WWW-Authenticate challenges") {
    auto c = parse_www_authenticate(
        R"(Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull")");
    REQUIRE(c);
    REQUIRE(c->size() == 1);
    CHECK((*c)[0].scheme == "bearer");
    CHECK((*c)[0].param("realm") == "https://auth.docker.io/token");
    CHECK((*c)[0].param("service") == "registry.docker.io");
    CHECK((*c)[0].param("scope") == "repository:library/ubuntu:pull");

    // Several challenges, case-insensitive names, quoted commas and escapes, unquoted values.
    c = parse_www_authenticate(R"(Basic realm="Registry, \"R\"", BEARER Realm=http://t/x, service = "s" , error="invalid_token")");
    REQUIRE(c);
    REQUIRE(c->size() == 2);
    CHECK((*c)[0].scheme == "basic");
    CHECK((*c)[0].param("realm") == "Registry, \"R\"");
    CHECK((*c)[1].scheme == "bearer");
    CHECK((*c)[1].param("realm") == "http://t/x");
    CHECK((*c)[1].param("service") == "s");
    CHECK((*c)[1].param("error") == "invalid_token");

    c = parse_www_authenticate("Negotiate abc+/def==, Basic realm=x");
    REQUIRE(c);
    REQUIRE(c->size() == 2);
    CHECK((*c)[0].token68 == "abc+/def==");
    CHECK((*c)[1].param("realm") == "x");

    c = parse_www_authenticate("Basic");
    REQUIRE(c);
    CHECK((*c)[0].params.empty());

    CHECK(!parse_www_authenticate(""));
    CHECK(!parse_www_authenticate(R"(Bearer realm="unterminated)"));
    CHECK(!parse_www_authenticate("Bearer realm=\"a\" junk=\"b\" x"));
    CHECK(!parse_www_authenticate("=x"));
}

TEST_CASE("Retry-After: seconds and the three HTTP-date forms") {
    std::time_t now = 784111777;  // Sun, 06 Nov 1994 08:49:37 GMT
    CHECK(parse_retry_after("120", now) == std::chrono::milliseconds(120000));
    CHECK(parse_retry_after(" 0 ", now) == std::chrono::milliseconds(0));
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now) == std::chrono::milliseconds(10000));
    CHECK(parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now) == std::chrono::milliseconds(60000));
    CHECK(parse_retry_after("Sun Nov  6 08:49:38 1994", now) == std::chrono::milliseconds(1000));
    // A date in the past means now.
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now) == std::chrono::milliseconds(0));
    CHECK(!parse_retry_after("-5", now));
    CHECK(!parse_retry_after("soon", now));
    CHECK(!parse_retry_after("Sun, 06 Foo 1994 08:49:47 GMT", now));
    CHECK(!parse_retry_after("Sun, 06 Nov 1994 25:49:47 GMT", now));
    CHECK(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == std::time_t(0));
}

TEST_CASE("response head lines as libcurl hands them over") {
    auto s = parse_header_line("HTTP/1.1 206 Partial Content\r\n");
    CHECK(s.kind == HeaderLine::Kind::Status);
    CHECK(s.status == 206);
    CHECK(parse_header_line("HTTP/2 404\r\n").status == 404);
    auto f = parse_header_line("Content-Range:  bytes 0-9/20 \r\n");
    REQUIRE(f.kind == HeaderLine::Kind::Field);
    CHECK(f.name == "Content-Range");
    CHECK(f.value == "bytes 0-9/20");
    CHECK(parse_header_line("X-Empty:\r\n").value.empty());
    CHECK(parse_header_line("\r\n").kind == HeaderLine::Kind::End);
    CHECK(parse_header_line("no colon here\r\n").kind == HeaderLine::Kind::Other);
    CHECK(parse_header_line("").kind == HeaderLine::Kind::End);
}

TEST_CASE("Content-Range") {
    auto r = parse_content_range("bytes 0-499/1234");
    REQUIRE(r);
    CHECK(r->first == 0u);
    CHECK(r->last == 499u);
    CHECK(r->complete_length == 1234u);
    r = parse_content_range("bytes 500-999/*");
    REQUIRE(r);
    CHECK(!r->complete_length);
    r = parse_content_range("bytes */1234");
    REQUIRE(r);
    CHECK(!r->first);
    CHECK(r->complete_length == 1234u);
    CHECK(!parse_content_range("bytes 5-4/10"));
    CHECK(!parse_content_range("bytes 0-10/10"));
    CHECK(!parse_content_range("items 0-1/2"));
    CHECK(!parse_content_range("bytes */*"));
    CHECK(!parse_content_range("bytes 0-/10"));
    CHECK(!parse_content_range("bytes 0-99999999999999999999999/10"));
}

TEST_CASE("upload Range header") {
    CHECK(parse_upload_range("0-1023") == 1024u);
    CHECK(parse_upload_range("bytes=0-9") == 10u);
    CHECK(!parse_upload_range("10"));
    CHECK(!parse_upload_range("9-3"));
}

TEST_CASE("Link headers and the next page") {
    auto l = parse_link_header(R"(</v2/r/referrers/sha256:1?n=2&last=a,b>; rel="next"; type="x", <http://h/p>;rel=prev)");
    REQUIRE(l);
    REQUIRE(l->size() == 2);
    CHECK((*l)[0].target == "/v2/r/referrers/sha256:1?n=2&last=a,b");
    CHECK((*l)[0].params.at("rel") == "next");
    CHECK((*l)[1].params.at("rel") == "prev");
    std::vector<std::string_view> hs = {"<a>; rel=prev", "<b>; rel=\"other next\""};
    CHECK(next_link(hs) == "b");
    CHECK(!next_link({"<a>; rel=prev"}));
    CHECK(!parse_link_header("no-brackets; rel=next"));
    CHECK(!parse_link_header("<unclosed; rel=next"));
}

TEST_CASE("media types and base64") {
    CHECK(media_type_essence("Application/JSON ; charset=utf-8") == "application/json");
    CHECK(base64_encode("user:pass") == "dXNlcjpwYXNz");
    CHECK(base64_encode("a") == "YQ==");
    CHECK(base64_encode("ab") == "YWI=");
    CHECK(base64_decode("dXNlcjpwYXNz") == std::string("user:pass"));
    CHECK(base64_decode("YQ") == std::string("a"));
    CHECK(!base64_decode("a$=="));
    CHECK(!base64_decode("abcde"));
}

TEST_CASE("URLs: parse, resolve, origins, redaction, loopback") {
    auto u = parse_url("HTTPS://Reg.Example:443/v2/x?y=1#frag");
    REQUIRE(u);
    CHECK(u->scheme == "https");
    CHECK(u->host == "reg.example");
    CHECK(u->authority() == "reg.example");
    CHECK(u->path == "/v2/x");
    CHECK(u->query == "y=1");
    CHECK(u->redacted() == "https://reg.example/v2/x");
    auto v6 = parse_url("http://[::1]:5000");
    REQUIRE(v6);
    CHECK(v6->host == "::1");
    CHECK(v6->authority() == "[::1]:5000");
    CHECK(v6->path == "/");
    CHECK(!parse_url("ftp://x/"));
    CHECK(!parse_url("http://user:pw@x/"));
    CHECK(!parse_url("http://x:99999/"));
    CHECK(!parse_url("http:///path"));

    auto base = *parse_url("http://reg:5000/v2/r/blobs/uploads/abc?_state=s");
    CHECK(resolve_url(base, "/v2/r/blobs/uploads/def?_state=t")->str() == "http://reg:5000/v2/r/blobs/uploads/def?_state=t");
    CHECK(resolve_url(base, "https://storage/b?sig=1")->str() == "https://storage/b?sig=1");
    CHECK(resolve_url(base, "//cdn/x")->str() == "http://cdn/x");
    CHECK(resolve_url(base, "next?p=2")->str() == "http://reg:5000/v2/r/blobs/uploads/next?p=2");
    CHECK(resolve_url(base, "../../x")->str() == "http://reg:5000/v2/r/x");
    CHECK(same_origin(*parse_url("http://a:80/x"), *parse_url("http://a/y")));
    CHECK(!same_origin(*parse_url("http://a/x"), *parse_url("https://a/x")));
    CHECK(!same_origin(*parse_url("http://a:5000/"), *parse_url("http://a:5001/")));
    CHECK(redact_url("https://s3/bucket/obj?X-Amz-Signature=secret") == "https://s3/bucket/obj");
    CHECK(redact_url("not a url") == "<url>");

    CHECK(is_loopback_host("localhost"));
    CHECK(is_loopback_host("localhost:5000"));
    CHECK(is_loopback_host("127.0.0.1:5000"));
    CHECK(is_loopback_host("127.10.20.30"));
    CHECK(is_loopback_host("[::1]:5000"));
    CHECK(is_loopback_host("::1"));
    CHECK(!is_loopback_host("127.0.0.256"));
    CHECK(!is_loopback_host("127.example.com"));
    CHECK(!is_loopback_host("10.0.0.1"));
    CHECK(append_query("http://h/p", "digest", "sha256:ab") == "http://h/p?digest=sha256%3Aab");
    CHECK(append_query("http://h/p?x=1", "a", "b c") == "http://h/p?x=1&a=b%20c");
}
