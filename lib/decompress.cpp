#include "decompress.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef EROS_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#else
#include <zlib.h>
#endif

namespace erostream {

namespace {

// Compressed input is read in pieces this large: few read calls (and, below us, few syscalls
// and digest updates) per decoded megabyte.
constexpr size_t kInputBufferSize = 1 << 20;
// Decoder libraries count output in 32-bit fields.
constexpr size_t kMaxOutputPerCall = 1 << 30;

// The compressed bytes not yet handed to the decoder library, plus how many were consumed so far
// (for error messages: "compressed offset N").
class InputBuffer {
public:
    InputBuffer(std::unique_ptr<ByteStream> src, std::string_view prefix)
        : src_(std::move(src)), buf_(std::max(kInputBufferSize, prefix.size())) {
        std::memcpy(buf_.data(), prefix.data(), prefix.size());
        end_ = prefix.size();
    }

    uint8_t* data() { return buf_.data() + begin_; }
    size_t size() const { return end_ - begin_; }
    bool empty() const { return begin_ == end_; }
    uint64_t offset() const { return consumed_; }
    bool saw_input() const { return consumed_ > 0 || end_ > 0; }

    void consume(size_t n) {
        begin_ += n;
        consumed_ += n;
        if (begin_ == end_) begin_ = end_ = 0;
    }

    // Appends what one read of the source gives; 0 at its end (or when the buffer is full, which
    // the decoders never let happen: they consume whenever they have 1 MiB to look at).
    Result<size_t> refill() {
        if (begin_ > 0 && end_ == buf_.size()) {
            std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
            end_ -= begin_;
            begin_ = 0;
        }
        if (end_ == buf_.size()) return 0;
        size_t got = EROS_TRY(src_->read(buf_.data() + end_, buf_.size() - end_));
        end_ += got;
        return got;
    }

private:
    std::unique_ptr<ByteStream> src_;
    std::vector<uint8_t> buf_;
    size_t begin_ = 0;
    size_t end_ = 0;
    uint64_t consumed_ = 0;
};

// Replays bytes that were read to sniff the format, then passes the rest through.
class PrefixedStream final : public ByteStream {
public:
    PrefixedStream(std::unique_ptr<ByteStream> src, std::string prefix)
        : src_(std::move(src)), prefix_(std::move(prefix)) {}

    Result<size_t> read(void* buf, size_t n) override {
        if (pos_ < prefix_.size()) {
            n = std::min(n, prefix_.size() - pos_);
            std::memcpy(buf, prefix_.data() + pos_, n);
            pos_ += n;
            return n;
        }
        return src_->read(buf, n);
    }

private:
    std::unique_ptr<ByteStream> src_;
    std::string prefix_;
    size_t pos_ = 0;
};

// Shared by both gzip back ends: where a member may start, only zero padding or another member
// may follow the previous one.
enum class MemberStart { Member, End };

Result<MemberStart> next_gzip_member(InputBuffer& in, bool any_member, bool& in_padding) {
    for (;;) {
        if (in.empty()) {
            size_t got = EROS_TRY(in.refill());
            if (got == 0) {
                if (!any_member) return fail("truncated gzip stream");
                return MemberStart::End;
            }
        }
        if (!any_member) return MemberStart::Member;
        // Some tools pad compressed files with zeros up to a block size; gzip(1) ignores them.
        const uint8_t* p = in.data();
        size_t zeros = 0;
        while (zeros < in.size() && p[zeros] == 0) ++zeros;
        if (zeros > 0) in_padding = true;
        in.consume(zeros);
        if (in.empty()) continue;
        if (in_padding)
            return failf(
                "corrupt gzip stream: unexpected data after zero padding (compressed offset {})",
                in.offset());
        return MemberStart::Member;
    }
}

#ifdef EROS_HAVE_ISAL

const char* isal_error_name(int ret) {
    switch (ret) {
    case ISAL_INVALID_BLOCK: return "invalid deflate block";
    case ISAL_INVALID_SYMBOL: return "invalid deflate symbol";
    case ISAL_INVALID_LOOKBACK: return "invalid back-reference distance";
    case ISAL_INVALID_WRAPPER: return "invalid gzip header";
    case ISAL_UNSUPPORTED_METHOD: return "unsupported compression method";
    case ISAL_INCORRECT_CHECKSUM: return "CRC or length mismatch in member trailer";
    case ISAL_NEED_DICT: return "preset dictionary required";
    default: return "decoder error";
    }
}

class GzipDecoder final : public ByteStream {
public:
    GzipDecoder(std::unique_ptr<ByteStream> src, std::string_view prefix)
        : in_(std::move(src), prefix), state_(std::make_unique<inflate_state>()) {
        isal_inflate_init(state_.get());
    }

