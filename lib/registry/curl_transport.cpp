#include "curl_transport.h"

#include "http_parsers.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace erostream {

namespace {

void global_init_once() {
    static const bool done = [] {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        return true;
    }();
    (void)done;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
        s.remove_suffix(1);
    return s;
}

bool ipv4_in_cidr(std::string_view host, std::string_view cidr) {
    size_t slash = cidr.find('/');
    std::string net(cidr.substr(0, slash));
    unsigned bits = 32;
    if (slash != std::string_view::npos) {
        auto b = cidr.substr(slash + 1);
        auto [p, ec] = std::from_chars(b.data(), b.data() + b.size(), bits);
        if (ec != std::errc() || bits > 32) return false;
    }
    in_addr a{}, n{};
    if (inet_pton(AF_INET, std::string(host).c_str(), &a) != 1 || inet_pton(AF_INET, net.c_str(), &n) != 1)
        return false;
    uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
    return (ntohl(a.s_addr) & mask) == (ntohl(n.s_addr) & mask);
}

bool no_proxy_matches(const Url& url, std::string_view list) {
    size_t i = 0;
    while (i <= list.size()) {
        size_t j = list.find(',', i);
        if (j == std::string_view::npos) j = list.size();
        std::string entry = lower(trim(list.substr(i, j - i)));
        i = j + 1;
        if (entry.empty()) continue;
        if (entry == "*") return true;
        // optional ":port" (not for IPv6 literals in brackets)
        std::optional<uint16_t> port;
        if (entry.front() == '[') {
            size_t close = entry.find(']');
            if (close == std::string::npos) continue;
            std::string rest = entry.substr(close + 1);
            entry = entry.substr(1, close - 1);
            if (rest.size() > 1 && rest[0] == ':') port = static_cast<uint16_t>(std::atoi(rest.c_str() + 1));
        } else if (std::count(entry.begin(), entry.end(), ':') == 1) {
            size_t c = entry.find(':');
            port = static_cast<uint16_t>(std::atoi(entry.c_str() + c + 1));
            entry.resize(c);
        }
        if (port && *port != url.effective_port()) continue;
        if (entry.find('/') != std::string::npos) {
            if (ipv4_in_cidr(url.host, entry)) return true;
            continue;
        }
        if (!entry.empty() && entry.front() == '.') entry.erase(0, 1);
        if (url.host == entry) return true;
        if (url.host.size() > entry.size() && url.host.ends_with(entry) &&
            url.host[url.host.size() - entry.size() - 1] == '.')
            return true;
    }
    return false;
}

TransportErrorKind kind_of(CURLcode c, bool got_headers) {
    switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return TransportErrorKind::Connect;
    case CURLE_OPERATION_TIMEDOUT: return TransportErrorKind::Timeout;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: return TransportErrorKind::Tls;
    case CURLE_PARTIAL_FILE: return TransportErrorKind::Truncated;
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return got_headers ? TransportErrorKind::Truncated : TransportErrorKind::Network;
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_PROXY: return TransportErrorKind::Network;
    default: return TransportErrorKind::Other;
    }
}

}  // namespace

TransportErrorKind curl_error_kind(int curl_code, bool got_headers) {
    return kind_of(static_cast<CURLcode>(curl_code), got_headers);
}

std::string select_proxy(const Url& url, const std::function<const char*(const char*)>& getenv_fn) {
    auto env = [&](const char* name) -> std::string {
        const char* v = getenv_fn ? getenv_fn(name) : std::getenv(name);
        return v ? std::string(v) : std::string();
    };
    std::string no_proxy = env("no_proxy");
    if (no_proxy.empty()) no_proxy = env("NO_PROXY");
    if (!no_proxy.empty() && no_proxy_matches(url, no_proxy)) return "";
    std::string p;
    if (url.scheme == "http") {
        p = env("http_proxy");
        if (p.empty()) p = env("HTTP_PROXY");
    } else {
        p = env("https_proxy");
        if (p.empty()) p = env("HTTPS_PROXY");
    }
    if (p.empty()) p = env("all_proxy");
    if (p.empty()) p = env("ALL_PROXY");
    return p;
}

