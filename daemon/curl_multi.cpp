#include "curl_multi.h"

#include <curl/curl.h>
#include <poll.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include <spdlog/spdlog.h>

#include "registry/http_parsers.h"
#include "registry/url.h"

namespace erostream {

namespace {

void global_init_once() {
    static const bool done = [] {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        return true;
    }();
    (void)done;
}

}  // namespace

struct CurlMulti::Transfer {
    uint64_t id = 0;
    CURL* easy = nullptr;
    curl_slist* header_list = nullptr;
    HttpRequest req;
    std::string proxy;
    Planner plan;
    Done done;
    char errbuf[CURL_ERROR_SIZE] = {};
    int status = 0;
    HttpHeaders headers;
    bool headers_done = false;
    bool planned = false;
    BodyPlan bp;
    std::string body;
    uint64_t received = 0;
    bool overflowed = false;  // BodyPlan::Overflow::Fail tripped
    bool stopped = false;     // BodyPlan::Overflow::Stop tripped: a success
    unsigned sends = 0;

    ~Transfer() {
        if (easy) curl_easy_cleanup(easy);
        if (header_list) curl_slist_free_all(header_list);
    }

    HttpResponse head() const {
        HttpResponse r;
        r.status = status;
        r.headers = headers;
        r.url = req.url;
        return r;
    }

    TransferResult result(CURLcode code) {
        TransferResult out;
        out.body_bytes = received;
        if (overflowed) {
            out.response = std::unexpected(TransportError{
                TransportErrorKind::Other,
                fmt::format("HTTP {}: the response body is longer than the {} bytes expected", status, bp.keep)});
            return out;
        }
        if (code == CURLE_OK || (code == CURLE_WRITE_ERROR && stopped)) {
            if (!headers_done || status < 200) {
                out.response = std::unexpected(TransportError{TransportErrorKind::Network, "no HTTP response"});
                return out;
            }
            HttpResponse r = head();
            r.body = std::move(body);
            out.response = std::move(r);
            return out;
        }
        TransportError e;
        e.kind = curl_error_kind(code, headers_done);
        const char* detail = errbuf[0] ? errbuf : curl_easy_strerror(code);
        e.message = fmt::format("{}{}", detail, headers_done ? " (while reading the body)" : "");
        // libcurl's messages can name the URL: never let a query string (a signature) through.
        if (e.message.find('?') != std::string::npos) e.message = curl_easy_strerror(code);
        e.extra_attempts = sends > 1 ? sends - 1 : 0;
        out.response = std::unexpected(std::move(e));
        return out;
    }
};

namespace {

size_t on_header(char* data, size_t size, size_t nitems, void* userp) {
    auto* t = static_cast<CurlMulti::Transfer*>(userp);
    size_t len = size * nitems;
    HeaderLine h = parse_header_line(std::string_view(data, len));
    switch (h.kind) {
        case HeaderLine::Kind::Status:  // a new response (after 100 Continue): start over
            t->headers.clear();
            t->status = h.status;
            t->headers_done = false;
            break;
        case HeaderLine::Kind::End:
            if (t->status >= 200) t->headers_done = true;
            break;
        case HeaderLine::Kind::Field:
            t->headers.add(std::move(h.name), std::move(h.value));
            break;
        case HeaderLine::Kind::Other:
            break;
    }
    return len;
}

size_t on_write(char* data, size_t size, size_t nmemb, void* userp) {
    auto* t = static_cast<CurlMulti::Transfer*>(userp);
    size_t len = size * nmemb;
    t->headers_done = true;
    if (!t->planned) {
        t->planned = true;
        if (t->plan) t->bp = t->plan(t->head());
    }
    const uint64_t pos = t->received;
    t->received += len;
    const uint64_t lo = t->bp.skip;
    const uint64_t hi = t->bp.keep > UINT64_MAX - lo ? UINT64_MAX : lo + t->bp.keep;
    const uint64_t from = std::max(pos, lo), to = std::min(pos + len, hi);
    if (from < to) t->body.append(data + (from - pos), to - from);
    if (pos + len > hi) {
        switch (t->bp.overflow) {
        case BodyPlan::Overflow::Truncate: break;
        case BodyPlan::Overflow::Fail: t->overflowed = true; return 0;  // CURLE_WRITE_ERROR
        case BodyPlan::Overflow::Stop: t->stopped = true; return 0;
        }
    }
    return len;
}

// Called once per request libcurl sends: twice when it retried on a fresh connection.
int on_prereq(void* userp, char*, char*, int, int) {
    ++static_cast<CurlMulti::Transfer*>(userp)->sends;
    return CURL_PREREQFUNC_OK;
}

}  // namespace

CurlMulti::CurlMulti(EventLoop& loop, CurlMultiOptions opt) : loop_(loop), opt_(std::move(opt)) {}

Result<std::unique_ptr<CurlMulti>> CurlMulti::create(EventLoop& loop, CurlMultiOptions opt) {
    global_init_once();
    std::unique_ptr<CurlMulti> m(new CurlMulti(loop, std::move(opt)));
    CURLM* multi = curl_multi_init();
    if (!multi) return fail("curl_multi_init failed", ENOMEM);
    m->multi_ = multi;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &CurlMulti::on_socket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, m.get());
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &CurlMulti::on_timer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, m.get());
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(std::max(1u, m->opt_.max_host_connections)));
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(std::max(1u, m->opt_.max_cached_connections)));
    return m;
}

