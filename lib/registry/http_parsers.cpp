#include "http_parsers.h"

#include <array>
#include <cctype>
#include <charconv>
#include <cstring>

namespace erostream {

namespace {

bool is_tchar(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}
bool is_ows(char c) { return c == ' ' || c == '\t'; }

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
    return s;
}

// A cursor over a header value.
struct Cursor {
    std::string_view s;
    size_t i = 0;
    bool done() const { return i >= s.size(); }
    char peek() const { return done() ? '\0' : s[i]; }
    void skip_ows() {
        while (!done() && is_ows(s[i])) ++i;
    }
    std::string_view token() {
        size_t b = i;
        while (!done() && is_tchar(s[i])) ++i;
        return s.substr(b, i - b);
    }
    // quoted-string with backslash escapes; the cursor sits on the opening quote
    Result<std::string> quoted() {
        ++i;
        std::string out;
        while (!done()) {
            char c = s[i++];
            if (c == '"') return out;
            if (c == '\\') {
                if (done()) break;
                c = s[i++];
            }
            out += c;
        }
        return fail("unterminated quoted string");
    }
    Result<std::string> value() {
        if (peek() == '"') return quoted();
        // Unquoted values should be tokens; servers put URLs there too, so take anything up to a
        // separator.
        size_t b = i;
        while (!done() && !is_ows(s[i]) && s[i] != ',' && s[i] != ';' && s[i] != '"') ++i;
        if (i == b) return failf("expected a value at offset {}", i);
        return std::string(s.substr(b, i - b));
    }
};

bool parse_u64(std::string_view s, uint64_t& v) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && p == s.data() + s.size();
}

int month_index(std::string_view m) {
    static constexpr std::array<std::string_view, 12> names = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (size_t i = 0; i < names.size(); ++i)
        if (names[i] == m) return static_cast<int>(i);
    return -1;
}

bool parse_int(std::string_view s, int& v) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && p == s.data() + s.size();
}

// "08:49:37"
bool parse_clock(std::string_view s, std::tm& tm) {
    if (s.size() != 8 || s[2] != ':' || s[5] != ':') return false;
    return parse_int(s.substr(0, 2), tm.tm_hour) && parse_int(s.substr(3, 2), tm.tm_min) &&
           parse_int(s.substr(6, 2), tm.tm_sec) && tm.tm_hour < 24 && tm.tm_min < 60 && tm.tm_sec <= 60;
}

std::vector<std::string_view> split_ws(std::string_view s) {
    std::vector<std::string_view> out;
    size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && s[i] == ' ') ++i;
        size_t b = i;
        while (i < s.size() && s[i] != ' ') ++i;
        if (i > b) out.push_back(s.substr(b, i - b));
    }
    return out;
}

}  // namespace

Result<std::vector<AuthChallenge>> parse_www_authenticate(std::string_view value) {
    std::vector<AuthChallenge> out;
    Cursor c{value};
    auto is_t68 = [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || std::strchr("-._~+/", ch) != nullptr;
    };
    for (;;) {
        while (!c.done() && (is_ows(c.peek()) || c.peek() == ',')) ++c.i;
        if (c.done()) break;
        auto scheme = c.token();
        if (scheme.empty()) return failf("WWW-Authenticate: expected an auth scheme at offset {}", c.i);
        AuthChallenge ch;
        ch.scheme = lower(scheme);
        size_t before_ws = c.i;
        c.skip_ows();
        if (c.i > before_ws && !c.done() && c.peek() != ',') {
            // token68 ("Negotiate abc==") when the word runs to the end or a comma
            size_t save = c.i;
            while (!c.done() && is_t68(c.peek())) ++c.i;
            size_t word_end = c.i;
            while (!c.done() && c.peek() == '=') ++c.i;
            size_t t68_end = c.i;
            c.skip_ows();
            if (word_end > save && (c.done() || c.peek() == ',')) {
                ch.token68 = std::string(value.substr(save, t68_end - save));
                out.push_back(std::move(ch));
                continue;
            }
            c.i = save;
        }
        // Parameters until a token that is not followed by '=' (the next challenge's scheme).
        for (;;) {
            while (!c.done() && (is_ows(c.peek()) || c.peek() == ',')) ++c.i;
            if (c.done()) break;
            size_t save = c.i;
            auto name = c.token();
            if (name.empty()) return failf("WWW-Authenticate: unexpected '{}' at offset {}", c.peek(), c.i);
            c.skip_ows();
            if (c.peek() != '=') {
                c.i = save;  // a new challenge starts here
                break;
            }
            ++c.i;
            c.skip_ows();
            auto v = c.value();
            if (!v) return std::unexpected(v.error().prefix("WWW-Authenticate"));
            ch.params[lower(name)] = std::move(*v);
            c.skip_ows();
            if (!c.done() && c.peek() != ',')
                return failf("WWW-Authenticate: expected ',' at offset {}", c.i);
        }
        out.push_back(std::move(ch));
    }
    if (out.empty()) return fail("WWW-Authenticate: no challenge");
    return out;
}

