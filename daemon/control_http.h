// The control socket's HTTP/1.1, server side, as small pure functions: request parsing (the
// socket is root-only, but a parser is still fed untrusted bytes, so it is strict and bounded),
// query strings, responses. One request per connection: every response says Connection: close.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>

namespace erostream {

struct ControlRequest {
    std::string method;
    std::string path;   // decoded path, without the query
    std::string query;  // raw, after '?'
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
};

struct ControlParse {
    enum class State { NeedMore, Done, Bad };
    State state = State::NeedMore;
    ControlRequest request;  // Done
    size_t consumed = 0;     // Done: bytes of the request
    int status = 0;          // Bad: the status to answer (400, 413, 414, 431, 501, 505)
    std::string error;       // Bad: why
};

inline constexpr size_t kMaxControlHead = 16 * 1024;
// Parses one request from the start of `buf`: request line, headers, a Content-Length body (no
// chunked bodies: 501). Pure, for fuzzing.
ControlParse parse_control_request(std::string_view buf, size_t max_body);

// key=value&... with %XX and '+' decoded; later duplicates win.
std::map<std::string, std::string> parse_query(std::string_view q);
// %XX decoding; returns false on a malformed escape.
bool percent_decode(std::string_view in, std::string& out, bool plus_is_space);
std::string percent_encode(std::string_view in);

std::string http_response(int status, std::string_view content_type, std::string_view body);
std::string_view http_reason(int status);

}  // namespace erostream
