#include <getopt.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "cli.h"
#include "converter.h"
#include "image_source.h"
#include "oci_layout.h"

namespace erostream::cli {

namespace {

constexpr const char* kHelp = R"(Usage: erostream-mkfs convert [OPTIONS] SOURCE DEST

Converts an OCI image into an erostream streaming artifact: an EROFS metadata blob for the merged
tree and one zstd-chunked data blob per layer, written into DEST as an OCI artifact manifest whose
subject is the source manifest. For an image index, every platform is converted (one artifact
each, tagged TAG-OS-ARCH[-VARIANT]) unless --platform picks one.

SOURCE  oci:DIR[:TAG] | oci:DIR@sha256:HEX | docker-archive:FILE[:TAG]
DEST    oci:DIR[:TAG]   (the layout is created if missing)

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
    static const option opts[] = {
        {"chunk-size", required_argument, nullptr, kChunk},
        {"inline-max", required_argument, nullptr, kInline},
        {"level", required_argument, nullptr, kLevel},
        {"platform", required_argument, nullptr, kPlatform},
        {"jobs", required_argument, nullptr, kJobs},
        {"quiet", no_argument, nullptr, kQuiet},
        {"json", no_argument, nullptr, kJson},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    ConvertOptions opt;
    bool quiet = false, json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, nullptr)) != -1) {
        switch (c) {
        case 'h': std::fputs(kHelp, stdout); return kExitOk;
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
        default: return usage_error("convert", "unknown option");
        }
    }
    if (argc - optind != 2) return usage_error("convert", "expected SOURCE and DEST");
    std::string source_ref = argv[optind], dest_ref = argv[optind + 1];
    if (!dest_ref.starts_with("oci:"))
        return usage_error("convert", "DEST must be oci:DIR[:TAG]");
    auto dref = parse_oci_ref(std::string_view(dest_ref).substr(4));
    if (!dref) return report_error(dref.error().prefix("DEST " + dest_ref));
    if (dref->digest) return usage_error("convert", "DEST cannot name a digest");

    auto source = open_image_source(source_ref);
    if (!source) return report_error(source.error());

    // If the conversion fails, a destination layout this run created is removed again.
    std::error_code ec;
    bool dest_existed = std::filesystem::exists(dref->dir, ec);
    auto dest = OciLayout::open_or_create(dref->dir);
    if (!dest) return report_error(dest.error().prefix("DEST " + dest_ref));

    ProgressLine line(!quiet);
    opt.progress = [&](const ConvertProgress& p) {
        double pct = p.bytes_total ? 100.0 * static_cast<double>(p.bytes_read) / static_cast<double>(p.bytes_total) : 100.0;
        line.update(fmt::format("layer {}/{} {}: {:5.1f}% of {}, {} entries{}", p.layer + 1, p.layers,
                                p.layer_digest.substr(0, 19), pct, human(p.bytes_total), p.entries,
                                p.layer_done ? " done" : ""),
                    p.layer_done);
    };
    auto result = convert_image(**source, *dest, dref->tag, opt);
    line.finish();
    if (!result) {
        if (!dest_existed) std::filesystem::remove_all(dref->dir, ec);
        return report_error(result.error().prefix(source_ref));
    }

    if (json) {
        nlohmann::json arts = nlohmann::json::array();
        for (const auto& r : *result) arts.push_back(report_json(r));
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
    }
    return kExitOk;
}

}  // namespace erostream::cli
