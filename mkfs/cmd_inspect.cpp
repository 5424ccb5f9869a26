#include <getopt.h>

#include <nlohmann/json.hpp>

#include <cstdio>

#include "artifact_reader.h"
#include "cli.h"
#include "registry/registry_session.h"

namespace erostream::cli {

namespace {
constexpr const char* kHelp = R"(Usage: erostream-mkfs inspect [OPTIONS] ARTIFACT

Shows what an artifact holds: the tree (files, directories, bytes), the metadata size, and per
layer the data blob's stored and uncompressed sizes and chunks, with compression and dedup ratios.

ARTIFACT  oci:DIR:TAG | oci:DIR@sha256:HEX | docker://REG/REPO(:TAG|@sha256:HEX): an erostream
          artifact, or an image whose newest artifact (for --platform, default this machine's)
          is found through the registry's referrers (API, else the sha256-<hex> tag)

Options:
  --json       machine-readable output on stdout
  --platform P OS/ARCH[/VARIANT] whose artifact to take when ARTIFACT names an image index
  -h, --help   this text
)";

double ratio(uint64_t a, uint64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; }
}  // namespace

int cmd_inspect(int argc, char** argv) {
    enum { kJson = 1000, kPlatform };
    static const auto opts = with_registry_options({
        {"json", no_argument, nullptr, kJson},
        {"platform", required_argument, nullptr, kPlatform},
        {"help", no_argument, nullptr, 'h'},
    });
    RegistryOptions ropt = default_registry_options();
    std::optional<Platform> platform;
    bool json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts.data(), nullptr)) != -1) {
        switch (c) {
        case 'h':
            std::fputs(kHelp, stdout);
            std::fputs(kRegistryHelp, stdout);
            return kExitOk;
        case kPlatform: {
            auto p = parse_platform(optarg);
            if (!p) return usage_error("inspect", "--platform: " + p.error().what());
            platform = *p;
            break;
        }
        case kJson: json = true; break;
        default:
            if (parse_registry_option(c, optarg, ropt)) break;
            return usage_error("inspect", "unknown option");
        }
    }
    if (argc - optind != 1) return usage_error("inspect", "expected ARTIFACT");
    RegistrySession registry(ropt);
    auto art = open_artifact(argv[optind], registry, platform);
    if (!art) return report_error(art.error());
    auto rep = inspect_artifact(art->artifact);
    if (!rep) return report_error(rep.error().prefix(argv[optind]));

    uint64_t stored = 0, device = 0, chunks = 0;
    for (const auto& l : rep->layers) {
        stored += l.blob_size;
        device += l.device_bytes;
        chunks += l.chunks;
    }
    // Dedup: what the files reference against what is stored (both in whole blocks).
    uint64_t chunked_bytes = rep->referenced_bytes;
    if (json) {
        nlohmann::json layers = nlohmann::json::array();
        for (const auto& l : rep->layers)
            layers.push_back({{"layer", l.layer_digest},
                              {"blob", l.blob_digest},
                              {"stored_bytes", l.blob_size},
                              {"uncompressed_bytes", l.device_bytes},
                              {"chunks", l.chunks},
                              {"compression_ratio", ratio(l.device_bytes, l.blob_size)}});
        nlohmann::json j = {
            {"artifact", art->artifact.desc.digest},
            {"subject", art->artifact.manifest.subject ? art->artifact.manifest.subject->digest : ""},
            {"chunk_size", uint64_t{1} << art->artifact.meta.chunk_bits},
            {"files", rep->files},
            {"directories", rep->directories},
            {"symlinks", rep->symlinks},
            {"other_inodes", rep->others},
            {"hardlinks", rep->hardlinks},
            {"tree_bytes", rep->tree_bytes},
            {"inline_files", rep->inline_files},
            {"inline_bytes", rep->inline_bytes},
            {"metadata", art->artifact.meta_desc.digest},
            {"metadata_bytes", rep->meta_size},
            {"erofs_bytes", rep->erofs_size},
            {"chunks", chunks},
            {"chunk_refs", rep->chunk_refs},
            {"hole_refs", rep->hole_refs},
            {"stored_bytes", stored},
            {"uncompressed_bytes", device},
            {"compression_ratio", ratio(device, stored)},
            {"dedup_ratio", ratio(chunked_bytes, device)},
            {"layers", layers}};
        std::puts(j.dump(2).c_str());
        return kExitOk;
    }
    std::printf("artifact     %s\n", art->artifact.desc.digest.c_str());
    if (art->artifact.manifest.subject)
        std::printf("subject      %s\n", art->artifact.manifest.subject->digest.c_str());
    std::printf("chunk size   %llu\n", 1ull << art->artifact.meta.chunk_bits);
    std::printf("tree         %llu files, %llu directories, %llu symlinks, %llu other, %llu extra hardlinks; %llu bytes\n",
                (unsigned long long)rep->files, (unsigned long long)rep->directories,
                (unsigned long long)rep->symlinks, (unsigned long long)rep->others,
                (unsigned long long)rep->hardlinks, (unsigned long long)rep->tree_bytes);
    std::printf("inline       %llu files, %llu bytes kept in the metadata\n",
                (unsigned long long)rep->inline_files, (unsigned long long)rep->inline_bytes);
    std::printf("metadata     %s: %llu bytes (EROFS %llu)\n", art->artifact.meta_desc.digest.c_str(),
                (unsigned long long)rep->meta_size, (unsigned long long)rep->erofs_size);
    std::printf("data         %llu chunks, %llu bytes stored, %llu uncompressed: compression %.2fx, dedup %.2fx\n",
                (unsigned long long)chunks, (unsigned long long)stored, (unsigned long long)device,
                ratio(device, stored), ratio(chunked_bytes, device));
    for (size_t i = 0; i < rep->layers.size(); ++i) {
        const auto& l = rep->layers[i];
        std::printf("layer %-4zu   %s -> %s: %llu chunks, %llu stored, %llu uncompressed (%.2fx)\n", i + 1,
                    l.layer_digest.substr(0, 19).c_str(), l.blob_digest.substr(0, 19).c_str(),
                    (unsigned long long)l.chunks, (unsigned long long)l.blob_size,
                    (unsigned long long)l.device_bytes, ratio(l.device_bytes, l.blob_size));
    }
    return kExitOk;
}

}  // namespace erostream::cli
