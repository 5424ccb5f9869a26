#include "auth.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "url.h"

namespace erostream {

std::string repository_scope(std::string_view repository, bool push) {
    return fmt::format("repository:{}:{}", repository, push ? "pull,push" : "pull");
}

std::vector<std::string> merge_scopes(std::vector<std::string> scopes) {
    // resource ("repository:name") -> actions
    std::map<std::string, std::set<std::string>> by_resource;
    std::vector<std::string> other;
    for (const auto& s : scopes) {
        size_t last = s.rfind(':');
        if (last == std::string::npos || s.find(':') == last) {
            other.push_back(s);
            continue;
        }
        auto& acts = by_resource[s.substr(0, last)];
        std::string_view a(s);
        a = a.substr(last + 1);
        size_t i = 0;
        while (i <= a.size()) {
            size_t j = a.find(',', i);
            if (j == std::string_view::npos) j = a.size();
            if (j > i) acts.insert(std::string(a.substr(i, j - i)));
            i = j + 1;
        }
    }
    std::vector<std::string> out;
    for (const auto& [res, acts] : by_resource) {
        std::string s = res + ":";
        bool first = true;
        for (const auto& a : acts) {
            if (!first) s += ",";
            s += a;
            first = false;
        }
        out.push_back(std::move(s));
    }
    std::sort(other.begin(), other.end());
    other.erase(std::unique(other.begin(), other.end()), other.end());
    out.insert(out.end(), other.begin(), other.end());
    std::sort(out.begin(), out.end());
    return out;
}

std::string basic_authorization(std::string_view user, std::string_view password) {
    std::string up(user);
    up += ':';
    up += password;
    return "Basic " + base64_encode(up);
}

Result<HttpRequest> build_token_request(const AuthChallenge& ch, const std::vector<std::string>& scopes,
                                        const Credential& cred, std::string_view refresh_token,
                                        TokenMethod method) {
    std::string realm = ch.param("realm");
    if (realm.empty()) return fail("Bearer challenge has no realm");
    auto realm_url = parse_url(realm);
    if (!realm_url) return std::unexpected(realm_url.error().prefix("Bearer challenge realm"));
    std::string service = ch.param("service");
    HttpRequest req;
    std::string rt(refresh_token);
    if (rt.empty()) rt = cred.identity_token;
    bool have_password = cred.has_basic() && !cred.password.empty();
    if (!rt.empty() || (have_password && method == TokenMethod::Post)) {
        std::string form;
        auto field = [&](std::string_view k, std::string_view v) {
            if (!form.empty()) form += '&';
            form += url_encode(k);
            form += '=';
            form += url_encode(v);
        };
        if (!rt.empty()) {
            field("grant_type", "refresh_token");
            field("refresh_token", rt);
        } else {
            field("grant_type", "password");
            field("username", cred.username);
            field("password", cred.password);
            field("access_type", "offline");  // ask for a refresh token to use next time
        }
        if (!service.empty()) field("service", service);
        for (const auto& s : scopes) field("scope", s);
        field("client_id", "erostream");
        req.method = "POST";
        req.url = realm_url->str();
        req.headers.add("Content-Type", "application/x-www-form-urlencoded");
        req.body = HttpBody::from_bytes(std::move(form));
        return req;
    }
    std::string url = realm_url->str();
    if (!service.empty()) url = append_query(url, "service", service);
    for (const auto& s : scopes) url = append_query(url, "scope", s);
    url = append_query(url, "client_id", "erostream");
    req.method = "GET";
    req.url = std::move(url);
    if (cred.has_basic()) req.headers.add("Authorization", basic_authorization(cred.username, cred.password));
    return req;
}

HttpRequest build_aad_exchange_request(std::string_view origin, std::string_view service,
                                       std::string_view aad_access_token) {
    HttpRequest req;
    req.method = "POST";
    req.url = std::string(origin) + "/oauth2/exchange";
    req.headers.add("Content-Type", "application/x-www-form-urlencoded");
    std::string form = "grant_type=access_token&service=" + url_encode(service) +
                       "&access_token=" + url_encode(aad_access_token);
    req.body = HttpBody::from_bytes(std::move(form));
    return req;
}

Result<TokenResponse> parse_token_response(std::string_view body) {
    TokenResponse r;
    try {
        auto j = nlohmann::json::parse(body);
        if (!j.is_object()) return fail("token response is not a JSON object");
        auto str = [&](const char* k) -> std::string {
            auto it = j.find(k);
            return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
        };
        r.token = str("token");
        if (r.token.empty()) r.token = str("access_token");
        r.refresh_token = str("refresh_token");
        if (auto it = j.find("expires_in"); it != j.end() && it->is_number()) {
            double v = it->get<double>();
            if (v >= 1 && v < 1e9) r.expires_in = std::chrono::seconds(static_cast<int64_t>(v));
        }
    } catch (const nlohmann::json::exception&) {
        return fail("token response is not valid JSON");
    }
    if (r.token.empty()) return fail("token response has neither 'token' nor 'access_token'");
    return r;
}

Result<std::string> parse_exchange_response(std::string_view body) {
    try {
        auto j = nlohmann::json::parse(body);
        if (j.is_object()) {
            auto it = j.find("refresh_token");
            if (it != j.end() && it->is_string() && !it->get<std::string>().empty()) return it->get<std::string>();
        }
    } catch (const nlohmann::json::exception&) {
        return fail("/oauth2/exchange answer is not valid JSON");
    }
    return fail("/oauth2/exchange answer has no refresh_token");
}

std::string AuthCache::realm_key(const AuthChallenge& ch) { return ch.param("realm") + "\n" + ch.param("service"); }

std::string AuthCache::token_key(const AuthChallenge& ch, const std::vector<std::string>& scopes) {
    std::string k = realm_key(ch);
    for (const auto& s : scopes) k += "\n" + s;
    return k;
}

void AuthCache::remember_challenge(const std::string& origin, const AuthChallenge& ch) {
    std::lock_guard lock(mu_);
    challenges_[origin] = ch;
}

std::optional<AuthChallenge> AuthCache::challenge(const std::string& origin) const {
    std::lock_guard lock(mu_);
    auto it = challenges_.find(origin);
    if (it == challenges_.end()) return std::nullopt;
    return it->second;
}

void AuthCache::store_token(const AuthChallenge& ch, const std::vector<std::string>& scopes, const std::string& token,
                            std::chrono::seconds expires_in, Clock::time_point now) {
    auto margin = std::min<std::chrono::seconds>(expires_in / 10, std::chrono::seconds(30));
    std::lock_guard lock(mu_);
    tokens_[token_key(ch, scopes)] = Token{token, now + expires_in - margin};
}

std::optional<std::string> AuthCache::token(const AuthChallenge& ch, const std::vector<std::string>& scopes,
                                            Clock::time_point now) const {
    std::lock_guard lock(mu_);
    auto it = tokens_.find(token_key(ch, scopes));
    if (it == tokens_.end() || now >= it->second.refresh_at) return std::nullopt;
    return it->second.value;
}

void AuthCache::drop_token(const AuthChallenge& ch, const std::vector<std::string>& scopes) {
    std::lock_guard lock(mu_);
    tokens_.erase(token_key(ch, scopes));
}

void AuthCache::store_refresh_token(const AuthChallenge& ch, const std::string& token) {
    std::lock_guard lock(mu_);
    refresh_[realm_key(ch)] = token;
}

std::string AuthCache::refresh_token(const AuthChallenge& ch) const {
    std::lock_guard lock(mu_);
    auto it = refresh_.find(realm_key(ch));
    return it == refresh_.end() ? std::string() : it->second;
}

void AuthCache::mark_post_unsupported(const AuthChallenge& ch) {
    std::lock_guard lock(mu_);
    get_only_[realm_key(ch)] = true;
}

bool AuthCache::post_unsupported(const AuthChallenge& ch) const {
    std::lock_guard lock(mu_);
    return get_only_.count(realm_key(ch)) > 0;
}

}  // namespace erostream