    Result<size_t> read(void* buf, size_t n) override {
        if (done_ || n == 0) return 0;
        n = std::min(n, kMaxOutputPerCall);
        for (;;) {
            if (!in_member_) {
                MemberStart s = EROS_TRY(next_gzip_member(in_, any_member_, in_padding_));
                if (s == MemberStart::End) {
                    done_ = true;
                    return 0;
                }
                isal_inflate_reset(state_.get());
                state_->crc_flag = ISAL_GZIP;  // parse the header, verify CRC32 and ISIZE
                in_member_ = true;
                any_member_ = true;
            }
            state_->next_in = in_.data();
            state_->avail_in = static_cast<uint32_t>(in_.size());
            state_->next_out = static_cast<uint8_t*>(buf);
            state_->avail_out = static_cast<uint32_t>(n);
            int ret = isal_inflate(state_.get());
            size_t used = in_.size() - state_->avail_in;
            in_.consume(used);
            size_t produced = n - state_->avail_out;
            if (ret < 0)
                return failf("corrupt gzip stream: {} (compressed offset {})", isal_error_name(ret),
                             in_.offset());
            if (state_->block_state == ISAL_BLOCK_FINISH) in_member_ = false;
            if (produced > 0) return produced;
            if (!in_member_) continue;
            // Nothing came out: the decoder wants more input than it has.
            if (used == 0 || in_.empty()) {
                size_t got = EROS_TRY(in_.refill());
                if (got == 0) {
                    if (in_.size() >= kInputBufferSize)
                        return failf("corrupt gzip stream: decoder stalled (compressed offset {})",
                                     in_.offset());
                    return fail("truncated gzip stream");
                }
            }
        }
    }

private:
    InputBuffer in_;
    std::unique_ptr<inflate_state> state_;
    bool in_member_ = false;
    bool any_member_ = false;
    bool in_padding_ = false;
    bool done_ = false;
};

#else  // zlib

class GzipDecoder final : public ByteStream {
public:
    GzipDecoder(std::unique_ptr<ByteStream> src, std::string_view prefix)
        : in_(std::move(src), prefix) {
        std::memset(&zs_, 0, sizeof zs_);
        // 16 + 15: gzip wrapper only, 32 KiB window; zlib checks CRC32 and ISIZE itself.
        init_ok_ = inflateInit2(&zs_, 16 + MAX_WBITS) == Z_OK;
    }
    ~GzipDecoder() override {
        if (init_ok_) inflateEnd(&zs_);
    }
    GzipDecoder(const GzipDecoder&) = delete;
    GzipDecoder& operator=(const GzipDecoder&) = delete;

    Result<size_t> read(void* buf, size_t n) override {
        if (!init_ok_) return fail("gzip decoder: inflateInit2 failed", ENOMEM);
        if (done_ || n == 0) return 0;
        n = std::min(n, kMaxOutputPerCall);
        for (;;) {
            if (!in_member_) {
                MemberStart s = EROS_TRY(next_gzip_member(in_, any_member_, in_padding_));
                if (s == MemberStart::End) {
                    done_ = true;
                    return 0;
                }
                inflateReset(&zs_);
                in_member_ = true;
                any_member_ = true;
            }
            zs_.next_in = in_.data();
            zs_.avail_in = static_cast<uInt>(in_.size());
            zs_.next_out = static_cast<Bytef*>(buf);
            zs_.avail_out = static_cast<uInt>(n);
            int ret = inflate(&zs_, Z_NO_FLUSH);
            size_t used = in_.size() - zs_.avail_in;
            in_.consume(used);
            size_t produced = n - zs_.avail_out;
            if (ret == Z_STREAM_END) {
                in_member_ = false;
            } else if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT) {
                return failf("corrupt gzip stream: {} (compressed offset {})",
                             zs_.msg ? zs_.msg : "invalid data", in_.offset());
            } else if (ret == Z_MEM_ERROR) {
                return fail("gzip decoder: out of memory", ENOMEM);
            } else if (ret != Z_OK && ret != Z_BUF_ERROR) {
                return failf("gzip decoder: inflate returned {}", ret);
            }
            if (produced > 0) return produced;
            if (!in_member_) continue;
            if (used == 0 || in_.empty()) {
                size_t got = EROS_TRY(in_.refill());
                if (got == 0) {
                    if (in_.size() >= kInputBufferSize)
                        return failf("corrupt gzip stream: decoder stalled (compressed offset {})",
                                     in_.offset());
                    return fail("truncated gzip stream");
                }
            }
        }
    }

private:
    InputBuffer in_;
    z_stream zs_;
    bool init_ok_ = false;
    bool in_member_ = false;
    bool any_member_ = false;
    bool in_padding_ = false;
    bool done_ = false;
};

#endif

struct ZstdDCtxDeleter {
    void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

class ZstdDecoder final : public ByteStream {
public:
    ZstdDecoder(std::unique_ptr<ByteStream> src, std::string_view prefix)
        : in_(std::move(src), prefix), dctx_(ZSTD_createDCtx()) {
        // Layers may be compressed with long windows (zstd --long); allow up to 2 GiB.
        if (dctx_) ZSTD_DCtx_setParameter(dctx_.get(), ZSTD_d_windowLogMax, 31);
    }

