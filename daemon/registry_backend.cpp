#include "registry_backend.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <ctime>

#include "registry/auth.h"
#include "registry/http_parsers.h"
#include "registry/url.h"

namespace erostream {

BodyPlan range_body_plan(int status, bool range_sent, uint64_t offset, uint64_t len) {
    BodyPlan p;
    if (range_sent && status == 206) {
        p.keep = len;
        p.overflow = BodyPlan::Overflow::Fail;
    } else if (range_sent && status == 200) {
        // The server ignored Range: take our bytes out of the whole blob, then hang up.
        p.skip = offset;
        p.keep = len;
        p.overflow = BodyPlan::Overflow::Stop;
    } else if (status >= 200 && status < 300) {
        p.keep = 1u << 20;  // token and exchange answers: small JSON documents
        p.overflow = BodyPlan::Overflow::Fail;
    } else {
        p.keep = 64u << 10;  // error bodies, for their message; the status is what counts
        p.overflow = BodyPlan::Overflow::Truncate;
    }
    return p;
}

Result<void> check_range_response(const HttpResponse& r, uint64_t offset, uint64_t len, const std::string& what) {
    const uint64_t last = offset + len - 1;
    if (r.status == 206) {
        auto cr = r.headers.get("Content-Range");
        if (!cr) return fail(fmt::format("{}: HTTP 206 without Content-Range", what), EIO);
        auto p = parse_content_range(*cr);
        if (!p || !p->first || !p->last)
            return fail(fmt::format("{}: HTTP 206 with a bad Content-Range '{}'", what, cr->substr(0, 80)), EIO);
        if (*p->first != offset || *p->last != last)
            return fail(fmt::format("{}: HTTP 206 for bytes {}-{} instead", what, *p->first, *p->last), EIO);
        if (r.body.size() != len)
            return fail(fmt::format("{}: HTTP 206 with {} body bytes for a range of {}", what, r.body.size(), len), EIO);
        return {};
    }
    if (r.status == 200) {
        // A server that ignores Range: range_body_plan kept exactly our window of the blob.
        if (r.body.size() == len) return {};
        return fail(fmt::format("{}: HTTP 200 (Range ignored) with a blob of {} bytes", what, offset + r.body.size()),
                    ERANGE);
    }
    if (r.status == 416) {
        std::string msg = fmt::format("{}: HTTP 416 range not satisfiable", what);
        if (auto cr = r.headers.get("Content-Range"))
            if (auto p = parse_content_range(*cr); p && p->complete_length)
                msg += fmt::format(" (the blob has {} bytes)", *p->complete_length);
        return fail(std::move(msg), ERANGE);
    }
    std::string msg = fmt::format("{}: {}", what, describe_http_error(r));
    if (r.status == 401) msg += " (authentication required or credentials rejected)";
    if (r.status == 403) msg += " (access denied)";
    return fail(std::move(msg), errno_for_status(r.status));
}

struct RegistryBackend::Fetch {
    uint64_t id = 0;
    Descriptor blob;
    uint64_t offset = 0, len = 0;
    std::string req_id;
    RangeDone done;
    std::string range;  // "bytes=A-B"
    std::string what;   // "registry R: GET blob REPO@DIGEST bytes A-B"
    size_t endpoint = 0;
    std::unique_ptr<RequestFlow> flow;
    uint64_t transfer = 0;  // CurlMulti id while a request is out
    uint64_t timer = 0;     // loop timer while waiting to retry
    uint64_t received = 0;  // body bytes of every response so far
    std::string body;       // the range's bytes, once a 2xx answered the range request
    std::string last_outcome;  // for the retry log line
};

RegistryBackend::RegistryBackend(EventLoop& loop, CurlMulti& curl, Stats& stats, std::shared_ptr<AuthCache> auth,
                                 RegistryAccess access, std::string repository, RegistryBackendOptions opt)
    : loop_(loop),
      curl_(curl),
      stats_(stats),
      auth_(std::move(auth)),
      access_(std::move(access)),
      repo_(std::move(repository)),
      opt_(opt),
      rng_(std::random_device{}()) {
    if (opt_.max_inflight == 0) opt_.max_inflight = 1;
    access_.credentials.resize(access_.endpoints.size());
    flow_ctx_.auth = auth_.get();
    flow_ctx_.retry = opt_.retry;
    flow_ctx_.random01 = [this] { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); };
    flow_ctx_.now = [] { return Clock::now(); };
    flow_ctx_.wall_now = [] { return std::time(nullptr); };
}

