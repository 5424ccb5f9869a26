#include "request_flow.h"

#include <nlohmann/json.hpp>

#include <cerrno>

#include "url.h"

namespace erostream {

namespace {

bool is_redirect(int status) {
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

std::optional<std::chrono::milliseconds> retry_after_of(const HttpResponse& r, std::time_t now) {
    auto v = r.headers.get("Retry-After");
    if (!v) return std::nullopt;
    return parse_retry_after(*v, now);
}

}  // namespace

RequestFlow::RequestFlow(const FlowContext& ctx, FlowSpec spec) : ctx_(ctx), spec_(std::move(spec)) {
    spec_.scopes = merge_scopes(std::move(spec_.scopes));
}

RequestFlow::Action RequestFlow::failed(std::string msg, int err) {
    Action a;
    a.step = Step::Failed;
    a.error = Error{err, spec_.what.empty() ? std::move(msg) : spec_.what + ": " + msg};
    return a;
}

bool RequestFlow::idempotent_main() const {
    return is_idempotent_method(spec_.request.method) || spec_.retry_non_idempotent;
}

RequestFlow::Action RequestFlow::start() {
    if (spec_.direct_url) return send_direct();
    return send_main();
}

RequestFlow::Action RequestFlow::send_direct() {
    phase_ = Phase::Main;
    on_direct_ = true;
    off_origin_ = true;
    redirects_ = 0;
    current_ = spec_.request;
    current_.url = *spec_.direct_url;
    current_.headers.remove("Authorization");
    current_.fresh_connection = fresh_connection_;
    current_.verify_tls = true;
    current_.ca_files.clear();
    Action a;
    a.step = Step::Send;
    a.request = current_;
    a.buffer_body = spec_.buffer_body;
    return a;
}

RequestFlow::Action RequestFlow::send_main() {
    phase_ = Phase::Main;
    on_direct_ = false;
    off_origin_ = false;
    redirects_ = 0;
    current_ = spec_.request;
    for (const auto& [k, v] : spec_.endpoint.headers.items())
        if (!current_.headers.has(k)) current_.headers.add(k, v);
    current_.verify_tls = !spec_.endpoint.skip_verify;
    current_.ca_files = spec_.endpoint.ca_files;
    current_.headers.remove("Authorization");
    current_.fresh_connection = fresh_connection_;
    sent_bearer_ = false;
    // Authorization from what this origin asked for before.
    auto ch = ctx_.auth->challenge(registry_origin());
    if (ch && ch->scheme == "bearer") {
        bearer_ = *ch;
        auto tok = ctx_.auth->token(*ch, spec_.scopes, ctx_.now());
        if (!tok) return token_step();
        current_.headers.add("Authorization", "Bearer " + *tok);
        sent_bearer_ = true;
    } else if (ch && ch->scheme == "basic" && spec_.credential.has_basic()) {
        current_.headers.add("Authorization",
                             basic_authorization(spec_.credential.username, spec_.credential.password));
    }
    Action a;
    a.step = Step::Send;
    a.request = current_;
    a.buffer_body = spec_.buffer_body;
    return a;
}

RequestFlow::Action RequestFlow::token_step() {
    const AuthChallenge& ch = *bearer_;
    if (++token_fetches_ > 4) return failed("the token endpoint keeps answering without a usable token");
    if (!spec_.credential.aad_access_token.empty() && !exchange_tried_ &&
        ctx_.auth->refresh_token(ch).empty() && spec_.credential.identity_token.empty()) {
        exchange_tried_ = true;
        phase_ = Phase::Exchange;
        std::string service = ch.param("service");
        if (service.empty()) service = spec_.endpoint.api.host;
        Action a;
        a.step = Step::Send;
        a.request = build_aad_exchange_request(registry_origin(), service, spec_.credential.aad_access_token);
        a.request.verify_tls = !spec_.endpoint.skip_verify;
        a.request.ca_files = spec_.endpoint.ca_files;
        a.buffer_body = true;
        token_request_ = a.request;
        return a;
    }
    std::string rt = ctx_.auth->refresh_token(ch);
    token_used_refresh_ = !rt.empty() || !spec_.credential.identity_token.empty();
    TokenMethod m = ctx_.auth->post_unsupported(ch) ? TokenMethod::Get : TokenMethod::Post;
    auto req = build_token_request(ch, spec_.scopes, spec_.credential, rt, m);
    if (!req) return failed(req.error().message);
    auto realm = parse_url(req->url);
    if (realm && same_origin(*realm, spec_.endpoint.api)) {
        req->verify_tls = !spec_.endpoint.skip_verify;
        req->ca_files = spec_.endpoint.ca_files;
    }
    phase_ = Phase::Token;
    token_request_ = *req;
    Action a;
    a.step = Step::Send;
    a.request = std::move(*req);
    a.buffer_body = true;
    return a;
}

RequestFlow::Action RequestFlow::retry_or_done(std::optional<std::chrono::milliseconds> retry_after,
                                               bool idempotent) {
    if (!idempotent || retries_ >= ctx_.retry.max_retries) {
        Action a;
        a.step = Step::Done;
        return a;
    }
    Action a;
    a.step = Step::Wait;
    a.wait = ctx_.retry.delay(retries_, ctx_.random01 ? ctx_.random01() : 0.5, retry_after);
    ++retries_;
    return a;
}

RequestFlow::Action RequestFlow::after_wait() {
    if (phase_ == Phase::Token || phase_ == Phase::Exchange) {
        Action a;
        a.step = Step::Send;
        token_request_.fresh_connection = fresh_connection_;
        a.request = token_request_;
        a.buffer_body = true;
        return a;
    }
    if (on_direct_ && spec_.direct_url && !direct_failed_) return send_direct();
    return send_main();
}

RequestFlow::Action RequestFlow::on_response(const HttpResponse& resp) {
    last_ = resp;
    const int st = resp.status;
    if (phase_ == Phase::Exchange) {
        if (st == 200) {
            auto rt = parse_exchange_response(resp.body);
            if (!rt) return failed(rt.error().message);
            ctx_.auth->store_refresh_token(*bearer_, *rt);
            return token_step();
        }
        if (is_retryable_status(st)) {
            auto a = retry_or_done(retry_after_of(resp, ctx_.wall_now()), true);
            if (a.step == Step::Wait) return a;
        }
        return failed(fmt::format("exchanging the AAD token at {}/oauth2/exchange: {}", registry_origin(),
                                  describe_http_error(resp)),
                      errno_for_status(st));
    }
    if (phase_ == Phase::Token) {
        if (st == 200) {
            auto tr = parse_token_response(resp.body);
            if (!tr) return failed(fmt::format("token endpoint {}: {}", redact_url(token_request_.url), tr.error().message));
            ctx_.auth->store_token(*bearer_, spec_.scopes, tr->token, tr->expires_in, ctx_.now());
            if (!tr->refresh_token.empty()) ctx_.auth->store_refresh_token(*bearer_, tr->refresh_token);
            return send_main();
        }
        if (is_retryable_status(st)) {
            auto a = retry_or_done(retry_after_of(resp, ctx_.wall_now()), true);
            if (a.step == Step::Wait) return a;
        }
        if (token_request_.method == "POST" && st >= 400 && st < 500) {
            if (token_used_refresh_ && !ctx_.auth->refresh_token(*bearer_).empty()) {
                // A refresh token the server handed out earlier is no longer good.
                ctx_.auth->store_refresh_token(*bearer_, "");
                return token_step();
            }
            if (spec_.credential.has_basic() && !ctx_.auth->post_unsupported(*bearer_)) {
                ctx_.auth->mark_post_unsupported(*bearer_);
                return token_step();
            }
        }
        return failed(fmt::format("token endpoint {}: {}{}", redact_url(token_request_.url), describe_http_error(resp),
                                  st == 401 || st == 403 ? " (credentials rejected)" : ""),
                      errno_for_status(st));
    }

    // Phase::Main
    if (spec_.follow_redirects && is_redirect(st)) {
        auto loc = resp.headers.get("Location");
        if (!loc) return failed(fmt::format("HTTP {} without a Location header", st));
        if (++redirects_ > spec_.max_redirects) return failed("too many redirects");
        auto base = parse_url(current_.url);
        if (!base) return failed("bad request URL");
        auto target = resolve_url(*base, *loc);
        if (!target) return failed("redirect Location: " + target.error().message);
        HttpRequest next = current_;
        next.url = target->str();
        if (st == 303 && next.method != "HEAD") {
            next.method = "GET";
            next.body.reset();
        }
        if (!same_origin(*target, spec_.endpoint.api)) {
            // Never hand the registry's credentials (or its configured headers) to another host.
            next.headers.remove("Authorization");
            for (const auto& [k, v] : spec_.endpoint.headers.items()) next.headers.remove(k);
            next.verify_tls = true;
            next.ca_files.clear();
            off_origin_ = true;
        } else {
            off_origin_ = false;
        }
        current_ = std::move(next);
        Action a;
        a.step = Step::Send;
        a.request = current_;
        a.buffer_body = spec_.buffer_body;
        return a;
    }
    if (off_origin_) {
        if (on_direct_ && st >= 400 && st < 500 && st != 416) {
            // The signed URL expired or was revoked: ask the registry for a new one.
            direct_failed_ = true;
            return send_main();
        }
        if (!on_direct_ && (st == 401 || st == 403) && storage_refusals_ < 2) {
            // A URL the registry just handed out was refused (expired on arrival, clock skew):
            // ask the registry again.
            ++storage_refusals_;
            return send_main();
        }
        if (is_retryable_status(st)) return retry_or_done(retry_after_of(resp, ctx_.wall_now()), idempotent_main());
        Action a;
        a.step = Step::Done;
        return a;
    }
    if (st == 401) {
        auto values = resp.headers.get_all("WWW-Authenticate");
        std::optional<AuthChallenge> bearer, basic;
        for (auto v : values) {
            auto chs = parse_www_authenticate(v);
            if (!chs) continue;
            for (auto& c : *chs) {
                if (c.scheme == "bearer" && !bearer) bearer = c;
                if (c.scheme == "basic" && !basic) basic = c;
            }
        }
        if (bearer && !bearer->param("realm").empty()) {
            if (auth_rounds_ >= 2) {
                Action a;
                a.step = Step::Done;
                return a;
            }
            ++auth_rounds_;
            // The challenge may name a scope we did not think of (Docker Hub does).
            std::string cs = bearer->param("scope");
            if (!cs.empty()) {
                size_t i = 0;
                while (i <= cs.size()) {
                    size_t j = cs.find(' ', i);
                    if (j == std::string::npos) j = cs.size();
                    if (j > i) spec_.scopes.push_back(cs.substr(i, j - i));
                    i = j + 1;
                }
                spec_.scopes = merge_scopes(std::move(spec_.scopes));
            }
            AuthChallenge key = *bearer;
            key.params.erase("scope");  // the cache key is realm + service (+ our scopes)
            key.params.erase("error");
            if (sent_bearer_) ctx_.auth->drop_token(key, spec_.scopes);
            ctx_.auth->remember_challenge(registry_origin(), key);
            bearer_ = key;
            return token_step();
        }
        if (basic) {
            ctx_.auth->remember_challenge(registry_origin(), *basic);
            if (spec_.credential.has_basic() && !basic_tried_) {
                basic_tried_ = true;
                return send_main();
            }
        }
        Action a;
        a.step = Step::Done;
        return a;
    }
    if (is_retryable_status(st)) return retry_or_done(retry_after_of(resp, ctx_.wall_now()), idempotent_main());
    Action a;
    a.step = Step::Done;
    return a;
}

RequestFlow::Action RequestFlow::on_transport_error(const TransportError& e) {
    bool idempotent = phase_ != Phase::Main || idempotent_main();
    if (phase_ == Phase::Main && !off_origin_ && e.kind == TransportErrorKind::Tls &&
        spec_.endpoint.http_fallback && spec_.endpoint.api.scheme == "https") {
        // --insecure: the registry may only speak plain http.
        spec_.endpoint.api.scheme = "http";
        if (spec_.endpoint.api.port == 0) spec_.endpoint.api.port = 443;
        auto u = parse_url(spec_.request.url);
        if (u && u->scheme == "https") {
            u->scheme = "http";
            if (u->port == 0) u->port = 443;
            spec_.request.url = u->str();
        }
        http_fallback_done_ = true;
        return send_main();
    }
    if (phase_ == Phase::Main && on_direct_) {
        direct_failed_ = true;
        return send_main();
    }
    retries_ += e.extra_attempts;
    fresh_connection_ = true;
    if (is_retryable_transport(e.kind, idempotent) && retries_ < ctx_.retry.max_retries) {
        Action a;
        a.step = Step::Wait;
        a.wait = ctx_.retry.delay(retries_, ctx_.random01 ? ctx_.random01() : 0.5, std::nullopt);
        ++retries_;
        return a;
    }
    const HttpRequest& req = phase_ == Phase::Main ? current_ : token_request_;
    int err = e.kind == TransportErrorKind::Timeout ? ETIMEDOUT
              : e.kind == TransportErrorKind::Connect ? ECONNREFUSED
                                                      : EIO;
    std::string msg = fmt::format("{} {}: {}", req.method, redact_url(req.url), e.message);
    if (retries_ > 0) msg += fmt::format(" (gave up after {} retries)", retries_);
    return failed(std::move(msg), err);
}

std::optional<std::string> RequestFlow::storage_url() const {
    if (!off_origin_ || last_.status < 200 || last_.status >= 300) return std::nullopt;
    return last_.url.empty() ? current_.url : last_.url;
}

std::string describe_http_error(const HttpResponse& r) {
    std::string out = fmt::format("HTTP {}", r.status);
    if (r.body.empty()) return out;
    try {
        auto j = nlohmann::json::parse(r.body);
        auto it = j.find("errors");
        if (it != j.end() && it->is_array()) {
            for (const auto& e : *it) {
                if (!e.is_object()) continue;
                std::string code = e.value("code", std::string());
                std::string message = e.value("message", std::string());
                // Bound what a server can make us print.
                if (code.size() > 64) code.resize(64);
                if (message.size() > 200) message.resize(200);
                out += " " + code;
                if (!message.empty()) out += ": " + message;
                out += ";";
            }
            if (out.back() == ';') out.pop_back();
        }
    } catch (const nlohmann::json::exception&) {
        // not the spec's error body; the status says enough
    }
    return out;
}

int errno_for_status(int status) {
    if (status == 404) return ENOENT;
    if (status == 401 || status == 403) return EACCES;
    if (status == 416) return ERANGE;
    return EIO;
}

}  // namespace erostream
