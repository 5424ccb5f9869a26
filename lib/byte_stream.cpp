#include "byte_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace erostream {

Result<void> ByteStream::read_exact(void* buf, size_t n) {
    auto* p = static_cast<uint8_t*>(buf);
    while (n > 0) {
        size_t got = EROS_TRY(read(p, n));
        if (got == 0) return fail("unexpected end of stream");
        p += got;
        n -= got;
    }
    return {};
}

Result<void> ByteStream::skip(uint64_t n) {
    std::vector<uint8_t> scratch(std::min<uint64_t>(n, 1 << 16));
    while (n > 0) {
        size_t got = EROS_TRY(read(scratch.data(), std::min<uint64_t>(n, scratch.size())));
        if (got == 0) return fail("unexpected end of stream");
        n -= got;
    }
    return {};
}

FdStream::FdStream(UniqueFd fd) : owned_(std::move(fd)), fd_(owned_.get()) {}
FdStream::FdStream(int borrowed_fd, uint64_t offset, uint64_t length)
    : fd_(borrowed_fd), windowed_(true), offset_(offset), remaining_(length) {}

Result<size_t> FdStream::read(void* buf, size_t n) {
    for (;;) {
        ssize_t r;
        if (windowed_) {
            n = std::min<uint64_t>(n, remaining_);
            if (n == 0) return 0;
            r = ::pread(fd_, buf, n, static_cast<off_t>(offset_));
            if (r == 0) return fail("file is shorter than expected");
        } else {
            r = ::read(fd_, buf, n);
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read");
        }
        if (windowed_) {
            offset_ += r;
            remaining_ -= r;
        }
        return static_cast<size_t>(r);
    }
}

MemoryStream::MemoryStream(std::string data, size_t max_read)
    : data_(std::move(data)), max_read_(max_read == 0 ? 1 : max_read) {}

Result<size_t> MemoryStream::read(void* buf, size_t n) {
    n = std::min({n, data_.size() - pos_, max_read_});
    if (n > 0) std::memcpy(buf, data_.data() + pos_, n);
    pos_ += n;
    return n;
}

Result<std::unique_ptr<ByteStream>> open_file_stream(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno("open " + path);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return std::make_unique<FdStream>(UniqueFd(fd));
}

}  // namespace erostream
