#include "tar_reader.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace erostream {

namespace {

constexpr size_t kBlock = 512;
// The reader's own buffer serves headers and small reads; reads of at least kDirectRead bytes
// with an empty buffer go straight into the caller's buffer (no extra copy for big files).
constexpr size_t kBufferSize = 256 * 1024;
constexpr size_t kDirectRead = 64 * 1024;
// Extension headers are held in memory whole: bound them so a hostile archive cannot make us
// allocate without limit. PATH_MAX is 4096; xattr values are at most 64 KiB each on Linux.
constexpr uint64_t kMaxLongName = 1 << 20;
constexpr uint64_t kMaxPaxHeader = 16 << 20;

// ustar header layout (POSIX.1-1988), offsets and lengths.
struct Field {
    size_t off, len;
};
constexpr Field kName{0, 100}, kMode{100, 8}, kUid{108, 8}, kGid{116, 8}, kSize{124, 12},
    kMtime{136, 12}, kChksum{148, 8}, kLinkname{157, 100}, kMagic{257, 8}, kDevmajor{329, 8},
    kDevminor{337, 8}, kPrefix{345, 155};
constexpr size_t kTypeflag = 156;

std::string_view field(const uint8_t* block, Field f) {
    return {reinterpret_cast<const char*>(block) + f.off, f.len};
}

// A NUL-terminated string field (not terminated when it fills the field).
std::string cstr_field(const uint8_t* block, Field f) {
    std::string_view v = field(block, f);
    return std::string(v.substr(0, v.find('\0')));
}

uint64_t padding_for(uint64_t size) { return (kBlock - size % kBlock) % kBlock; }

bool all_zero(const uint8_t* block) {
    for (size_t i = 0; i < kBlock; ++i)
        if (block[i] != 0) return false;
    return true;
}

std::string type_char(char c) {
    if (c >= 0x20 && c < 0x7f) return std::string(1, c);
    return fmt::format("\\x{:02x}", static_cast<uint8_t>(c));
}

Result<uint64_t> parse_pax_uint(std::string_view key, std::string_view s) {
    if (s.empty()) return failf("PAX record {}: empty number", key);
    uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return failf("PAX record {}: invalid number '{}'", key, s);
        uint64_t d = static_cast<uint64_t>(c - '0');
        if (v > (std::numeric_limits<uint64_t>::max() - d) / 10)
            return failf("PAX record {}: number too large", key);
        v = v * 10 + d;
    }
    return v;
}

constexpr std::string_view kXattrPrefix = "SCHILY.xattr.";
constexpr std::string_view kSparsePrefix = "GNU.sparse.";

}  // namespace

const char* tar_entry_type_name(TarEntryType t) {
    switch (t) {
    case TarEntryType::Regular: return "regular file";
    case TarEntryType::Directory: return "directory";
    case TarEntryType::Symlink: return "symlink";
    case TarEntryType::Hardlink: return "hardlink";
    case TarEntryType::CharDevice: return "character device";
    case TarEntryType::BlockDevice: return "block device";
    case TarEntryType::Fifo: return "fifo";
    }
    return "unknown";
}

Result<uint64_t> parse_tar_number(std::string_view f) {
    if (!f.empty() && (static_cast<uint8_t>(f[0]) & 0x80)) {
        // GNU base-256: big-endian two's complement with the top bit of the first byte as marker.
        if (static_cast<uint8_t>(f[0]) & 0x40) return fail("negative base-256 number");
        uint64_t v = static_cast<uint8_t>(f[0]) & 0x3f;
        for (size_t i = 1; i < f.size(); ++i) {
            if (v >> 56) return fail("base-256 number does not fit 64 bits");
            v = (v << 8) | static_cast<uint8_t>(f[i]);
        }
        return v;
    }
    size_t i = 0;
    while (i < f.size() && f[i] == ' ') ++i;
    uint64_t v = 0;
    for (; i < f.size() && f[i] >= '0' && f[i] <= '7'; ++i) {
        if (v >> 61) return fail("octal number does not fit 64 bits");
        v = (v << 3) | static_cast<uint64_t>(f[i] - '0');
    }
    for (; i < f.size(); ++i)
        if (f[i] != ' ' && f[i] != '\0')
            return failf("invalid character '{}' in octal number field", type_char(f[i]));
    return v;
}

