#include "daemon_config.h"

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <set>
#include <toml++/toml.h>

namespace erostream {

namespace {

struct Reader {
    std::string_view where;
    std::optional<Error> error;

    void set_error(std::string msg) {
        if (!error) error = Error{0, fmt::format("{}: {}", where, msg)};
    }

    void check_keys(const toml::table& t, std::string_view table, const std::set<std::string_view>& known) {
        for (const auto& [k, v] : t) {
            if (!known.count(k.str())) {
                std::string name = table.empty() ? std::string(k.str()) : fmt::format("{}.{}", table, k.str());
                set_error(fmt::format("unknown key '{}' (line {})", name, k.source().begin.line));
            }
        }
    }

    void str(const toml::table& t, std::string_view key, std::string& out) {
        const toml::node* n = t.get(key);
        if (!n) return;
        if (auto v = n->value<std::string>()) out = *v;
        else set_error(fmt::format("'{}' must be a string (line {})", key, n->source().begin.line));
    }

    template <class T>
    void number(const toml::table& t, std::string_view key, T& out, uint64_t max) {
        const toml::node* n = t.get(key);
        if (!n) return;
        auto v = n->value<int64_t>();
        if (!v || *v < 0 || static_cast<uint64_t>(*v) > max) {
            set_error(fmt::format("'{}' must be a whole number from 0 to {} (line {})", key, max, n->source().begin.line));
            return;
        }
        out = static_cast<T>(*v);
    }

    void boolean(const toml::table& t, std::string_view key, bool& out) {
        const toml::node* n = t.get(key);
        if (!n) return;
        if (auto v = n->value<bool>()) out = *v;
        else set_error(fmt::format("'{}' must be true or false (line {})", key, n->source().begin.line));
    }

    void size(const toml::table& t, std::string_view key, uint64_t& out) {
        const toml::node* n = t.get(key);
        if (!n) return;
        if (auto v = n->value<int64_t>()) {
            if (*v < 0) set_error(fmt::format("'{}' must not be negative", key));
            else out = static_cast<uint64_t>(*v);
            return;
        }
        if (auto s = n->value<std::string>()) {
            auto b = parse_byte_size(*s);
            if (b) out = *b;
            else set_error(fmt::format("'{}': {}", key, b.error().message));
            return;
        }
        set_error(fmt::format("'{}' must be a byte count or a size like \"4M\" (line {})", key, n->source().begin.line));
    }

    void strings(const toml::table& t, std::string_view key, std::vector<std::string>& out) {
        const toml::node* n = t.get(key);
        if (!n) return;
        const toml::array* a = n->as_array();
        if (!a) {
            set_error(fmt::format("'{}' must be an array of strings", key));
            return;
        }
        out.clear();
        for (const auto& e : *a) {
            if (auto s = e.value<std::string>()) out.push_back(*s);
            else set_error(fmt::format("'{}' must be an array of strings", key));
        }
    }

    const toml::table* sub(const toml::table& t, std::string_view key) {
        const toml::node* n = t.get(key);
        if (!n) return nullptr;
        if (!n->is_table()) {
            set_error(fmt::format("'{}' must be a table", key));
            return nullptr;
        }
        return n->as_table();
    }
};

std::optional<uint64_t> env_number(const char* name) {
    const char* v = std::getenv(name);
    if (!v || !*v) return std::nullopt;
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(v, v + std::strlen(v), n);
    if (ec != std::errc() || *p != '\0') return std::nullopt;
    return n;
}

}  // namespace

std::string DaemonConfig::holder_socket_path() const {
    if (!holder_socket.empty()) return holder_socket;
    size_t slash = socket.find_last_of('/');
    std::string dir = slash == std::string::npos ? "." : socket.substr(0, slash);
    return dir + "/erostreamd-holder.sock";
}

Result<uint64_t> parse_byte_size(std::string_view s) {
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p == s.data()) return failf("size '{}' does not start with a number", s);
    std::string_view unit(p, static_cast<size_t>(s.data() + s.size() - p));
    uint64_t mul = 1;
    if (unit.empty() || unit == "B") mul = 1;
    else if (unit == "k" || unit == "K" || unit == "KiB") mul = 1ull << 10;
    else if (unit == "M" || unit == "MiB") mul = 1ull << 20;
    else if (unit == "G" || unit == "GiB") mul = 1ull << 30;
    else return failf("size '{}' has an unknown unit (k, M, G: powers of 1024)", s);
    if (v > UINT64_MAX / mul) return failf("size '{}' is too large", s);
    return v * mul;
}

