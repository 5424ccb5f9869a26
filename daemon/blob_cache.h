// The local cache of one data blob, shared by every mount whose artifact uses the blob:
// <cache>/blobs/<hex>.img, a sparse file of the blob's device size that the kernel's EROFS reads
// as a device, and <hex>.present (presence_file.h). Chunks arrive verified; this class writes them
// through io_uring and records them: in memory at once (the page cache has the bytes, readers may
// go on), on disk only after fdatasync of the cache file.
//
// The data fd must have been opened before the file got its fanotify mark: a file opened while
// an inode is marked for pre-content events raises them itself, and the daemon would wait for
// its own answer. That fd therefore also lives in the holder process across daemon restarts.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chunk_table.h"
#include "event_loop.h"
#include "presence_file.h"
#include "result.h"
#include "unique_fd.h"

namespace erostream {

class BlobCache : public std::enable_shared_from_this<BlobCache> {
public:
    // Opens or creates the cache files of `dev` in `blobs_dir`. `held`: the data fd the holder
    // kept (opened before the mark), or empty to open or create the file here. Blocking I/O: call
    // it from a worker thread, not from the loop. `note` receives why existing presence bits were
    // discarded, if they were.
    static Result<std::shared_ptr<BlobCache>> open(const std::string& blobs_dir, const DeviceChunks& dev,
                                                   UniqueFd held, std::string* note = nullptr);

    const std::string& hex() const { return hex_; }
    std::string digest() const { return "sha256:" + hex_; }
    const std::string& img_path() const { return img_path_; }
    int data_fd() const { return img_fd_.get(); }
    uint64_t device_size() const { return identity_.device_blocks * 4096; }
    std::span<const erostream_chunk_record> chunks() const { return chunks_; }
    const PresenceIdentity& identity() const { return identity_; }

    bool present(size_t i) const { return present_.test(i); }
    size_t present_count() const { return present_count_; }
    uint64_t present_bytes() const { return present_bytes_; }
    bool complete() const { return present_count_ == chunks_.size(); }
    // Chunks on disk for good (fdatasync'ed, bit written or being written).
    size_t persisted_count() const { return persisted_.count(); }

    // Writes a verified chunk (blocks * 4096 bytes) at its device offset, then marks it present
    // and starts persisting it. done(error) runs on the loop.
    void write_chunk(size_t i, std::string bytes, EventLoop& loop, std::function<void(Result<void>)> done);

    // Persistence failures (fdatasync, presence file writes), for logs and the errors counter.
    // A failed fdatasync also makes its chunks missing again.
    std::function<void(const Error&)> on_persist_error;

    // Synchronous fdatasync of both files, for shutdown.
    Result<void> sync_now();

private:
    BlobCache() = default;
    void mark_written(size_t i, EventLoop& loop);
    void kick_sync(EventLoop& loop);
    void kick_bitmap(EventLoop& loop);
    void report(Error e) {
        if (on_persist_error) on_persist_error(e);
    }

    std::string hex_, img_path_, present_path_;
    PresenceIdentity identity_;
    std::vector<erostream_chunk_record> chunks_;
    UniqueFd img_fd_, present_fd_;
    Bitset present_, persisted_;
    size_t present_count_ = 0;
    uint64_t present_bytes_ = 0;

    std::vector<size_t> unsynced_;
    bool syncing_ = false;
    bool bitmap_writing_ = false;
    size_t dirty_lo_ = SIZE_MAX, dirty_hi_ = 0;  // byte range of persisted_ not yet written
};

}  // namespace erostream