RegistryBackend::~RegistryBackend() {
    *alive_ = false;
    for (auto& [id, f] : fetches_) {
        if (f->transfer) curl_.cancel(f->transfer);
        if (f->timer) loop_.cancel(f->timer);
        Error e{ECANCELED, f->what + ": abandoned (the mounts using this registry went away)"};
        loop_.post([done = std::move(f->done), e]() mutable { done(std::unexpected(std::move(e))); });
    }
    fetches_.clear();
}

void RegistryBackend::fetch_range(const Descriptor& blob, uint64_t offset, uint64_t len, const std::string& req_id,
                                  RangeDone done) {
    ++in_fetch_range_;
    auto f = std::make_shared<Fetch>();
    f->id = next_fetch_++;
    f->blob = blob;
    f->offset = offset;
    f->len = len;
    f->req_id = req_id;
    f->done = std::move(done);
    f->range = len ? fmt::format("bytes={}-{}", offset, offset + len - 1) : std::string();
    f->what = fmt::format("registry {}: GET blob {}@{} bytes {}-{}", access_.registry, repo_, blob.digest, offset,
                          len ? offset + len - 1 : offset);
    fetches_.emplace(f->id, f);
    if (closing_) {
        finish(f, fail(f->what + ": " + closing_why_, ECANCELED));
    } else if (len == 0) {
        finish(f, std::string());
    } else if (len > UINT64_MAX - offset) {
        finish(f, fail(f->what + ": the range overflows", EINVAL));
    } else if (access_.endpoints.empty()) {
        finish(f, fail(f->what + ": no endpoint can pull from this registry", EINVAL));
    } else {
        start_endpoint(f);
    }
    --in_fetch_range_;
}

void RegistryBackend::start_endpoint(const std::shared_ptr<Fetch>& f) {
    const RegistryEndpoint& ep = access_.endpoints[f->endpoint];
    FlowSpec spec;
    spec.what = f->what;
    if (ep.mirror) spec.what += " (mirror " + ep.api.authority() + ")";
    spec.endpoint = ep;
    spec.credential = access_.credentials[f->endpoint];
    spec.scopes = {repository_scope(repo_, false)};
    spec.request.method = "GET";
    spec.request.url = ep.url_for(fmt::format("{}/blobs/{}", repo_, f->blob.digest));
    if (ep.mirror) spec.request.url = append_query(spec.request.url, "ns", access_.registry);
    spec.request.headers.add("Range", f->range);
    if (auto it = storage_urls_.find(f->blob.digest); it != storage_urls_.end()) spec.direct_url = it->second;
    spec.buffer_body = true;
    f->flow = std::make_unique<RequestFlow>(flow_ctx_, std::move(spec));
    step(f, f->flow->start());
}

void RegistryBackend::step(const std::shared_ptr<Fetch>& f, RequestFlow::Action a) {
    std::weak_ptr<bool> alive = alive_;
    switch (a.step) {
    case RequestFlow::Step::Send: {
        // Our Range header marks the request for the range itself (not a token request).
        const bool range_sent = a.request.headers.get("Range") == std::optional<std::string_view>(f->range);
        const uint64_t offset = f->offset, len = f->len;
        f->transfer = curl_.start(
            a.request,
            [range_sent, offset, len](const HttpResponse& head) {
                return range_body_plan(head.status, range_sent, offset, len);
            },
            [this, alive, f, range_sent](TransferResult r) {
                if (alive.expired() || !fetches_.count(f->id)) return;
                f->transfer = 0;
                f->received += r.body_bytes;
                RequestFlow::Action next;
                if (r.response) {
                    HttpResponse& resp = *r.response;
                    f->last_outcome = fmt::format("HTTP {}", resp.status);
                    // The range's bytes stay here; the flow decides on the head (it reads bodies
                    // only of token answers and errors).
                    if (range_sent && resp.status >= 200 && resp.status < 300) f->body = std::move(resp.body);
                    next = f->flow->on_response(resp);
                } else {
                    f->last_outcome = r.response.error().message;
                    next = f->flow->on_transport_error(r.response.error());
                }
                step(f, std::move(next));
            });
        return;
    }
    case RequestFlow::Step::Wait:
        stats_.retries++;
        spdlog::warn("[{}] {}: {}; retry {} in {} ms", f->req_id, f->flow->what(), f->last_outcome, f->flow->retries(),
                     a.wait.count());
        f->timer = loop_.add_timer(a.wait, [this, alive, f] {
            if (alive.expired() || !fetches_.count(f->id)) return;
            f->timer = 0;
            f->body.clear();
            step(f, f->flow->after_wait());
        });
        return;
    case RequestFlow::Step::Done: flow_done(f); return;
    case RequestFlow::Step::Failed: endpoint_failed(f, std::move(a.error)); return;
    }
}

