// erostreamd's settings: defaults, the TOML config file (docs/daemon.md lists every key), then
// command-line flags, each overriding what came before. Parsing is pure; unknown keys are errors
// so that a typo does not silently leave a default in place.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

namespace erostream {

struct DaemonConfig {
    std::string cache_dir = "/var/lib/erostream";
    std::string socket = "/run/erostream/erostreamd.sock";
    std::string holder_socket;  // empty: erostreamd-holder.sock beside `socket`
    std::string frontend = "auto";
    std::string log_level = "info";
    unsigned workers = 2;     // decompression + sha256
    unsigned io_workers = 4;  // blocking reads of local layouts, mount preparation

    // [fetch]
    uint64_t max_range_bytes = 4u << 20;
    unsigned max_connections_per_host = 8;
    unsigned retry_max = 5;  // EROSTREAM_RETRY_MAX overrides
    unsigned retry_base_ms = 200;  // EROSTREAM_RETRY_BASE_MS overrides
    bool readahead = true;   // sequential readahead on on-demand misses

    // [prefetch]
    std::string prefetch = "all";  // for mount requests that do not say
    uint64_t prefetch_bandwidth = 64u << 20;  // bytes/s; 0: no cap

    // [holder]
    unsigned holder_deny_after_ms = 30000;

    // [registry]
    std::string docker_config;  // empty: the usual auth files (credentials.h default_auth_files)
    std::string hosts_dir = "/etc/containerd/certs.d";
    std::vector<std::string> insecure_registries;  // TLS not verified, plain http allowed
    std::string http_proxy, https_proxy, no_proxy;  // empty: from the environment

    std::string holder_socket_path() const;
};

// Applies a TOML document onto `cfg`. `where` names the file in errors.
Result<void> apply_config_toml(DaemonConfig& cfg, std::string_view text, std::string_view where);

// "64M", "4MiB", "1048576", "512k" -> bytes (powers of 1024).
Result<uint64_t> parse_byte_size(std::string_view s);

// Overrides from EROSTREAM_RETRY_MAX / EROSTREAM_RETRY_BASE_MS (tests shorten retries with them).
void apply_retry_env(DaemonConfig& cfg);

// Checks values that cannot work (relative paths, unknown front end...).
Result<void> validate_config(const DaemonConfig& cfg);

}  // namespace erostream
