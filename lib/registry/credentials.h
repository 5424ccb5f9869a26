// Finding a registry's credentials: docker config files (and podman's auth.json), credential
// helpers (docker-credential-NAME), an Azure AD token for ACR. The results are secrets: they are
// kept in Credential values and never logged, printed or put into an Error.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "docker_config.h"
#include "result.h"

namespace erostream {

struct CredentialOptions {
    // Auth files, tried in order; the first with an entry (or helper) for the registry wins. Empty:
    // default_auth_files().
    std::vector<std::string> auth_files;
    std::string aad_token_file;  // else env EROSTREAM_AAD_TOKEN
    std::function<const char*(const char*)> getenv;  // std::getenv when empty
};

// $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or ~/.docker/config.json,
// $XDG_RUNTIME_DIR/containers/auth.json.
std::vector<std::string> default_auth_files(const std::function<const char*(const char*)>& getenv);

// Parses a credential helper's JSON answer {"ServerURL","Username","Secret"}. Username "<token>"
// means the secret is an identity (refresh) token.
Result<Credential> parse_helper_output(std::string_view json_text);

// Runs "docker-credential-NAME get" with the server name on stdin. "credentials not found" is an
// empty Credential, not an error.
Result<Credential> run_credential_helper(const std::string& helper, const std::string& server);

// Resolves and caches credentials per registry host. Thread-safe.
class CredentialStore {
public:
    explicit CredentialStore(CredentialOptions opt = {});
    // Credentials for `registry` ("docker.io", "localhost:5000"); an empty Credential when none is
    // configured.
    Result<Credential> lookup(const std::string& registry);
    // Credentials to use instead of any configuration (tests, --creds style options).
    void set(const std::string& registry, Credential c);

private:
    Result<Credential> resolve(const std::string& registry);
    CredentialOptions opt_;
    std::mutex mu_;
    std::map<std::string, Credential> cache_;
};

}  // namespace erostream
