// Registry authentication without I/O: what a token request looks like, what its answer means, and
// the caches shared by every request of a process (tokens by realm+service+scope with expiry, the
// challenge each origin answered with, refresh tokens). Thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "docker_config.h"
#include "http_parsers.h"
#include "http_types.h"
#include "result.h"

namespace erostream {

using Clock = std::chrono::steady_clock;

// "repository:NAME:pull", "repository:NAME:pull,push"
std::string repository_scope(std::string_view repository, bool push);

// Scopes merged the way token servers expect them: sorted, duplicates removed, the actions of one
// resource joined ("repository:a:pull" + "repository:a:push" -> "repository:a:pull,push").
std::vector<std::string> merge_scopes(std::vector<std::string> scopes);

enum class TokenMethod { Post, Get };

// The token request for a Bearer challenge (distribution's token auth spec):
//  - with a refresh token: POST form grant_type=refresh_token (never GET: the token would land in
//    a URL);
//  - with a user and password: POST form grant_type=password, or GET with Basic auth (the fallback
//    for token servers without the OAuth2 POST);
//  - anonymous: GET realm?service=..&scope=..
// client_id is "erostream" in every form.
Result<HttpRequest> build_token_request(const AuthChallenge& bearer, const std::vector<std::string>& scopes,
                                        const Credential& cred, std::string_view refresh_token,
                                        TokenMethod method);

// ACR: POST https://REGISTRY/oauth2/exchange grant_type=access_token&service=..&access_token=..
HttpRequest build_aad_exchange_request(std::string_view registry_origin, std::string_view service,
                                       std::string_view aad_access_token);

struct TokenResponse {
    std::string token;          // "token" or "access_token"
    std::string refresh_token;  // when the server handed one out
    std::chrono::seconds expires_in{60};
};
// Parses a token endpoint's JSON answer; expires_in defaults to 60 s (the spec's minimum).
Result<TokenResponse> parse_token_response(std::string_view body);
// Parses /oauth2/exchange's answer: {"refresh_token": "..."}.
Result<std::string> parse_exchange_response(std::string_view body);

std::string basic_authorization(std::string_view user, std::string_view password);

// What a process knows about the registries it talked to.
class AuthCache {
public:
    // The challenge an origin answered a request without credentials with.
    void remember_challenge(const std::string& origin, const AuthChallenge& ch);
    std::optional<AuthChallenge> challenge(const std::string& origin) const;

    // Tokens are reused until a little before they expire (10% of their lifetime, at most 30 s).
    void store_token(const AuthChallenge& ch, const std::vector<std::string>& scopes, const std::string& token,
                     std::chrono::seconds expires_in, Clock::time_point now);
    std::optional<std::string> token(const AuthChallenge& ch, const std::vector<std::string>& scopes,
                                     Clock::time_point now) const;
    void drop_token(const AuthChallenge& ch, const std::vector<std::string>& scopes);

    // A refresh token from the token server or from /oauth2/exchange, per realm and service.
    void store_refresh_token(const AuthChallenge& ch, const std::string& token);
    std::string refresh_token(const AuthChallenge& ch) const;

    // Token servers that answered the OAuth2 POST with a client error: ask them with GET.
    void mark_post_unsupported(const AuthChallenge& ch);
    bool post_unsupported(const AuthChallenge& ch) const;

private:
    static std::string realm_key(const AuthChallenge& ch);
    static std::string token_key(const AuthChallenge& ch, const std::vector<std::string>& scopes);
    struct Token {
        std::string value;
        Clock::time_point refresh_at;
    };
    mutable std::mutex mu_;
    std::map<std::string, AuthChallenge> challenges_;
    std::map<std::string, Token> tokens_;
    std::map<std::string, std::string> refresh_;
    std::map<std::string, bool> get_only_;
};

}  // namespace erostream
