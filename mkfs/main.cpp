// erostream-mkfs: turns OCI images into erostream streaming artifacts, and reads them back.
#include <cstdio>
#include <cstring>
#include <string_view>

#include "cli.h"

namespace {

constexpr const char* kUsage = R"(Usage: erostream-mkfs COMMAND [OPTIONS] ARGS

Commands:
  convert SOURCE DEST        convert an image into a streaming artifact
  materialize ARTIFACT DIR   write the artifact's EROFS metadata and device images to DIR
  inspect ARTIFACT           sizes, counts, compression and dedup ratios
  check ARTIFACT             verify every digest and the metadata's structure
  discover IMAGE             list the erostream artifacts of an image in a registry

SOURCE: oci:DIR[:TAG] | oci:DIR@sha256:HEX | docker-archive:FILE[:TAG]
        | docker://[REGISTRY/]REPO[:TAG][@sha256:HEX]
DEST:   oci:DIR[:TAG] | docker://[REGISTRY/]REPO[:TAG]
ARTIFACT: oci:DIR[:TAG] | oci:DIR@sha256:HEX | docker://[REGISTRY/]REPO(:TAG|@sha256:HEX)
        (given an image, its artifact is found through the registry's referrers)
IMAGE:  docker://[REGISTRY/]REPO[:TAG] | docker://[REGISTRY/]REPO@sha256:HEX

Run 'erostream-mkfs COMMAND --help' for a command's options.
)";

}  // namespace

int main(int argc, char** argv) {
    using namespace erostream::cli;
    if (argc < 2) {
        std::fputs(kUsage, stderr);
        return kExitUsage;
    }
    std::string_view cmd = argv[1];
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
        std::fputs(kUsage, stdout);
        return kExitOk;
    }
    if (cmd == "--version") {
        std::puts("erostream-mkfs 0.1.0");
        return kExitOk;
    }
    init_logging(std::getenv("EROSTREAM_DEBUG") != nullptr);
    if (cmd == "convert") return cmd_convert(argc - 1, argv + 1);
    if (cmd == "materialize") return cmd_materialize(argc - 1, argv + 1);
    if (cmd == "inspect") return cmd_inspect(argc - 1, argv + 1);
    if (cmd == "discover") return cmd_discover(argc - 1, argv + 1);
    if (cmd == "check") return cmd_check(argc - 1, argv + 1);
    std::fprintf(stderr, "erostream-mkfs: unknown command '%s'\n\n%s", argv[1], kUsage);
    return kExitUsage;
}
