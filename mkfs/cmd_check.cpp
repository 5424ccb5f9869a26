#include <getopt.h>

#include <nlohmann/json.hpp>

#include <cstdio>

#include "artifact_reader.h"
#include "cli.h"

#include <spdlog/spdlog.h>

namespace erostream::cli {

namespace {
constexpr const char* kHelp = R"(Usage: erostream-mkfs check [OPTIONS] ARTIFACT

Verifies an artifact: the manifest, the metadata blob's digest, chunk table and EROFS structure
(every inode, directory and chunk index), every data blob's digest and seek table, and every
chunk's decompressed sha256. Exits non-zero on any fault and names each one.

Options:
  --jobs N     worker threads (default: one per core)
  --json       print {"ok":..., "faults":[...]} on stdout
  -h, --help   this text
)";
}  // namespace

int cmd_check(int argc, char** argv) {
    enum { kJobs = 1000, kJson };
    static const option opts[] = {
        {"jobs", required_argument, nullptr, kJobs},
        {"json", no_argument, nullptr, kJson},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    unsigned jobs = 0;
    bool json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, nullptr)) != -1) {
        switch (c) {
        case 'h': std::fputs(kHelp, stdout); return kExitOk;
        case kJobs: jobs = static_cast<unsigned>(std::max(1, std::atoi(optarg))); break;
        case kJson: json = true; break;
        default: return usage_error("check", "unknown option");
        }
    }
    if (argc - optind != 1) return usage_error("check", "expected ARTIFACT");
    std::string ref = argv[optind];
    std::vector<std::string> faults;
    CheckReport rep;
    auto art = open_artifact(ref);
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