// DNS and TLS sessions shared by every channel, with the locks libcurl asks for.
struct CurlTransport::Share {
    CURLSH* sh = nullptr;
    std::array<std::mutex, CURL_LOCK_DATA_LAST> locks;

    Share() {
        sh = curl_share_init();
        curl_share_setopt(sh, CURLSHOPT_USERDATA, this);
        curl_share_setopt(sh, CURLSHOPT_LOCKFUNC, +[](CURL*, curl_lock_data d, curl_lock_access, void* u) {
            static_cast<Share*>(u)->locks[static_cast<size_t>(d)].lock();
        });
        curl_share_setopt(sh, CURLSHOPT_UNLOCKFUNC, +[](CURL*, curl_lock_data d, void* u) {
            static_cast<Share*>(u)->locks[static_cast<size_t>(d)].unlock();
        });
        curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
        curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    }
    ~Share() { curl_share_cleanup(sh); }
};

// One easy handle in its own multi handle; the multi handle's connection cache keeps the
// connections of this channel alive between requests.
struct CurlTransport::Channel {
    CURLM* multi = nullptr;
    CURL* easy = nullptr;
    Channel() : multi(curl_multi_init()), easy(curl_easy_init()) {}
    ~Channel() {
        curl_easy_cleanup(easy);
        curl_multi_cleanup(multi);
    }
};

class CurlExchange final : public HttpExchange {
public:
    CurlExchange(CurlTransport& t, std::unique_ptr<CurlTransport::Channel> ch, HttpRequest req)
        : t_(t), ch_(std::move(ch)), req_(std::move(req)) {}

    ~CurlExchange() override {
        if (attached_) curl_multi_remove_handle(ch_->multi, ch_->easy);
        if (slist_) curl_slist_free_all(slist_);
        // A channel whose transfer was abandoned midway lost its connection but is still usable.
        t_.release(std::move(ch_));
    }

