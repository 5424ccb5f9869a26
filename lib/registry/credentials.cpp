#include "credentials.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "unique_fd.h"

extern char** environ;

namespace erostream {

namespace {

std::optional<std::string> read_text_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string trim_ws(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(i);
}

}  // namespace

std::vector<std::string> default_auth_files(const std::function<const char*(const char*)>& getenv_fn) {
    auto env = [&](const char* n) -> std::string {
        const char* v = getenv_fn ? getenv_fn(n) : std::getenv(n);
        return v ? std::string(v) : std::string();
    };
    std::vector<std::string> out;
    if (auto f = env("REGISTRY_AUTH_FILE"); !f.empty()) out.push_back(f);
    if (auto d = env("DOCKER_CONFIG"); !d.empty()) out.push_back(d + "/config.json");
    else if (auto h = env("HOME"); !h.empty()) out.push_back(h + "/.docker/config.json");
    if (auto x = env("XDG_RUNTIME_DIR"); !x.empty()) out.push_back(x + "/containers/auth.json");
    return out;
}

Result<Credential> parse_helper_output(std::string_view text) {
    Credential c;
    try {
        auto j = nlohmann::json::parse(text);
        if (!j.is_object()) return fail("credential helper output is not a JSON object");
        std::string user = j.value("Username", std::string());
        std::string secret = j.value("Secret", std::string());
        if (user == "<token>") {
            c.identity_token = secret;
        } else {
            c.username = user;
            c.password = secret;
            if (user == kAcrRefreshTokenUser) c.identity_token = secret;
        }
    } catch (const nlohmann::json::exception&) {
        return fail("credential helper output is not valid JSON");
    }
    return c;
}

Result<Credential> run_credential_helper(const std::string& helper, const std::string& server) {
    const std::string prog = "docker-credential-" + helper;
    int in_pipe[2], out_pipe[2];
    if (::pipe2(in_pipe, O_CLOEXEC) != 0) return fail_errno("pipe");
    UniqueFd in_r(in_pipe[0]), in_w(in_pipe[1]);
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) return fail_errno("pipe");
    UniqueFd out_r(out_pipe[0]), out_w(out_pipe[1]);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_r.get(), 0);
    posix_spawn_file_actions_adddup2(&fa, out_w.get(), 1);
    char* argv[] = {const_cast<char*>(prog.c_str()), const_cast<char*>("get"), nullptr};
    pid_t pid = 0;
    int rc = ::posix_spawnp(&pid, prog.c_str(), &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return fail_errno("cannot run credential helper " + prog, rc);
    in_r.reset();
    out_w.reset();
    // The server name is short: it fits in the pipe buffer, no deadlock with the reader below.
    ssize_t w = ::write(in_w.get(), server.data(), server.size());
    (void)w;
    in_w.reset();
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t r = ::read(out_r.get(), buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        out.append(buf, static_cast<size_t>(r));
        if (out.size() > (1 << 20)) break;
    }
    out_r.reset();
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        // The helper's own message on stdout ("credentials not found in native keychain").
        if (trim_ws(out).find("not found") != std::string::npos) return Credential{};
        return failf("credential helper {} failed for {} (exit status {})", prog, server,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    auto c = parse_helper_output(out);
    if (!c) return std::unexpected(c.error().prefix(prog));
    return c;
}

CredentialStore::CredentialStore(CredentialOptions opt) : opt_(std::move(opt)) {
    if (opt_.auth_files.empty()) opt_.auth_files = default_auth_files(opt_.getenv);
}

void CredentialStore::set(const std::string& registry, Credential c) {
    std::lock_guard lock(mu_);
    cache_[normalize_registry_host(registry)] = std::move(c);
}

Result<Credential> CredentialStore::lookup(const std::string& registry) {
    std::string key = normalize_registry_host(registry);
    {
        std::lock_guard lock(mu_);
        if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    }
    auto c = resolve(key);
    if (!c) return c;
    std::lock_guard lock(mu_);
    cache_[key] = *c;
    return c;
}

Result<Credential> CredentialStore::resolve(const std::string& registry) {
    Credential out;
    for (const auto& file : opt_.auth_files) {
        auto text = read_text_file(file);
        if (!text) continue;
        auto cfg = parse_docker_config(*text);
        if (!cfg) return std::unexpected(cfg.error().prefix(file));
        auto src = lookup_credentials(*cfg, registry);
        if (src.kind == CredentialSource::Inline) {
            out = src.cred;
            break;
        }
        if (src.kind == CredentialSource::Helper) {
            auto c = run_credential_helper(src.helper, credential_helper_server(registry));
            if (!c && c.error().err == ENOENT && src.store) {
                // A config written on another machine (credsStore "desktop"): go on without it.
                // A helper named for this very registry (credHelpers) must be there.
                spdlog::warn("{}: credential helper docker-credential-{} is not installed; trying without credentials",
                             file, src.helper);
                continue;
            }
            if (!c) return std::unexpected(c.error());
            out = *c;
            if (!out.empty()) break;
        }
    }
    // An Azure AD token, exchanged for an ACR refresh token when the registry asks for a Bearer.
    if (out.empty()) {
        std::string aad;
        if (!opt_.aad_token_file.empty()) {
            auto t = read_text_file(opt_.aad_token_file);
            if (!t) return fail_errno("cannot read the AAD token file " + opt_.aad_token_file);
            aad = trim_ws(*t);
        } else {
            const char* v = opt_.getenv ? opt_.getenv("EROSTREAM_AAD_TOKEN") : std::getenv("EROSTREAM_AAD_TOKEN");
            if (v) aad = trim_ws(v);
        }
        out.aad_access_token = aad;
    }
    return out;
}

}  // namespace erostream