std::optional<std::time_t> parse_http_date(std::string_view s) {
    s = trim(s);
    std::tm tm{};
    auto parts = split_ws(s);
    int year = 0;
    if (parts.size() == 6 && parts[0].size() == 4 && parts[0].back() == ',' && parts[5] == "GMT") {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        if (!parse_int(parts[1], tm.tm_mday) || (tm.tm_mon = month_index(parts[2])) < 0 ||
            !parse_int(parts[3], year) || !parse_clock(parts[4], tm))
            return std::nullopt;
    } else if (parts.size() == 4 && parts[0].back() == ',' && parts[3] == "GMT") {
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        std::string_view d = parts[1];
        if (d.size() != 9 || d[2] != '-' || d[6] != '-') return std::nullopt;
        if (!parse_int(d.substr(0, 2), tm.tm_mday) || (tm.tm_mon = month_index(d.substr(3, 3))) < 0 ||
            !parse_int(d.substr(7, 2), year) || !parse_clock(parts[2], tm))
            return std::nullopt;
        year += year < 70 ? 2000 : 1900;
    } else if (parts.size() == 5) {
        // asctime: Sun Nov  6 08:49:37 1994
        if ((tm.tm_mon = month_index(parts[1])) < 0 || !parse_int(parts[2], tm.tm_mday) ||
            !parse_clock(parts[3], tm) || !parse_int(parts[4], year))
            return std::nullopt;
    } else {
        return std::nullopt;
    }
    if (tm.tm_mday < 1 || tm.tm_mday > 31 || year < 1970 || year > 9999) return std::nullopt;
    tm.tm_year = year - 1900;
    std::time_t t = ::timegm(&tm);
    if (t == static_cast<std::time_t>(-1)) return std::nullopt;
    return t;
}

std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view value, std::time_t now) {
    value = trim(value);
    uint64_t secs = 0;
    if (parse_u64(value, secs)) {
        secs = std::min<uint64_t>(secs, 365ull * 24 * 3600);
        return std::chrono::milliseconds(secs * 1000);
    }
    auto t = parse_http_date(value);
    if (!t) return std::nullopt;
    if (*t <= now) return std::chrono::milliseconds(0);
    return std::chrono::milliseconds(static_cast<int64_t>(*t - now) * 1000);
}

Result<ContentRange> parse_content_range(std::string_view value) {
    value = trim(value);
    if (!value.starts_with("bytes ")) return fail("Content-Range: unit is not 'bytes'");
    value = trim(value.substr(6));
    size_t slash = value.find('/');
    if (slash == std::string_view::npos) return fail("Content-Range: no '/'");
    std::string_view range = value.substr(0, slash), total = value.substr(slash + 1);
    ContentRange cr;
    if (total != "*") {
        uint64_t t = 0;
        if (!parse_u64(total, t)) return fail("Content-Range: invalid complete length");
        cr.complete_length = t;
    }
    if (range == "*") {
        if (!cr.complete_length) return fail("Content-Range: '*/*' names nothing");
        return cr;
    }
    size_t dash = range.find('-');
    uint64_t a = 0, b = 0;
    if (dash == std::string_view::npos || !parse_u64(range.substr(0, dash), a) ||
        !parse_u64(range.substr(dash + 1), b))
        return fail("Content-Range: invalid byte range");
    if (b < a) return fail("Content-Range: last byte before first byte");
    if (cr.complete_length && b >= *cr.complete_length)
        return fail("Content-Range: range ends beyond the complete length");
    cr.first = a;
    cr.last = b;
    return cr;
}

