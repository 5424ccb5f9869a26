#include "artifact_source.h"

#include <sys/stat.h>

#include "daemon_registry.h"
#include "file_util.h"
#include "image_source.h"
#include "oci_layout.h"
#include "registry/reference.h"
#include "registry/registry_store.h"
#include "sha256.h"

namespace erostream {

std::string digest_hex(const std::string& digest) {
    auto colon = digest.find(':');
    return colon == std::string::npos ? digest : digest.substr(colon + 1);
}

namespace {
Result<void> check_digest(std::string_view bytes, const Descriptor& d) {
    if (d.size >= 0 && bytes.size() != static_cast<uint64_t>(d.size))
        return failf("{}: {} bytes, the descriptor says {}", d.digest, bytes.size(), d.size);
    if (digest_string(sha256(bytes)) != d.digest) return failf("{}: digest mismatch", d.digest);
    return {};
}
}  // namespace

std::string CachingStore::meta_path(const Descriptor& d) const { return cache_dir_ + "/meta/" + digest_hex(d.digest) + ".erofs"; }

Result<std::string> CachingStore::cached(const std::string& path, const Descriptor& d) {
    auto bytes = read_small_file(path, size_t{1} << 32);
    if (!bytes) return std::unexpected(bytes.error());
    auto ok = check_digest(*bytes, d);
    if (!ok) return std::unexpected(ok.error().prefix("cached copy " + path));
    return bytes;
}

Result<std::string> CachingStore::read_manifest(const Descriptor& d) {
    std::string path = cache_dir_ + "/manifests/" + digest_hex(d.digest) + ".json";
    auto c = cached(path, d);
    if (c) return c;
    if (!inner_) return std::unexpected(c.error());
    std::string bytes = EROS_TRY(inner_->read_manifest(d));
    EROS_TRYV(check_digest(bytes, d));
    EROS_TRYV(make_dirs(cache_dir_ + "/manifests"));
    EROS_TRYV(replace_file(path, bytes, 0644));
    return bytes;
}

Result<std::string> CachingStore::read_blob(const Descriptor& d) {
    if (d.media_type != media_type::kErostreamMeta) {
        if (!inner_) return failf("{} is not cached and there is no store to read it from", d.digest);
        return inner_->read_blob(d);
    }
    std::string path = meta_path(d);
    auto c = cached(path, d);
    if (c) return c;
    if (!inner_) return std::unexpected(c.error());
    std::string bytes = EROS_TRY(inner_->read_blob(d));
    EROS_TRYV(check_digest(bytes, d));
    EROS_TRYV(make_dirs(cache_dir_ + "/meta"));
    // Readable by the kernel's mount only through us; 0644 is what a root-owned image file needs.
    EROS_TRYV(replace_file(path, bytes, 0644));
    return bytes;
}

Result<std::string> CachingStore::read_range(const Descriptor& d, uint64_t offset, uint64_t len) {
    if (!inner_) return failf("{}: no store to fetch from", d.digest);
    return inner_->read_range(d, offset, len);
}

namespace {

// In a layout, the erostream artifact whose subject is `image` (a manifest digest).
Result<Descriptor> find_artifact_in_layout(const OciLayout& layout, const Descriptor& image) {
    Index idx = EROS_TRY(layout.read_index());
    for (const Descriptor& d : idx.manifests) {
        if (!is_manifest_media_type(d.media_type)) continue;
        if (!d.artifact_type.empty() && d.artifact_type != media_type::kErostreamArtifact) continue;
        auto bytes = layout.read_blob(d, 4u << 20);
        if (!bytes) continue;
        auto m = parse_manifest(*bytes);
        if (!m || m->artifact_type != media_type::kErostreamArtifact || !m->subject) continue;
        if (m->subject->digest == image.digest) return d;
    }
    return fail(fmt::format("no erostream artifact for image {} in {}", image.digest, layout.path()), ENOENT);
}

Result<ResolvedArtifact> resolve_oci(const std::string& ref, const std::string& cache_dir) {
    OciRef r = EROS_TRY(parse_oci_ref(std::string_view(ref).substr(4)));
    auto layout = OciLayout::open(r.dir);
    if (!layout) return std::unexpected(Error{ENOENT, layout.error().what()});
    Descriptor d = EROS_TRY(layout->resolve(r.tag, r.digest));
    // An image (index or manifest) rather than an artifact: find its artifact by subject.
    std::string bytes = EROS_TRY(layout->read_blob(d, 4u << 20));
    std::string mt = d.media_type.empty() ? media_type_of_json(bytes) : d.media_type;
    if (is_index_media_type(mt)) {
        Index idx = EROS_TRY(parse_index(bytes));
        Platform host = host_platform();
        std::optional<Descriptor> pick;
        for (const auto& m : idx.manifests)
            if (m.platform && platform_matches(host, *m.platform)) {
                pick = m;
                break;
            }
        if (!pick) return fail(fmt::format("{}: no manifest for {} in the index", ref, host.str()), ENOENT);
        d = EROS_TRY(find_artifact_in_layout(*layout, *pick));
    } else {
        Manifest m = EROS_TRY(parse_manifest(bytes));
        if (m.artifact_type != media_type::kErostreamArtifact) d = EROS_TRY(find_artifact_in_layout(*layout, d));
    }
    ResolvedArtifact out;
    out.source = "oci:" + r.dir;
    out.store = std::make_shared<CachingStore>(std::make_shared<LayoutStore>(std::move(*layout)), cache_dir);
    out.artifact = d;
    return out;
}

Result<ResolvedArtifact> resolve_docker(const std::string& ref, const std::string& cache_dir, DaemonRegistry* registry) {
    if (!registry) return fail(fmt::format("{}: this daemon has no registry access", ref), ENOTSUP);
    auto r = parse_image_reference(ref);
    if (!r) {
        const std::string& m = r.error().message;
        return fail(m.find(ref) == std::string::npos ? ref + ": " + m : m, EINVAL);
    }
    auto client = registry->client(r->registry);
    if (!client) return std::unexpected(client.error().prefix(ref));
    auto d = resolve_artifact(**client, *r, std::nullopt);
    if (!d) {
        Error e = d.error();
        if (e.err == 0) e.err = EIO;  // the registry answered something we cannot use
        return std::unexpected(e);
    }
    ResolvedArtifact out;
    out.source = "docker://" + r->registry + "/" + r->repository;
    out.store = std::make_shared<CachingStore>(std::make_shared<RegistryStore>(*client, r->repository), cache_dir);
    out.artifact = *d;
    return out;
}

}  // namespace

Result<ResolvedArtifact> resolve_artifact_ref(const std::string& ref, const std::string& cache_dir,
                                              DaemonRegistry* registry) {
    if (ref.starts_with("oci:")) {
        auto r = resolve_oci(ref, cache_dir);
        if (!r) {
            Error e = r.error();
            if (e.err == 0) e.err = EINVAL;
            return std::unexpected(e.prefix(ref));
        }
        return r;
    }
    if (ref.starts_with("docker://")) return resolve_docker(ref, cache_dir, registry);
    return fail(fmt::format("reference '{}': expected oci:DIR:TAG, oci:DIR@sha256:HEX or docker://REGISTRY/REPO:TAG",
                            ref),
                EINVAL);
}

Result<std::shared_ptr<CachingStore>> reopen_source(const std::string& source, const std::string& cache_dir,
                                                    DaemonRegistry* registry) {
    if (source.starts_with("oci:")) {
        auto layout = OciLayout::open(source.substr(4));
        // The layout may be gone; the mount still works for everything cached.
        if (!layout) return std::make_shared<CachingStore>(nullptr, cache_dir);
        return std::make_shared<CachingStore>(std::make_shared<LayoutStore>(std::move(*layout)), cache_dir);
    }
    if (source.starts_with("docker://") && registry) {
        auto [reg, repo] = EROS_TRY(split_registry_source(source));
        auto client = registry->client(reg);  // hosts.toml and credentials: no network
        if (!client) return std::unexpected(client.error().prefix(source));
        return std::make_shared<CachingStore>(std::make_shared<RegistryStore>(*client, repo), cache_dir);
    }
    return failf("source '{}' cannot be reopened by this build", source);
}

}  // namespace erostream