    std::expected<void, TransportError> setup(const CurlOptions& opt, CURLSH* share) {
        CURL* e = ch_->easy;
        curl_easy_reset(e);
        curl_easy_setopt(e, CURLOPT_SHARE, share);
        curl_easy_setopt(e, CURLOPT_URL, req_.url.c_str());
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf_);
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);  // the flow decides where a redirect goes
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_USERAGENT, opt.user_agent.c_str());
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opt.connect_timeout.count()));
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, opt.low_speed_limit);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(opt.low_speed_time.count()));
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        if (req_.fresh_connection) curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, &CurlExchange::on_prereq);
        curl_easy_setopt(e, CURLOPT_PREREQDATA, this);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlExchange::on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, this);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlExchange::on_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, this);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, req_.verify_tls ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, req_.verify_tls ? 2L : 0L);
        if (req_.ca_files.size() == 1) {
            curl_easy_setopt(e, CURLOPT_CAINFO, req_.ca_files[0].c_str());
        } else if (req_.ca_files.size() > 1) {
            for (const auto& f : req_.ca_files) {
                std::ifstream in(f);
                if (!in)
                    return std::unexpected(TransportError{TransportErrorKind::Tls, "cannot read CA file " + f});
                std::stringstream ss;
                ss << in.rdbuf();
                ca_blob_ += ss.str();
                ca_blob_ += "\n";
            }
            curl_blob blob{ca_blob_.data(), ca_blob_.size(), CURL_BLOB_COPY};
            curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
        }
        auto url = parse_url(req_.url);
        if (!url) return std::unexpected(TransportError{TransportErrorKind::Other, "bad URL: " + url.error().message});
        proxy_ = select_proxy(*url, opt.getenv);
        curl_easy_setopt(e, CURLOPT_PROXY, proxy_.c_str());  // "" = no proxy; env is not consulted again

        for (const auto& [k, v] : req_.headers.items()) slist_ = curl_slist_append(slist_, (k + ": " + v).c_str());
        slist_ = curl_slist_append(slist_, "Expect:");  // no 100-continue round trip
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, slist_);

        const std::string& m = req_.method;
        if (m == "HEAD") {
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        } else if (m == "GET") {
            curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        } else if (m == "POST") {
            curl_easy_setopt(e, CURLOPT_POST, 1L);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                             static_cast<curl_off_t>(req_.body ? req_.body->size() : 0));
            if (!req_.body) curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        } else if (m == "PUT" || m == "PATCH") {
            curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req_.body ? req_.body->size() : 0));
            if (m == "PATCH") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PATCH");
        } else {
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
        }
        if (req_.body || m == "PUT" || m == "PATCH") {
            curl_easy_setopt(e, CURLOPT_READFUNCTION, &CurlExchange::on_read);
            curl_easy_setopt(e, CURLOPT_READDATA, this);
            curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, &CurlExchange::on_seek);
            curl_easy_setopt(e, CURLOPT_SEEKDATA, this);
        }
        if (curl_multi_add_handle(ch_->multi, e) != CURLM_OK)
            return std::unexpected(TransportError{TransportErrorKind::Other, "curl_multi_add_handle failed"});
        attached_ = true;
        SPDLOG_DEBUG("http: {} {}{}", m, redact_url(req_.url), proxy_.empty() ? "" : " (via proxy)");
        return {};
    }

    std::expected<HttpResponse, TransportError> head() override {
        while (!headers_done_ && !done_) {
            auto r = pump();
            if (!r) return std::unexpected(r.error());
        }
        if (!headers_done_) {
            if (result_ != CURLE_OK) return std::unexpected(error_of(result_));
            // A transfer that ended without a final status line
            return std::unexpected(TransportError{TransportErrorKind::Network, "no HTTP response"});
        }
        HttpResponse r;
        r.status = status_;
        r.headers = headers_;
        r.url = req_.url;
        return r;
    }

    std::expected<size_t, TransportError> read(void* out, size_t n) override {
        for (;;) {
            if (pos_ < buf_.size()) {
                size_t k = std::min(n, buf_.size() - pos_);
                std::memcpy(out, buf_.data() + pos_, k);
                pos_ += k;
                if (pos_ == buf_.size()) {
                    buf_.clear();
                    pos_ = 0;
                }
                return k;
            }
            if (paused_) {
                paused_ = false;
                curl_easy_pause(ch_->easy, CURLPAUSE_CONT);  // may deliver data right here
                continue;
            }
            if (done_) {
                if (result_ != CURLE_OK) return std::unexpected(error_of(result_));
                return 0;
            }
            auto r = pump();
            if (!r) return std::unexpected(r.error());
        }
    }

