#include "hosts_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "reference.h"

namespace erostream {

namespace {

std::string api_host_of(std::string_view registry) {
    if (registry == kDockerHubRegistry) return std::string(kDockerHubApiHost);
    return std::string(registry);
}

Result<Url> endpoint_url(std::string_view text, bool override_path) {
    std::string s(text);
    if (s.find("://") == std::string::npos) {
        std::string_view host = std::string_view(s).substr(0, s.find('/'));
        s = (is_loopback_host(host) ? "http://" : "https://") + s;
    }
    Url u = EROS_TRY(parse_url(s));
    if (!u.query.empty()) return fail("a host URL must not have a query");
    while (u.path.size() > 1 && u.path.back() == '/') u.path.pop_back();
    if (u.path == "/") u.path.clear();
    if (!override_path && !u.path.ends_with("/v2")) u.path += "/v2";
    return u;
}

Result<std::vector<std::string>> string_list(const toml::node& n, std::string_view what) {
    std::vector<std::string> out;
    if (auto s = n.value<std::string>()) {
        out.push_back(*s);
        return out;
    }
    if (auto* arr = n.as_array()) {
        for (const auto& e : *arr) {
            auto s = e.value<std::string>();
            if (!s) return failf("{} must be a string or an array of strings", what);
            out.push_back(*s);
        }
        return out;
    }
    return failf("{} must be a string or an array of strings", what);
}

// The settings shared by the top level (the server) and [host."..."] tables.
Result<void> apply_settings(const toml::table& t, RegistryEndpoint& ep, std::string_view base_dir,
                            std::string_view where) {
    if (auto* caps = t.get("capabilities")) {
        auto list = string_list(*caps, fmt::format("{}: capabilities", where));
        if (!list) return std::unexpected(list.error());
        ep.capabilities = 0;
        for (const auto& c : *list) {
            if (c == "pull") ep.capabilities |= kCapPull;
            else if (c == "resolve") ep.capabilities |= kCapResolve;
            else if (c == "push") ep.capabilities |= kCapPush;
            else return failf("{}: unknown capability '{}' (pull, resolve, push)", where, c);
        }
    }
    if (auto* sv = t.get("skip_verify")) {
        auto b = sv->value<bool>();
        if (!b) return failf("{}: skip_verify must be true or false", where);
        ep.skip_verify = *b;
    }
    if (auto* ca = t.get("ca")) {
        auto list = string_list(*ca, fmt::format("{}: ca", where));
        if (!list) return std::unexpected(list.error());
        for (auto& p : *list) {
            std::filesystem::path path(p);
            if (path.is_relative() && !base_dir.empty()) path = std::filesystem::path(base_dir) / path;
            ep.ca_files.push_back(path.string());
        }
    }
    if (auto* hdr = t.get("header")) {
        auto* ht = hdr->as_table();
        if (!ht) return failf("{}: header must be a table", where);
        for (const auto& [k, v] : *ht) {
            // The values may be tokens: errors name the header, never its value.
            auto list = string_list(v, fmt::format("{}: header '{}'", where, k.str()));
            if (!list) return std::unexpected(list.error());
            for (auto& s : *list) ep.headers.add(std::string(k.str()), s);
        }
    }
    return {};
}

}  // namespace

std::string RegistryEndpoint::url_for(std::string_view rest) const {
    std::string s = api.origin() + api.path + "/" + std::string(rest);
    return s;
}

RegistryEndpoint default_endpoint(std::string_view registry) {
    RegistryEndpoint ep;
    std::string host = api_host_of(registry);
    ep.api.scheme = is_loopback_host(host) ? "http" : "https";
    auto u = parse_url(ep.api.scheme + "://" + host);
    if (u) ep.api = *u;
    ep.api.path = "/v2";
    ep.api.query.clear();
    return ep;
}

Result<std::vector<RegistryEndpoint>> parse_hosts_toml(std::string_view text, std::string_view registry,
                                                       std::string_view base_dir) {
    toml::table root;
    try {
        root = toml::parse(text);
    } catch (const toml::parse_error& e) {
        // The description may quote the file (headers can hold tokens): keep the position only.
        return failf("hosts.toml: syntax error at line {}, column {}", e.source().begin.line,
                     e.source().begin.column);
    }
    RegistryEndpoint server = default_endpoint(registry);
    bool server_override_path = false;
    if (auto* op = root.get("override_path")) {
        auto b = op->value<bool>();
        if (!b) return fail("hosts.toml: override_path must be true or false");
        server_override_path = *b;
    }
    if (auto* s = root.get("server")) {
        auto v = s->value<std::string>();
        if (!v) return fail("hosts.toml: server must be a string");
        auto u = endpoint_url(*v, server_override_path);
        if (!u) return std::unexpected(u.error().prefix("hosts.toml: server"));
        server.api = *u;
    }
    EROS_TRYV(apply_settings(root, server, base_dir, "hosts.toml"));

    struct Entry {
        toml::source_index line;
        RegistryEndpoint ep;
    };
    std::vector<Entry> hosts;
    if (auto* h = root.get("host")) {
        auto* ht = h->as_table();
        if (!ht) return fail("hosts.toml: 'host' must be a table of [host.\"URL\"] tables");
        for (const auto& [key, node] : *ht) {
            std::string where = fmt::format("hosts.toml: [host.\"{}\"]", redact_url(key.str()));
            auto* t = node.as_table();
            if (!t) return failf("{} is not a table", where);
            bool override_path = false;
            if (auto* op = t->get("override_path")) {
                auto b = op->value<bool>();
                if (!b) return failf("{}: override_path must be true or false", where);
                override_path = *b;
            }
            auto u = endpoint_url(key.str(), override_path);
            if (!u) return std::unexpected(u.error().prefix(where));
            RegistryEndpoint ep;
            ep.api = *u;
            ep.mirror = true;
            EROS_TRYV(apply_settings(*t, ep, base_dir, where));
            hosts.push_back({key.source().begin.line, std::move(ep)});
        }
    }
    // toml++ keeps keys sorted; containerd tries hosts in file order.
    std::stable_sort(hosts.begin(), hosts.end(), [](const Entry& a, const Entry& b) { return a.line < b.line; });
    std::vector<RegistryEndpoint> out;
    for (auto& e : hosts) out.push_back(std::move(e.ep));
    // A [host] entry naming the server itself is the server, not a mirror.
    std::erase_if(out, [&](const RegistryEndpoint& ep) {
        return same_origin(ep.api, server.api) && ep.api.path == server.api.path;
    });
    out.push_back(std::move(server));
    return out;
}

Result<std::vector<RegistryEndpoint>> resolve_endpoints(std::string_view registry, const EndpointOptions& opt) {
    std::vector<RegistryEndpoint> eps;
    bool from_file = false;
    if (!opt.hosts_dir.empty()) {
        namespace fs = std::filesystem;
        for (std::string dir_name : {std::string(registry), std::string("_default")}) {
            fs::path dir = fs::path(opt.hosts_dir) / dir_name;
            fs::path file = dir / "hosts.toml";
            std::error_code ec;
            if (fs::is_regular_file(file, ec)) {
                std::ifstream in(file);
                if (!in) return fail_errno("cannot read " + file.string());
                std::stringstream ss;
                ss << in.rdbuf();
                auto parsed = parse_hosts_toml(ss.str(), registry, dir.string());
                if (!parsed) return std::unexpected(parsed.error().prefix(file.string()));
                eps = std::move(*parsed);
                from_file = true;
                break;
            }
            if (dir_name != "_default" && fs::is_directory(dir, ec)) {
                // docker-style certs.d/<host>/*.crt without a hosts.toml
                eps.push_back(default_endpoint(registry));
                for (const auto& f : fs::directory_iterator(dir, ec))
                    if (f.path().extension() == ".crt") eps.back().ca_files.push_back(f.path().string());
                from_file = true;
                break;
            }
        }
    }
    if (!from_file) eps.push_back(default_endpoint(registry));
    for (auto& ep : eps) {
        if (!opt.ca_file.empty()) ep.ca_files.push_back(opt.ca_file);
        if (opt.insecure && !is_loopback_host(ep.api.authority())) {
            ep.skip_verify = true;
            if (ep.api.scheme == "https") ep.http_fallback = true;
        }
    }
    return eps;
}

}  // namespace erostream
