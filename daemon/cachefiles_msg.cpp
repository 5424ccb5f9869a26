#include "cachefiles_msg.h"

#include <linux/cachefiles.h>

#include <cstring>

namespace erostream {

namespace {

template <class T>
T load(std::span<const uint8_t> b, size_t off) {
    T v;
    std::memcpy(&v, b.data() + off, sizeof v);
    return v;
}

}  // namespace

std::optional<CachefilesHeader> peek_cachefiles_header(std::span<const uint8_t> bytes) {
    if (bytes.size() < sizeof(cachefiles_msg)) return std::nullopt;
    auto m = load<cachefiles_msg>(bytes, 0);
    CachefilesHeader h{m.msg_id, m.opcode, m.len, m.object_id, std::nullopt};
    if (m.opcode == CACHEFILES_OP_OPEN && bytes.size() >= sizeof(cachefiles_msg) + sizeof(cachefiles_open)) {
        auto o = load<cachefiles_open>(bytes, sizeof(cachefiles_msg));
        h.open_fd = static_cast<int32_t>(o.fd);
    }
    return h;
}

Result<CachefilesMsg> parse_cachefiles_msg(std::span<const uint8_t> bytes) {
    constexpr size_t kHdr = sizeof(cachefiles_msg);
    if (bytes.size() < kHdr) return failf("cachefiles: {} bytes, shorter than a message header", bytes.size());
    auto m = load<cachefiles_msg>(bytes, 0);
    if (m.len != bytes.size())
        return failf("cachefiles: message {} says {} bytes, {} were read", m.msg_id, m.len, bytes.size());
    auto payload = bytes.subspan(kHdr);
    switch (m.opcode) {
    case CACHEFILES_OP_OPEN: {
        if (payload.size() < sizeof(cachefiles_open))
            return failf("cachefiles: OPEN {}: payload of {} bytes", m.msg_id, payload.size());
        auto o = load<cachefiles_open>(payload, 0);
        auto keys = payload.subspan(sizeof(cachefiles_open));
        if (o.volume_key_size == 0 || uint64_t{o.volume_key_size} + o.cookie_key_size != keys.size())
            return failf("cachefiles: OPEN {}: key sizes {} + {} for {} bytes", m.msg_id, o.volume_key_size,
                         o.cookie_key_size, keys.size());
        std::string_view vol(reinterpret_cast<const char*>(keys.data()), o.volume_key_size);
        // The volume key is a C string sent with its NUL.
        if (vol.back() != '\0' || vol.find('\0') != vol.size() - 1)
            return failf("cachefiles: OPEN {}: the volume key is not one NUL-terminated string", m.msg_id);
        CachefilesOpen out;
        out.msg_id = m.msg_id;
        out.object_id = m.object_id;
        out.volume_key.assign(vol.substr(0, vol.size() - 1));
        out.cookie_key.assign(reinterpret_cast<const char*>(keys.data()) + o.volume_key_size, o.cookie_key_size);
        out.fd = static_cast<int32_t>(o.fd);
        out.flags = o.flags;
        if (out.fd < 0) return failf("cachefiles: OPEN {}: fd {}", m.msg_id, out.fd);
        return out;
    }
    case CACHEFILES_OP_CLOSE:
        if (!payload.empty()) return failf("cachefiles: CLOSE {} with a payload of {} bytes", m.msg_id, payload.size());
        return CachefilesClose{m.msg_id, m.object_id};
    case CACHEFILES_OP_READ: {
        if (payload.size() != sizeof(cachefiles_read))
            return failf("cachefiles: READ {}: payload of {} bytes", m.msg_id, payload.size());
        auto r = load<cachefiles_read>(payload, 0);
        if (r.len == 0 || r.off + r.len < r.off)
            return failf("cachefiles: READ {}: range {}+{}", m.msg_id, r.off, r.len);
        return CachefilesRead{m.msg_id, m.object_id, r.off, r.len};
    }
    default: return failf("cachefiles: message {} with unknown opcode {}", m.msg_id, m.opcode);
    }
}

std::string cachefiles_copen(uint32_t msg_id, int64_t size_or_negative_errno) {
    return fmt::format("copen {},{}", msg_id, size_or_negative_errno);
}

std::string fscache_volume_key(std::string_view domain) { return fmt::format("erofs,{}", domain); }

std::string fscache_fsid(std::string_view meta_hex, unsigned attempt) {
    if (attempt == 0) return std::string(meta_hex);
    // The number goes first: the kernel names the mount in sysfs "<domain>,<fsid>" cut to 36
    // characters (super_block.s_sysfs_name), and two names must differ there.
    return fmt::format("{}-{}", attempt + 1, meta_hex);
}

bool is_digest_hex(std::string_view s) {
    if (s.size() != 64) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

Result<FscacheCookie> parse_fscache_cookie(std::string_view volume_key, std::string_view cookie_key,
                                           std::string_view domain) {
    if (volume_key != fscache_volume_key(domain))
        return fail(fmt::format("volume '{}' is not erostream's (erofs,{})", volume_key, domain), ENOENT);
    if (is_digest_hex(cookie_key)) return FscacheCookie{FscacheCookie::Kind::Data, std::string(cookie_key)};
    // "<n>-<hex>": the fsid of a second (third...) mount of the same metadata blob.
    if (size_t dash = cookie_key.find('-'); dash != std::string_view::npos && dash >= 1 && dash <= 6 &&
                                            is_digest_hex(cookie_key.substr(dash + 1))) {
        auto n = cookie_key.substr(0, dash);
        bool digits = n.front() != '0' && n != "1";
        for (char c : n) digits = digits && c >= '0' && c <= '9';
        if (digits) return FscacheCookie{FscacheCookie::Kind::Meta, std::string(cookie_key.substr(dash + 1))};
    }
    std::string shown;
    for (char c : cookie_key.substr(0, 80)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
    return fail(fmt::format("cookie '{}' names no blob of erostream", shown), ENOENT);
}

}  // namespace erostream
