// The EROFS on-disk format, as far as erostream writes and reads it: one header shared by the
// writer (mkfs) and the readers (check, materialize, the daemon). Struct and constant names are
// the kernel's (fs/erofs/erofs_fs.h) so that they can be compared line by line; sizes are checked
// at compile time. All fields are little-endian; erostream only builds for little-endian hosts.
#pragma once

#include <bit>
#include <cstdint>

namespace erostream {

static_assert(std::endian::native == std::endian::little, "EROFS structs are read in place");

inline constexpr uint32_t EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2;
inline constexpr uint32_t EROFS_SUPER_OFFSET = 1024;
inline constexpr uint32_t EROFS_BLKSIZ_BITS = 12;  // erostream always uses 4096-byte blocks
inline constexpr uint32_t EROFS_BLKSIZ = 1u << EROFS_BLKSIZ_BITS;
inline constexpr uint32_t EROFS_ISLOTBITS = 5;  // nid = (inode offset - meta start) / 32

inline constexpr uint32_t EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x00000001;
inline constexpr uint32_t EROFS_FEATURE_COMPAT_MTIME = 0x00000002;
inline constexpr uint32_t EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x00000004;
inline constexpr uint32_t EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x00000008;

struct erofs_deviceslot {
    uint8_t tag[64];  // erostream: the data blob's sha256 digest in hex (no NUL)
    uint32_t blocks;  // size of the device in blocks
    uint32_t mapped_blkaddr;
    uint8_t reserved[56];
} __attribute__((packed));
inline constexpr uint32_t EROFS_DEVT_SLOT_SIZE = sizeof(erofs_deviceslot);

struct erofs_super_block {
    uint32_t magic;
    uint32_t checksum;
    uint32_t feature_compat;
    uint8_t blkszbits;
    uint8_t sb_extslots;
    uint16_t root_nid;
    uint64_t inos;
    uint64_t build_time;
    uint32_t build_time_nsec;
    uint32_t blocks;
    uint32_t meta_blkaddr;
    uint32_t xattr_blkaddr;
    uint8_t uuid[16];
    uint8_t volume_name[16];
    uint32_t feature_incompat;
    uint16_t available_compr_algs;  // union u1 in the kernel
    uint16_t extra_devices;
    uint16_t devt_slotoff;  // device table offset = devt_slotoff * EROFS_DEVT_SLOT_SIZE
    uint8_t dirblkbits;
    uint8_t xattr_prefix_count;
    uint32_t xattr_prefix_start;
    uint64_t packed_nid;
    uint8_t xattr_filter_reserved;
    uint8_t reserved2[23];
} __attribute__((packed));

enum : uint16_t {
    EROFS_INODE_FLAT_PLAIN = 0,
    EROFS_INODE_COMPRESSED_FULL = 1,
    EROFS_INODE_FLAT_INLINE = 2,
    EROFS_INODE_COMPRESSED_COMPACT = 3,
    EROFS_INODE_CHUNK_BASED = 4,
};
inline constexpr uint16_t EROFS_I_VERSION_BIT = 0;
inline constexpr uint16_t EROFS_I_DATALAYOUT_BIT = 1;
inline constexpr uint16_t EROFS_INODE_LAYOUT_COMPACT = 0;
inline constexpr uint16_t EROFS_INODE_LAYOUT_EXTENDED = 1;

inline constexpr uint16_t EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x001F;
inline constexpr uint16_t EROFS_CHUNK_FORMAT_INDEXES = 0x0020;

struct erofs_inode_chunk_info {
    uint16_t format;  // chunk blkbits | EROFS_CHUNK_FORMAT_INDEXES
    uint16_t reserved;
} __attribute__((packed));

union erofs_inode_i_u {
    uint32_t compressed_blocks;
    uint32_t raw_blkaddr;
    uint32_t rdev;
    erofs_inode_chunk_info c;
};

struct erofs_inode_compact {
    uint16_t i_format;
    uint16_t i_xattr_icount;
    uint16_t i_mode;
    uint16_t i_nlink;
    uint32_t i_size;
    uint32_t i_reserved;
    erofs_inode_i_u i_u;
    uint32_t i_ino;
    uint16_t i_uid;
    uint16_t i_gid;
    uint32_t i_reserved2;
} __attribute__((packed));

struct erofs_inode_extended {
    uint16_t i_format;
    uint16_t i_xattr_icount;
    uint16_t i_mode;
    uint16_t i_reserved;
    uint64_t i_size;
    erofs_inode_i_u i_u;
    uint32_t i_ino;
    uint32_t i_uid;
    uint32_t i_gid;
    uint64_t i_mtime;
    uint32_t i_mtime_nsec;
    uint32_t i_nlink;
    uint8_t i_reserved2[16];
} __attribute__((packed));

struct erofs_xattr_ibody_header {
    uint32_t h_name_filter;
    uint8_t h_shared_count;
    uint8_t h_reserved2[7];
    // uint32_t h_shared_xattrs[h_shared_count] follow
} __attribute__((packed));

inline constexpr uint8_t EROFS_XATTR_INDEX_USER = 1;
inline constexpr uint8_t EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2;
inline constexpr uint8_t EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3;
inline constexpr uint8_t EROFS_XATTR_INDEX_TRUSTED = 4;
inline constexpr uint8_t EROFS_XATTR_INDEX_LUSTRE = 5;
inline constexpr uint8_t EROFS_XATTR_INDEX_SECURITY = 6;

struct erofs_xattr_entry {
    uint8_t e_name_len;
    uint8_t e_name_index;
    uint16_t e_value_size;
    // name, then value; the whole entry is padded to 4 bytes
} __attribute__((packed));

inline constexpr uint32_t EROFS_NULL_ADDR = 0xFFFFFFFFu;  // a chunk that is a hole (zeros)

struct erofs_inode_chunk_index {
    uint16_t advise;
    uint16_t device_id;  // 0: the primary device; N: extra device N (device table slot N-1)
    uint32_t blkaddr;
} __attribute__((packed));

struct erofs_dirent {
    uint64_t nid;
    uint16_t nameoff;
    uint8_t file_type;
    uint8_t reserved;
} __attribute__((packed));

enum : uint8_t {
    EROFS_FT_UNKNOWN = 0,
    EROFS_FT_REG_FILE = 1,
    EROFS_FT_DIR = 2,
    EROFS_FT_CHRDEV = 3,
    EROFS_FT_BLKDEV = 4,
    EROFS_FT_FIFO = 5,
    EROFS_FT_SOCK = 6,
    EROFS_FT_SYMLINK = 7,
};

inline constexpr uint32_t EROFS_NAME_LEN = 255;

inline constexpr uint32_t erofs_xattr_ibody_size(uint16_t icount) {
    return icount == 0 ? 0 : sizeof(erofs_xattr_ibody_header) + 4u * (icount - 1u);
}
inline constexpr uint32_t erofs_xattr_entry_size(uint32_t name_len, uint32_t value_size) {
    return (sizeof(erofs_xattr_entry) + name_len + value_size + 3u) & ~3u;
}
// The kernel's new_encode_dev(): how i_u.rdev stores a device number.
inline constexpr uint32_t erofs_encode_dev(uint32_t major, uint32_t minor) {
    return (minor & 0xffu) | (major << 8) | ((minor & ~0xffu) << 12);
}
inline constexpr void erofs_decode_dev(uint32_t dev, uint32_t& major, uint32_t& minor) {
    major = (dev & 0xfff00u) >> 8;
    minor = (dev & 0xffu) | ((dev >> 12) & 0xfff00u);
}

static_assert(sizeof(erofs_super_block) == 128);
static_assert(sizeof(erofs_inode_compact) == 32);
static_assert(sizeof(erofs_inode_extended) == 64);
static_assert(sizeof(erofs_xattr_ibody_header) == 12);
static_assert(sizeof(erofs_xattr_entry) == 4);
static_assert(sizeof(erofs_inode_chunk_info) == 4);
static_assert(sizeof(erofs_inode_chunk_index) == 8);
static_assert(sizeof(erofs_dirent) == 12);
static_assert(sizeof(erofs_deviceslot) == 128);

}  // namespace erostream
