#include "docker_config.h"

#include <nlohmann/json.hpp>

#include <cctype>

#include "http_parsers.h"

namespace erostream {

std::string normalize_registry_host(std::string_view key) {
    std::string_view k = key;
    if (auto p = k.find("://"); p != std::string_view::npos) k = k.substr(p + 3);
    if (auto p = k.find('/'); p != std::string_view::npos) k = k.substr(0, p);
    std::string out(k);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (out == "index.docker.io" || out == "registry-1.docker.io" || out == "registry.hub.docker.com")
        out = "docker.io";
    return out;
}

std::string credential_helper_server(std::string_view registry) {
    if (normalize_registry_host(registry) == "docker.io") return "https://index.docker.io/v1/";
    return std::string(registry);
}

Result<DockerConfig> parse_docker_config(std::string_view text) {
    DockerConfig cfg;
    try {
        auto j = nlohmann::json::parse(text);
        if (!j.is_object()) return fail("docker config: top level is not an object");
        if (auto it = j.find("auths"); it != j.end()) {
            if (!it->is_object()) return fail("docker config: 'auths' is not an object");
            for (const auto& [key, entry] : it->items()) {
                if (!entry.is_object()) return failf("docker config: auths['{}'] is not an object", key);
                DockerConfig::AuthEntry e;
                auto str = [&](const char* name) -> Result<std::string> {
                    auto f = entry.find(name);
                    if (f == entry.end() || f->is_null()) return std::string();
                    if (!f->is_string()) return failf("docker config: auths['{}'].{} is not a string", key, name);
                    return f->get<std::string>();
                };
                std::string auth = EROS_TRY(str("auth"));
                e.cred.username = EROS_TRY(str("username"));
                e.cred.password = EROS_TRY(str("password"));
                e.cred.identity_token = EROS_TRY(str("identitytoken"));
                if (!auth.empty()) {
                    auto decoded = base64_decode(auth);
                    if (!decoded) return failf("docker config: auths['{}'].auth is not base64", key);
                    auto colon = decoded->find(':');
                    if (colon == std::string::npos)
                        return failf("docker config: auths['{}'].auth is not base64 of user:password", key);
                    e.cred.username = decoded->substr(0, colon);
                    e.cred.password = decoded->substr(colon + 1);
                }
                // An ACR refresh token stored as a password is an identity token.
                if (e.cred.username == kAcrRefreshTokenUser && e.cred.identity_token.empty() &&
                    !e.cred.password.empty()) {
                    e.cred.identity_token = e.cred.password;
                }
                cfg.auths[normalize_registry_host(key)] = std::move(e);
            }
        }
        if (auto it = j.find("credsStore"); it != j.end() && !it->is_null()) {
            if (!it->is_string()) return fail("docker config: 'credsStore' is not a string");
            cfg.creds_store = it->get<std::string>();
        }
        if (auto it = j.find("credHelpers"); it != j.end() && !it->is_null()) {
            if (!it->is_object()) return fail("docker config: 'credHelpers' is not an object");
            for (const auto& [key, v] : it->items()) {
                if (!v.is_string()) return failf("docker config: credHelpers['{}'] is not a string", key);
                cfg.cred_helpers[normalize_registry_host(key)] = v.get<std::string>();
            }
        }
    } catch (const nlohmann::json::parse_error& e) {
        // e.what() quotes the input near the error, which may be a secret: keep the position only.
        return failf("docker config: invalid JSON at byte {}", e.byte);
    } catch (const nlohmann::json::exception&) {
        return fail("docker config: unexpected JSON value types");
    }
    for (const auto& [host, helper] : cfg.cred_helpers) {
        for (char ch : helper)
            if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.'))
                return failf("docker config: credential helper name for '{}' has invalid characters", host);
    }
    for (char ch : cfg.creds_store)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.'))
            return fail("docker config: credsStore has invalid characters");
    return cfg;
}

CredentialSource lookup_credentials(const DockerConfig& cfg, std::string_view registry) {
    std::string host = normalize_registry_host(registry);
    CredentialSource src;
    if (auto it = cfg.cred_helpers.find(host); it != cfg.cred_helpers.end()) {
        src.kind = CredentialSource::Helper;
        src.helper = it->second;
        return src;
    }
    if (auto it = cfg.auths.find(host); it != cfg.auths.end() && !it->second.cred.empty()) {
        src.kind = CredentialSource::Inline;
        src.cred = it->second.cred;
        return src;
    }
    if (!cfg.creds_store.empty()) {
        src.kind = CredentialSource::Helper;
        src.helper = cfg.creds_store;
        src.store = true;
    }
    return src;
}

}  // namespace erostream
