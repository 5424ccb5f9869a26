#include "daemon_registry.h"

#include <algorithm>
#include <cstdlib>

namespace erostream {

namespace {

// Counts the body bytes of every response a blocking client reads.
class CountingExchange final : public HttpExchange {
public:
    CountingExchange(std::unique_ptr<HttpExchange> inner, std::shared_ptr<std::atomic<uint64_t>> n)
        : inner_(std::move(inner)), n_(std::move(n)) {}
    std::expected<HttpResponse, TransportError> head() override { return inner_->head(); }
    std::expected<size_t, TransportError> read(void* buf, size_t n) override {
        auto r = inner_->read(buf, n);
        if (r) n_->fetch_add(*r, std::memory_order_relaxed);
        return r;
    }

private:
    std::unique_ptr<HttpExchange> inner_;
    std::shared_ptr<std::atomic<uint64_t>> n_;
};

class CountingTransport final : public HttpTransport {
public:
    CountingTransport(std::shared_ptr<HttpTransport> inner, std::shared_ptr<std::atomic<uint64_t>> n)
        : inner_(std::move(inner)), n_(std::move(n)) {}
    std::expected<std::unique_ptr<HttpExchange>, TransportError> start(const HttpRequest& req) override {
        auto ex = inner_->start(req);
        if (!ex) return ex;
        return std::unique_ptr<HttpExchange>(std::make_unique<CountingExchange>(std::move(*ex), n_));
    }

private:
    std::shared_ptr<HttpTransport> inner_;
    std::shared_ptr<std::atomic<uint64_t>> n_;
};

// Proxy settings of the config file win over the environment's.
struct ProxyEnv {
    std::string http, https, no;
    std::function<const char*(const char*)> fallback;

    const char* get(const char* name) const {
        std::string_view n(name);
        if ((n == "http_proxy" || n == "HTTP_PROXY") && !http.empty()) return http.c_str();
        if ((n == "https_proxy" || n == "HTTPS_PROXY") && !https.empty()) return https.c_str();
        if ((n == "no_proxy" || n == "NO_PROXY") && !no.empty()) return no.c_str();
        return fallback ? fallback(name) : std::getenv(name);
    }
};

}  // namespace

DaemonRegistry::DaemonRegistry(const DaemonConfig& cfg, std::function<const char*(const char*)> getenv)
    : insecure_(cfg.insecure_registries) {
    auto env = std::make_shared<ProxyEnv>();
    env->http = cfg.http_proxy;
    env->https = cfg.https_proxy;
    env->no = cfg.no_proxy;
    env->fallback = getenv;
    opt_.curl.getenv = [env](const char* name) { return env->get(name); };
    opt_.endpoints.hosts_dir = cfg.hosts_dir;
    if (!cfg.docker_config.empty()) opt_.credentials.auth_files = {cfg.docker_config};
    opt_.credentials.getenv = getenv;
    opt_.retry.max_retries = cfg.retry_max;
    opt_.retry.base = std::chrono::milliseconds(cfg.retry_base_ms);
    shared_.transport = std::make_shared<CountingTransport>(std::make_shared<CurlTransport>(opt_.curl), received_);
    shared_.auth = std::make_shared<AuthCache>();
    shared_.credentials = std::make_shared<CredentialStore>(opt_.credentials);
}

Result<std::shared_ptr<RegistryClient>> DaemonRegistry::client(const std::string& registry) {
    {
        std::lock_guard lock(mu_);
        if (auto it = clients_.find(registry); it != clients_.end()) return it->second;
    }
    // Outside the lock: hosts.toml is read and credential helpers run, and the loop must never
    // wait for that in access().
    RegistryOptions opt = opt_;
    opt.endpoints.insecure = std::find(insecure_.begin(), insecure_.end(), registry) != insecure_.end();
    auto c = RegistryClient::create(registry, opt, shared_);
    if (!c) return std::unexpected(c.error());
    std::shared_ptr<RegistryClient> client = std::move(*c);
    RegistryAccess access;
    access.registry = registry;
    for (const auto& ep : client->endpoints()) {
        if (ep.mirror && (ep.capabilities & kCapPull) == 0) continue;
        auto cred = shared_.credentials->lookup(ep.mirror ? ep.api.authority() : registry);
        if (!cred) return std::unexpected(cred.error().prefix("credentials for " + ep.api.authority()));
        access.endpoints.push_back(ep);
        access.credentials.push_back(std::move(*cred));
    }
    std::lock_guard lock(mu_);
    auto [it, fresh] = clients_.emplace(registry, client);
    if (fresh) access_[registry] = std::move(access);
    return it->second;
}

std::optional<RegistryAccess> DaemonRegistry::access(const std::string& registry) const {
    std::lock_guard lock(mu_);
    auto it = access_.find(registry);
    if (it == access_.end()) return std::nullopt;
    return it->second;
}

Result<std::pair<std::string, std::string>> split_registry_source(std::string_view source) {
    constexpr std::string_view kScheme = "docker://";
    if (!source.starts_with(kScheme)) return fail(fmt::format("'{}' is no docker:// source", source), EINVAL);
    std::string_view rest = source.substr(kScheme.size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 == rest.size())
        return fail(fmt::format("'{}': expected docker://REGISTRY/REPOSITORY", source), EINVAL);
    return std::pair<std::string, std::string>(std::string(rest.substr(0, slash)), std::string(rest.substr(slash + 1)));
}

}  // namespace erostream
