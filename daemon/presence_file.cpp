#include "presence_file.h"

#include <bit>
#include <cstring>

namespace erostream {

namespace {
constexpr char kMagic[8] = {'E', 'R', 'O', 'S', 'P', 'R', 'S', '1'};
constexpr uint32_t kVersion = 1;

template <class T>
void put(std::string& s, size_t off, T v) {
    std::memcpy(s.data() + off, &v, sizeof v);
}
template <class T>
T get(std::string_view s, size_t off) {
    T v;
    std::memcpy(&v, s.data() + off, sizeof v);
    return v;
}
}  // namespace

size_t Bitset::count() const {
    size_t n = 0;
    for (uint8_t b : bytes_) n += static_cast<size_t>(std::popcount(b));
    return n;
}

Sha256Digest chunk_table_digest(std::span<const erostream_chunk_record> chunks) {
    return sha256(std::string_view(reinterpret_cast<const char*>(chunks.data()),
                                   chunks.size() * sizeof(erostream_chunk_record)));
}

std::string encode_presence_header(const PresenceIdentity& id) {
    std::string h(kPresenceHeaderSize, '\0');
    std::memcpy(h.data(), kMagic, 8);
    put<uint32_t>(h, 8, kVersion);
    put<uint32_t>(h, 12, static_cast<uint32_t>(kPresenceHeaderSize));
    put<uint64_t>(h, 16, id.chunk_count);
    put<uint64_t>(h, 24, id.device_blocks);
    put<uint64_t>(h, 32, id.img_ino);
    std::memcpy(h.data() + 40, id.blob_sha256.data(), 32);
    std::memcpy(h.data() + 72, id.table_sha256.data(), 32);
    return h;
}

Result<Bitset> parse_presence_file(std::string_view bytes, const PresenceIdentity& expect) {
    if (bytes.size() < kPresenceHeaderSize)
        return failf("presence file: {} bytes, shorter than its header", bytes.size());
    if (std::memcmp(bytes.data(), kMagic, 8) != 0) return fail("presence file: bad magic");
    if (get<uint32_t>(bytes, 8) != kVersion)
        return failf("presence file: version {} (this daemon knows {})", get<uint32_t>(bytes, 8), kVersion);
    if (get<uint32_t>(bytes, 12) != kPresenceHeaderSize)
        return failf("presence file: header size {}", get<uint32_t>(bytes, 12));
    PresenceIdentity id;
    id.chunk_count = get<uint64_t>(bytes, 16);
    id.device_blocks = get<uint64_t>(bytes, 24);
    id.img_ino = get<uint64_t>(bytes, 32);
    std::memcpy(id.blob_sha256.data(), bytes.data() + 40, 32);
    std::memcpy(id.table_sha256.data(), bytes.data() + 72, 32);
    if (id.blob_sha256 != expect.blob_sha256) return fail("presence file: for another blob");
    if (id.table_sha256 != expect.table_sha256) return fail("presence file: for another chunk table");
    if (id.chunk_count != expect.chunk_count || id.device_blocks != expect.device_blocks)
        return failf("presence file: {} chunks / {} blocks, expected {} / {}", id.chunk_count,
                     id.device_blocks, expect.chunk_count, expect.device_blocks);
    if (id.img_ino != expect.img_ino)
        return failf("presence file: written for cache file inode {}, the cache file is inode {}",
                     id.img_ino, expect.img_ino);
    size_t nbytes = (expect.chunk_count + 7) / 8;
    if (bytes.size() != kPresenceHeaderSize + nbytes)
        return failf("presence file: {} bytes, expected {}", bytes.size(), kPresenceHeaderSize + nbytes);
    Bitset bits(expect.chunk_count);
    std::memcpy(bits.bytes().data(), bytes.data() + kPresenceHeaderSize, nbytes);
    if (expect.chunk_count % 8 != 0 && nbytes > 0) {
        uint8_t tail = bits.bytes()[nbytes - 1];
        if (tail >> (expect.chunk_count % 8)) return fail("presence file: bits set past the last chunk");
    }
    return bits;
}

}  // namespace erostream
