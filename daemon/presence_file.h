// The presence file beside a data blob's cache file (<cache>/blobs/<hex>.present): one bit per
// chunk record, set only after the chunk's verified bytes were written to <hex>.img AND
// fdatasync'ed, so that a set bit never lies, whatever dies when. A clear bit only costs a
// refetch. The header ties the bits to one cache file and one chunk table:
//
//   off size field
//     0    8 magic "EROSPRS1"
//     8    4 version (1)
//    12    4 header_size (128)
//    16    8 chunk_count
//    24    8 device_blocks
//    32    8 img_ino: inode number of <hex>.img (a replaced or recreated file resets the bits)
//    40   32 blob_sha256
//    72   32 table_sha256: sha256 of the device's chunk records as the metadata blob has them
//   104   24 reserved (0)
//   128      ceil(chunk_count / 8) bytes, bit i of byte i/8 (LSB first) = chunk i present
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "artifact_format.h"
#include "result.h"
#include "sha256.h"

namespace erostream {

inline constexpr size_t kPresenceHeaderSize = 128;

struct PresenceIdentity {
    uint64_t chunk_count = 0;
    uint64_t device_blocks = 0;
    uint64_t img_ino = 0;
    Sha256Digest blob_sha256{};
    Sha256Digest table_sha256{};
    bool operator==(const PresenceIdentity&) const = default;
};

class Bitset {
public:
    Bitset() = default;
    explicit Bitset(size_t bits) : bits_(bits), bytes_((bits + 7) / 8, 0) {}
    size_t size() const { return bits_; }
    bool test(size_t i) const { return (bytes_[i / 8] >> (i % 8)) & 1; }
    void set(size_t i) { bytes_[i / 8] = static_cast<uint8_t>(bytes_[i / 8] | (1u << (i % 8))); }
    void reset(size_t i) { bytes_[i / 8] = static_cast<uint8_t>(bytes_[i / 8] & ~(1u << (i % 8))); }
    size_t count() const;
    std::span<const uint8_t> bytes() const { return bytes_; }
    std::span<uint8_t> bytes() { return bytes_; }

private:
    size_t bits_ = 0;
    std::vector<uint8_t> bytes_;
};

// sha256 over a device's chunk records, for PresenceIdentity::table_sha256.
Sha256Digest chunk_table_digest(std::span<const erostream_chunk_record> chunks);

std::string encode_presence_header(const PresenceIdentity& id);

// Parses a presence file. Any mismatch with `expect` (another cache file, another chunk table),
// a bad header or a short file is an error: the caller starts over with no chunk present. Bits
// past chunk_count must be 0. Pure, for fuzzing.
Result<Bitset> parse_presence_file(std::string_view bytes, const PresenceIdentity& expect);

}  // namespace erostream