private:
    static constexpr size_t kBufferCap = 256 * 1024;

    TransportError error_of(CURLcode c) const {
        TransportError e;
        e.kind = kind_of(c, headers_done_);
        const char* detail = errbuf_[0] ? errbuf_ : curl_easy_strerror(c);
        e.message = fmt::format("{}{}", detail, headers_done_ ? " (while reading the body)" : "");
        e.extra_attempts = sends_ > 1 ? sends_ - 1 : 0;
        // libcurl's messages can name the URL: never let a query string through.
        if (e.message.find('?') != std::string::npos) e.message = curl_easy_strerror(c);
        return e;
    }

    // Moves the transfer forward: returns once something changed (headers, data, the end) or after
    // waiting up to a second for the socket.
    std::expected<void, TransportError> pump() {
        const size_t before = buf_.size() - pos_;
        const bool before_headers = headers_done_;
        int running = 0;
        CURLMcode mc = curl_multi_perform(ch_->multi, &running);
        if (mc != CURLM_OK)
            return std::unexpected(TransportError{TransportErrorKind::Other, curl_multi_strerror(mc)});
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(ch_->multi, &left)) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == ch_->easy) {
                done_ = true;
                result_ = msg->data.result;
                curl_multi_remove_handle(ch_->multi, ch_->easy);
                attached_ = false;
            }
        }
        if (done_ || paused_ || buf_.size() - pos_ != before || headers_done_ != before_headers) return {};
        mc = curl_multi_poll(ch_->multi, nullptr, 0, 1000, nullptr);
        if (mc != CURLM_OK)
            return std::unexpected(TransportError{TransportErrorKind::Other, curl_multi_strerror(mc)});
        return {};
    }

    static size_t on_header(char* data, size_t size, size_t nitems, void* self_) {
        auto* self = static_cast<CurlExchange*>(self_);
        size_t len = size * nitems;
        HeaderLine h = parse_header_line(std::string_view(data, len));
        switch (h.kind) {
            case HeaderLine::Kind::Status:  // a new response (after 100 Continue, say): start over
                self->headers_.clear();
                self->status_ = h.status;
                break;
            case HeaderLine::Kind::End:
                if (self->status_ >= 200) self->headers_done_ = true;
                break;
            case HeaderLine::Kind::Field:
                self->headers_.add(std::move(h.name), std::move(h.value));
                break;
            case HeaderLine::Kind::Other:
                break;
        }
        return len;
    }

    // Called once per request libcurl sends: twice when it retried on a fresh connection.
    static int on_prereq(void* self_, char*, char*, int, int) {
        ++static_cast<CurlExchange*>(self_)->sends_;
        return CURL_PREREQFUNC_OK;
    }

    static size_t on_write(char* data, size_t size, size_t nmemb, void* self_) {
        auto* self = static_cast<CurlExchange*>(self_);
        size_t len = size * nmemb;
        self->headers_done_ = true;
        if (self->buf_.size() - self->pos_ >= kBufferCap) {
            self->paused_ = true;
            return CURL_WRITEFUNC_PAUSE;
        }
        if (self->pos_ > 0 && self->pos_ == self->buf_.size()) {
            self->buf_.clear();
            self->pos_ = 0;
        }
        self->buf_.append(data, len);
        return len;
    }

    static size_t on_read(char* out, size_t size, size_t nitems, void* self_) {
        auto* self = static_cast<CurlExchange*>(self_);
        if (!self->req_.body) return 0;
        auto r = self->req_.body->read_at(self->upload_pos_, out, size * nitems);
        if (!r) return CURL_READFUNC_ABORT;
        self->upload_pos_ += *r;
        return *r;
    }

    static int on_seek(void* self_, curl_off_t offset, int origin) {
        auto* self = static_cast<CurlExchange*>(self_);
        if (origin != SEEK_SET || offset < 0) return CURL_SEEKFUNC_CANTSEEK;
        self->upload_pos_ = static_cast<uint64_t>(offset);
        return CURL_SEEKFUNC_OK;
    }

    CurlTransport& t_;
    std::unique_ptr<CurlTransport::Channel> ch_;
    HttpRequest req_;
    curl_slist* slist_ = nullptr;
    std::string proxy_;
    std::string ca_blob_;
    bool attached_ = false;
    bool headers_done_ = false;
    bool done_ = false;
    bool paused_ = false;
    CURLcode result_ = CURLE_OK;
    int status_ = 0;
    HttpHeaders headers_;
    std::string buf_;
    size_t pos_ = 0;
    uint64_t upload_pos_ = 0;
    unsigned sends_ = 0;
    char errbuf_[CURL_ERROR_SIZE] = {};
};

CurlTransport::CurlTransport(CurlOptions opt) : opt_(std::move(opt)) {
    global_init_once();
    share_ = std::make_unique<Share>();
}

CurlTransport::~CurlTransport() {
    idle_.clear();  // before the share they point to
}

std::unique_ptr<CurlTransport::Channel> CurlTransport::acquire() {
    {
        std::lock_guard lock(pool_mu_);
        if (!idle_.empty()) {
            auto ch = std::move(idle_.back());
            idle_.pop_back();
            return ch;
        }
    }
    return std::make_unique<Channel>();
}

void CurlTransport::release(std::unique_ptr<Channel> ch) {
    std::lock_guard lock(pool_mu_);
    idle_.push_back(std::move(ch));
}

std::expected<std::unique_ptr<HttpExchange>, TransportError> CurlTransport::start(const HttpRequest& req) {
    auto ch = acquire();
    if (!ch->multi || !ch->easy) return std::unexpected(TransportError{TransportErrorKind::Other, "libcurl: out of memory"});
    auto ex = std::make_unique<CurlExchange>(*this, std::move(ch), req);
    auto r = ex->setup(opt_, share_->sh);
    if (!r) return std::unexpected(r.error());
    return ex;
}

}  // namespace erostream
