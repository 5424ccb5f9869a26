#include "blob_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_util.h"
#include "sha256.h"

namespace erostream {

Result<std::shared_ptr<BlobCache>> BlobCache::open(const std::string& blobs_dir, const DeviceChunks& dev,
                                                   UniqueFd held, std::string* note) {
    std::shared_ptr<BlobCache> c(new BlobCache());
    c->hex_ = to_hex(dev.blob_digest);
    c->img_path_ = blobs_dir + "/" + c->hex_ + ".img";
    c->present_path_ = blobs_dir + "/" + c->hex_ + ".present";
    c->chunks_ = dev.chunks;
    const uint64_t size = dev.device_blocks * 4096;
    auto where = [&] { return "cache file " + c->img_path_; };

    if (held) {
        c->img_fd_ = std::move(held);
    } else {
        int fd = ::open(c->img_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) return fail_errno("open " + where());
        c->img_fd_.reset(fd);
    }
    struct stat st{};
    if (::fstat(c->img_fd_.get(), &st) != 0) return fail_errno("stat " + where());
    bool reset = false;
    std::string why;
    if (static_cast<uint64_t>(st.st_size) != size) {
        // New (0 bytes) or not ours: make it the device's size; nothing in it counts.
        if (::ftruncate(c->img_fd_.get(), static_cast<off_t>(size)) != 0) return fail_errno("truncate " + where());
        reset = true;
        if (st.st_size != 0) why = fmt::format("cache file had {} bytes, the device {}", st.st_size, size);
    }
    c->identity_.chunk_count = c->chunks_.size();
    c->identity_.device_blocks = dev.device_blocks;
    c->identity_.img_ino = st.st_ino;
    c->identity_.blob_sha256 = dev.blob_digest;
    c->identity_.table_sha256 = chunk_table_digest(c->chunks_);

    c->present_ = Bitset(c->chunks_.size());
    if (!reset) {
        auto bytes = read_small_file(c->present_path_, 64u << 20);
        if (bytes) {
            auto bits = parse_presence_file(*bytes, c->identity_);
            if (bits) c->present_ = std::move(*bits);
            else why = bits.error().what();
        } else if (bytes.error().err != ENOENT) {
            why = bytes.error().what();
        }
    }
    if (c->present_.count() == 0) {
        // Start over: a fresh presence file (header, no bit set), in place atomically.
        std::string fresh = encode_presence_header(c->identity_);
        fresh.append(c->present_.bytes().size(), '\0');
        EROS_TRYV(replace_file(c->present_path_, fresh));
    }
    int pfd = ::open(c->present_path_.c_str(), O_RDWR | O_CLOEXEC);
    if (pfd < 0) return fail_errno("open " + c->present_path_);
    c->present_fd_.reset(pfd);
    c->persisted_ = c->present_;
    for (size_t i = 0; i < c->chunks_.size(); ++i) {
        if (c->present_.test(i)) {
            c->present_count_++;
            c->present_bytes_ += uint64_t{c->chunks_[i].blocks} * 4096;
        }
    }
    if (note && !why.empty()) *note = why;
    return c;
}

void BlobCache::write_chunk(size_t i, std::string bytes, EventLoop& loop, std::function<void(Result<void>)> done) {
    struct WriteState {
        std::string bytes;
        size_t written = 0;
        uint64_t offset = 0;
        std::function<void(Result<void>)> done;
    };
    auto st = std::make_shared<WriteState>();
    st->bytes = std::move(bytes);
    st->offset = uint64_t{chunks_[i].blkaddr} * 4096;
    st->done = std::move(done);
    auto self = shared_from_this();
    // A write may come back short (a signal, a full disk): go on from where it stopped.
    auto step = std::make_shared<std::function<void()>>();
    *step = [self, st, i, &loop, step]() {
        int fd = self->img_fd_.get();
        loop.submit(
            [fd, st](io_uring_sqe* sqe) {
                io_uring_prep_write(sqe, fd, st->bytes.data() + st->written,
                                    static_cast<unsigned>(st->bytes.size() - st->written),
                                    st->offset + st->written);
            },
            [self, st, i, &loop, step](int res, uint32_t) {
                if (res < 0) {
                    auto done = std::move(st->done);
                    *step = nullptr;
                    done(fail_errno(fmt::format("write chunk {} to {}", i, self->img_path_), -res));
                    return;
                }
                if (res == 0) {
                    auto done = std::move(st->done);
                    *step = nullptr;
                    done(failf("write chunk {} to {}: no progress", i, self->img_path_));
                    return;
                }
                st->written += static_cast<size_t>(res);
                if (st->written < st->bytes.size()) {
                    (*step)();
                    return;
                }
                self->mark_written(i, loop);
                auto done = std::move(st->done);
                *step = nullptr;  // breaks the self-reference
                done({});
            });
    };
    (*step)();
}

void BlobCache::mark_written(size_t i, EventLoop& loop) {
    if (!present_.test(i)) {
        present_.set(i);
        present_count_++;
        present_bytes_ += uint64_t{chunks_[i].blocks} * 4096;
    }
    unsynced_.push_back(i);
    kick_sync(loop);
}

void BlobCache::kick_sync(EventLoop& loop) {
    if (syncing_ || unsynced_.empty()) return;
    syncing_ = true;
    auto batch = std::make_shared<std::vector<size_t>>(std::move(unsynced_));
    unsynced_.clear();
    auto self = shared_from_this();
    int fd = img_fd_.get();
    loop.submit([fd](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); },
                [self, batch, &loop](int res, uint32_t) {
                    self->syncing_ = false;
                    if (res < 0) {
                        // The bytes may not be on disk: nothing of this batch counts as present.
                        for (size_t i : *batch) {
                            if (self->present_.test(i) && !self->persisted_.test(i)) {
                                self->present_.reset(i);
                                self->present_count_--;
                                self->present_bytes_ -= uint64_t{self->chunks_[i].blocks} * 4096;
                            }
                        }
                        self->report(Error{-res, "fdatasync " + self->img_path_});
                    } else {
                        for (size_t i : *batch) {
                            if (!self->present_.test(i) || self->persisted_.test(i)) continue;
                            self->persisted_.set(i);
                            self->dirty_lo_ = std::min(self->dirty_lo_, i / 8);
                            self->dirty_hi_ = std::max(self->dirty_hi_, i / 8 + 1);
                        }
                        self->kick_bitmap(loop);
                    }
                    self->kick_sync(loop);
                });
}