Result<int64_t> parse_tar_signed_number(std::string_view f) {
    if (!f.empty() && (static_cast<uint8_t>(f[0]) & 0xc0) == 0xc0) {
        // Negative: the whole field is one two's complement number; every bit above the low 63
        // must be a copy of the sign.
        uint64_t v = ~uint64_t{0};
        for (char c : f) {
            if ((v >> 55) != 0x1ff) return fail("negative base-256 number does not fit 64 bits");
            v = (v << 8) | static_cast<uint8_t>(c);
        }
        return static_cast<int64_t>(v);
    }
    uint64_t v = EROS_TRY(parse_tar_number(f));
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return fail("number does not fit a signed 64-bit value");
    return static_cast<int64_t>(v);
}

Result<void> parse_pax_records(std::string_view data, std::map<std::string, std::string>& out) {
    size_t off = 0;
    while (off < data.size()) {
        std::string_view rest = data.substr(off);
        size_t sp = rest.find(' ');
        if (sp == std::string_view::npos || sp == 0 || sp > 20)
            return failf("PAX record at byte {}: missing length", off);
        uint64_t len = 0;
        for (size_t i = 0; i < sp; ++i) {
            char c = rest[i];
            if (c < '0' || c > '9') return failf("PAX record at byte {}: invalid length", off);
            len = len * 10 + static_cast<uint64_t>(c - '0');
        }
        // The shortest record is "N k=\n".
        if (len < sp + 4 || len > rest.size())
            return failf("PAX record at byte {}: length {} out of range", off, len);
        std::string_view rec = rest.substr(sp + 1, len - sp - 1);
        if (rec.back() != '\n') return failf("PAX record at byte {}: not ended by a newline", off);
        rec.remove_suffix(1);
        size_t eq = rec.find('=');
        if (eq == std::string_view::npos) return failf("PAX record at byte {}: missing '='", off);
        if (eq == 0) return failf("PAX record at byte {}: empty key", off);
        std::string_view key = rec.substr(0, eq);
        if (key.find('\0') != std::string_view::npos || key.find('\n') != std::string_view::npos)
            return failf("PAX record at byte {}: invalid key", off);
        out.insert_or_assign(std::string(key), std::string(rec.substr(eq + 1)));
        off += len;
    }
    return {};
}

Result<PaxTime> parse_pax_time(std::string_view s) {
    bool neg = false;
    if (!s.empty() && s[0] == '-') {
        neg = true;
        s.remove_prefix(1);
    }
    size_t dot = s.find('.');
    std::string_view whole = s.substr(0, dot);
    if (whole.empty()) return failf("invalid PAX time '{}'", s);
    uint64_t sec = 0;
    for (char c : whole) {
        if (c < '0' || c > '9') return failf("invalid PAX time '{}'", s);
        if (sec > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - 9) / 10)
            return failf("PAX time '{}' out of range", s);
        sec = sec * 10 + static_cast<uint64_t>(c - '0');
    }
    uint32_t nsec = 0;
    if (dot != std::string_view::npos) {
        std::string_view frac = s.substr(dot + 1);
        uint32_t scale = 100000000;
        for (char c : frac) {
            if (c < '0' || c > '9') return failf("invalid PAX time '{}'", s);
            nsec += static_cast<uint32_t>(c - '0') * scale;
            scale /= 10;
        }
    }
    PaxTime t;
    if (!neg) {
        t.sec = static_cast<int64_t>(sec);
        t.nsec = nsec;
    } else if (nsec == 0) {
        t.sec = -static_cast<int64_t>(sec);
    } else {
        t.sec = -static_cast<int64_t>(sec) - 1;
        t.nsec = 1000000000u - nsec;
    }
    return t;
}

bool tar_checksum_ok(std::span<const uint8_t, 512> block) {
    auto stored = parse_tar_number(field(block.data(), kChksum));
    if (!stored) return false;
    uint64_t usum = 0;
    int64_t ssum = 0;
    for (size_t i = 0; i < kBlock; ++i) {
        uint8_t b = (i >= kChksum.off && i < kChksum.off + kChksum.len) ? ' ' : block[i];
        usum += b;
        ssum += static_cast<int8_t>(b);
    }
    return *stored == usum || static_cast<int64_t>(*stored) == ssum;
}

TarReader::TarReader(ByteStream& in) : in_(in), buf_(new uint8_t[kBufferSize]) {}

