#include <getopt.h>

#include <cstdio>

#include "artifact_reader.h"
#include "cli.h"
#include "registry/registry_session.h"

namespace erostream::cli {

namespace {
constexpr const char* kHelp = R"(Usage: erostream-mkfs materialize [OPTIONS] ARTIFACT DIR

Writes DIR/meta.erofs and DIR/device-1.img .. DIR/device-N.img (each data blob's uncompressed
device, in device-table order), verifying every chunk against the digests in the metadata, so
that the kernel can mount meta.erofs with device=DIR/device-1.img,... and no daemon.

ARTIFACT  oci:DIR:TAG | oci:DIR@sha256:HEX | docker://REG/REPO(:TAG|@sha256:HEX): an erostream
          artifact, or an image whose newest artifact (for --platform, default this machine's)
          is found through the registry's referrers (API, else the sha256-<hex> tag)

Options:
  --jobs N     worker threads (default: one per core)
  --quiet      no progress on stderr
  --platform P OS/ARCH[/VARIANT] whose artifact to take when ARTIFACT names an image index
  -h, --help   this text
)";
}  // namespace

int cmd_materialize(int argc, char** argv) {
    enum { kJobs = 1000, kQuiet, kPlatform };
    static const auto opts = with_registry_options({
        {"jobs", required_argument, nullptr, kJobs},
        {"quiet", no_argument, nullptr, kQuiet},
        {"platform", required_argument, nullptr, kPlatform},
        {"help", no_argument, nullptr, 'h'},
    });
    RegistryOptions ropt = default_registry_options();
    std::optional<Platform> platform;
    unsigned jobs = 0;
    bool quiet = false;
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
            if (!p) return usage_error("materialize", "--platform: " + p.error().what());
            platform = *p;
            break;
        }
        case kJobs: jobs = static_cast<unsigned>(std::max(1, std::atoi(optarg))); break;
        case kQuiet: quiet = true; break;
        default:
            if (parse_registry_option(c, optarg, ropt)) break;
            return usage_error("materialize", "unknown option");
        }
    }
    if (argc - optind != 2) return usage_error("materialize", "expected ARTIFACT and DIR");
    RegistrySession registry(ropt);
    auto art = open_artifact(argv[optind], registry, platform);
    if (!art) return report_error(art.error());
    ThreadPool pool(jobs ? jobs : ThreadPool::default_workers());
    ProgressLine line(!quiet);
    auto r = materialize_artifact(*art->store, art->artifact, argv[optind + 1], pool,
                                  [&](uint64_t done, uint64_t total) {
                                      line.update(fmt::format("materialize: {}/{} chunks", done, total),
                                                  done == total);
                                  });
    line.finish();
    if (!r) return report_error(r.error().prefix(argv[optind]));
    return kExitOk;
}

}  // namespace erostream::cli
