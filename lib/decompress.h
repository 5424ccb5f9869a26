// Layer decoding: gzip (ISA-L igzip when built with it, zlib otherwise) and zstd decoders as
// ByteStreams, format sniffing, and a pass-through stream that checks a sha256 digest at the end.
// These sit on the converter's hot path (hundreds of MB per layer), so every decoder reads its
// input in large pieces and decodes straight into the caller's buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "byte_stream.h"
#include "result.h"
#include "sha256.h"

namespace erostream {

enum class Compression { None, Gzip, Zstd };

const char* compression_name(Compression c);  // "none", "gzip", "zstd"

// By magic bytes: gzip 1f 8b, zstd 28 b5 2f fd (a skippable zstd frame 5X 2a 4d 18 counts as
// zstd too). Anything else, including too short a head, is None.
Compression detect_compression(std::span<const uint8_t> head);

// Decoders own `src`. Errors: "truncated gzip stream", "corrupt gzip stream: <why> (compressed
// offset N)", "truncated zstd stream", "corrupt zstd stream: <why> (compressed offset N)".
// Gzip: concatenated members are one stream; CRC32 and ISIZE of each member are verified; zero
// bytes after the last member are ignored (gzip(1) does the same), other trailing bytes are an
// error. Zstd: any number of frames; skippable frames are ignored; checksums verified when present.
// None returns `src` itself.
Result<std::unique_ptr<ByteStream>> make_decoder(Compression c, std::unique_ptr<ByteStream> src);

// Sniffs the first bytes of `src` and stacks the matching decoder on it (None: the bytes pass
// through unchanged, sniffed bytes included).
Result<std::unique_ptr<ByteStream>> make_auto_decoder(std::unique_ptr<ByteStream> src);

// Passes bytes through while hashing them. At the end of the stream (the first read that returns
// 0 from `src`) the digest is final; if `expected` was given and differs, that read fails with
// "digest mismatch: expected sha256:.. got sha256:..". With expected_size >= 0 a different length
// fails with "size mismatch: expected N bytes, got M" (as soon as the stream runs past N).
// digest() is valid after the end was reached.
class DigestingStream final : public ByteStream {
public:
    DigestingStream(std::unique_ptr<ByteStream> src, std::optional<Sha256Digest> expected,
                    int64_t expected_size = -1);
    Result<size_t> read(void* buf, size_t n) override;

    Sha256Digest digest() const { return digest_; }
    uint64_t bytes() const { return bytes_; }
    bool finished() const { return finished_; }

private:
    std::unique_ptr<ByteStream> src_;
    std::optional<Sha256Digest> expected_;
    int64_t expected_size_;
    Sha256 hash_;
    Sha256Digest digest_{};
    uint64_t bytes_ = 0;
    bool finished_ = false;
    std::optional<Error> failed_;  // a mismatch is reported again by every later read
};

}  // namespace erostream