void BlobCache::kick_bitmap(EventLoop& loop) {
    if (bitmap_writing_ || dirty_lo_ >= dirty_hi_) return;
    bitmap_writing_ = true;
    size_t lo = dirty_lo_, hi = dirty_hi_;
    dirty_lo_ = SIZE_MAX;
    dirty_hi_ = 0;
    auto snap = persisted_.bytes().subspan(lo, hi - lo);
    auto buf = std::make_shared<std::string>(reinterpret_cast<const char*>(snap.data()), snap.size());
    auto self = shared_from_this();
    int fd = present_fd_.get();
    uint64_t off = kPresenceHeaderSize + lo;
    loop.submit([fd, buf, off](io_uring_sqe* sqe) {
                    io_uring_prep_write(sqe, fd, buf->data(), static_cast<unsigned>(buf->size()), off);
                },
                [self, buf, lo, hi, &loop](int res, uint32_t) {
                    self->bitmap_writing_ = false;
                    if (res != static_cast<int>(buf->size())) {
                        // The bits stay set in memory; write the range again with the next batch.
                        self->dirty_lo_ = std::min(self->dirty_lo_, lo);
                        self->dirty_hi_ = std::max(self->dirty_hi_, hi);
                        self->report(res < 0 ? Error{-res, "write " + self->present_path_}
                                             : Error{0, "short write to " + self->present_path_});
                        return;
                    }
                    self->kick_bitmap(loop);
                });
}

Result<void> BlobCache::sync_now() {
    if (::fdatasync(img_fd_.get()) != 0) return fail_errno("fdatasync " + img_path_);
    if (!bitmap_writing_ && dirty_lo_ < dirty_hi_) {
        auto snap = persisted_.bytes().subspan(dirty_lo_, dirty_hi_ - dirty_lo_);
        auto w = pwrite_all(present_fd_.get(), snap.data(), snap.size(), kPresenceHeaderSize + dirty_lo_);
        if (!w) return std::unexpected(w.error().prefix(present_path_));
        dirty_lo_ = SIZE_MAX;
        dirty_hi_ = 0;
    }
    if (::fdatasync(present_fd_.get()) != 0) return fail_errno("fdatasync " + present_path_);
    return {};
}

}  // namespace erostream
