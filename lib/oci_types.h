// OCI image-spec and Docker schema 2 documents: descriptors, manifests, indexes, platforms, and
// the media types erostream reads and writes. Parsers take untrusted bytes and never throw.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

namespace erostream {

namespace media_type {
// OCI image-spec v1.1
inline constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view kOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view kOciLayer = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view kOciLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view kOciLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view kOciLayerNondist =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
inline constexpr std::string_view kOciLayerNondistGzip =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
inline constexpr std::string_view kOciLayerNondistZstd =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
inline constexpr std::string_view kOciEmpty = "application/vnd.oci.empty.v1+json";
// Docker image manifest v2 schema 2
inline constexpr std::string_view kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view kDockerManifestList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view kDockerConfig = "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view kDockerLayerGzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
// Not in the registry spec, but what `docker save`-style sources (and containerd) call an
// uncompressed layer; also containerd's zstd variant.
inline constexpr std::string_view kDockerLayer = "application/vnd.docker.image.rootfs.diff.tar";
inline constexpr std::string_view kDockerLayerZstd =
    "application/vnd.docker.image.rootfs.diff.tar.zstd";
inline constexpr std::string_view kDockerLayerForeignGzip =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
inline constexpr std::string_view kDockerLayerForeign =
    "application/vnd.docker.image.rootfs.foreign.diff.tar";
// erostream's own artifact
inline constexpr std::string_view kErostreamArtifact = "application/vnd.erostream.v1";
inline constexpr std::string_view kErostreamMeta = "application/vnd.erostream.meta.v1.erofs";
inline constexpr std::string_view kErostreamData = "application/vnd.erostream.data.v1.zstd";
}  // namespace media_type

namespace annotation {
inline constexpr std::string_view kRefName = "org.opencontainers.image.ref.name";
}  // namespace annotation

bool is_manifest_media_type(std::string_view mt);      // OCI manifest or Docker schema 2
bool is_index_media_type(std::string_view mt);         // OCI index or Docker manifest list
bool is_image_config_media_type(std::string_view mt);  // OCI or Docker image config

struct Platform {
    std::string os, architecture, variant, os_version;
    std::string str() const;  // "os/arch[/variant]"
    bool operator==(const Platform&) const = default;
};
// "linux/amd64", "linux/arm64/v8"; common aliases (x86_64, aarch64, armhf, i386...) are mapped to
// the OCI names.
Result<Platform> parse_platform(std::string_view s);
// The machine this runs on (uname), os "linux".
Platform host_platform();
// os and architecture must be equal; the variant only when `want` names one, with the usual
// defaults (arm64 = v8, arm = v7, amd64 = v1) so "linux/arm64/v8" matches a manifest that says
// "linux/arm64"; os_version only when `want` names one.
bool platform_matches(const Platform& want, const Platform& have);
// The os/architecture/variant of an image config; nullopt when it names no os and architecture
// or is not JSON.
std::optional<Platform> platform_of_config(std::string_view config_json);

struct Descriptor {
    std::string media_type, digest;  // digest "sha256:<hex>" (validated by the parsers)
    int64_t size = 0;
    std::map<std::string, std::string> annotations;
    std::vector<std::string> urls;
    std::optional<Platform> platform;
    std::string artifact_type;
    bool operator==(const Descriptor&) const = default;
};

struct Manifest {
    int schema_version = 2;
    std::string media_type, artifact_type;  // media_type empty when the document has none
    Descriptor config;
    std::vector<Descriptor> layers;
    std::optional<Descriptor> subject;
    std::map<std::string, std::string> annotations;
    bool operator==(const Manifest&) const = default;
};

struct Index {
    int schema_version = 2;
    std::string media_type, artifact_type;
    std::vector<Descriptor> manifests;
    std::optional<Descriptor> subject;
    std::map<std::string, std::string> annotations;
    bool operator==(const Index&) const = default;
};

// OCI image manifest or Docker schema 2 manifest. Errors name the field:
// "manifest: layers[2].digest: missing". Unknown fields are ignored (keep the bytes if you need
// them); digests other than sha256 are rejected.
Result<Manifest> parse_manifest(std::string_view json);
// OCI image index or Docker manifest list (also an OCI layout's index.json).
Result<Index> parse_index(std::string_view json);
Result<Descriptor> parse_descriptor(std::string_view json);

// Deterministic: fixed key order (the order of the Go structs of image-spec), no whitespace,
// empty optional fields left out. Strings that are not UTF-8 get U+FFFD replacements.
std::string serialize_manifest(const Manifest&);
std::string serialize_index(const Index&);
std::string serialize_descriptor(const Descriptor&);

// The document's mediaType, or a guess from its keys ("manifests": OCI index; "config" or
// "layers": OCI manifest); "" when neither or not JSON.
std::string media_type_of_json(std::string_view json);

enum class LayerKind { Tar, TarGzip, TarZstd };
// Error "unknown layer media type 'X'" for anything that is not a tar layer.
Result<LayerKind> layer_kind(std::string_view media_type);

}  // namespace erostream
