#include "registry_store.h"

#include <spdlog/spdlog.h>

#include <set>

#include "sha256.h"

namespace erostream {

namespace {

constexpr uint64_t kMaxManifestBytes = 8u << 20;

Result<void> check_size(const Descriptor& d, size_t got) {
    if (d.size >= 0 && got != static_cast<uint64_t>(d.size))
        return failf("{} has {} bytes, its descriptor says {}", d.digest, got, d.size);
    return {};
}

const std::string kCreated = "org.opencontainers.image.created";

}  // namespace

Result<std::string> RegistryStore::read_manifest(const Descriptor& d) {
    auto m = EROS_TRY(client_->get_manifest(repo_, d.digest));
    EROS_TRYV(check_size(d, m.bytes.size()));
    return std::move(m.bytes);
}

Result<std::string> RegistryStore::read_blob(const Descriptor& d) {
    uint64_t max = d.size >= 0 ? static_cast<uint64_t>(d.size) : (uint64_t{1} << 36);
    auto b = EROS_TRY(client_->fetch_blob(repo_, d.digest, max));
    EROS_TRYV(check_size(d, b.size()));
    return b;
}

Result<std::string> RegistryStore::read_range(const Descriptor& d, uint64_t offset, uint64_t len) {
    return client_->read_range(repo_, d.digest, offset, len);
}

Result<std::vector<ReferrerDescriptor>> discover_artifacts(RegistryClient& client, const ImageReference& ref,
                                                           const std::optional<Platform>& platform) {
    auto top = EROS_TRY(client.get_manifest(ref.repository, ref.reference()));
    std::vector<std::string> subjects = {top.digest};
    if (is_index_media_type(top.media_type)) {
        auto idx = parse_index(top.bytes);
        if (!idx) return std::unexpected(idx.error().prefix("docker://" + ref.str()));
        for (const auto& m : idx->manifests) {
            if (!is_manifest_media_type(m.media_type)) continue;
            if (platform && (!m.platform || !platform_matches(*platform, *m.platform))) continue;
            subjects.push_back(m.digest);
        }
    }
    std::vector<ReferrerDescriptor> out;
    std::set<std::string> seen;
    for (const auto& s : subjects) {
        auto refs = EROS_TRY(client.referrers(ref.repository, s, media_type::kErostreamArtifact));
        for (auto& d : refs.descriptors)
            if (seen.insert(d.digest).second) out.push_back(std::move(d));
    }
    return out;
}

Result<Descriptor> resolve_artifact(RegistryClient& client, const ImageReference& ref,
                                    const std::optional<Platform>& platform_opt) {
    const std::string where = "docker://" + ref.str();
    auto top = EROS_TRY(client.get_manifest(ref.repository, ref.reference()));
    Descriptor d;
    d.media_type = top.media_type;
    d.digest = top.digest;
    d.size = static_cast<int64_t>(top.bytes.size());
    std::string subject = top.digest;
    if (is_manifest_media_type(top.media_type)) {
        auto m = parse_manifest(top.bytes);
        if (!m) return std::unexpected(m.error().prefix(where));
        if (m->artifact_type == media_type::kErostreamArtifact) {
            d.artifact_type = m->artifact_type;
            return d;  // an artifact named directly (by digest or tag) is used as it is
        }
    } else if (is_index_media_type(top.media_type)) {
        Platform want = platform_opt ? *platform_opt : host_platform();
        auto idx = parse_index(top.bytes);
        if (!idx) return std::unexpected(idx.error().prefix(where));
        std::optional<std::string> match;
        std::string have;
        for (const auto& m : idx->manifests) {
            if (!m.platform) continue;
            if (!have.empty()) have += ", ";
            have += m.platform->str();
            if (!match && is_manifest_media_type(m.media_type) && platform_matches(want, *m.platform))
                match = m.digest;
        }
        if (!match)
            return fail(fmt::format("{}: the index has no manifest for platform {} (it has: {})", where, want.str(),
                                    have.empty() ? "none" : have),
                        ENOENT);
        subject = *match;
    } else {
        return failf("{}: unexpected manifest media type '{}'", where, top.media_type);
    }
    auto refs = EROS_TRY(client.referrers(ref.repository, subject, media_type::kErostreamArtifact));
    if (refs.descriptors.empty())
        return fail(fmt::format("{}: no erostream artifact refers to image {} ({}); convert it first "
                                "(erostream-mkfs convert {} docker://{}/{})",
                                where, subject,
                                refs.from_fallback_tag ? "tag " + referrers_tag(subject) + " is absent or empty"
                                                       : "the referrers API lists none",
                                where, ref.registry, ref.repository),
                    ENOENT);
    // Newest by creation time when the descriptors say, else the last listed.
    const ReferrerDescriptor* best = &refs.descriptors.back();
    for (const auto& r : refs.descriptors) {
        auto a = r.annotations.find(kCreated);
        auto b = best->annotations.find(kCreated);
        if (a != r.annotations.end() && (b == best->annotations.end() || a->second > b->second)) best = &r;
    }
    d = Descriptor{};
    d.media_type = best->media_type.empty() ? std::string(media_type::kOciManifest) : best->media_type;
    d.digest = best->digest;
    d.size = best->size;
    d.artifact_type = best->artifact_type;
    d.annotations = best->annotations;
    if (refs.descriptors.size() > 1)
        spdlog::info("{}: {} artifacts refer to {}; using {}", where, refs.descriptors.size(), subject, d.digest);
    return d;
}

Result<PushReport> push_artifact(RegistryClient& client, const OciLayout& layout, const Descriptor& artifact,
                                 const ImageReference& dest, const std::optional<std::string>& tag,
                                 const std::optional<std::string>& mount_from,
                                 const std::function<void(const PushProgress&)>& progress) {
    const std::string repo = dest.repository;
    std::string bytes = EROS_TRY(layout.read_blob(artifact, kMaxManifestBytes));
    Manifest m = EROS_TRY(parse_manifest(bytes));
    PushReport rep;
    std::vector<Descriptor> blobs = {m.config};
    for (const auto& l : m.layers) blobs.push_back(l);
    PushProgress pp;
    pp.blobs = blobs.size();
    std::set<std::string> done;
    for (size_t i = 0; i < blobs.size(); ++i) {
        const Descriptor& b = blobs[i];
        if (!done.insert(b.digest).second) continue;
        auto fd = layout.open_blob(b.digest);
        if (!fd) return std::unexpected(fd.error().prefix("pushing blob " + b.digest));
        pp.blob = i + 1;
        pp.digest = b.digest;
        pp.done = 0;
        pp.total = static_cast<uint64_t>(b.size);
        if (progress) progress(pp);
        auto r = client.push_blob(repo, b.digest, HttpBody::from_file(fd->get(), 0, static_cast<uint64_t>(b.size)),
                                  mount_from, [&](uint64_t d, uint64_t t) {
                                      pp.done = d;
                                      pp.total = t;
                                      if (progress) progress(pp);
                                  });
        if (!r) return std::unexpected(r.error());
        ++rep.blobs;
        if (r->existed) ++rep.blobs_existing;
        if (r->mounted) ++rep.blobs_mounted;
        rep.bytes_sent += r->bytes_sent;
    }
    std::string reference = tag ? *tag : artifact.digest;
    auto put = EROS_TRY(client.put_manifest(repo, reference, bytes, artifact.media_type.empty()
                                                                         ? std::string(media_type::kOciManifest)
                                                                         : artifact.media_type));
    if (put.digest != artifact.digest)
        return failf("internal: pushed manifest digest {} differs from {}", put.digest, artifact.digest);
    rep.reference = client.registry() + "/" + repo + (tag ? ":" + *tag : "@" + artifact.digest);
    if (!m.subject) return rep;
    // OCI-Subject in the answer says the registry processed the subject, but only a referrers GET
    // that does not 404 shows that clients can list it.
    rep.referrers_api = EROS_TRY(client.has_referrers_api(repo, m.subject->digest));
    if (rep.referrers_api) return rep;
    // No referrers API: keep the subject's tag-schema index up to date.
    ReferrerDescriptor rd;
    rd.media_type = artifact.media_type.empty() ? std::string(media_type::kOciManifest) : artifact.media_type;
    rd.digest = artifact.digest;
    rd.size = static_cast<int64_t>(bytes.size());
    rd.artifact_type = m.artifact_type;
    rd.annotations = m.annotations;
    rep.referrers_tag_updated = EROS_TRY(client.add_to_referrers_tag(repo, m.subject->digest, rd));
    return rep;
}

}  // namespace erostream
