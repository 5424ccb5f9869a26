#include "chunk_table.h"

#include <cstring>

#include "erofs_format.h"

namespace erostream {

namespace {
template <class T>
void append_pod(std::string& s, const T& v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof(v));
}
template <class T>
T load_pod(std::string_view s, size_t off) {
    T v;
    std::memcpy(&v, s.data() + off, sizeof(v));
    return v;
}
}  // namespace

std::string assemble_metadata_blob(std::string erofs_image, uint32_t chunk_bits,
                                   const std::vector<DeviceChunks>& devices) {
    std::string table;
    erostream_table_header hdr{};
    std::memcpy(hdr.magic, EROSTREAM_TABLE_MAGIC, 8);
    hdr.device_count = static_cast<uint32_t>(devices.size());
    hdr.chunk_bits = chunk_bits;
    for (const auto& d : devices) hdr.chunk_count += d.chunks.size();
    append_pod(table, hdr);
    uint64_t first = 0;
    for (const auto& d : devices) {
        erostream_device_record rec{};
        std::memcpy(rec.blob_sha256, d.blob_digest.data(), 32);
        std::memcpy(rec.layer_sha256, d.layer_digest.data(), 32);
        rec.blob_size = d.blob_size;
        rec.device_blocks = d.device_blocks;
        rec.first_chunk = first;
        rec.chunk_count = d.chunks.size();
        first += d.chunks.size();
        append_pod(table, rec);
    }
    for (const auto& d : devices)
        table.append(reinterpret_cast<const char*>(d.chunks.data()),
                     d.chunks.size() * sizeof(erostream_chunk_record));

    erostream_footer f{};
    std::memcpy(f.magic, EROSTREAM_FOOTER_MAGIC, 8);
    f.version = EROSTREAM_FORMAT_VERSION;
    f.erofs_blocks = static_cast<uint32_t>(erofs_image.size() / EROFS_BLKSIZ);
    f.table_offset = erofs_image.size();
    f.table_size = table.size();
    auto digest = sha256(table);
    std::memcpy(f.table_sha256, digest.data(), 32);

    std::string blob = std::move(erofs_image);
    blob += table;
    append_pod(blob, f);
    return blob;
}

Result<MetadataBlob> parse_metadata_blob(std::string_view blob) {
    if (blob.size() < sizeof(erostream_footer) + EROFS_BLKSIZ)
        return failf("metadata blob of {} bytes is too short", blob.size());
    auto f = load_pod<erostream_footer>(blob, blob.size() - sizeof(erostream_footer));
    if (std::memcmp(f.magic, EROSTREAM_FOOTER_MAGIC, 8) != 0)
        return fail("metadata blob has no erostream footer (not an erostream artifact?)");
    if (f.version != EROSTREAM_FORMAT_VERSION)
        return failf("metadata blob format version {} is not supported (this build reads {})",
                     uint32_t{f.version}, EROSTREAM_FORMAT_VERSION);
    uint64_t erofs_len = uint64_t{f.erofs_blocks} * EROFS_BLKSIZ;
    if (f.table_offset != erofs_len || f.table_size > blob.size() ||
        erofs_len + f.table_size + sizeof(erostream_footer) != blob.size())
        return fail("metadata blob footer: table offset/size do not match the blob");
    std::string_view table = blob.substr(f.table_offset, f.table_size);
    if (std::memcmp(sha256(table).data(), f.table_sha256, 32) != 0)
        return fail("metadata blob: chunk table digest mismatch");
    if (table.size() < sizeof(erostream_table_header)) return fail("chunk table: truncated header");
    auto hdr = load_pod<erostream_table_header>(table, 0);
    if (std::memcmp(hdr.magic, EROSTREAM_TABLE_MAGIC, 8) != 0) return fail("chunk table: bad magic");
    if (hdr.chunk_bits < EROFS_BLKSIZ_BITS || hdr.chunk_bits > 24)
        return failf("chunk table: chunk size 2^{} out of range", uint32_t{hdr.chunk_bits});
    uint64_t need = sizeof(hdr) + uint64_t{hdr.device_count} * sizeof(erostream_device_record);
    if (hdr.device_count > 65535 || need > table.size() ||
        hdr.chunk_count > (table.size() - need) / sizeof(erostream_chunk_record) ||
        need + hdr.chunk_count * sizeof(erostream_chunk_record) != table.size())
        return fail("chunk table: sizes do not add up");

    MetadataBlob out;
    out.erofs = blob.substr(0, erofs_len);
    out.chunk_bits = hdr.chunk_bits;
    size_t chunk_base = need;
    uint64_t next_first = 0;
    for (uint32_t i = 0; i < hdr.device_count; ++i) {
        auto rec = load_pod<erostream_device_record>(
            table, sizeof(hdr) + i * sizeof(erostream_device_record));
        DeviceChunks d;
        std::memcpy(d.blob_digest.data(), rec.blob_sha256, 32);
        std::memcpy(d.layer_digest.data(), rec.layer_sha256, 32);
        d.blob_size = rec.blob_size;
        d.device_blocks = rec.device_blocks;
        if (rec.first_chunk != next_first || rec.chunk_count > hdr.chunk_count - next_first)
            return failf("chunk table: device {}: chunk range out of order", i + 1);
        next_first += rec.chunk_count;
        d.chunks.resize(rec.chunk_count);
        std::memcpy(d.chunks.data(),
                    table.data() + chunk_base + rec.first_chunk * sizeof(erostream_chunk_record),
                    rec.chunk_count * sizeof(erostream_chunk_record));
        uint64_t blk = 0, off = 0;
        for (size_t c = 0; c < d.chunks.size(); ++c) {
            const auto& ch = d.chunks[c];
            if (ch.blkaddr != blk || ch.blocks == 0 || ch.compressed_offset != off ||
                ch.compressed_size == 0 || (uint64_t{ch.blocks} << EROFS_BLKSIZ_BITS) > (1u << hdr.chunk_bits))
                return failf("chunk table: device {} chunk {}: does not follow the previous one", i + 1, c);
            blk += ch.blocks;
            off += ch.compressed_size;
        }
        if (blk != d.device_blocks) return failf("chunk table: device {}: chunks do not cover the device", i + 1);
        uint64_t seek_table = 8 + d.chunks.size() * 8 + 9;
        if (off + seek_table != d.blob_size)
            return failf("chunk table: device {}: frames and seek table do not make up the blob size", i + 1);
        out.devices.push_back(std::move(d));
    }
    if (next_first != hdr.chunk_count) return fail("chunk table: unclaimed chunk records");
    return out;
}

}  // namespace erostream
