// The chunk table that rides at the end of the metadata blob (lib/artifact_format.h): written by
// the converter, parsed (as untrusted input) by everything that reads an artifact.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "artifact_format.h"
#include "result.h"
#include "sha256.h"

namespace erostream {

struct DeviceChunks {
    Sha256Digest blob_digest{};
    Sha256Digest layer_digest{};
    uint64_t blob_size = 0;
    uint64_t device_blocks = 0;
    std::vector<erostream_chunk_record> chunks;  // blkaddr order, contiguous from 0
};

struct MetadataBlob {
    std::string_view erofs;  // the EROFS image (a view into the blob)
    uint32_t chunk_bits = 0;
    std::vector<DeviceChunks> devices;
};

// EROFS image + chunk table + footer.
std::string assemble_metadata_blob(std::string erofs_image, uint32_t chunk_bits,
                                   const std::vector<DeviceChunks>& devices);

// Splits and validates a metadata blob: footer, table digest, device records, and that each
// device's chunks tile it exactly and its frames tile the blob before the seek table. The views
// point into `blob`. Pure, for fuzzing.
Result<MetadataBlob> parse_metadata_blob(std::string_view blob);

}  // namespace erostream