Result<void> apply_config_toml(DaemonConfig& cfg, std::string_view text, std::string_view where) {
    toml::table root;
    try {
        root = toml::parse(text, where);
    } catch (const toml::parse_error& e) {
        return failf("{}: line {}: {}", where, e.source().begin.line, e.description());
    }
    Reader r{where, std::nullopt};
    r.check_keys(root, "", {"cache_dir", "socket", "holder_socket", "frontend", "log_level", "workers", "io_workers",
                            "fetch", "prefetch", "holder", "registry"});
    r.str(root, "cache_dir", cfg.cache_dir);
    r.str(root, "socket", cfg.socket);
    r.str(root, "holder_socket", cfg.holder_socket);
    r.str(root, "frontend", cfg.frontend);
    r.str(root, "log_level", cfg.log_level);
    r.number(root, "workers", cfg.workers, 256);
    r.number(root, "io_workers", cfg.io_workers, 256);
    if (auto* f = r.sub(root, "fetch")) {
        r.check_keys(*f, "fetch", {"max_range_bytes", "max_connections_per_host", "retry_max", "retry_base_ms",
                                        "readahead"});
        r.size(*f, "max_range_bytes", cfg.max_range_bytes);
        r.number(*f, "max_connections_per_host", cfg.max_connections_per_host, 1024);
        r.number(*f, "retry_max", cfg.retry_max, 100);
        r.number(*f, "retry_base_ms", cfg.retry_base_ms, 600000);
        r.boolean(*f, "readahead", cfg.readahead);
    }
    if (auto* p = r.sub(root, "prefetch")) {
        r.check_keys(*p, "prefetch", {"default", "bandwidth"});
        r.str(*p, "default", cfg.prefetch);
        r.size(*p, "bandwidth", cfg.prefetch_bandwidth);
    }
    if (auto* h = r.sub(root, "holder")) {
        r.check_keys(*h, "holder", {"deny_after_ms"});
        r.number(*h, "deny_after_ms", cfg.holder_deny_after_ms, 24u * 3600 * 1000);
    }
    if (auto* g = r.sub(root, "registry")) {
        r.check_keys(*g, "registry", {"docker_config", "hosts_dir", "insecure", "http_proxy", "https_proxy", "no_proxy"});
        r.str(*g, "docker_config", cfg.docker_config);
        r.str(*g, "hosts_dir", cfg.hosts_dir);
        r.strings(*g, "insecure", cfg.insecure_registries);
        r.str(*g, "http_proxy", cfg.http_proxy);
        r.str(*g, "https_proxy", cfg.https_proxy);
        r.str(*g, "no_proxy", cfg.no_proxy);
    }
    if (r.error) return std::unexpected(*r.error);
    return {};
}

void apply_retry_env(DaemonConfig& cfg) {
    if (auto n = env_number("EROSTREAM_RETRY_MAX")) cfg.retry_max = static_cast<unsigned>(std::min<uint64_t>(*n, 100));
    if (auto n = env_number("EROSTREAM_RETRY_BASE_MS"))
        cfg.retry_base_ms = static_cast<unsigned>(std::min<uint64_t>(*n, 600000));
}

Result<void> validate_config(const DaemonConfig& cfg) {
    auto absolute = [](const std::string& p) { return !p.empty() && p.front() == '/'; };
    if (!absolute(cfg.cache_dir)) return failf("cache_dir '{}' must be an absolute path", cfg.cache_dir);
    if (cfg.cache_dir.find(',') != std::string::npos)
        return failf("cache_dir '{}' must not contain ',' (it goes into mount options)", cfg.cache_dir);
    if (!absolute(cfg.socket)) return failf("socket '{}' must be an absolute path", cfg.socket);
    if (!cfg.holder_socket.empty() && !absolute(cfg.holder_socket))
        return failf("holder_socket '{}' must be an absolute path", cfg.holder_socket);
    if (cfg.frontend != "auto" && cfg.frontend != "fanotify" && cfg.frontend != "fscache")
        return failf("frontend '{}': expected auto, fanotify or fscache", cfg.frontend);
    if (cfg.log_level != "debug" && cfg.log_level != "info" && cfg.log_level != "warn")
        return failf("log_level '{}': expected debug, info or warn", cfg.log_level);
    if (cfg.prefetch != "all" && cfg.prefetch != "none")
        return failf("prefetch default '{}': expected all or none", cfg.prefetch);
    if (cfg.workers == 0 || cfg.io_workers == 0) return fail("workers and io_workers must be at least 1");
    if (cfg.max_range_bytes < 4096) return fail("fetch.max_range_bytes must be at least 4096");
    if (cfg.max_connections_per_host == 0) return fail("fetch.max_connections_per_host must be at least 1");
    return {};
}

}  // namespace erostream
