// Pure parsers for the HTTP header values a registry client acts on. All take untrusted text and
// return a value or an error; none allocate more than their input's size.
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

namespace erostream {

// One challenge of a WWW-Authenticate header (RFC 7235): scheme lowercased, parameter names
// lowercased, values unquoted.
struct AuthChallenge {
    std::string scheme;  // "basic", "bearer", ...
    std::map<std::string, std::string> params;
    std::string token68;  // for schemes that carry one instead of parameters

    std::string param(const std::string& name) const {
        auto it = params.find(name);
        return it == params.end() ? std::string() : it->second;
    }
};
// Parses one header value, which may hold several challenges separated by commas:
//   Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull", Basic realm="x"
Result<std::vector<AuthChallenge>> parse_www_authenticate(std::string_view value);

// HTTP-date in its three forms (IMF-fixdate, RFC 850, asctime) -> seconds since the epoch.
std::optional<std::time_t> parse_http_date(std::string_view s);
// Retry-After: delta-seconds or an HTTP-date (relative to `now`); negative delays become 0.
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view value, std::time_t now);

// Content-Range of a 206 or 416 response: "bytes 0-499/1234", "bytes 0-499/*", "bytes */1234".
struct ContentRange {
    std::optional<uint64_t> first, last;  // both or neither (unsatisfied-range form)
    std::optional<uint64_t> complete_length;
};
Result<ContentRange> parse_content_range(std::string_view value);

// The Range header of a blob upload response: "0-1023" or "bytes=0-1023" (inclusive end). Returns
// the end + 1, i.e. the offset the next chunk starts at.
Result<uint64_t> parse_upload_range(std::string_view value);

// Link header values (RFC 8288): `<url>; rel="next", <url2>; rel="prev"`.
struct LinkValue {
    std::string target;
    std::map<std::string, std::string> params;  // names lowercased
};
Result<std::vector<LinkValue>> parse_link_header(std::string_view value);
// The target of the first link whose rel includes "next", if any.
std::optional<std::string> next_link(const std::vector<std::string_view>& link_headers);

// One line of a response head as libcurl's header callback hands it over (CRLF included). A
// status line starts a new response (after a 100 Continue or a redirect the head starts over);
// the empty line ends the head.
struct HeaderLine {
    enum class Kind { Status, Field, End, Other } kind = Kind::Other;
    int status = 0;           // Status
    std::string name, value;  // Field (both trimmed)
};
HeaderLine parse_header_line(std::string_view line);

// The media type without parameters, lowercased: "application/json; charset=utf-8" -> "application/json".
std::string media_type_essence(std::string_view content_type);

std::string base64_encode(std::string_view in);
Result<std::string> base64_decode(std::string_view in);  // standard alphabet, padding optional

}  // namespace erostream
