// The cachefiles on-demand front end ("EROFS over fscache"), for kernels 5.19+ built with
// CONFIG_CACHEFILES_ONDEMAND and CONFIG_EROFS_FS_ONDEMAND. The kernel owns the cache files (under
// <cache>/fscache); it asks this daemon for what it lacks through /dev/cachefiles:
//
//   OPEN  (volume key, cookie key, anonymous fd): a mount needs a cache object. The keys name a
//         metadata blob (fsid) or a data blob (device tag) of a mount this daemon serves; the
//         answer is `copen <id>,<size>`, or a negative errno for keys that are not ours. The
//         anonymous fd, kept per object, is how bytes get into the kernel's cache file.
//   READ  (object, offset, length): the object has a hole there. The range goes to the core
//         (FetchScheduler.ensure: fetch, decompress, verify into the blob's BlobCache; metadata
//         blobs are whole in the cache already), the bytes are copied into the object
//         (ObjectCopier), then the READ is completed with CACHEFILES_IOC_READ_COMPLETE. Every
//         READ is completed, on failure too (ReadToken): the reader then gets EIO.
//   CLOSE (object): the kernel dropped the object; its fd is closed once nothing uses it.
//
// Requests are read on the daemon's io_uring loop (a watch on the device; read(2) of the device
// never sleeps: it returns 0 when nothing is pending). Chunks the scheduler completes for a blob
// whose object is open are copied into the object ahead of READs, after the READs' copies.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "blob_cache.h"
#include "cachefiles_msg.h"
#include "cachefiles_request.h"
#include "event_loop.h"
#include "fetch_scheduler.h"
#include "frontend.h"
#include "object_copier.h"
#include "presence_file.h"
#include "stats.h"
#include "thread_pool.h"

namespace erostream {

struct CachefilesOptions {
    std::string domain{kFscacheDomain};
    // Metadata READs are widened to this aligned window (a tree walk then asks a few times, not
    // once per 4 KiB block).
    uint64_t meta_window = 4u << 20;
    ObjectCopier::Options copier;
    // fsids tried for one mount when the kernel says EEXIST (the fsid is taken in the domain).
    unsigned fsid_attempts = 16;
    // How a READ is completed and a command written (0 or -errno); the defaults are the kernel's
    // (ioctl on the anonymous fd, write(2) on the device). Unit tests replace them.
    std::function<int(int anon_fd, uint32_t msg_id)> complete_read;
    std::function<int(int dev_fd, const std::string& cmd)> write_command;
};

class CachefilesFrontend final : public Frontend {
public:
    // `dev`: /dev/cachefiles, bound in on-demand mode (bind_cachefiles_ondemand), or the fd a
    // previous daemon left with the holder. `io`: a pool for blocking lookups (SEEK_DATA scans of
    // cache objects).
    CachefilesFrontend(EventLoop& loop, FetchScheduler& sched, ThreadPool& io, Stats& stats, UniqueFd dev,
                       CachefilesOptions opt = {});
    ~CachefilesFrontend() override;

    // Starts reading requests. `restored`: the device was bound by a previous daemon, which may
    // have read requests it never answered: `restore` makes the kernel send them again (and
    // open again the objects whose anonymous fds died with that daemon). Call after the mounts
    // the new daemon brings back are attached, so that their keys are known.
    Result<void> start(bool restored);
    // Clean stop with mounts left: requests not answered yet stay with the kernel for the next
    // daemon (restore) instead of failing with EIO.
    void leave_pending_to_next_daemon() { *abandon_ = true; }
    int device_fd() const { return dev_.get(); }

    std::string_view name() const override { return "fscache"; }
    Result<void> attach(const FrontendMount& m, const std::set<std::string>& maybe_marked) override;
    void detach(const std::string& mount_id) override;
    // mount("none", MNT, "erofs", MS_RDONLY, "fsid=<meta hex>,domain_id=erostream,device=<hex>...")
    std::vector<MountCall> mount_calls(const std::string& mount_id) const override;
    void chunk_ready(const std::shared_ptr<BlobCache>& blob, size_t i, bool readers_waited) override;
    void blob_complete(const std::shared_ptr<BlobCache>&) override {}

    // One request as read from the device (public for the unit tests, which feed it directly).
    void on_message(std::span<const uint8_t> bytes);

    size_t open_objects() const { return objects_.size(); }
    uint64_t bytes_written() const { return copier_.bytes_written(); }

private:
    struct Object {
        uint32_t object_id = 0;
        FscacheCookie cookie;
        std::string key;  // the cookie key, for logs
        UniqueFd anon;
        uint64_t size = 0;
        std::shared_ptr<BlobCache> blob;  // data objects
        UniqueFd meta_fd;                 // metadata objects
        Bitset written;  // data: chunks known to be in the kernel's object
        Bitset queued;   // data: chunks with a copy queued or running
    };
    struct MetaUse {
        std::string path;
        uint64_t size = 0;
        std::set<std::string> users;
    };
    struct BlobUse {
        std::shared_ptr<BlobCache> blob;
        std::set<std::string> users;
    };
    struct MountEntry {
        std::string meta_hex;
        std::vector<std::string> hexes;
    };

    void on_readable();
    void on_open(CachefilesOpen o, const std::string& req);
    void on_read(const CachefilesRead& r, const std::string& req);
    void on_close(const CachefilesClose& c, const std::string& req);
    void on_bad_message(std::span<const uint8_t> bytes, const Error& e, const std::string& req);
    void open_meta(std::shared_ptr<Object> obj, std::shared_ptr<OpenToken> tok, const MetaUse& meta);
    void serve_meta_read(const std::shared_ptr<Object>& obj, const CachefilesRead& r, std::shared_ptr<ReadToken> tok);
    void serve_data_read(const std::shared_ptr<Object>& obj, const CachefilesRead& r, std::shared_ptr<ReadToken> tok);
    void copy_chunks(const std::shared_ptr<Object>& obj, size_t first, size_t last, bool urgent,
                     std::function<void(Result<void>)> done);
    void scan_object(const std::shared_ptr<Object>& obj);
    void command(const std::string& cmd, const std::string& req);
    std::shared_ptr<ReadToken> read_token(const std::shared_ptr<Object>& obj, uint32_t msg_id, const std::string& req);

    EventLoop& loop_;
    FetchScheduler& sched_;
    ThreadPool& io_;
    Stats& stats_;
    UniqueFd dev_;
    CachefilesOptions opt_;
    ObjectCopier copier_;
    uint64_t watch_ = 0;
    uint64_t seq_ = 0;
    std::map<std::string, MetaUse> metas_;     // by metadata blob hex
    std::map<std::string, BlobUse> blobs_;     // by data blob hex
    std::map<std::string, MountEntry> mounts_; // by mount id
    std::map<uint32_t, std::shared_ptr<Object>> objects_;  // by object id
    std::map<std::string, std::shared_ptr<Object>> data_objects_;  // open data objects by blob hex
    std::shared_ptr<bool> abandon_ = std::make_shared<bool>(false);
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace erostream
