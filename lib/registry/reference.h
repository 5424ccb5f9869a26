// Image references as users write them: [docker://][REGISTRY/]REPO[:TAG][@DIGEST], with Docker
// Hub's defaults (docker.io, "library/" for one-part names, "latest" when neither tag nor digest).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "result.h"

namespace erostream {

struct ImageReference {
    std::string registry;    // "docker.io", "localhost:5000", "[::1]:5000"
    std::string repository;  // "library/debian"
    std::optional<std::string> tag;
    std::optional<std::string> digest;  // "sha256:<hex>"

    // The host the registry API answers on: Docker Hub's API lives on registry-1.docker.io.
    std::string api_host() const;
    // The manifest reference to ask for: the digest when pinned, else the tag.
    std::string reference() const { return digest ? *digest : tag.value_or("latest"); }
    // "registry/repository[:tag][@digest]"
    std::string str() const;
};

inline constexpr std::string_view kDockerHubRegistry = "docker.io";
inline constexpr std::string_view kDockerHubApiHost = "registry-1.docker.io";

// Parses a reference; "docker://" in front is accepted and dropped. The registry part is the first
// path component when it has a '.' or ':' or is "localhost"; names are validated the way the
// distribution spec's grammar says (lowercase path components, tags of at most 128 characters).
Result<ImageReference> parse_image_reference(std::string_view s);

bool is_valid_tag(std::string_view tag);
bool is_valid_repository(std::string_view repo);

}  // namespace erostream