Result<uint64_t> parse_upload_range(std::string_view value) {
    value = trim(value);
    if (value.starts_with("bytes=")) value.remove_prefix(6);
    size_t dash = value.find('-');
    uint64_t a = 0, b = 0;
    if (dash == std::string_view::npos || !parse_u64(value.substr(0, dash), a) ||
        !parse_u64(value.substr(dash + 1), b) || b < a || b == UINT64_MAX)
        return failf("upload Range '{}' is not FIRST-LAST", value.substr(0, 64));
    return b + 1;
}

Result<std::vector<LinkValue>> parse_link_header(std::string_view value) {
    std::vector<LinkValue> out;
    Cursor c{value};
    for (;;) {
        while (!c.done() && (is_ows(c.peek()) || c.peek() == ',')) ++c.i;
        if (c.done()) break;
        if (c.peek() != '<') return failf("Link: expected '<' at offset {}", c.i);
        size_t close = value.find('>', c.i);
        if (close == std::string_view::npos) return fail("Link: unclosed '<'");
        LinkValue lv;
        lv.target = std::string(value.substr(c.i + 1, close - c.i - 1));
        c.i = close + 1;
        for (;;) {
            c.skip_ows();
            if (c.peek() != ';') break;
            ++c.i;
            c.skip_ows();
            auto name = c.token();
            if (name.empty()) return failf("Link: expected a parameter name at offset {}", c.i);
            c.skip_ows();
            std::string v;
            if (c.peek() == '=') {
                ++c.i;
                c.skip_ows();
                auto r = c.value();
                if (!r) return std::unexpected(r.error().prefix("Link"));
                v = std::move(*r);
            }
            lv.params.emplace(lower(name), std::move(v));
        }
        c.skip_ows();
        if (!c.done() && c.peek() != ',') return failf("Link: expected ',' at offset {}", c.i);
        out.push_back(std::move(lv));
    }
    return out;
}

std::optional<std::string> next_link(const std::vector<std::string_view>& headers) {
    for (auto h : headers) {
        auto links = parse_link_header(h);
        if (!links) continue;
        for (const auto& l : *links) {
            auto it = l.params.find("rel");
            if (it == l.params.end()) continue;
            for (auto rel : split_ws(it->second))
                if (lower(rel) == "next") return l.target;
        }
    }
    return std::nullopt;
}

HeaderLine parse_header_line(std::string_view line) {
    HeaderLine h;
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
    if (line.starts_with("HTTP/")) {
        h.kind = HeaderLine::Kind::Status;
        size_t sp = line.find(' ');
        if (sp != std::string_view::npos) {
            auto code = line.substr(sp + 1, 3);
            std::from_chars(code.data(), code.data() + code.size(), h.status);
        }
        return h;
    }
    std::string_view t = trim(line);
    if (t.empty()) {
        h.kind = HeaderLine::Kind::End;
        return h;
    }
    size_t colon = t.find(':');
    if (colon == std::string_view::npos) return h;
    h.kind = HeaderLine::Kind::Field;
    h.name = std::string(trim(t.substr(0, colon)));
    h.value = std::string(trim(t.substr(colon + 1)));
    return h;
}

std::string media_type_essence(std::string_view ct) {
    size_t semi = ct.find(';');
    return lower(trim(ct.substr(0, semi)));
}

std::string base64_encode(std::string_view in) {
    static constexpr char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
        out += tbl[v >> 18];
        out += tbl[(v >> 12) & 63];
        out += tbl[(v >> 6) & 63];
        out += tbl[v & 63];
    }
    if (i + 1 == in.size()) {
        uint32_t v = uint32_t(uint8_t(in[i])) << 16;
        out += tbl[v >> 18];
        out += tbl[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == in.size()) {
        uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8);
        out += tbl[v >> 18];
        out += tbl[(v >> 12) & 63];
        out += tbl[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

Result<std::string> base64_decode(std::string_view in) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    while (!in.empty() && (in.back() == '\n' || in.back() == '\r' || in.back() == ' ')) in.remove_suffix(1);
    size_t pad = 0;
    while (!in.empty() && in.back() == '=' && pad < 2) {
        in.remove_suffix(1);
        ++pad;
    }
    if (in.size() % 4 == 1) return fail("base64: invalid length");
    std::string out;
    out.reserve(in.size() * 3 / 4);
    uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        int v = val(c);
        if (v < 0) return fail("base64: invalid character");
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xff);
        }
    }
    return out;
}

}  // namespace erostream
