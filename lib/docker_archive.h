// `docker save` archives (an uncompressed tar) as an ImageSource. Two layouts exist:
//  - Docker's image spec v1.2: manifest.json [{Config, RepoTags, Layers}], a config JSON and one
//    tar per layer (plain, or gzip/zstd-compressed by some writers). There is no distribution
//    manifest: a Docker schema 2 manifest is synthesized from the config and layer members.
//  - Docker 25+: the same manifest.json plus an OCI image layout (oci-layout, index.json,
//    blobs/sha256/...). The real manifest from the layout is used when one has the config of the
//    selected manifest.json entry. An archive with only the OCI layout is read as one.
// The archive is indexed once (tar headers only); blobs are pread windows of the file.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "image_source.h"
#include "result.h"

namespace erostream {

// `name`: a RepoTags entry (compared after normalize_docker_name), or "@N" for the N-th image
// (0-based) of manifest.json; nullopt: the archive must hold exactly one image. For an archive
// with only an OCI layout, `name` is matched against org.opencontainers.image.ref.name and
// io.containerd.image.name.
Result<std::unique_ptr<ImageSource>> open_docker_archive(const std::string& file,
                                                         std::optional<std::string> name);

// Docker's normal form of an image name: "busybox" -> "docker.io/library/busybox:latest",
// "repo:t" -> "docker.io/library/repo:t", "localhost:5000/x" -> "localhost:5000/x:latest".
std::string normalize_docker_name(std::string_view name);

}  // namespace erostream
