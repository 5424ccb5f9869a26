// A streaming reader of tar archives (layer tars): ustar, GNU (long names 'L'/'K', base-256
// numbers), PAX ('x' per entry, 'g' global) and old V7 headers. It hands out entries one by one
// and their content through read(); it never seeks, so it works on a decoder's output.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "byte_stream.h"
#include "fs_tree.h"
#include "result.h"

namespace erostream {

enum class TarEntryType { Regular, Directory, Symlink, Hardlink, CharDevice, BlockDevice, Fifo };

const char* tar_entry_type_name(TarEntryType t);

struct TarEntry {
    std::string path;  // as in the archive after PAX/GNU long-name overrides; NOT normalised
    TarEntryType type = TarEntryType::Regular;
    uint32_t mode = 0;  // the 07777 bits only
    uint32_t uid = 0;
    uint32_t gid = 0;
    int64_t mtime = 0;  // seconds since the epoch; may be negative
    uint32_t mtime_nsec = 0;
    uint64_t size = 0;     // content bytes of regular files; 0 for every other type
    std::string linkname;  // symlink target or hardlink target
    uint32_t devmajor = 0;
    uint32_t devminor = 0;
    std::vector<Xattr> xattrs;   // PAX SCHILY.xattr.NAME, sorted by name, names unique
    uint64_t header_offset = 0;  // offset of this entry's first header (extension headers included)
};

// Reads a tar stream from `in` (borrowed: the caller keeps it alive). Errors name the byte offset
// and, once known, the entry path: "entry usr/bin/x at offset 1234: truncated tar stream (...)";
// before it is known: "tar header at offset N: ..."; "bad tar header checksum at offset N".
//
// Priority of overrides: PAX per-entry > PAX global > GNU 'L'/'K' > the ustar header fields. A PAX
// record with an empty value cancels the global value (the header field is used), except for
// SCHILY.xattr.* where an empty value is an empty xattr. Negative base-256 numbers are rejected
// except in the mtime field (Go's archive/tar writes pre-1970 times that way). Header-only types
// (links, devices, directories, fifos) have no content even when their size field says otherwise,
// as POSIX says to ignore it; a V7 regular file whose name ends in '/' is a directory whose data
// blocks (if any) are skipped.
class TarReader {
public:
    explicit TarReader(ByteStream& in);
    TarReader(const TarReader&) = delete;
    TarReader& operator=(const TarReader&) = delete;

    // Skips whatever content of the previous entry was not read (and its padding), then returns
    // the next entry. nullopt at the end of the archive: one or two zero blocks, or the end of the
    // stream exactly at a header boundary. At the end the underlying stream is read to its end, so
    // that digest checks stacked below (DigestingStream) run; bytes after the end-of-archive marker
    // are ignored. After an error the reader stays failed.
    Result<std::optional<TarEntry>> next();

    // Content of the current entry; 0 at its end. Large reads go straight from the underlying
    // stream into `buf`.
    Result<size_t> read(void* buf, size_t n);

    // Bytes of the tar stream consumed so far.
    uint64_t offset() const { return pos_; }

private:
    Result<size_t> raw_read(void* buf, size_t n);
    Result<bool> raw_read_full(void* buf, size_t n);  // false: EOF before the first byte
    Result<uint64_t> raw_skip(uint64_t n);
    Result<std::string> read_extension(uint64_t size, uint64_t limit, uint64_t offset);
    Result<std::optional<TarEntry>> read_next();
    Result<void> drain();
    Error entry_error(std::string message) const;

    ByteStream& in_;
    std::unique_ptr<uint8_t[]> buf_;
    size_t buf_begin_ = 0;
    size_t buf_end_ = 0;
    uint64_t pos_ = 0;  // offset in the tar stream of the next byte handed out

    std::map<std::string, std::string> global_pax_;
    bool done_ = false;
    std::optional<Error> failed_;

    // The current entry: for error messages and content reads.
    std::string cur_path_;
    uint64_t cur_offset_ = 0;
    uint64_t content_left_ = 0;
    uint64_t content_size_ = 0;
    uint64_t padding_ = 0;
};

// Pure parsers of untrusted header fields (fuzz targets).

// A numeric header field: octal digits, optionally led by spaces and ended by a space or NUL
// (all-blank is 0), or GNU base-256 (first byte has the high bit). A negative base-256 value is
// an error, as is a value above 2^64-1.
Result<uint64_t> parse_tar_number(std::string_view field);
// Same, but a negative base-256 value is returned as such (for mtime).
Result<int64_t> parse_tar_signed_number(std::string_view field);

// PAX extended header data: records "LEN key=value\n" where LEN counts the whole record in
// decimal. Values are raw bytes (may contain '=' or newlines). Later records override earlier
// ones in `out`; empty values are stored as empty strings.
Result<void> parse_pax_records(std::string_view data, std::map<std::string, std::string>& out);

// PAX time "SECONDS[.FRACTION]", possibly negative; fraction digits beyond nanoseconds are
// dropped. -1.5 is {-2, 500000000}.
struct PaxTime {
    int64_t sec = 0;
    uint32_t nsec = 0;
};
Result<PaxTime> parse_pax_time(std::string_view s);

// The header checksum: the unsigned byte sum with the chksum field counted as spaces; the
// historic signed sum is accepted too.
bool tar_checksum_ok(std::span<const uint8_t, 512> block);

}  // namespace erostream
