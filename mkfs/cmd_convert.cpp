#include <getopt.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "cli.h"
#include "converter.h"
#include "image_source.h"
#include "oci_layout.h"
#include "registry/registry_image_source.h"
#include "registry/registry_session.h"
#include "registry/registry_store.h"

#include <spdlog/spdlog.h>
#include <stdlib.h>

namespace erostream::cli {

namespace {

constexpr const char* kHelp = R"(Usage: erostream-mkfs convert [OPTIONS] SOURCE DEST

Converts an OCI image into an erostream streaming artifact: an EROFS metadata blob for the merged
tree and one zstd-chunked data blob per layer, written into DEST as an OCI artifact manifest whose
subject is the source manifest. For an image index, every platform is converted (one artifact
each, tagged TAG-OS-ARCH[-VARIANT]) unless --platform picks one.

SOURCE  oci:DIR[:TAG] | oci:DIR@sha256:HEX | docker-archive:FILE[:TAG]
        | docker://[REGISTRY/]REPO[:TAG][@sha256:HEX]   (layers are downloaded in parallel,
          ahead of the conversion)
DEST    oci:DIR[:TAG]   (the layout is created if missing)
        | docker://[REGISTRY/]REPO[:TAG]   the artifact is pushed there (blobs the registry has
          are skipped, blobs of SOURCE's repository on the same registry are mounted), tagged
          TAG if given, else by digest only; where the registry has no referrers API the
          subject's sha256-<hex> tag (an index of its referrers) is updated so that
          'erostream-mkfs discover' and the node daemon find it

Options:
  --chunk-size SIZE    chunk size, a power of two from 4k to 16M (default 1M)
  --inline-max SIZE    files up to SIZE bytes are kept inside the metadata (default 2048, at
                       most 64k; 0: none)
  --level N            zstd compression level (default 3)
  --platform P         OS/ARCH[/VARIANT] to convert from an index
  --jobs N             worker threads (default: one per core)
  --quiet              no progress on stderr
  --json               print a JSON report on stdout
  -h, --help           this text
)";

// Whether a docker:// reference names a tag itself (parse_image_reference adds "latest").
bool has_explicit_tag(std::string_view ref) {
    if (ref.starts_with("docker://")) ref.remove_prefix(9);
    ref = ref.substr(0, ref.find('@'));
    size_t slash = ref.rfind('/');
    return ref.find(':', slash == std::string_view::npos ? 0 : slash) != std::string_view::npos;
}

// A temporary directory removed with everything in it when the guard goes.
struct TempDir {
    std::string path;
    ~TempDir() {
        std::error_code ec;
        if (!path.empty()) std::filesystem::remove_all(path, ec);
    }
};

std::string human(uint64_t b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(b);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    return fmt::format("{:.1f} {}", v, units[u]);
}

nlohmann::json report_json(const ArtifactReport& r) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : r.layers) {
        layers.push_back({{"layer", l.layer_digest},
                          {"media_type", l.media_type},
                          {"blob", l.blob_digest},
                          {"blob_size", l.blob_size},
                          {"device_size", l.device_blocks * 4096},
                          {"entries", l.entries},
                          {"inline_files", l.inline_files},
                          {"logical_bytes", l.stats.logical_bytes},
                          {"stored_chunks", l.stats.stored_chunks},
                          {"dedup_chunks", l.stats.dedup_chunks},
                          {"zero_chunks", l.stats.zero_chunks}});
    }
    nlohmann::json j = {{"digest", r.artifact.digest},
                        {"size", r.artifact.size},
                        {"subject", r.subject.digest},
                        {"metadata", {{"digest", r.metadata.digest}, {"size", r.metadata.size}}},
                        {"inodes", r.erofs.inodes},
                        {"layers", layers}};
    if (!r.platform.empty()) j["platform"] = r.platform;
    if (!r.tag.empty()) j["tag"] = r.tag;
    return j;
}

}  // namespace

