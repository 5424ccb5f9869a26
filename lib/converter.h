// The converter: an image (any ImageSource) in, one streaming artifact per platform manifest out,
// written into an OCI layout. Each layer is read once as a stream (download, decompression, tar
// parsing on the calling thread; hashing and compression on the pool), never unpacked to disk.
// Nothing becomes visible in the destination until every layer converted: blobs are written to
// temporary files and committed, with the index, only at the end.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "data_blob.h"
#include "erofs_builder.h"
#include "image_source.h"
#include "oci_layout.h"
#include "oci_types.h"
#include "result.h"

namespace erostream {

struct ConvertProgress {
    size_t layer = 0;  // 0-based
    size_t layers = 0;
    std::string layer_digest;
    uint64_t bytes_read = 0;   // of the (compressed) layer blob
    uint64_t bytes_total = 0;  // its size per the manifest
    uint64_t entries = 0;
    bool layer_done = false;
};

struct ConvertOptions {
    uint32_t chunk_bits = 20;   // 1 MiB chunks
    uint64_t inline_max = 2048;  // regular files up to this size live in the metadata blob
    int zstd_level = 3;
    unsigned jobs = 0;  // worker threads; 0 = one per core
    std::optional<Platform> platform;
    std::function<void(const ConvertProgress&)> progress;  // called from the converting thread
};

struct LayerReport {
    std::string layer_digest;
    std::string media_type;
    std::string blob_digest;
    uint64_t blob_size = 0;
    uint64_t device_blocks = 0;
    uint64_t entries = 0;
    uint64_t inline_files = 0;
    DataBlobStats stats;
};

struct ArtifactReport {
    Descriptor artifact;  // the artifact manifest
    std::string tag;      // what it is called in the destination index, empty if untagged
    Descriptor subject;   // the source manifest
    std::string platform;
    Descriptor metadata;
    ErofsBuildStats erofs;
    std::vector<LayerReport> layers;
};

Result<std::vector<ArtifactReport>> convert_image(ImageSource& source, const OciLayout& dest,
                                                  const std::optional<std::string>& tag,
                                                  const ConvertOptions& opt);

// Names used inside the artifact.
inline constexpr const char* kAnnotationLayerDigest = "io.erostream.layer.digest";
inline constexpr const char* kAnnotationDeviceSize = "io.erostream.device.size";
inline constexpr const char* kAnnotationChunks = "io.erostream.chunks";
inline constexpr const char* kAnnotationChunkSize = "io.erostream.chunk-size";
inline constexpr const char* kAnnotationFormat = "io.erostream.format";
inline constexpr const char* kAnnotationTitle = "org.opencontainers.image.title";

}  // namespace erostream