void RegistryBackend::flow_done(const std::shared_ptr<Fetch>& f) {
    const RequestFlow& flow = *f->flow;
    const std::string& digest = f->blob.digest;
    if (flow.direct_url_failed()) storage_urls_.erase(digest);
    if (auto u = flow.storage_url()) storage_urls_[digest] = *u;
    if (flow.fell_back_to_http()) {
        const Url origin = access_.endpoints[f->endpoint].api;
        for (auto& e : access_.endpoints)
            if (same_origin(e.api, origin) && e.api.path == origin.path) {
                if (e.api.port == 0) e.api.port = 443;
                e.api.scheme = "http";
            }
        spdlog::warn("[{}] registry {}: {} answers only over plain http (insecure)", f->req_id, access_.registry,
                     origin.authority());
    }
    HttpResponse r = flow.response();
    if (r.status >= 200 && r.status < 300) r.body = std::move(f->body);
    auto ok = check_range_response(r, f->offset, f->len, flow.what());
    if (!ok) {
        const bool mirror = access_.endpoints[f->endpoint].mirror;
        if (mirror && r.status != 200 && r.status != 206 && r.status != 416) return endpoint_failed(f, ok.error());
        return finish(f, std::unexpected(ok.error()));
    }
    if (r.status == 200 && !(f->offset == 0 && f->len == static_cast<uint64_t>(f->blob.size)))
        spdlog::debug("[{}] {}: the server ignored Range; took the range out of the whole blob", f->req_id, flow.what());
    finish(f, std::move(r.body));
}

void RegistryBackend::endpoint_failed(const std::shared_ptr<Fetch>& f, Error e) {
    if (access_.endpoints[f->endpoint].mirror && f->endpoint + 1 < access_.endpoints.size()) {
        spdlog::warn("[{}] {}; trying the next endpoint", f->req_id, e.what());
        f->endpoint++;
        f->body.clear();
        start_endpoint(f);
        return;
    }
    if (e.err == 0) e.err = EIO;
    finish(f, std::unexpected(std::move(e)));
}

void RegistryBackend::finish(const std::shared_ptr<Fetch>& f, Result<std::string> r) {
    auto it = fetches_.find(f->id);
    if (it == fetches_.end()) return;
    fetches_.erase(it);
    // The scheduler counts the bytes it is handed; what else came over the wire (failed tries,
    // bytes before a range that a 200 included, token answers, error bodies) is counted here.
    const uint64_t delivered = r ? r->size() : 0;
    if (f->received > delivered) stats_.bytes_fetched += f->received - delivered;
    if (!r) spdlog::debug("[{}] {}", f->req_id, r.error().what());
    RangeDone done = std::move(f->done);
    f->flow.reset();
    if (in_fetch_range_ > 0) {
        loop_.post([done = std::move(done), r = std::move(r)]() mutable { done(std::move(r)); });
        return;
    }
    // `done` may hold the last reference to this backend (the scheduler keeps a backend alive
    // while its ranges are out): nothing may touch `this` after it, here or in the callers, which
    // all return right after finish().
    done(std::move(r));
}

void RegistryBackend::shutdown(const std::string& why) {
    closing_ = true;
    closing_why_ = why;
    std::vector<std::shared_ptr<Fetch>> all;
    for (auto& [id, f] : fetches_) all.push_back(f);
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
    for (auto& f : all) {
        if (f->transfer) curl_.cancel(f->transfer);
        if (f->timer) loop_.cancel(f->timer);
        f->transfer = f->timer = 0;
        finish(f, fail(f->what + ": " + why, ECANCELED));
    }
}

}  // namespace erostream
