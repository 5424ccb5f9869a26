// Where a registry's API is reached: containerd's hosts.toml (mirrors tried in order before the
// upstream server, per-host capabilities, TLS settings, extra headers), so that a pull-through
// cache or a peer-to-peer engine (Dragonfly, Spegel, Kraken) can stand in front of the registry.
//   <certs dir>/<host[:port]>/hosts.toml, else <certs dir>/_default/hosts.toml
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "http_types.h"
#include "result.h"
#include "url.h"

namespace erostream {

enum HostCapability : uint8_t {
    kCapPull = 1,     // fetch blobs and manifests by digest
    kCapResolve = 2,  // resolve tags to digests
    kCapPush = 4,
};
inline constexpr uint8_t kCapAll = kCapPull | kCapResolve | kCapPush;

struct RegistryEndpoint {
    Url api;  // scheme, host, port and the API root path ("/v2" unless override_path)
    uint8_t capabilities = kCapAll;
    bool skip_verify = false;
    bool http_fallback = false;  // --insecure: an https endpoint may fall back to plain http
    bool mirror = false;         // not the upstream server: requests carry ?ns=<registry>
    std::vector<std::string> ca_files;
    HttpHeaders headers;  // sent with every request to this endpoint

    // api root + "/" + rest, e.g. url_for("library/debian/manifests/12")
    std::string url_for(std::string_view rest) const;
};

struct EndpointOptions {
    std::string hosts_dir = "/etc/containerd/certs.d";  // empty: no hosts.toml lookup
    bool insecure = false;  // skip TLS verification; allow plain http for non-local registries
    std::string ca_file;    // added to every endpoint's CA files
};

// Parses a hosts.toml for `registry` ("docker.io", "localhost:5000"). Relative CA paths are taken
// relative to `base_dir`. Returns the endpoints in the order to try: the [host] entries in file
// order, then the server (the upstream registry by default).
Result<std::vector<RegistryEndpoint>> parse_hosts_toml(std::string_view text, std::string_view registry,
                                                       std::string_view base_dir);

// The endpoint of `registry` when nothing is configured: https, or http for loopback hosts.
RegistryEndpoint default_endpoint(std::string_view registry);

// Looks up the hosts.toml for `registry` in opt.hosts_dir and applies --insecure / --ca-file.
Result<std::vector<RegistryEndpoint>> resolve_endpoints(std::string_view registry, const EndpointOptions& opt);

}  // namespace erostream
