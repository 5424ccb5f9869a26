// docker's config.json (also podman/skopeo's auth.json, same format): where credentials for a
// registry come from. Parsing is pure; running credential helpers is in credentials.h.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "result.h"

namespace erostream {

// What a registry login holds. Secrets: never log, print or put into an Error.
struct Credential {
    std::string username;
    std::string password;
    std::string identity_token;    // an OAuth2 refresh token (docker's "identitytoken", ACR's)
    std::string aad_access_token;  // an Azure AD access token to exchange at /oauth2/exchange

    bool empty() const {
        return username.empty() && password.empty() && identity_token.empty() && aad_access_token.empty();
    }
    bool has_basic() const { return !username.empty() || !password.empty(); }
};

// ACR's user name for "the password is a refresh token".
inline constexpr std::string_view kAcrRefreshTokenUser = "00000000-0000-0000-0000-000000000000";

struct DockerConfig {
    struct AuthEntry {
        Credential cred;
    };
    std::map<std::string, AuthEntry> auths;  // keyed by normalized host ("docker.io", "host:5000")
    std::string creds_store;                 // helper for every registry without an entry
    std::map<std::string, std::string> cred_helpers;  // host -> helper name
};

// Parses config.json text. Keys of "auths" may be URLs ("https://index.docker.io/v1/"): they are
// normalized to the host. Errors name the field, never a secret.
Result<DockerConfig> parse_docker_config(std::string_view json_text);

// "https://index.docker.io/v1/" -> "docker.io"; "http://host:5000/v2" -> "host:5000".
std::string normalize_registry_host(std::string_view key);

// Where credentials for `registry` come from according to the config.
struct CredentialSource {
    enum Kind { None, Inline, Helper } kind = None;
    Credential cred;     // Inline
    std::string helper;  // Helper: run "docker-credential-<helper> get"
    bool store = false;  // the helper is the config's credsStore (for every registry)
};
CredentialSource lookup_credentials(const DockerConfig& cfg, std::string_view registry);

// The server name a credential helper is asked about: Docker Hub's historic URL for docker.io,
// the host itself otherwise.
std::string credential_helper_server(std::string_view registry);

}  // namespace erostream
