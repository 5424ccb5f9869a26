#include "registry_session.h"

namespace erostream {

RegistrySession::RegistrySession(RegistryOptions opt) : opt_(std::move(opt)) {
    shared_.transport = std::make_shared<CurlTransport>(opt_.curl);
    shared_.auth = std::make_shared<AuthCache>();
    shared_.credentials = std::make_shared<CredentialStore>(opt_.credentials);
}

Result<std::shared_ptr<RegistryClient>> RegistrySession::client(const std::string& registry) {
    std::lock_guard lock(mu_);
    if (auto it = clients_.find(registry); it != clients_.end()) return it->second;
    auto c = RegistryClient::create(registry, opt_, shared_);
    if (!c) return std::unexpected(c.error());
    std::shared_ptr<RegistryClient> sp = std::move(*c);
    clients_[registry] = sp;
    return sp;
}

}  // namespace erostream
