#include "image_source.h"

#include "decompress.h"

#include <set>
#include <utility>

#include "docker_archive.h"
#include "registry/reference.h"
#include "registry/registry_image_source.h"
#include "registry/registry_session.h"
#include "oci_layout.h"
#include "sha256.h"

namespace erostream {

namespace {

constexpr size_t kMaxManifestSize = 8 << 20;
constexpr size_t kMaxConfigSize = 64 << 20;
constexpr int kMaxIndexDepth = 4;

// Puts "layer sha256:..: " in front of every error of the stream below.
class LabeledStream final : public ByteStream {
public:
    LabeledStream(std::unique_ptr<ByteStream> src, std::string label)
        : src_(std::move(src)), label_(std::move(label)) {}
    Result<size_t> read(void* buf, size_t n) override {
        auto got = src_->read(buf, n);
        if (!got) got.error().prefix(label_);
        return got;
    }

private:
    std::unique_ptr<ByteStream> src_;
    std::string label_;
};

// A stream that fails on its first read: keeps verify_blob_stream's signature total.
class FailedStream final : public ByteStream {
public:
    explicit FailedStream(Error e) : e_(std::move(e)) {}
    Result<size_t> read(void*, size_t) override { return std::unexpected(e_); }

private:
    Error e_;
};

bool is_attestation(const Descriptor& d) {
    auto it = d.annotations.find("vnd.docker.reference.type");
    if (it != d.annotations.end() && it->second == "attestation-manifest") return true;
    return d.platform && d.platform->os == "unknown" && d.platform->architecture == "unknown";
}

class ManifestWalker {
public:
    ManifestWalker(const SmallBlobReader& read, const std::optional<Platform>& want,
                   std::string_view where)
        : read_(read), want_(want), where_(where) {}

    Result<std::vector<ResolvedManifest>> run(const Descriptor& top) {
        if (is_index_media_type(top.media_type)) {
            EROS_TRYV(visit_index(top, 0));
            if (!out_.empty()) return std::move(out_);
            if (want_) {
                std::string there;
                for (const auto& p : other_platforms_) there += (there.empty() ? "" : ", ") + p;
                return failf("{}: no manifest for platform {} (there are: {})", where_,
                             want_->str(), there.empty() ? "none" : there);
            }
            return failf("{}: index {} names no image manifest", where_, top.digest);
        }
        if (!is_manifest_media_type(top.media_type))
            return failf("{}: {} is not an image manifest or index (media type '{}')", where_,
                         top.digest, top.media_type);
        auto rm = EROS_TRY(load(top));
        if (!rm)
            return failf("{}: {} is not a container image (config media type '{}')", where_,
                         top.digest, not_image_config_);
        if (want_) {
            auto p = platform_of_config(rm->config_bytes);
            if (p && !platform_matches(*want_, *p))
                return failf("{}: the image is for {}, not {}", where_, p->str(), want_->str());
        }
        out_.push_back(std::move(*rm));
        return std::move(out_);
    }

private:
    Result<std::string> read(const Descriptor& d, std::string_view what) {
        auto r = read_(d);
        if (!r) r.error().prefix(fmt::format("{}: {} {}", where_, what, d.digest));
        return r;
    }

    // nullopt: a manifest, but not of a container image (an artifact).
    Result<std::optional<ResolvedManifest>> load(const Descriptor& d) {
        ResolvedManifest rm;
        rm.desc = d;
        rm.bytes = EROS_TRY(read(d, "manifest"));
        auto m = parse_manifest(rm.bytes);
        if (!m) return std::unexpected(m.error().prefix(fmt::format("{}: {}", where_, d.digest)));
        if (!m->media_type.empty() && m->media_type != d.media_type)
            return failf("{}: manifest {} says its media type is '{}', its descriptor '{}'",
                         where_, d.digest, m->media_type, d.media_type);
        if (!is_image_config_media_type(m->config.media_type)) {
            not_image_config_ = m->config.media_type;
            return std::nullopt;
        }
        rm.manifest = std::move(*m);
        rm.config_bytes = EROS_TRY(read(rm.manifest.config, "config"));
        return rm;
    }

    Result<void> visit_index(const Descriptor& d, int depth) {
        if (depth > kMaxIndexDepth)
            return failf("{}: indexes nested deeper than {} at {}", where_, kMaxIndexDepth, d.digest);
        std::string bytes = EROS_TRY(read(d, "index"));
        auto index = parse_index(bytes);
        if (!index)
            return std::unexpected(index.error().prefix(fmt::format("{}: {}", where_, d.digest)));
        for (const auto& child : index->manifests) {
            if (is_index_media_type(child.media_type)) {
                EROS_TRYV(visit_index(child, depth + 1));
                continue;
            }
            if (!is_manifest_media_type(child.media_type) || is_attestation(child)) continue;
            if (!seen_.insert(child.digest).second) continue;
            if (want_ && child.platform && !platform_matches(*want_, *child.platform)) {
                other_platforms_.insert(child.platform->str());
                continue;
            }
            auto rm = EROS_TRY(load(child));
            if (!rm) continue;
            if (want_ && !child.platform) {
                auto p = platform_of_config(rm->config_bytes);
                if (!p || !platform_matches(*want_, *p)) {
                    other_platforms_.insert(p ? p->str() : "unknown");
                    continue;
                }
            }
            out_.push_back(std::move(*rm));
        }
        return {};
    }