Result<size_t> TarReader::raw_read(void* buf, size_t n) {
    if (n == 0) return 0;
    if (buf_begin_ == buf_end_) {
        if (n >= kDirectRead) {
            size_t got = EROS_TRY(in_.read(buf, n));
            pos_ += got;
            return got;
        }
        size_t got = EROS_TRY(in_.read(buf_.get(), kBufferSize));
        buf_begin_ = 0;
        buf_end_ = got;
        if (got == 0) return 0;
    }
    size_t k = std::min(n, buf_end_ - buf_begin_);
    std::memcpy(buf, buf_.get() + buf_begin_, k);
    buf_begin_ += k;
    pos_ += k;
    return k;
}

// True when it got all n bytes; false when the stream ended before the first one.
Result<bool> TarReader::raw_read_full(void* buf, size_t n) {
    auto* p = static_cast<uint8_t*>(buf);
    size_t have = 0;
    while (have < n) {
        size_t got = EROS_TRY(raw_read(p + have, n - have));
        if (got == 0) {
            if (have == 0) return false;
            return fail("truncated tar stream");
        }
        have += got;
    }
    return true;
}

// Returns how many bytes it skipped: n, or fewer only at the end of the stream.
Result<uint64_t> TarReader::raw_skip(uint64_t n) {
    uint64_t done = 0;
    while (done < n) {
        if (buf_begin_ == buf_end_) {
            size_t got = EROS_TRY(in_.read(buf_.get(), kBufferSize));
            buf_begin_ = 0;
            buf_end_ = got;
            if (got == 0) break;
        }
        size_t k = static_cast<size_t>(std::min<uint64_t>(n - done, buf_end_ - buf_begin_));
        buf_begin_ += k;
        pos_ += k;
        done += k;
    }
    return done;
}

Result<void> TarReader::drain() {
    pos_ += buf_end_ - buf_begin_;
    buf_begin_ = buf_end_ = 0;
    for (;;) {
        size_t got = EROS_TRY(in_.read(buf_.get(), kBufferSize));
        if (got == 0) return {};
        pos_ += got;
    }
}

Error TarReader::entry_error(std::string message) const {
    return Error{0, fmt::format("entry {} at offset {}: {}", cur_path_, cur_offset_, message)};
}

Result<std::string> TarReader::read_extension(uint64_t size, uint64_t limit, uint64_t offset) {
    if (size > limit)
        return failf(
            "tar header at offset {}: extension header of {} bytes exceeds the limit of {}", offset,
            size, limit);
    std::string data(static_cast<size_t>(size), '\0');
    auto with_context = [&](Error e) {
        return std::unexpected(e.prefix(fmt::format("tar header at offset {}", offset)));
    };
    auto full = raw_read_full(data.data(), data.size());
    if (!full) return with_context(full.error());
    auto skipped = raw_skip(padding_for(size));
    if (!skipped) return with_context(skipped.error());
    if ((!*full && size > 0) || *skipped < padding_for(size))
        return failf("tar header at offset {}: truncated tar stream", offset);
    return data;
}

Result<std::optional<TarEntry>> TarReader::next() {
    if (failed_) return std::unexpected(*failed_);
    if (done_) return std::nullopt;
    if (content_left_ + padding_ > 0) {
        auto skipped = raw_skip(content_left_ + padding_);
        if (!skipped) {
            failed_ = entry_error(skipped.error().message);
            failed_->err = skipped.error().err;
            return std::unexpected(*failed_);
        }
        if (*skipped < content_left_ + padding_ && *skipped >= content_left_) {
            // The stream ends inside the last entry's padding, with its content complete: some
            // writers (umoci insert) end layers this way and Go's reader, which containerd and
            // umoci use, accepts it. Treat it as the end of the archive.
            content_left_ = padding_ = 0;
            done_ = true;
            return std::nullopt;
        }
        if (*skipped < content_left_ + padding_) {
            uint64_t have = content_size_ - content_left_ + std::min(*skipped, content_left_);
            failed_ = entry_error(fmt::format(
                "truncated tar stream (content ends after {} of {} bytes)", have, content_size_));
            return std::unexpected(*failed_);
        }
        content_left_ = padding_ = 0;
    }
    auto r = read_next();
    if (!r) failed_ = r.error();
    return r;
}