CurlMulti::~CurlMulti() {
    if (!closing_) shutdown("erostreamd is stopping");
    *alive_ = false;
    if (multi_) curl_multi_cleanup(static_cast<CURLM*>(multi_));
    if (timer_) loop_.cancel(timer_);
    for (auto& [fd, w] : sockets_) loop_.cancel(w.id);
}

const std::string* CurlMulti::ca_blob(const std::vector<std::string>& files, std::string* error) {
    std::string key;
    for (const auto& f : files) key += f + '\n';
    if (auto it = ca_blobs_.find(key); it != ca_blobs_.end()) return &it->second;
    std::string blob;
    for (const auto& f : files) {
        std::ifstream in(f);
        if (!in) {
            *error = "cannot read CA file " + f;
            return nullptr;
        }
        std::stringstream ss;
        ss << in.rdbuf();
        blob += ss.str();
        blob += "\n";
    }
    return &ca_blobs_.emplace(key, std::move(blob)).first->second;
}

void CurlMulti::fail_later(uint64_t id, TransportError e, Done done) {
    std::weak_ptr<bool> alive = alive_;
    failing_.insert(id);
    loop_.post([this, alive, id, e = std::move(e), done = std::move(done)]() mutable {
        if (alive.expired() || !failing_.erase(id)) return;
        TransferResult r;
        r.response = std::unexpected(std::move(e));
        done(std::move(r));
    });
}

uint64_t CurlMulti::start(const HttpRequest& req, Planner plan, Done done) {
    const uint64_t id = next_id_++;
    if (closing_) {
        fail_later(id, TransportError{TransportErrorKind::Other, closing_why_}, std::move(done));
        return id;
    }
    auto t = std::make_unique<Transfer>();
    t->id = id;
    t->req = req;
    t->plan = std::move(plan);
    t->easy = curl_easy_init();
    auto setup_error = [&](TransportErrorKind k, std::string msg) {
        fail_later(id, TransportError{k, std::move(msg)}, std::move(done));
        return id;
    };
    if (!t->easy) return setup_error(TransportErrorKind::Other, "libcurl: out of memory");
    auto url = parse_url(req.url);
    if (!url) return setup_error(TransportErrorKind::Other, "bad URL: " + url.error().message);

    CURL* e = t->easy;
    const CurlOptions& co = opt_.curl;
    curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
    curl_easy_setopt(e, CURLOPT_URL, t->req.url.c_str());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);  // the flow decides where a redirect goes
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, co.user_agent.c_str());
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(co.connect_timeout.count()));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, co.low_speed_limit);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(co.low_speed_time.count()));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (req.fresh_connection) curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, &on_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, t.get());
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t.get());
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, req.verify_tls ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, req.verify_tls ? 2L : 0L);
    if (req.ca_files.size() == 1) {
        curl_easy_setopt(e, CURLOPT_CAINFO, t->req.ca_files[0].c_str());
    } else if (req.ca_files.size() > 1) {
        std::string err;
        const std::string* blob = ca_blob(req.ca_files, &err);
        if (!blob) return setup_error(TransportErrorKind::Tls, err);
        curl_blob b{const_cast<char*>(blob->data()), blob->size(), CURL_BLOB_COPY};
        curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &b);
    }
    t->proxy = select_proxy(*url, co.getenv);
    curl_easy_setopt(e, CURLOPT_PROXY, t->proxy.c_str());  // "": no proxy; the environment is not read again

    for (const auto& [k, v] : req.headers.items()) t->header_list = curl_slist_append(t->header_list, (k + ": " + v).c_str());
    t->header_list = curl_slist_append(t->header_list, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->header_list);

    const std::string& m = req.method;
    if (req.body && req.body->fd >= 0)
        return setup_error(TransportErrorKind::Other, "request bodies from files are not sent from the event loop");
    if (m == "HEAD") {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (m == "GET") {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (m == "POST") {
        const std::string& b = req.body ? req.body->bytes : std::string();
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(b.size()));
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, b.c_str());
    } else {
        return setup_error(TransportErrorKind::Other, "method " + m + " is not sent from the event loop");
    }
    CURLMcode mc = curl_multi_add_handle(static_cast<CURLM*>(multi_), e);
    if (mc != CURLM_OK) return setup_error(TransportErrorKind::Other, curl_multi_strerror(mc));
    SPDLOG_DEBUG("http: {} {}{}", m, redact_url(req.url), t->proxy.empty() ? "" : " (via proxy)");
    t->done = std::move(done);
    transfers_.emplace(id, std::move(t));
    return id;
}