    Result<size_t> read(void* buf, size_t n) override {
        if (!dctx_) return fail("zstd decoder: out of memory", ENOMEM);
        if (done_ || n == 0) return 0;
        for (;;) {
            // Called with an empty input too: a frame may still hold decoded bytes to flush.
            ZSTD_inBuffer ib{in_.data(), in_.size(), 0};
            ZSTD_outBuffer ob{buf, n, 0};
            size_t r = ZSTD_decompressStream(dctx_.get(), &ob, &ib);
            in_.consume(ib.pos);
            if (ZSTD_isError(r))
                return failf("corrupt zstd stream: {} (compressed offset {})", ZSTD_getErrorName(r),
                             in_.offset());
            // At a frame boundary with no input zstd returns a nonzero hint: not an open frame.
            if (ib.pos > 0 || ob.pos > 0) frame_open_ = r != 0;
            if (ob.pos > 0) return ob.pos;
            if (in_.empty() || ib.pos == 0) {
                size_t got = EROS_TRY(in_.refill());
                if (got == 0) {
                    if (frame_open_ || !in_.saw_input() || !in_.empty())
                        return fail("truncated zstd stream");
                    done_ = true;
                    return 0;
                }
            }
        }
    }

private:
    InputBuffer in_;
    std::unique_ptr<ZSTD_DCtx, ZstdDCtxDeleter> dctx_;
    bool frame_open_ = false;
    bool done_ = false;
};

Result<std::unique_ptr<ByteStream>> make_decoder_with_prefix(Compression c,
                                                             std::unique_ptr<ByteStream> src,
                                                             std::string prefix) {
    switch (c) {
    case Compression::None:
        if (prefix.empty()) return src;
        return std::make_unique<PrefixedStream>(std::move(src), std::move(prefix));
    case Compression::Gzip: return std::make_unique<GzipDecoder>(std::move(src), prefix);
    case Compression::Zstd: return std::make_unique<ZstdDecoder>(std::move(src), prefix);
    }
    return failf("unknown compression {}", static_cast<int>(c));
}

}  // namespace

const char* compression_name(Compression c) {
    switch (c) {
    case Compression::None: return "none";
    case Compression::Gzip: return "gzip";
    case Compression::Zstd: return "zstd";
    }
    return "unknown";
}

Compression detect_compression(std::span<const uint8_t> head) {
    if (head.size() >= 2 && head[0] == 0x1f && head[1] == 0x8b) return Compression::Gzip;
    if (head.size() >= 4 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd &&
        head[0] == 0x28)
        return Compression::Zstd;
    // Skippable frame magic 0x184D2A50..5F, little endian.
    if (head.size() >= 4 && (head[0] & 0xf0) == 0x50 && head[1] == 0x2a && head[2] == 0x4d &&
        head[3] == 0x18)
        return Compression::Zstd;
    return Compression::None;
}

Result<std::unique_ptr<ByteStream>> make_decoder(Compression c, std::unique_ptr<ByteStream> src) {
    return make_decoder_with_prefix(c, std::move(src), {});
}

Result<std::unique_ptr<ByteStream>> make_auto_decoder(std::unique_ptr<ByteStream> src) {
    std::string head(4, '\0');
    size_t have = 0;
    while (have < head.size()) {
        size_t got = EROS_TRY(src->read(head.data() + have, head.size() - have));
        if (got == 0) break;
        have += got;
    }
    head.resize(have);
    Compression c =
        detect_compression(std::span(reinterpret_cast<const uint8_t*>(head.data()), head.size()));
    return make_decoder_with_prefix(c, std::move(src), std::move(head));
}

DigestingStream::DigestingStream(std::unique_ptr<ByteStream> src,
                                 std::optional<Sha256Digest> expected, int64_t expected_size)
    : src_(std::move(src)), expected_(expected), expected_size_(expected_size) {}

Result<size_t> DigestingStream::read(void* buf, size_t n) {
    if (failed_) return std::unexpected(*failed_);
    if (finished_ || n == 0) return 0;
    size_t got = EROS_TRY(src_->read(buf, n));
    if (got > 0) {
        hash_.update(buf, got);
        bytes_ += got;
        if (expected_size_ >= 0 && bytes_ > static_cast<uint64_t>(expected_size_)) {
            failed_ =
                Error{0, fmt::format("size mismatch: expected {} bytes, got more", expected_size_)};
            return std::unexpected(*failed_);
        }
        return got;
    }
    finished_ = true;
    digest_ = hash_.finish();
    if (expected_size_ >= 0 && bytes_ != static_cast<uint64_t>(expected_size_)) {
        failed_ = Error{
            0, fmt::format("size mismatch: expected {} bytes, got {}", expected_size_, bytes_)};
        return std::unexpected(*failed_);
    }
    if (expected_ && *expected_ != digest_) {
        failed_ = Error{0, fmt::format("digest mismatch: expected {} got {}",
                                       digest_string(*expected_), digest_string(digest_))};
        return std::unexpected(*failed_);
    }
    return 0;
}

}  // namespace erostream
