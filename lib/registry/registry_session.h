// One process's registry state: options from the command line, one transport (connections, DNS,
// TLS sessions), one token cache, one credential store, and a client per registry, so that the
// source and the destination of a conversion share all of it.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "registry_client.h"

namespace erostream {

class RegistrySession {
public:
    explicit RegistrySession(RegistryOptions opt = {});
    // The client for `registry` ("docker.io", "localhost:5000"), created on first use.
    Result<std::shared_ptr<RegistryClient>> client(const std::string& registry);
    const RegistryOptions& options() const { return opt_; }

private:
    RegistryOptions opt_;
    RegistryShared shared_;
    std::mutex mu_;
    std::map<std::string, std::shared_ptr<RegistryClient>> clients_;
};

}  // namespace erostream
