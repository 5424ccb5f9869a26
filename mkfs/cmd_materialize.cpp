#include <getopt.h>

#include <cstdio>

#include "artifact_reader.h"
#include "cli.h"

namespace erostream::cli {

namespace {
constexpr const char* kHelp = R"(Usage: erostream-mkfs materialize [OPTIONS] ARTIFACT DIR

Writes DIR/meta.erofs and DIR/device-1.img .. DIR/device-N.img (each data blob's uncompressed
device, in device-table order), verifying every chunk against the digests in the metadata, so
that the kernel can mount meta.erofs with device=DIR/device-1.img,... and no daemon.

ARTIFACT  oci:DIR:TAG | oci:DIR@sha256:HEX naming an erostream artifact

Options:
  --jobs N     worker threads (default: one per core)
  --quiet      no progress on stderr
  -h, --help   this text
)";
}  // namespace

int cmd_materialize(int argc, char** argv) {
    enum { kJobs = 1000, kQuiet };
    static const option opts[] = {
        {"jobs", required_argument, nullptr, kJobs},
        {"quiet", no_argument, nullptr, kQuiet},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    unsigned jobs = 0;
    bool quiet = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, nullptr)) != -1) {
        switch (c) {
        case 'h': std::fputs(kHelp, stdout); return kExitOk;
        case kJobs: jobs = static_cast<unsigned>(std::max(1, std::atoi(optarg))); break;
        case kQuiet: quiet = true; break;
        default: return usage_error("materialize", "unknown option");
        }
    }
    if (argc - optind != 2) return usage_error("materialize", "expected ARTIFACT and DIR");
    auto art = open_artifact(argv[optind]);
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
