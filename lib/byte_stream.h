// A pull-based stream of bytes: what the converter reads layers through. Decoders (gzip, zstd),
// digest checkers and the tar reader are stacked ByteStreams; each owns the one below it only if
// it was handed a unique_ptr, otherwise it borrows it (the caller keeps it alive).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "result.h"
#include "unique_fd.h"

namespace erostream {

class ByteStream {
public:
    virtual ~ByteStream() = default;
    // Reads up to n bytes; returns 0 only at the end of the stream. Errors name what failed.
    virtual Result<size_t> read(void* buf, size_t n) = 0;

    // Reads exactly n bytes or fails with "unexpected end of stream".
    Result<void> read_exact(void* buf, size_t n);
    // Reads and drops n bytes.
    Result<void> skip(uint64_t n);
};

// Reads a file descriptor from its current offset, or a [offset, offset+length) window of it
// (pread, so several windows of one file can be read at once).
class FdStream final : public ByteStream {
public:
    explicit FdStream(UniqueFd fd);
    FdStream(int borrowed_fd, uint64_t offset, uint64_t length);
    Result<size_t> read(void* buf, size_t n) override;

private:
    UniqueFd owned_;
    int fd_;
    bool windowed_ = false;
    uint64_t offset_ = 0;
    uint64_t remaining_ = 0;
};

// Reads an in-memory string: tests, fuzzers and small blobs. `max_read` caps the bytes one read
// returns, so tests can check that consumers cope with short reads.
class MemoryStream final : public ByteStream {
public:
    explicit MemoryStream(std::string data, size_t max_read = SIZE_MAX);
    Result<size_t> read(void* buf, size_t n) override;
    uint64_t position() const { return pos_; }

private:
    std::string data_;
    size_t pos_ = 0;
    size_t max_read_;
};

Result<std::unique_ptr<ByteStream>> open_file_stream(const std::string& path);

}  // namespace erostream
