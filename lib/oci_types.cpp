#include "oci_types.h"

#include <sys/utsname.h>

#include <array>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "sha256.h"

namespace erostream {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

bool is_manifest_media_type(std::string_view mt) {
    return mt == media_type::kOciManifest || mt == media_type::kDockerManifest;
}
bool is_index_media_type(std::string_view mt) {
    return mt == media_type::kOciIndex || mt == media_type::kDockerManifestList;
}
bool is_image_config_media_type(std::string_view mt) {
    return mt == media_type::kOciConfig || mt == media_type::kDockerConfig;
}

// ---------------------------------------------------------------------------------------------
// Platforms

namespace {

struct ArchAlias {
    std::string_view name, arch, variant;
};
// Names uname and distributions use for what OCI calls architecture[/variant].
constexpr std::array<ArchAlias, 9> kArchAliases{{
    {"x86_64", "amd64", ""},
    {"x86-64", "amd64", ""},
    {"aarch64", "arm64", ""},
    {"armhf", "arm", "v7"},
    {"armel", "arm", "v6"},
    {"armv7l", "arm", "v7"},
    {"armv6l", "arm", "v6"},
    {"i386", "386", ""},
    {"i686", "386", ""},
}};

std::string ascii_lower(std::string_view s) {
    std::string r(s);
    for (char& c : r)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return r;
}

// Architecture and variant in canonical form, with the implied default variant filled in, so
// that two spellings of one platform compare equal.
std::pair<std::string, std::string> canonical_arch(std::string_view arch_in,
                                                   std::string_view variant_in) {
    std::string arch = ascii_lower(arch_in), variant = ascii_lower(variant_in);
    for (const auto& a : kArchAliases) {
        if (arch == a.name) {
            arch = a.arch;
            if (variant.empty()) variant = a.variant;
            break;
        }
    }
    if (!variant.empty() && variant[0] != 'v' && (arch == "arm" || arch == "arm64" || arch == "amd64"))
        variant = "v" + variant;
    if (variant.empty()) {
        if (arch == "arm64") variant = "v8";
        else if (arch == "arm") variant = "v7";
        else if (arch == "amd64") variant = "v1";
    }
    return {arch, variant};
}

bool valid_platform_part(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok) return false;
    }
    return true;
}

}  // namespace

std::string Platform::str() const {
    std::string s = os + "/" + architecture;
    if (!variant.empty()) s += "/" + variant;
    return s;
}

Result<Platform> parse_platform(std::string_view s) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (;;) {
        size_t slash = s.find('/', start);
        parts.push_back(s.substr(start, slash == std::string_view::npos ? slash : slash - start));
        if (slash == std::string_view::npos) break;
        start = slash + 1;
    }
    if (parts.size() < 2 || parts.size() > 3)
        return failf("platform '{}': expected os/architecture[/variant]", s);
    for (auto p : parts)
        if (!valid_platform_part(p)) return failf("platform '{}': bad component '{}'", s, p);
    Platform p;
    p.os = ascii_lower(parts[0]);
    p.architecture = ascii_lower(parts[1]);
    if (parts.size() == 3) p.variant = ascii_lower(parts[2]);
    for (const auto& a : kArchAliases) {
        if (p.architecture == a.name) {
            p.architecture = a.arch;
            if (p.variant.empty()) p.variant = a.variant;
            break;
        }
    }
    return p;
}

Platform host_platform() {
    Platform p;
    p.os = "linux";
    struct utsname u {};
    if (::uname(&u) != 0) return p;
    p.architecture = ascii_lower(u.machine);
    for (const auto& a : kArchAliases) {
        if (p.architecture == a.name) {
            p.architecture = a.arch;
            p.variant = a.variant;
            break;
        }
    }
    return p;
}

bool platform_matches(const Platform& want, const Platform& have) {
    if (ascii_lower(want.os) != ascii_lower(have.os)) return false;
    auto [want_arch, want_variant] = canonical_arch(want.architecture, want.variant);
    auto [have_arch, have_variant] = canonical_arch(have.architecture, have.variant);
    if (want_arch != have_arch) return false;
    if (!want.variant.empty() && want_variant != have_variant) return false;
    if (!want.os_version.empty() && want.os_version != have.os_version) return false;
    return true;
}

