// URLs as the registry client needs them: split, resolve a Location against the request URL,
// compare origins (the Authorization header never leaves its origin), redact for messages.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "result.h"

namespace erostream {

struct Url {
    std::string scheme;  // lowercase: "http" or "https"
    std::string host;    // lowercase; IPv6 without brackets
    uint16_t port = 0;   // 0: the scheme's default
    std::string path;    // starts with '/'
    std::string query;   // without '?'; may be empty

    uint16_t effective_port() const { return port ? port : (scheme == "https" ? 443 : 80); }
    // "host" or "host:port" (brackets around IPv6), the port only when not the default.
    std::string authority() const;
    std::string origin() const { return scheme + "://" + authority(); }
    std::string str() const;
    // scheme://authority/path, without the query: the form safe to print (signed storage URLs
    // carry their signature in the query).
    std::string redacted() const { return origin() + path; }
};

// Parses an absolute http(s) URL. User info ("user:pass@") is refused: credentials travel in
// headers only.
Result<Url> parse_url(std::string_view s);
// Resolves a Location header value against the URL of the request that received it (RFC 3986
// section 5.2: absolute, scheme-relative, absolute-path and relative-path references).
Result<Url> resolve_url(const Url& base, std::string_view ref);
// Same scheme, host and port.
bool same_origin(const Url& a, const Url& b);
// Redacts any URL text for messages; unparseable text is replaced entirely.
std::string redact_url(std::string_view s);

// "localhost", 127.0.0.0/8, ::1 (a port may follow, IPv6 in brackets): registries there default to
// plain HTTP.
bool is_loopback_host(std::string_view host_port);

// Percent-encodes everything but RFC 3986 unreserved characters (for query values and forms).
std::string url_encode(std::string_view s);
// Appends "name=value" to a URL's query, encoding the value.
std::string append_query(std::string_view url, std::string_view name, std::string_view value);

}  // namespace erostream
