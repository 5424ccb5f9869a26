#include "control_http.h"

#include <fmt/format.h>

#include <charconv>

namespace erostream {

namespace {

bool is_token_char(char c) {
    if (c >= 'a' && c <= 'z') return true;
    if (c >= 'A' && c <= 'Z') return true;
    if (c >= '0' && c <= '9') return true;
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string lower(std::string_view s) {
    std::string o(s);
    for (auto& c : o)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return o;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

ControlParse bad(int status, std::string why) {
    ControlParse p;
    p.state = ControlParse::State::Bad;
    p.status = status;
    p.error = std::move(why);
    return p;
}

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

bool percent_decode(std::string_view in, std::string& out, bool plus_is_space) {
    out.clear();
    for (size_t i = 0; i < in.size(); ++i) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= in.size()) return false;
            int h = hexval(in[i + 1]), l = hexval(in[i + 2]);
            if (h < 0 || l < 0) return false;
            out += static_cast<char>(h * 16 + l);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return true;
}

std::string percent_encode(std::string_view in) {
    std::string out;
    for (unsigned char c : in) {
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.' || c == '~' || c == '/';
        if (plain) out += static_cast<char>(c);
        else out += fmt::format("%{:02X}", c);
    }
    return out;
}

std::map<std::string, std::string> parse_query(std::string_view q) {
    std::map<std::string, std::string> out;
    while (!q.empty()) {
        size_t amp = q.find('&');
        std::string_view part = q.substr(0, amp);
        q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
        if (part.empty()) continue;
        size_t eq = part.find('=');
        std::string k, v;
        if (!percent_decode(part.substr(0, eq), k, true)) continue;
        if (eq != std::string_view::npos && !percent_decode(part.substr(eq + 1), v, true)) continue;
        out[k] = v;
    }
    return out;
}

ControlParse parse_control_request(std::string_view buf, size_t max_body) {
    size_t head_end = buf.find("\r\n\r\n");
    if (head_end == std::string_view::npos) {
        if (buf.size() > kMaxControlHead) return bad(431, "request head too large");
        return {};
    }
    if (head_end > kMaxControlHead) return bad(431, "request head too large");
    std::string_view head = buf.substr(0, head_end);
    size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    ControlRequest req;
    // method SP target SP HTTP/1.x
    size_t sp1 = line.find(' ');
    size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
        return bad(400, "malformed request line");
    std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                     version = line.substr(sp2 + 1);
    if (method.empty()) return bad(400, "empty method");
    for (char c : method)
        if (!is_token_char(c)) return bad(400, "malformed method");
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return bad(505, "only HTTP/1.0 and HTTP/1.1");
    if (target.empty() || target.front() != '/') return bad(400, "the request target must be an absolute path");
    if (target.size() > 8192) return bad(414, "request target too long");
    for (char c : target)
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return bad(400, "control character in the target");
    req.method.assign(method);
    size_t qm = target.find('?');
    if (!percent_decode(target.substr(0, qm), req.path, false)) return bad(400, "malformed %-escape in the path");
    if (qm != std::string_view::npos) req.query.assign(target.substr(qm + 1));

    std::string_view rest = eol == std::string_view::npos ? std::string_view{} : head.substr(eol + 2);
    while (!rest.empty()) {
        size_t e = rest.find("\r\n");
        std::string_view h = rest.substr(0, e);
        rest = e == std::string_view::npos ? std::string_view{} : rest.substr(e + 2);
        size_t colon = h.find(':');
        if (colon == 0 || colon == std::string_view::npos) return bad(400, "malformed header line");
        for (size_t i = 0; i < colon; ++i)
            if (!is_token_char(h[i])) return bad(400, "malformed header name");
        std::string name = lower(h.substr(0, colon));
        std::string_view value = trim(h.substr(colon + 1));
        for (char c : value)
            if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f)
                return bad(400, "control character in a header value");
        auto [it, fresh] = req.headers.emplace(name, std::string(value));
        if (!fresh) {
            if (name == "content-length" && it->second != value) return bad(400, "conflicting Content-Length headers");
            if (name != "content-length") it->second += ", " + std::string(value);
        }
    }
    if (req.headers.count("transfer-encoding")) return bad(501, "Transfer-Encoding is not supported; send Content-Length");
    uint64_t length = 0;
    if (auto it = req.headers.find("content-length"); it != req.headers.end()) {
        const std::string& v = it->second;
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), length);
        if (ec != std::errc() || p != v.data() + v.size() || v.empty()) return bad(400, "malformed Content-Length");
        if (length > max_body) return bad(413, fmt::format("body of {} bytes; at most {} accepted", length, max_body));
    }
    size_t body_start = head_end + 4;
    if (buf.size() - body_start < length) return {};
    req.body.assign(buf.substr(body_start, length));
    ControlParse p;
    p.state = ControlParse::State::Done;
    p.request = std::move(req);
    p.consumed = body_start + length;
    return p;
}

std::string_view http_reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 422: return "Unprocessable Content";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

std::string http_response(int status, std::string_view content_type, std::string_view body) {
    return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                       status, http_reason(status), content_type, body.size(), body);
}

}  // namespace erostream
