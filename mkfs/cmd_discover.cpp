#include <getopt.h>

#include <nlohmann/json.hpp>

#include <cstdio>

#include "cli.h"
#include "oci_types.h"
#include "registry/registry_session.h"
#include "registry/registry_store.h"

namespace erostream::cli {

namespace {
constexpr const char* kHelp = R"(Usage: erostream-mkfs discover [OPTIONS] IMAGE

Lists the erostream artifacts that refer to an image in a registry: through the registry's
referrers API (GET /v2/REPO/referrers/DIGEST), or, where the registry has none, through the
subject's sha256-<hex> tag. For an image index, the artifacts of its platform manifests are
listed too (only --platform's when given). Other referrers (signatures, SBOMs) are left out.

IMAGE   docker://[REGISTRY/]REPO[:TAG] | docker://[REGISTRY/]REPO@sha256:HEX

Options:
  --json         print a JSON array of descriptors (mediaType, digest, size, artifactType,
                 annotations); [] when there are none
  --platform P   OS/ARCH[/VARIANT]: for an index, only that platform's artifacts
  -h, --help     this text
)";
}  // namespace

int cmd_discover(int argc, char** argv) {
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
        case kJson: json = true; break;
        case kPlatform: {
            auto p = parse_platform(optarg);
            if (!p) return usage_error("discover", "--platform: " + p.error().what());
            platform = *p;
            break;
        }
        default:
            if (parse_registry_option(c, optarg, ropt)) break;
            return usage_error("discover", "unknown option");
        }
    }
    if (argc - optind != 1) return usage_error("discover", "expected IMAGE");
    std::string ref = argv[optind];
    if (!ref.starts_with("docker://")) return usage_error("discover", "IMAGE must be docker://[REGISTRY/]REPO[:TAG|@DIGEST]");
    auto img = parse_image_reference(ref);
    if (!img) return report_error(img.error());
    RegistrySession registry(ropt);
    auto client = registry.client(img->registry);
    if (!client) return report_error(client.error());
    auto found = discover_artifacts(**client, *img, platform);
    if (!found) return report_error(found.error());
    if (json) {
        nlohmann::json out = nlohmann::json::array();
        for (const auto& d : *found) {
            nlohmann::json j = {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size},
                                {"artifactType", d.artifact_type}};
            j["annotations"] = d.annotations.empty() ? nlohmann::json::object() : nlohmann::json(d.annotations);
            out.push_back(std::move(j));
        }
        std::puts(out.dump(2).c_str());
        return kExitOk;
    }
    if (found->empty()) {
        std::fprintf(stderr, "%s: no erostream artifacts\n", ref.c_str());
        return kExitOk;
    }
    for (const auto& d : *found)
        std::printf("docker://%s/%s@%s  %lld bytes\n", img->registry.c_str(), img->repository.c_str(), d.digest.c_str(),
                    static_cast<long long>(d.size));
    return kExitOk;
}

}  // namespace erostream::cli
