// The cachefiles on-demand protocol (/dev/cachefiles after `bind ondemand`), daemon side, as pure
// functions: the kernel's requests (struct cachefiles_msg with an OPEN, CLOSE or READ payload,
// linux/cachefiles.h) parsed from the bytes one read(2) returned, the command strings the daemon
// writes back, and how EROFS names its cache objects (fs/erofs/fscache.c): the volume key is
// "erofs,<domain_id>" (or "erofs,<fsid>" without a domain), the cookie key is the fsid for the
// primary (metadata) blob and the device= string, or the device table's tag, for a data blob.
//
// erostreamd mounts every image in one domain, with fsid = hex of the metadata blob's digest
// ("N-" in front when that fsid is already in use: the kernel wants primary cookies unique in a
// domain), and device=<hex of the data blob's digest> for every data blob. Cookie keys are thus
// content addresses: a cache object the kernel kept from an earlier mount or an earlier daemon
// can only hold the bytes its name promises, and a data blob shared by two images is one cookie
// (one cache object, one page cache) in the domain.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "result.h"

namespace erostream {

struct CachefilesOpen {
    uint32_t msg_id = 0, object_id = 0;
    std::string volume_key;  // without its NUL
    std::string cookie_key;  // binary in the protocol; EROFS puts a string there
    int32_t fd = -1;         // anonymous fd installed in the reader's fd table
    uint32_t flags = 0;
    bool operator==(const CachefilesOpen&) const = default;
};
struct CachefilesClose {
    uint32_t msg_id = 0, object_id = 0;
    bool operator==(const CachefilesClose&) const = default;
};
struct CachefilesRead {
    uint32_t msg_id = 0, object_id = 0;
    uint64_t off = 0, len = 0;
    bool operator==(const CachefilesRead&) const = default;
};
using CachefilesMsg = std::variant<CachefilesOpen, CachefilesClose, CachefilesRead>;

// One request as read(2) from /dev/cachefiles returned it. Pure; any inconsistency (length
// fields, key sizes, a volume key without its NUL, an unknown opcode) is an error.
Result<CachefilesMsg> parse_cachefiles_msg(std::span<const uint8_t> bytes);

// What can be salvaged from a request that did not parse: its header, and, for an OPEN, the
// anonymous fd the kernel installed (it must be closed and the OPEN failed, or the mount hangs).
struct CachefilesHeader {
    uint32_t msg_id = 0, opcode = 0, len = 0, object_id = 0;
    std::optional<int32_t> open_fd;
};
std::optional<CachefilesHeader> peek_cachefiles_header(std::span<const uint8_t> bytes);

// Commands written to /dev/cachefiles (each one write(2)).
std::string cachefiles_copen(uint32_t msg_id, int64_t size_or_negative_errno);

// EROFS naming in erostream's domain.
inline constexpr std::string_view kFscacheDomain = "erostream";
std::string fscache_volume_key(std::string_view domain);
// fsid for the metadata blob `meta_hex`; attempt 0 is the hex itself, attempt n > 0 "<n+1>-<hex>".
std::string fscache_fsid(std::string_view meta_hex, unsigned attempt);

// What a cookie key names: the metadata blob of a mount (hex of its digest, from the fsid) or a
// data blob (hex of its digest). Pure: from the keys alone; whether the daemon serves the blob is
// decided by its caller.
struct FscacheCookie {
    enum class Kind { Meta, Data } kind = Kind::Data;
    std::string hex;
    bool operator==(const FscacheCookie&) const = default;
};
// Errors (ENOENT) for a volume of another domain and for keys that are not ours. A 64-hex key is
// returned as Data; the caller looks it up as a metadata blob first (an fsid without suffix has
// the same form).
Result<FscacheCookie> parse_fscache_cookie(std::string_view volume_key, std::string_view cookie_key,
                                           std::string_view domain);

bool is_digest_hex(std::string_view s);

}  // namespace erostream