std::optional<Platform> platform_of_config(std::string_view config_json) {
    json j = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return std::nullopt;
    auto str = [&](const char* key) -> std::string {
        auto it = j.find(key);
        return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    Platform p{str("os"), str("architecture"), str("variant"), str("os.version")};
    if (p.os.empty() || p.architecture.empty()) return std::nullopt;
    return p;
}

// ---------------------------------------------------------------------------------------------
// Parsing: every accessor takes the JSON path of the value so that errors point at it.

namespace {

Result<json> parse_json(std::string_view text) {
    try {
        return json::parse(text);
    } catch (const json::exception& e) {
        return failf("invalid JSON: {}", e.what());
    }
}

std::string join_path(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

// Missing or null: nullopt. Present with another type: error.
Result<std::optional<std::string>> opt_string(const json& o, std::string_view key,
                                              std::string_view path) {
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return std::nullopt;
    if (!it->is_string()) return failf("{}: not a string", join_path(path, key));
    return it->get<std::string>();
}

Result<std::string> req_string(const json& o, std::string_view key, std::string_view path) {
    auto s = EROS_TRY(opt_string(o, key, path));
    if (!s) return failf("{}: missing", join_path(path, key));
    return std::move(*s);
}

Result<int64_t> req_int(const json& o, std::string_view key, std::string_view path) {
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return failf("{}: missing", join_path(path, key));
    if (it->is_number_unsigned()) {
        uint64_t v = it->get<uint64_t>();
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            return failf("{}: {} is too large", join_path(path, key), v);
        return static_cast<int64_t>(v);
    }
    if (it->is_number_integer()) return it->get<int64_t>();
    return failf("{}: not an integer", join_path(path, key));
}

Result<std::map<std::string, std::string>> opt_string_map(const json& o, std::string_view key,
                                                          std::string_view path) {
    std::map<std::string, std::string> m;
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return m;
    if (!it->is_object()) return failf("{}: not an object", join_path(path, key));
    for (auto e = it->begin(); e != it->end(); ++e) {
        if (!e.value().is_string())
            return failf("{}.{}: not a string", join_path(path, key), e.key());
        m.emplace(e.key(), e.value().get<std::string>());
    }
    return m;
}

Result<std::vector<std::string>> opt_string_list(const json& o, std::string_view key,
                                                 std::string_view path) {
    std::vector<std::string> v;
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return v;
    if (!it->is_array()) return failf("{}: not an array", join_path(path, key));
    for (size_t i = 0; i < it->size(); ++i) {
        const auto& e = (*it)[i];
        if (!e.is_string()) return failf("{}[{}]: not a string", join_path(path, key), i);
        v.push_back(e.get<std::string>());
    }
    return v;
}

std::string where(std::string_view path) { return path.empty() ? "document" : std::string(path); }

Result<Platform> parse_platform_obj(const json& o, std::string_view path) {
    if (!o.is_object()) return failf("{}: not an object", where(path));
    Platform p;
    p.os = EROS_TRY(req_string(o, "os", path));
    p.architecture = EROS_TRY(req_string(o, "architecture", path));
    p.variant = EROS_TRY(opt_string(o, "variant", path)).value_or("");
    p.os_version = EROS_TRY(opt_string(o, "os.version", path)).value_or("");
    return p;
}

Result<Descriptor> parse_descriptor_obj(const json& o, std::string_view path) {
    if (!o.is_object()) return failf("{}: not an object", where(path));
    Descriptor d;
    d.media_type = EROS_TRY(req_string(o, "mediaType", path));
    d.digest = EROS_TRY(req_string(o, "digest", path));
    if (auto ok = parse_digest(d.digest); !ok)
        return failf("{}: {}", join_path(path, "digest"), ok.error().message);
    d.size = EROS_TRY(req_int(o, "size", path));
    if (d.size < 0) return failf("{}: {} is negative", join_path(path, "size"), d.size);
    d.annotations = EROS_TRY(opt_string_map(o, "annotations", path));
    d.urls = EROS_TRY(opt_string_list(o, "urls", path));
    d.artifact_type = EROS_TRY(opt_string(o, "artifactType", path)).value_or("");
    if (auto it = o.find("platform"); it != o.end() && !it->is_null())
        d.platform = EROS_TRY(parse_platform_obj(*it, join_path(path, "platform")));
    return d;
}

Result<std::optional<Descriptor>> opt_descriptor(const json& o, std::string_view key,
                                                 std::string_view path) {
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return std::nullopt;
    return EROS_TRY(parse_descriptor_obj(*it, join_path(path, key)));
}

Result<std::vector<Descriptor>> req_descriptor_list(const json& o, std::string_view key,
                                                   std::string_view path) {
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return failf("{}: missing", join_path(path, key));
    if (!it->is_array()) return failf("{}: not an array", join_path(path, key));
    std::vector<Descriptor> v;
    v.reserve(it->size());
    for (size_t i = 0; i < it->size(); ++i)
        v.push_back(EROS_TRY(
            parse_descriptor_obj((*it)[i], fmt::format("{}[{}]", join_path(path, key), i))));
    return v;
}

Result<int> req_schema_version(const json& o, std::string_view path) {
    int64_t v = EROS_TRY(req_int(o, "schemaVersion", path));
    if (v != 2) return failf("{}: {} is not supported (only 2)", join_path(path, "schemaVersion"), v);
    return 2;
}

Result<Manifest> parse_manifest_impl(std::string_view text) {
    static constexpr std::string_view kWhere = "";
    json j = EROS_TRY(parse_json(text));
    if (!j.is_object()) return fail("not a JSON object");
    Manifest m;
    m.schema_version = EROS_TRY(req_schema_version(j, kWhere));
    m.media_type = EROS_TRY(opt_string(j, "mediaType", kWhere)).value_or("");
    if (!m.media_type.empty() && !is_manifest_media_type(m.media_type))
        return failf("mediaType: '{}' is not an image manifest", m.media_type);
    m.artifact_type = EROS_TRY(opt_string(j, "artifactType", kWhere)).value_or("");
    auto cfg = j.find("config");
    if (cfg == j.end() || cfg->is_null()) return fail("config: missing");
    m.config = EROS_TRY(parse_descriptor_obj(*cfg, "config"));
    m.layers = EROS_TRY(req_descriptor_list(j, "layers", kWhere));
    m.subject = EROS_TRY(opt_descriptor(j, "subject", kWhere));
    m.annotations = EROS_TRY(opt_string_map(j, "annotations", kWhere));
    return m;
}

Result<Index> parse_index_impl(std::string_view text) {
    static constexpr std::string_view kWhere = "";
    json j = EROS_TRY(parse_json(text));
    if (!j.is_object()) return fail("not a JSON object");
    Index x;
    x.schema_version = EROS_TRY(req_schema_version(j, kWhere));
    x.media_type = EROS_TRY(opt_string(j, "mediaType", kWhere)).value_or("");
    if (!x.media_type.empty() && !is_index_media_type(x.media_type))
        return failf("mediaType: '{}' is not an image index", x.media_type);
    x.artifact_type = EROS_TRY(opt_string(j, "artifactType", kWhere)).value_or("");
    x.manifests = EROS_TRY(req_descriptor_list(j, "manifests", kWhere));
    x.subject = EROS_TRY(opt_descriptor(j, "subject", kWhere));
    x.annotations = EROS_TRY(opt_string_map(j, "annotations", kWhere));
    return x;
}

// Runs a parser, turning anything nlohmann throws into an Error, and names the document.
template <class F>
auto guarded(std::string_view what, F&& f) -> decltype(f()) {
    try {
        auto r = f();
        if (!r) r.error().prefix(what);
        return r;
    } catch (const std::exception& e) {  // nlohmann throws only on misuse; keep it inside
        return failf("{}: {}", what, e.what());
    }
}

}  // namespace

Result<Manifest> parse_manifest(std::string_view text) {
    return guarded("manifest", [&] { return parse_manifest_impl(text); });
}

Result<Index> parse_index(std::string_view text) {
    return guarded("index", [&] { return parse_index_impl(text); });
}

Result<Descriptor> parse_descriptor(std::string_view text) {
    return guarded("descriptor", [&]() -> Result<Descriptor> {
        json j = EROS_TRY(parse_json(text));
        return parse_descriptor_obj(j, "");
    });
}

// ---------------------------------------------------------------------------------------------
// Serialization

namespace {

ojson platform_json(const Platform& p) {
    ojson o = ojson::object();
    o["architecture"] = p.architecture;
    o["os"] = p.os;
    if (!p.os_version.empty()) o["os.version"] = p.os_version;
    if (!p.variant.empty()) o["variant"] = p.variant;
    return o;
}

ojson map_json(const std::map<std::string, std::string>& m) {
    ojson o = ojson::object();
    for (const auto& [k, v] : m) o[k] = v;
    return o;
}

ojson descriptor_json(const Descriptor& d) {
    ojson o = ojson::object();
    o["mediaType"] = d.media_type;
    o["digest"] = d.digest;
    o["size"] = d.size;
    if (!d.urls.empty()) o["urls"] = d.urls;
    if (!d.annotations.empty()) o["annotations"] = map_json(d.annotations);
    if (d.platform) o["platform"] = platform_json(*d.platform);
    if (!d.artifact_type.empty()) o["artifactType"] = d.artifact_type;
    return o;
}

std::string dump(const ojson& o) {
    return o.dump(-1, ' ', /*ensure_ascii=*/false, ojson::error_handler_t::replace);
}

}  // namespace

std::string serialize_descriptor(const Descriptor& d) { return dump(descriptor_json(d)); }

std::string serialize_manifest(const Manifest& m) {
    ojson o = ojson::object();
    o["schemaVersion"] = m.schema_version;
    if (!m.media_type.empty()) o["mediaType"] = m.media_type;
    if (!m.artifact_type.empty()) o["artifactType"] = m.artifact_type;
    o["config"] = descriptor_json(m.config);
    o["layers"] = ojson::array();
    for (const auto& l : m.layers) o["layers"].push_back(descriptor_json(l));
    if (m.subject) o["subject"] = descriptor_json(*m.subject);
    if (!m.annotations.empty()) o["annotations"] = map_json(m.annotations);
    return dump(o);
}

std::string serialize_index(const Index& x) {
    ojson o = ojson::object();
    o["schemaVersion"] = x.schema_version;
    if (!x.media_type.empty()) o["mediaType"] = x.media_type;
    if (!x.artifact_type.empty()) o["artifactType"] = x.artifact_type;
    o["manifests"] = ojson::array();
    for (const auto& d : x.manifests) o["manifests"].push_back(descriptor_json(d));
    if (x.subject) o["subject"] = descriptor_json(*x.subject);
    if (!x.annotations.empty()) o["annotations"] = map_json(x.annotations);
    return dump(o);
}

std::string media_type_of_json(std::string_view text) {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return {};
    if (auto it = j.find("mediaType"); it != j.end() && it->is_string()) return it->get<std::string>();
    if (j.contains("manifests")) return std::string(media_type::kOciIndex);
    if (j.contains("config") || j.contains("layers")) return std::string(media_type::kOciManifest);
    return {};
}

Result<LayerKind> layer_kind(std::string_view mt) {
    using namespace media_type;
    if (mt == kOciLayer || mt == kOciLayerNondist || mt == kDockerLayer || mt == kDockerLayerForeign)
        return LayerKind::Tar;
    if (mt == kOciLayerGzip || mt == kOciLayerNondistGzip || mt == kDockerLayerGzip ||
        mt == kDockerLayerForeignGzip)
        return LayerKind::TarGzip;
    if (mt == kOciLayerZstd || mt == kOciLayerNondistZstd || mt == kDockerLayerZstd)
        return LayerKind::TarZstd;
    return failf("unknown layer media type '{}'", mt);
}

}  // namespace erostream