    const SmallBlobReader& read_;
    const std::optional<Platform>& want_;
    std::string_view where_;
    std::vector<ResolvedManifest> out_;
    std::set<std::string> seen_, other_platforms_;
    std::string not_image_config_;
};

class OciSource final : public ImageSource {
public:
    OciSource(OciLayout layout, OciRef ref) : layout_(std::move(layout)), ref_(std::move(ref)) {}

    std::string describe() const override { return "oci:" + ref_.str(); }

    Result<std::vector<ResolvedManifest>> manifests(const std::optional<Platform>& want) override {
        auto top = layout_.resolve(ref_.tag, ref_.digest);
        if (!top) return std::unexpected(top.error().prefix(describe()));
        SmallBlobReader reader = [this](const Descriptor& d) {
            return layout_.read_blob(d, is_image_config_media_type(d.media_type) ? kMaxConfigSize
                                                                                 : kMaxManifestSize);
        };
        return resolve_manifests(*top, reader, want, describe());
    }

    Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) override {
        auto fd = layout_.open_blob(d.digest);
        if (!fd) return std::unexpected(fd.error().prefix(describe()));
        return verify_blob_stream(std::make_unique<FdStream>(std::move(*fd)), d);
    }

private:
    OciLayout layout_;
    OciRef ref_;
};

bool valid_tag(std::string_view t) {
    if (t.empty()) return false;
    for (char c : t) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-' || c == ':' || c == '@' || c == '+' || c == '/';
        if (!ok) return false;
    }
    return true;
}

}  // namespace

std::unique_ptr<ByteStream> verify_blob_stream(std::unique_ptr<ByteStream> raw, const Descriptor& d) {
    std::string label = fmt::format("{} {}", layer_kind(d.media_type) ? "layer" : "blob", d.digest);
    auto want = parse_digest(d.digest);
    if (!want) return std::make_unique<FailedStream>(Error{0, label + ": " + want.error().message});
    if (d.size < 0)
        return std::make_unique<FailedStream>(Error{0, label + ": negative size in descriptor"});
    return std::make_unique<LabeledStream>(
        std::make_unique<DigestingStream>(std::move(raw), *want, d.size), std::move(label));
}

Result<std::vector<ResolvedManifest>> resolve_manifests(const Descriptor& top,
                                                        const SmallBlobReader& read,
                                                        const std::optional<Platform>& want,
                                                        std::string_view where) {
    ManifestWalker w(read, want, where);
    return w.run(top);
}

std::string OciRef::str() const {
    if (digest) return dir + "@" + *digest;
    if (tag) return dir + ":" + *tag;
    return dir;
}

Result<OciRef> parse_oci_ref(std::string_view s) {
    OciRef r;
    size_t at = s.rfind('@');
    if (at != std::string_view::npos && s.substr(at + 1).starts_with("sha256:")) {
        r.dir = s.substr(0, at);
        r.digest = std::string(s.substr(at + 1));
        if (auto ok = parse_digest(*r.digest); !ok)
            return failf("oci:{}: {}", s, ok.error().message);
    } else if (size_t colon = s.find(':'); colon != std::string_view::npos) {
        r.dir = s.substr(0, colon);
        r.tag = std::string(s.substr(colon + 1));
        if (!valid_tag(*r.tag)) return failf("oci:{}: bad tag '{}'", s, *r.tag);
    } else {
        r.dir = s;
    }
    if (r.dir.empty()) return failf("oci:{}: no directory", s);
    return r;
}

Result<std::unique_ptr<ImageSource>> open_oci_source(const OciRef& ref) {
    auto layout = OciLayout::open(ref.dir);
    if (!layout) return std::unexpected(layout.error().prefix("oci:" + ref.str()));
    return std::make_unique<OciSource>(std::move(*layout), ref);
}

Result<std::unique_ptr<ImageSource>> open_image_source(std::string_view ref) {
    if (ref.starts_with("oci:")) {
        OciRef r = EROS_TRY(parse_oci_ref(ref.substr(4)));
        return open_oci_source(r);
    }
    if (ref.starts_with("docker-archive:")) {
        std::string_view rest = ref.substr(15);
        size_t colon = rest.find(':');
        std::string file(rest.substr(0, colon));
        std::optional<std::string> name;
        if (colon != std::string_view::npos) name = std::string(rest.substr(colon + 1));
        if (file.empty()) return failf("{}: no file", ref);
        if (name && name->empty()) return failf("{}: empty image name", ref);
        return open_docker_archive(file, name);
    }
    if (ref.starts_with("docker://"))
        return failf("{}: a registry reference needs registry options (open_image_source with a RegistrySession)", ref);
    return failf("{}: unknown transport (expected oci:, docker-archive: or docker://)", ref);
}

Result<std::unique_ptr<ImageSource>> open_image_source(std::string_view ref, RegistrySession& registry,
                                                       DownloadStats* stats) {
    if (!ref.starts_with("docker://")) return open_image_source(ref);
    auto r = parse_image_reference(ref);
    if (!r) return std::unexpected(r.error());
    auto client = registry.client(r->registry);
    if (!client) return std::unexpected(client.error());
    RegistrySourceOptions opt;
    opt.stats = stats;
    return open_registry_source(*r, std::move(*client), opt);
}

}  // namespace erostream
