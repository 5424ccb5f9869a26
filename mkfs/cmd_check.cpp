#include <getopt.h>

#include <nlohmann/json.hpp>

#include <cstdio>

#include "artifact_reader.h"
#include "cli.h"
#include "registry/registry_session.h"

#include <spdlog/spdlog.h>

namespace erostream::cli {

namespace {
constexpr const char* kHelp = R"(Usage: erostream-mkfs check [OPTIONS] ARTIFACT

Verifies an artifact: the manifest, the metadata blob's digest, chunk table and EROFS structure
(every inode, directory and chunk index), every data blob's digest and seek table, and every
chunk's decompressed sha256. Exits non-zero on any fault and names each one.

ARTIFACT  oci:DIR:TAG | oci:DIR@sha256:HEX | docker://REG/REPO(:TAG|@sha256:HEX): an erostream
          artifact, or an image whose newest artifact (for --platform, default this machine's)
          is found through the registry's referrers (API, else the sha256-<hex> tag)

Options:
  --jobs N     worker threads (default: one per core)
  --json       print {"ok":..., "faults":[...]} on stdout
  --platform P OS/ARCH[/VARIANT] whose artifact to take when ARTIFACT names an image index
  -h, --help   this text
)";
}  // namespace

int cmd_check(int argc, char** argv) {
    enum { kJobs = 1000, kJson, kPlatform };
    static const auto opts = with_registry_options({
        {"jobs", required_argument, nullptr, kJobs},
        {"json", no_argument, nullptr, kJson},
        {"platform", required_argument, nullptr, kPlatform},
        {"help", no_argument, nullptr, 'h'},
    });
    RegistryOptions ropt = default_registry_options();
    std::optional<Platform> platform;
    unsigned jobs = 0;
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
            if (!p) return usage_error("check", "--platform: " + p.error().what());
            platform = *p;
            break;
        }
        case kJobs: jobs = static_cast<unsigned>(std::max(1, std::atoi(optarg))); break;
        case kJson: json = true; break;
        default:
            if (parse_registry_option(c, optarg, ropt)) break;
            return usage_error("check", "unknown option");
        }
    }
    if (argc - optind != 1) return usage_error("check", "expected ARTIFACT");
    std::string ref = argv[optind];
    std::vector<std::string> faults;
    CheckReport rep;
    RegistrySession registry(ropt);
    auto art = open_artifact(ref, registry, platform);
    if (!art) {
        faults.push_back(art.error().what());
    } else {
        ThreadPool pool(jobs ? jobs : ThreadPool::default_workers());
        auto r = check_artifact(*art->store, art->artifact, pool);
        if (!r) faults.push_back(r.error().what());
        else rep = std::move(*r);
        for (auto& f : rep.faults) faults.push_back(ref + ": " + f);
    }
    if (json) {
        std::puts(nlohmann::json({{"ok", faults.empty()},
                                  {"inodes", rep.inodes},
                                  {"chunks", rep.chunks_checked},
                                  {"faults", faults}})
                      .dump(2)
                      .c_str());
    }
    for (const auto& f : faults) spdlog::error("{}", f);
    if (!faults.empty()) return kExitError;
    if (!json)
        std::printf("%s: ok (%llu paths, %llu chunks verified)\n", ref.c_str(),
                    static_cast<unsigned long long>(rep.inodes),
                    static_cast<unsigned long long>(rep.chunks_checked));
    return kExitOk;
}

}  // namespace erostream::cli
