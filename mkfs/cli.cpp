#include "cli.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>

namespace erostream::cli {

const std::string& run_id() {
    static const std::string id = [] {
        std::random_device rd;
        return fmt::format("{:08x}", rd());
    }();
    return id;
}

void init_logging(bool verbose) {
    auto logger = spdlog::stderr_color_mt("erostream-mkfs");
    logger->set_pattern(fmt::format("erostream-mkfs: %l [run {}]: %v", run_id()));
    logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    spdlog::set_default_logger(logger);
}

int report_error(const Error& e) {
    spdlog::error("{}", e.what());
    return kExitError;
}

int usage_error(std::string_view cmd, std::string_view msg) {
    std::fprintf(stderr, "erostream-mkfs %.*s: %.*s\nTry 'erostream-mkfs %.*s --help'.\n",
                 static_cast<int>(cmd.size()), cmd.data(), static_cast<int>(msg.size()), msg.data(),
                 static_cast<int>(cmd.size()), cmd.data());
    return kExitUsage;
}

Result<uint64_t> parse_size(std::string_view s) {
    uint64_t v = 0;
    size_t i = 0;
    if (s.empty()) return fail("empty size");
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
        if (v > (UINT64_MAX - 9) / 10) return failf("size '{}' is too large", s);
        v = v * 10 + static_cast<uint64_t>(s[i] - '0');
    }
    if (i == 0) return failf("size '{}' does not start with a number", s);
    std::string_view unit = s.substr(i);
    uint64_t mul = 1;
    if (unit.empty() || unit == "B") mul = 1;
    else if (unit == "k" || unit == "K" || unit == "KiB") mul = 1ull << 10;
    else if (unit == "m" || unit == "M" || unit == "MiB") mul = 1ull << 20;
    else if (unit == "g" || unit == "G" || unit == "GiB") mul = 1ull << 30;
    else return failf("size '{}' has an unknown unit (use k, M or G: powers of 1024)", s);
    if (v > UINT64_MAX / mul) return failf("size '{}' is too large", s);
    return v * mul;
}

ProgressLine::ProgressLine(bool enabled) : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1) {}
ProgressLine::~ProgressLine() { finish(); }

void ProgressLine::update(const std::string& text, bool force) {
    if (!enabled_) return;
    int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count();
    if (!force && now - last_ms_ < (tty_ ? 200 : 1000)) return;
    last_ms_ = now;
    if (tty_) {
        std::string pad(last_len_ > text.size() ? last_len_ - text.size() : 0, ' ');
        std::fprintf(stderr, "\r%s%s", text.c_str(), pad.c_str());
        last_len_ = text.size();
    } else {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
    std::fflush(stderr);
}

void ProgressLine::finish() {
    if (enabled_ && tty_ && last_len_ > 0) std::fputc('\n', stderr);
    last_len_ = 0;
}

const char* const kRegistryHelp = R"(
Registry options (for docker://[REGISTRY/]REPO[:TAG][@sha256:HEX] references):
  --insecure           skip TLS verification, and allow plain http for any registry (registries
                       on localhost, 127.0.0.0/8 and ::1 are spoken to over http anyway)
  --hosts-dir DIR      containerd hosts.toml directory: DIR/HOST[:PORT]/hosts.toml, else
                       DIR/_default/hosts.toml (default /etc/containerd/certs.d)
  --ca-file FILE       extra CA certificates (PEM) for the registry's TLS
  --aad-token-file F   an Azure AD access token to exchange for an ACR refresh token
                       (default: $EROSTREAM_AAD_TOKEN)
Credentials: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json (else ~/.docker/config.json),
$XDG_RUNTIME_DIR/containers/auth.json, with the credential helpers they name.
Environment: HTTP_PROXY, HTTPS_PROXY, NO_PROXY (either case); EROSTREAM_RETRY_MAX (default 5)
and EROSTREAM_RETRY_BASE_MS (default 200) for retries with backoff.
)";

std::vector<option> with_registry_options(std::initializer_list<option> own) {
    std::vector<option> v(own);
    v.push_back({"insecure", no_argument, nullptr, kOptInsecure});
    v.push_back({"hosts-dir", required_argument, nullptr, kOptHostsDir});
    v.push_back({"ca-file", required_argument, nullptr, kOptCaFile});
    v.push_back({"aad-token-file", required_argument, nullptr, kOptAadTokenFile});
    v.push_back({nullptr, 0, nullptr, 0});
    return v;
}

bool parse_registry_option(int c, const char* arg, RegistryOptions& opt) {
    switch (c) {
    case kOptInsecure: opt.endpoints.insecure = true; return true;
    case kOptHostsDir: opt.endpoints.hosts_dir = arg; return true;
    case kOptCaFile: opt.endpoints.ca_file = arg; return true;
    case kOptAadTokenFile: opt.credentials.aad_token_file = arg; return true;
    default: return false;
    }
}

RegistryOptions default_registry_options() { return RegistryOptions{}; }

}  // namespace erostream::cli
