#include "url.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <vector>

namespace erostream {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// Removes "." and ".." segments (RFC 3986 5.2.4).
std::string remove_dot_segments(std::string_view path) {
    std::vector<std::string_view> out;
    size_t i = 0;
    bool trailing = false;
    while (i <= path.size()) {
        size_t j = path.find('/', i);
        if (j == std::string_view::npos) j = path.size();
        std::string_view seg = path.substr(i, j - i);
        trailing = false;
        if (seg == "..") {
            if (!out.empty()) out.pop_back();
            trailing = true;
        } else if (seg == ".") {
            trailing = true;
        } else if (!(seg.empty() && i == 0)) {
            out.push_back(seg);
        }
        i = j + 1;
    }
    std::string r;
    for (auto s : out) {
        r += '/';
        r += s;
    }
    if (trailing || r.empty()) r += '/';
    return r;
}

}  // namespace

std::string Url::authority() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port && port != (scheme == "https" ? 443 : 80)) h += ":" + std::to_string(port);
    return h;
}

std::string Url::str() const {
    std::string s = origin() + path;
    if (!query.empty()) s += "?" + query;
    return s;
}

Result<Url> parse_url(std::string_view s) {
    Url u;
    size_t colon = s.find("://");
    if (colon == std::string_view::npos) return fail("URL has no scheme");
    u.scheme = lower(s.substr(0, colon));
    if (u.scheme != "http" && u.scheme != "https")
        return failf("URL scheme '{}' is not http or https", u.scheme);
    std::string_view rest = s.substr(colon + 3);
    size_t end = rest.find_first_of("/?#");
    std::string_view auth = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    if (auth.find('@') != std::string_view::npos) return fail("URL carries user info");
    std::string_view port_text;
    if (!auth.empty() && auth.front() == '[') {
        size_t close = auth.find(']');
        if (close == std::string_view::npos) return fail("URL has an unclosed IPv6 bracket");
        u.host = lower(auth.substr(1, close - 1));
        std::string_view after = auth.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return fail("URL has junk after its IPv6 host");
            port_text = after.substr(1);
        }
    } else {
        size_t c = auth.rfind(':');
        if (c != std::string_view::npos) {
            port_text = auth.substr(c + 1);
            auth = auth.substr(0, c);
        }
        u.host = lower(auth);
    }
    if (u.host.empty()) return fail("URL has no host");
    for (char c : u.host)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':'))
            return failf("URL host has an invalid character '{}'", c);
    if (!port_text.empty()) {
        unsigned v = 0;
        auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), v);
        if (ec != std::errc() || p != port_text.data() + port_text.size() || v == 0 || v > 65535)
            return fail("URL has an invalid port");
        u.port = static_cast<uint16_t>(v);
    }
    size_t hash = rest.find('#');
    if (hash != std::string_view::npos) rest = rest.substr(0, hash);
    size_t q = rest.find('?');
    u.path = std::string(rest.substr(0, q));
    if (q != std::string_view::npos) u.query = std::string(rest.substr(q + 1));
    if (u.path.empty()) u.path = "/";
    return u;
}

Result<Url> resolve_url(const Url& base, std::string_view ref) {
    size_t hash = ref.find('#');
    if (hash != std::string_view::npos) ref = ref.substr(0, hash);
    if (ref.empty()) return base;
    size_t colon = ref.find(':');
    size_t first_sep = ref.find_first_of("/?");
    if (colon != std::string_view::npos && (first_sep == std::string_view::npos || colon < first_sep))
        return parse_url(ref);
    if (ref.starts_with("//")) return parse_url(base.scheme + ":" + std::string(ref));
    Url u = base;
    u.query.clear();
    std::string_view path = ref, query;
    size_t q = ref.find('?');
    if (q != std::string_view::npos) {
        path = ref.substr(0, q);
        query = ref.substr(q + 1);
    }
    if (path.empty()) {
        // "?x=y" keeps the base path
    } else if (path.front() == '/') {
        u.path = remove_dot_segments(path);
    } else {
        std::string dir = base.path.substr(0, base.path.rfind('/') + 1);
        u.path = remove_dot_segments(dir + std::string(path));
    }
    u.query = std::string(query);
    return u;
}

bool same_origin(const Url& a, const Url& b) {
    return a.scheme == b.scheme && a.host == b.host && a.effective_port() == b.effective_port();
}

std::string redact_url(std::string_view s) {
    auto u = parse_url(s);
    if (!u) return "<url>";
    return u->redacted();
}

bool is_loopback_host(std::string_view hp) {
    std::string_view host = hp;
    if (!hp.empty() && hp.front() == '[') {
        size_t close = hp.find(']');
        if (close == std::string_view::npos) return false;
        host = hp.substr(1, close - 1);
    } else if (std::count(hp.begin(), hp.end(), ':') == 1) {
        host = hp.substr(0, hp.find(':'));
    }
    std::string h = lower(host);
    if (h == "localhost" || h == "::1" || h == "0:0:0:0:0:0:0:1") return true;
    if (!h.starts_with("127.")) return false;
    // All four parts must be numbers below 256.
    int parts = 0;
    size_t i = 0;
    while (i <= h.size()) {
        size_t j = h.find('.', i);
        if (j == std::string::npos) j = h.size();
        std::string_view part(h.data() + i, j - i);
        unsigned v = 0;
        auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
        if (part.empty() || ec != std::errc() || p != part.data() + part.size() || v > 255) return false;
        ++parts;
        i = j + 1;
    }
    return parts == 4;
}

std::string url_encode(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string append_query(std::string_view url, std::string_view name, std::string_view value) {
    std::string out(url);
    out += url.find('?') == std::string_view::npos ? '?' : '&';
    out += url_encode(name);
    out += '=';
    out += url_encode(value);
    return out;
}

}  // namespace erostream