Result<size_t> TarReader::read(void* buf, size_t n) {
    if (failed_) return std::unexpected(*failed_);
    if (content_left_ == 0 || n == 0) return 0;
    n = static_cast<size_t>(std::min<uint64_t>(n, content_left_));
    auto got = raw_read(buf, n);
    if (!got) {
        failed_ = entry_error(got.error().message);
        failed_->err = got.error().err;
        return std::unexpected(*failed_);
    }
    if (*got == 0) {
        failed_ =
            entry_error(fmt::format("truncated tar stream (content ends after {} of {} bytes)",
                                    content_size_ - content_left_, content_size_));
        return std::unexpected(*failed_);
    }
    content_left_ -= *got;
    return *got;
}

Result<std::optional<TarEntry>> TarReader::read_next() {
    std::map<std::string, std::string> pax;  // this entry's 'x' records
    std::optional<std::string> gnu_name, gnu_link;
    std::optional<uint64_t> entry_offset;  // first header that belongs to the entry
    alignas(8) uint8_t block[kBlock];

    for (;;) {
        uint64_t hdr_off = pos_;
        auto got_r = raw_read_full(block, kBlock);
        if (!got_r)
            return std::unexpected(
                got_r.error().prefix(fmt::format("tar header at offset {}", hdr_off)));
        bool got = *got_r;
        if (!got || all_zero(block)) {
            if (entry_offset && !got)
                return failf(
                    "tar header at offset {}: truncated tar stream (extension header without "
                    "its entry)",
                    *entry_offset);
            if (entry_offset)
                return failf("tar header at offset {}: extension header not followed by an entry",
                             *entry_offset);
            done_ = true;
            // Read to the end, so that checks below (digest, gzip trailer) see the whole stream.
            EROS_TRYV(drain());
            return std::nullopt;
        }
        if (!tar_checksum_ok(std::span<const uint8_t, 512>(block, kBlock)))
            return failf("bad tar header checksum at offset {}", hdr_off);

        char type = static_cast<char>(block[kTypeflag]);
        if (type == 'L' || type == 'K' || type == 'x' || type == 'g') {
            auto size_field = parse_tar_number(field(block, kSize));
            if (!size_field)
                return failf("tar header at offset {}: size field: {}", hdr_off,
                             size_field.error().message);
            uint64_t size = *size_field;
            if (type != 'g' && !entry_offset) entry_offset = hdr_off;
            std::string data = EROS_TRY(read_extension(
                size, (type == 'L' || type == 'K') ? kMaxLongName : kMaxPaxHeader, hdr_off));
            if (type == 'L' || type == 'K') {
                data.resize(std::min(data.size(), data.find('\0')));
                (type == 'L' ? gnu_name : gnu_link) = std::move(data);
            } else {
                std::map<std::string, std::string>& into = type == 'x' ? pax : global_pax_;
                auto ok = parse_pax_records(data, into);
                if (!ok) return failf("tar header at offset {}: {}", hdr_off, ok.error().message);
            }
            continue;
        }
        if (!entry_offset) entry_offset = hdr_off;

        std::string_view magic = field(block, kMagic);
        bool posix_ustar = magic.substr(0, 6) == std::string_view("ustar\0", 6);

        TarEntry e;
        e.header_offset = *entry_offset;
        e.path = cstr_field(block, kName);
        if (posix_ustar) {
            // GNU headers keep atime/ctime where ustar has the prefix: only ustar has a prefix.
            std::string prefix = cstr_field(block, kPrefix);
            if (!prefix.empty()) e.path = prefix + "/" + e.path;
        }
        e.linkname = cstr_field(block, kLinkname);
        if (gnu_name) e.path = *gnu_name;
        if (gnu_link) e.linkname = *gnu_link;

        // Effective PAX records: per-entry over global. Empty values fall back to the header.
        auto pax_value = [&](const std::string& key) -> const std::string* {
            auto it = pax.find(key);
            if (it == pax.end()) {
                it = global_pax_.find(key);
                if (it == global_pax_.end()) return nullptr;
            }
            return it->second.empty() ? nullptr : &it->second;
        };
        if (auto* v = pax_value("path")) e.path = *v;
        if (auto* v = pax_value("linkpath")) e.linkname = *v;

        cur_path_ = e.path;
        cur_offset_ = e.header_offset;
        auto err = [&](std::string m) -> std::unexpected<Error> {
            return std::unexpected(entry_error(std::move(m)));
        };

        if (e.path.find('\0') != std::string::npos) return err("path contains a NUL byte");
        if (e.linkname.find('\0') != std::string::npos)
            return err("link target contains a NUL byte");

        for (const auto* m : {&global_pax_, &pax}) {
            auto it = m->lower_bound(std::string(kSparsePrefix));
            if (it != m->end() && it->first.starts_with(kSparsePrefix))
                return err("unsupported GNU sparse file (PAX " + it->first + ")");
        }

        // A numeric attribute: the PAX record when there is one (then the header field is not
        // looked at: writers leave it zero or out of range), else the header field.
        auto number = [&](Field f, const char* name, const char* pax_key) -> Result<uint64_t> {
            if (pax_key) {
                if (auto* v = pax_value(pax_key)) {
                    auto r = parse_pax_uint(pax_key, *v);
                    if (!r) return std::unexpected(entry_error(r.error().message));
                    return *r;
                }
            }
            auto r = parse_tar_number(field(block, f));
            if (!r)
                return std::unexpected(
                    entry_error(fmt::format("{} field: {}", name, r.error().message)));
            return *r;
        };
        auto number32 = [&](Field f, const char* name, const char* pax_key) -> Result<uint32_t> {
            uint64_t v = EROS_TRY(number(f, name, pax_key));
            if (v > std::numeric_limits<uint32_t>::max())
                return std::unexpected(
                    entry_error(fmt::format("{} {} does not fit 32 bits", name, v)));
            return static_cast<uint32_t>(v);
        };
        e.mode = static_cast<uint32_t>(EROS_TRY(number(kMode, "mode", nullptr)) & 07777);
        e.uid = EROS_TRY(number32(kUid, "uid", "uid"));
        e.gid = EROS_TRY(number32(kGid, "gid", "gid"));
        if (auto* v = pax_value("mtime")) {
            auto t = parse_pax_time(*v);
            if (!t) return err(t.error().message);
            e.mtime = t->sec;
            e.mtime_nsec = t->nsec;
        } else {
            auto mt = parse_tar_signed_number(field(block, kMtime));
            if (!mt) return err("mtime field: " + mt.error().message);
            e.mtime = *mt;
        }
        uint64_t size = EROS_TRY(number(kSize, "size", "size"));

        uint64_t data_size = 0;
        switch (type) {
        case '0':
        case '\0':
        case '7':
            // V7 archives mark directories only by the trailing slash.
            if (type != '7' && e.path.ends_with('/')) {
                e.type = TarEntryType::Directory;
            } else {
                e.type = TarEntryType::Regular;
                e.size = size;
            }
            data_size = size;
            break;
        case '1': e.type = TarEntryType::Hardlink; break;
        case '2': e.type = TarEntryType::Symlink; break;
        case '3': e.type = TarEntryType::CharDevice; break;
        case '4': e.type = TarEntryType::BlockDevice; break;
        case '5': e.type = TarEntryType::Directory; break;
        case '6': e.type = TarEntryType::Fifo; break;
        default: return err(fmt::format("unsupported tar entry type '{}'", type_char(type)));
        }

        if (e.type == TarEntryType::CharDevice || e.type == TarEntryType::BlockDevice) {
            e.devmajor = EROS_TRY(number32(kDevmajor, "devmajor", "SCHILY.devmajor"));
            e.devminor = EROS_TRY(number32(kDevminor, "devminor", "SCHILY.devminor"));
        }

        // Xattrs: global records first, then this entry's; std::map keeps them sorted and unique.
        std::map<std::string, std::string> xattrs;
        for (const auto* m : {&global_pax_, &pax}) {
            for (auto it = m->lower_bound(std::string(kXattrPrefix));
                 it != m->end() && it->first.starts_with(kXattrPrefix); ++it) {
                std::string name = it->first.substr(kXattrPrefix.size());
                if (name.empty()) return err("PAX xattr record with an empty name");
                // An empty value deletes, as in Go's archive/tar, which containerd, Docker and
                // umoci extract layers with: what they show is what the image means.
                if (it->second.empty()) {
                    xattrs.erase(name);
                    continue;
                }
                xattrs.insert_or_assign(std::move(name), it->second);
            }
        }
        e.xattrs.reserve(xattrs.size());
        for (auto& [k, v] : xattrs) e.xattrs.push_back(Xattr{k, std::move(v)});

        content_size_ = content_left_ = data_size;
        padding_ = padding_for(data_size);
        return e;
    }
}

}  // namespace erostream
