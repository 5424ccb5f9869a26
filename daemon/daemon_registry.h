// The daemon's registry settings and shared state: options from the [registry] config section
// (docker config file, hosts.toml directory, insecure registries, proxies) and the retry
// settings, one token cache shared by the blocking clients (resolving references, manifests and
// metadata blobs on the sys pool) and the registry backends on the loop, and a client per
// registry. Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "daemon_config.h"
#include "registry_backend.h"
#include "registry/registry_client.h"

namespace erostream {

class DaemonRegistry {
public:
    // `getenv` for tests (std::getenv when null): proxies the config leaves empty come from it.
    explicit DaemonRegistry(const DaemonConfig& cfg, std::function<const char*(const char*)> getenv = nullptr);

    // Blocking (worker pools, start-up): the client for `registry`, created on first use; also
    // prepares what the loop needs to reach the registry (access()): endpoints and credentials.
    Result<std::shared_ptr<RegistryClient>> client(const std::string& registry);
    // For the loop: what client() prepared for `registry`, nullopt before.
    std::optional<RegistryAccess> access(const std::string& registry) const;

    std::shared_ptr<AuthCache> auth() const { return shared_.auth; }
    const RegistryOptions& options() const { return opt_; }
    // Response body bytes the blocking clients received (manifests, referrers, metadata blobs).
    uint64_t bytes_received() const { return received_->load(std::memory_order_relaxed); }

private:
    RegistryOptions opt_;
    std::vector<std::string> insecure_;
    std::shared_ptr<std::atomic<uint64_t>> received_ = std::make_shared<std::atomic<uint64_t>>(0);
    RegistryShared shared_;
    mutable std::mutex mu_;
    std::map<std::string, std::shared_ptr<RegistryClient>> clients_;
    std::map<std::string, RegistryAccess> access_;
};

// "docker://REGISTRY/REPO" (a mount's recorded source) -> registry and repository.
Result<std::pair<std::string, std::string>> split_registry_source(std::string_view source);

}  // namespace erostream
