// The erostream streaming artifact, byte for byte (docs/format.md tells the whole story).
//
// Metadata blob = an EROFS image (4096-byte blocks, ending on a block boundary)
//               + the chunk table (this header's structs) + an 64-byte footer at the very end.
// The kernel reads only the EROFS blocks; the chunk table rides along so that every chunk's
// sha256 is covered by the metadata blob's digest, which the artifact manifest pins. A node
// therefore verifies every byte it writes into a cache against the manifest digest.
//
// Data blob = one zstd frame per stored chunk, in device order, then a zstd seekable-format seek
// table in a skippable frame. `zstd -d` of a data blob yields its device image exactly, since
// each frame holds a chunk padded with zeros to a 4096-byte multiple.
#pragma once

#include <cstdint>

namespace erostream {

inline constexpr char EROSTREAM_FOOTER_MAGIC[8] = {'E', 'R', 'O', 'S', 'T', 'R', 'M', '1'};
inline constexpr char EROSTREAM_TABLE_MAGIC[8] = {'E', 'R', 'O', 'S', 'C', 'T', 'B', '1'};
inline constexpr uint32_t EROSTREAM_FORMAT_VERSION = 1;

// Last 64 bytes of the metadata blob.
struct erostream_footer {
    char magic[8];           // EROSTREAM_FOOTER_MAGIC
    uint32_t version;        // EROSTREAM_FORMAT_VERSION
    uint32_t erofs_blocks;   // length of the EROFS image in 4096-byte blocks
    uint64_t table_offset;   // where the chunk table starts (== erofs_blocks * 4096)
    uint64_t table_size;     // bytes of the chunk table
    uint8_t table_sha256[32];  // sha256 of the chunk table: a cheap check when the blob is cached
} __attribute__((packed));

// Chunk table: header, device_count device records, then all chunk records (device by device,
// each device's records in blkaddr order, together covering the device without gaps).
struct erostream_table_header {
    char magic[8];          // EROSTREAM_TABLE_MAGIC
    uint32_t device_count;  // == EROFS extra_devices
    uint32_t chunk_bits;    // chunk size of the conversion (log2); chunks may be shorter
    uint64_t chunk_count;   // records that follow the device records
} __attribute__((packed));

struct erostream_device_record {
    uint8_t blob_sha256[32];  // digest of the data blob (also the EROFS device slot's tag in hex)
    uint64_t blob_size;       // compressed size of the whole data blob, seek table included
    uint64_t device_blocks;   // uncompressed device size in 4096-byte blocks
    uint64_t first_chunk;     // index of this device's first chunk record
    uint64_t chunk_count;     // number of chunk records of this device
    uint8_t layer_sha256[32]; // digest of the source layer this device was converted from
} __attribute__((packed));

struct erostream_chunk_record {
    uint64_t compressed_offset;  // of the chunk's zstd frame in the data blob
    uint32_t compressed_size;    // frame length
    uint32_t blocks;             // uncompressed length in 4096-byte blocks (zero padded)
    uint32_t blkaddr;            // start block in the device
    uint32_t reserved;
    uint8_t sha256[32];          // of the blocks * 4096 uncompressed bytes
} __attribute__((packed));

static_assert(sizeof(erostream_footer) == 64);
static_assert(sizeof(erostream_table_header) == 24);
static_assert(sizeof(erostream_device_record) == 96);
static_assert(sizeof(erostream_chunk_record) == 56);

// zstd seekable format (contrib/seekable_format in the zstd sources): the seek table is a
// skippable frame holding one entry per frame and a 9-byte footer.
inline constexpr uint32_t ZSTD_SKIPPABLE_SEEKTABLE_MAGIC = 0x184D2A5E;
inline constexpr uint32_t ZSTD_SEEKABLE_MAGIC = 0x8F92EAB1;

}  // namespace erostream