void CurlMulti::cancel(uint64_t id) {
    if (failing_.erase(id)) return;
    auto it = transfers_.find(id);
    if (it == transfers_.end()) return;
    auto t = std::move(it->second);
    transfers_.erase(it);
    curl_multi_remove_handle(static_cast<CURLM*>(multi_), t->easy);
}

void CurlMulti::shutdown(const std::string& why) {
    closing_ = true;
    closing_why_ = why;
    std::vector<uint64_t> ids;
    for (const auto& [id, t] : transfers_) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (uint64_t id : ids) {
        auto it = transfers_.find(id);
        if (it == transfers_.end()) continue;  // a done callback cancelled it
        auto t = std::move(it->second);
        transfers_.erase(it);
        curl_multi_remove_handle(static_cast<CURLM*>(multi_), t->easy);
        Done done = std::move(t->done);
        TransferResult r;
        r.body_bytes = t->received;
        r.response = std::unexpected(TransportError{TransportErrorKind::Other, why});
        t.reset();
        if (done) done(std::move(r));
    }
    if (timer_) loop_.cancel(timer_);
    timer_ = 0;
    for (auto& [fd, w] : sockets_) loop_.cancel(w.id);
    sockets_.clear();
}

int CurlMulti::on_socket(void*, int fd, int what, void* self_, void*) {
    auto* self = static_cast<CurlMulti*>(self_);
    auto it = self->sockets_.find(fd);
    if (what == CURL_POLL_REMOVE) {
        if (it != self->sockets_.end()) {
            self->loop_.cancel(it->second.id);
            self->sockets_.erase(it);
        }
        return 0;
    }
    if (self->closing_) return 0;
    unsigned events = ((what & CURL_POLL_IN) ? POLLIN : 0) | ((what & CURL_POLL_OUT) ? POLLOUT : 0);
    if (it != self->sockets_.end()) {
        if (it->second.events == events) return 0;
        self->loop_.cancel(it->second.id);
        self->sockets_.erase(it);
    }
    std::weak_ptr<bool> alive = self->alive_;
    Watch w;
    w.events = events;
    w.id = self->loop_.watch_fd_level(fd, events, [self, alive, fd](int revents) {
        if (alive.expired()) return;
        self->socket_ready(fd, revents);
    });
    self->sockets_[fd] = w;
    return 0;
}

int CurlMulti::on_timer(void*, long timeout_ms, void* self_) {
    auto* self = static_cast<CurlMulti*>(self_);
    if (self->timer_) self->loop_.cancel(self->timer_);
    self->timer_ = 0;
    if (timeout_ms < 0 || self->closing_) return 0;
    std::weak_ptr<bool> alive = self->alive_;
    self->timer_ = self->loop_.add_timer(std::chrono::milliseconds(timeout_ms), [self, alive] {
        if (alive.expired()) return;
        self->timer_fired();
    });
    return 0;
}

void CurlMulti::timer_fired() {
    timer_ = 0;
    action(CURL_SOCKET_TIMEOUT, 0);
}

void CurlMulti::socket_ready(int fd, int revents) {
    int mask = 0;
    if (revents < 0) {
        // The kernel ended the watch: libcurl finds out what is wrong with the socket.
        sockets_.erase(fd);
        mask = CURL_CSELECT_ERR;
    } else {
        if (revents & (POLLIN | POLLHUP)) mask |= CURL_CSELECT_IN;
        if (revents & POLLOUT) mask |= CURL_CSELECT_OUT;
        if (revents & POLLERR) mask |= CURL_CSELECT_ERR;
    }
    action(fd, mask);
}

void CurlMulti::action(int fd, int mask) {
    if (closing_) return;
    int running = 0;
    CURLMcode mc = curl_multi_socket_action(static_cast<CURLM*>(multi_), fd, mask, &running);
    if (mc != CURLM_OK) spdlog::error("[curl] curl_multi_socket_action: {}", curl_multi_strerror(mc));
    collect();
}

void CurlMulti::collect() {
    // Read every message first: a done callback may remove other handles, which invalidates
    // messages not read yet.
    std::vector<std::pair<uint64_t, CURLcode>> finished;
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(static_cast<CURLM*>(multi_), &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        Transfer* t = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
        if (t) finished.emplace_back(t->id, msg->data.result);
    }
    for (auto [id, code] : finished) {
        auto it = transfers_.find(id);
        if (it == transfers_.end()) continue;
        auto t = std::move(it->second);
        transfers_.erase(it);
        curl_multi_remove_handle(static_cast<CURLM*>(multi_), t->easy);
        TransferResult r = t->result(code);
        Done done = std::move(t->done);
        t.reset();
        done(std::move(r));
    }
}

}  // namespace erostream