int cmd_convert(int argc, char** argv) {
    enum { kChunk = 1000, kInline, kLevel, kPlatform, kJobs, kQuiet, kJson };
    static const auto opts = with_registry_options({
        {"chunk-size", required_argument, nullptr, kChunk},
        {"inline-max", required_argument, nullptr, kInline},
        {"level", required_argument, nullptr, kLevel},
        {"platform", required_argument, nullptr, kPlatform},
        {"jobs", required_argument, nullptr, kJobs},
        {"quiet", no_argument, nullptr, kQuiet},
        {"json", no_argument, nullptr, kJson},
        {"help", no_argument, nullptr, 'h'},
    });
    RegistryOptions ropt = default_registry_options();
    ConvertOptions opt;
    bool quiet = false, json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts.data(), nullptr)) != -1) {
        switch (c) {
        case 'h':
            std::fputs(kHelp, stdout);
            std::fputs(kRegistryHelp, stdout);
            return kExitOk;
        case kChunk: {
            auto v = parse_size(optarg);
            if (!v) return usage_error("convert", "--chunk-size: " + v.error().what());
            if (*v < 4096 || *v > (16u << 20) || (*v & (*v - 1)) != 0)
                return usage_error("convert", "--chunk-size must be a power of two from 4k to 16M");
            opt.chunk_bits = static_cast<uint32_t>(__builtin_ctzll(*v));
            break;
        }
        case kInline: {
            auto v = parse_size(optarg);
            if (!v) return usage_error("convert", "--inline-max: " + v.error().what());
            if (*v > 65536) return usage_error("convert", "--inline-max must be at most 64k");
            opt.inline_max = *v;
            break;
        }
        case kLevel: opt.zstd_level = std::atoi(optarg); break;
        case kPlatform: {
            auto p = parse_platform(optarg);
            if (!p) return usage_error("convert", "--platform: " + p.error().what());
            opt.platform = *p;
            break;
        }
        case kJobs: opt.jobs = static_cast<unsigned>(std::max(1, std::atoi(optarg))); break;
        case kQuiet: quiet = true; break;
        case kJson: json = true; break;
        default:
            if (parse_registry_option(c, optarg, ropt)) break;
            return usage_error("convert", "unknown option");
        }
    }
    if (argc - optind != 2) return usage_error("convert", "expected SOURCE and DEST");
    std::string source_ref = argv[optind], dest_ref = argv[optind + 1];
    const bool push = dest_ref.starts_with("docker://");
    if (!dest_ref.starts_with("oci:") && !push)
        return usage_error("convert", "DEST must be oci:DIR[:TAG] or docker://[REGISTRY/]REPO[:TAG]");
    OciRef dref;
    ImageReference push_ref;
    std::optional<std::string> dest_tag;
    if (push) {
        auto r = parse_image_reference(dest_ref);
        if (!r) return report_error(r.error().prefix("DEST"));
        if (r->digest) return usage_error("convert", "DEST cannot name a digest");
        push_ref = *r;
        if (has_explicit_tag(dest_ref)) dest_tag = r->tag;
    } else {
        auto r = parse_oci_ref(std::string_view(dest_ref).substr(4));
        if (!r) return report_error(r.error().prefix("DEST " + dest_ref));
        if (r->digest) return usage_error("convert", "DEST cannot name a digest");
        dref = *r;
        dest_tag = dref.tag;
    }

    RegistrySession registry(ropt);
    DownloadStats downloads;
    auto source = open_image_source(source_ref, registry, &downloads);
    if (!source) return report_error(source.error());

    // A push converts into a private temporary layout first. A local DEST layout this run
    // created is removed again if the conversion fails.
    std::error_code ec;
    TempDir staging;
    bool dest_existed = true;
    if (push) {
        const char* t = std::getenv("TMPDIR");
        std::string tmpl = std::string(t && *t ? t : "/tmp") + "/erostream-push-XXXXXX";
        if (!::mkdtemp(tmpl.data())) return report_error(Error{errno, "cannot create a staging directory"});
        staging.path = tmpl;
        dref.dir = staging.path + "/layout";
        dest_existed = false;
    } else {
        dest_existed = std::filesystem::exists(dref.dir, ec);
    }
    auto dest = OciLayout::open_or_create(dref.dir);
    if (!dest) return report_error(dest.error().prefix("DEST " + dest_ref));

    ProgressLine line(!quiet);
    const bool from_registry = source_ref.starts_with("docker://");
    opt.progress = [&](const ConvertProgress& p) {
        double pct = p.bytes_total ? 100.0 * static_cast<double>(p.bytes_read) / static_cast<double>(p.bytes_total) : 100.0;
        std::string dl;
        if (from_registry)
            dl = fmt::format("; downloaded {} of {} ({}/{} layers)", human(downloads.bytes_done), human(downloads.bytes_total),
                             downloads.blobs_done.load(), downloads.blobs_total.load());
        line.update(fmt::format("layer {}/{} {}: {:5.1f}% of {}, {} entries{}{}", p.layer + 1, p.layers,
                                p.layer_digest.substr(0, 19), pct, human(p.bytes_total), p.entries,
                                p.layer_done ? " done" : "", dl),
                    p.layer_done);
    };
    auto result = convert_image(**source, *dest, dest_tag, opt);
    // Bytes corrupted in transit are fetched again by the source: convert again (the layers that
    // arrived intact are not downloaded twice).
    for (unsigned again = 0; !result && again < ropt.retry.max_retries && (*source)->retry_after_failure(); ++again) {
        spdlog::warn("{}; converting again", result.error().what());
        result = convert_image(**source, *dest, dest_tag, opt);
    }
    line.finish();
    if (!result) {
        if (!dest_existed) std::filesystem::remove_all(dref.dir, ec);
        return report_error(result.error().prefix(source_ref));
    }

    std::vector<PushReport> pushed;
    if (push) {
        auto client = registry.client(push_ref.registry);
        if (!client) return report_error(client.error());
        // Blobs of the source's repository on the same registry can be mounted instead of sent.
        std::optional<std::string> mount_from;
        std::optional<ImageReference> src_img;
        if (from_registry) {
            auto s = parse_image_reference(source_ref);
            if (s) src_img = *s;
            if (s && s->registry == push_ref.registry && s->repository != push_ref.repository)
                mount_from = s->repository;
        }
        for (const auto& r : *result) {
            if (!src_img || src_img->registry != push_ref.registry || src_img->repository != push_ref.repository) {
                auto h = (*client)->head_manifest(push_ref.repository, r.subject.digest);
                if (h && !*h)
                    spdlog::warn("docker://{}/{} does not hold the image {}: the artifact refers to it, but "
                                 "discovery there needs the image too",
                                 push_ref.registry, push_ref.repository, r.subject.digest);
            }
            std::optional<std::string> tag;
            if (dest_tag && !r.tag.empty()) tag = r.tag;
            auto rep = push_artifact(**client, *dest, r.artifact, push_ref, tag, mount_from, [&](const PushProgress& p) {
                line.update(fmt::format("push {}: blob {}/{} {}: {} of {}", push_ref.repository, p.blob, p.blobs,
                                        p.digest.substr(0, 19), human(p.done), human(p.total)),
                            p.total > 0 && p.done == p.total);
            });
            line.finish();
            if (!rep) return report_error(rep.error().prefix("pushing to " + dest_ref));
            pushed.push_back(*rep);
        }
    }

    if (json) {
        nlohmann::json arts = nlohmann::json::array();
        for (size_t i = 0; i < result->size(); ++i) {
            auto j = report_json((*result)[i]);
            if (i < pushed.size()) {
                j["pushed"] = "docker://" + pushed[i].reference;
                j["referrers"] = pushed[i].referrers_api ? "api" : "tag";
                j["blobs_sent"] = pushed[i].blobs - pushed[i].blobs_existing - pushed[i].blobs_mounted;
                j["blobs_mounted"] = pushed[i].blobs_mounted;
                j["blobs_existing"] = pushed[i].blobs_existing;
                j["bytes_sent"] = pushed[i].bytes_sent;
            }
            arts.push_back(j);
        }
        std::puts(nlohmann::json({{"artifacts", arts}}).dump(2).c_str());
    } else if (!quiet) {
        for (const auto& r : *result) {
            uint64_t stored = 0, logical = 0;
            for (const auto& l : r.layers) {
                stored += l.blob_size;
                logical += l.stats.logical_bytes;
            }
            std::fprintf(stderr, "artifact %s%s%s: %zu layers, %llu inodes, metadata %s, data %s (from %s of chunked file data)\n",
                         r.artifact.digest.c_str(), r.tag.empty() ? "" : " tagged ", r.tag.c_str(),
                         r.layers.size(), static_cast<unsigned long long>(r.erofs.inodes),
                         human(static_cast<uint64_t>(r.metadata.size)).c_str(), human(stored).c_str(),
                         human(logical).c_str());
        }
        for (const auto& p : pushed)
            std::fprintf(stderr, "pushed docker://%s (%llu blobs: %llu sent, %llu mounted, %llu already there; %s)\n",
                         p.reference.c_str(), static_cast<unsigned long long>(p.blobs),
                         static_cast<unsigned long long>(p.blobs - p.blobs_existing - p.blobs_mounted),
                         static_cast<unsigned long long>(p.blobs_mounted),
                         static_cast<unsigned long long>(p.blobs_existing),
                         p.referrers_api ? "the registry lists referrers itself"
                                         : "added to the subject's referrers tag");
    }
    return kExitOk;
}

}  // namespace erostream::cli
