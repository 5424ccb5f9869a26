// The control socket's request parser, query strings and responses.
#include <doctest.h>

#include "control_http.h"

using namespace erostream;
using State = ControlParse::State;

TEST_CASE("control http: a GET, then a POST with a body, byte by byte") {
    std::string get = "GET /v1/mounts HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
    for (size_t n = 0; n < get.size(); ++n) CHECK(parse_control_request(get.substr(0, n), 1024).state == State::NeedMore);
    auto p = parse_control_request(get, 1024);
    REQUIRE(p.state == State::Done);
    CHECK(p.request.method == "GET");
    CHECK(p.request.path == "/v1/mounts");
    CHECK(p.request.headers["host"] == "localhost");
    CHECK(p.consumed == get.size());

    std::string body = R"({"ref":"oci:/x:y","mountpoint":"/mnt"})";
    std::string post = "POST /v1/mounts HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body;
    CHECK(parse_control_request(post.substr(0, post.size() - 1), 1024).state == State::NeedMore);
    p = parse_control_request(post + "extra", 1024);
    REQUIRE(p.state == State::Done);
    CHECK(p.request.body == body);
    CHECK(p.consumed == post.size());
}

TEST_CASE("control http: query strings and escapes") {
    auto p = parse_control_request("DELETE /v1/mounts?mountpoint=%2Fmnt%2Fa+b&x=1 HTTP/1.1\r\n\r\n", 0);
    REQUIRE(p.state == State::Done);
    CHECK(p.request.path == "/v1/mounts");
    auto q = parse_query(p.request.query);
    CHECK(q["mountpoint"] == "/mnt/a b");
    CHECK(q["x"] == "1");
    CHECK(parse_query("a=%zz&b=2").count("a") == 0);
    CHECK(parse_query("a=%zz&b=2")["b"] == "2");
    std::string out;
    CHECK_FALSE(percent_decode("%4", out, false));
    CHECK(percent_decode(percent_encode("/a b/ü,x"), out, false));
    CHECK(out == "/a b/ü,x");
}

TEST_CASE("control http: bad requests get the right status") {
    auto status = [](std::string_view req) {
        auto p = parse_control_request(req, 16);
        return p.state == State::Bad ? p.status : 0;
    };
    CHECK(status("GARBAGE\r\n\r\n") == 400);
    CHECK(status("GET / HTTP/2.0\r\n\r\n") == 505);
    CHECK(status("GET relative HTTP/1.1\r\n\r\n") == 400);
    CHECK(status("GET / HTTP/1.1\r\nBad Header\r\n\r\n") == 400);
    CHECK(status("GET / HTTP/1.1\r\n: x\r\n\r\n") == 400);
    CHECK(status("POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n") == 413);
    CHECK(status("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n") == 400);
    CHECK(status("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") == 400);
    CHECK(status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 501);
    CHECK(status("GET /a\x01 HTTP/1.1\r\n\r\n") == 400);
    CHECK(status(std::string(kMaxControlHead + 10, 'a')) == 431);
}

TEST_CASE("control http: responses") {
    std::string r = http_response(404, "application/json", "{}");
    CHECK(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
    CHECK(r.find("Content-Length: 2\r\n") != std::string::npos);
    CHECK(r.find("Connection: close\r\n") != std::string::npos);
    CHECK(r.ends_with("\r\n\r\n{}"));
}
