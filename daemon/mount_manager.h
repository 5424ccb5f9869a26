// Mounts and unmounts images, and keeps the books: which blob caches are open and who uses them,
// the state file, the holder's list of mount points. Runs on the loop; blocking steps (resolving
// a reference, reading and writing cache files, mount(2), umount2(2)) go to a worker pool, and
// operations run one at a time so that no two of them race on a blob or a mount point.
//
// Mounting: resolve REF -> load the artifact (manifest and metadata blob cached and verified) ->
// open or create each data blob's cache files -> attach the mount to its front end (fanotify:
// register the blobs' fds with the holder and mark the incomplete ones; fscache: make its cookie
// keys known) -> record the mount in the state file -> mount(2) as the front end says -> prefetch,
// if asked.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "artifact_source.h"
#include "blob_cache.h"
#include "event_loop.h"
#include "frontend.h"
#include "fetch_backend.h"
#include "fetch_scheduler.h"
#include "holder_link.h"
#include "mount_state.h"
#include "stats.h"
#include "thread_pool.h"

namespace erostream {

struct MountRequest {
    std::string ref, mountpoint;
    std::string frontend = "auto";
    std::string prefetch;  // empty: the configured default
};

class MountManager {
public:
    using Json = nlohmann::ordered_json;
    using Reply = std::function<void(Result<Json>)>;
    // Makes the backend that fetches a mount's data blobs.
    using BackendFactory =
        std::function<Result<std::shared_ptr<FetchBackend>>(const std::string& source, std::shared_ptr<CachingStore>)>;

    struct Deps {
        EventLoop& loop;
        ThreadPool& sys;  // blocking work
        FetchScheduler& sched;
        // The front ends this daemon runs, by name ("fanotify", "fscache").
        std::map<std::string, Frontend*> frontends;
        // What "auto" means, and why (for the log and the error when none is available).
        std::string auto_frontend;
        std::string auto_reason;
        HolderLink& holder;
        Stats& stats;
        BackendFactory backends;
        std::string cache_dir;
        std::string default_prefetch = "all";
        std::function<void(const std::string& hex, const Error&)> persist_error;
        DaemonRegistry* registry = nullptr;  // docker:// references; null: refused
        // The cachefiles device came from the holder: the kernel still has the cache the
        // recorded fscache mounts use.
        bool fscache_restored = false;
    };

    explicit MountManager(Deps d);

    // Start-up, before the loop runs (blocking): brings back the mounts of the state file that the
    // kernel still has, using the cache fds the holder kept (`held`, consumed). `holder_fresh`: a
    // new holder, so no mark exists. Fds of blobs no restored mount uses are kept (see held_).
    Result<void> restore(std::map<std::string, UniqueFd>& held, bool holder_fresh);

    void mount(MountRequest req, const std::string& req_id, Reply reply);
    void umount(const std::string& mountpoint, const std::string& req_id, Reply reply);
    Json list() const;
    size_t count() const { return mounts_.size(); }

    // From the scheduler: every chunk of the blob is in the cache.
    void blob_complete(const std::shared_ptr<BlobCache>& blob);
    // From the scheduler: one chunk was written.
    void chunk_ready(const std::shared_ptr<BlobCache>& blob, size_t i, bool readers_waited);
    // The open blob caches (for a new holder after the old one died).
    std::map<std::string, std::shared_ptr<BlobCache>> blobs() const;
    // Shutdown: fdatasync every open cache.
    void sync_all();

private:
    struct Mount {
        std::string id;
        MountRecord rec;
        std::shared_ptr<CachingStore> store;
        // Of the artifact, what serving needs once it is loaded. Not the metadata blob (the
        // kernel reads it from its cache file) nor its chunk table: a blob's chunk records are
        // kept once, in its BlobCache, shared by the mounts that use the blob.
        Descriptor meta_desc;
        std::vector<Descriptor> data;  // device i+1 is data[i]
        std::shared_ptr<FetchBackend> backend;
        std::vector<std::string> blobs;  // hex, device order
        std::string error;               // a restored mount that could not be served
        Frontend* fe = nullptr;          // set while attached
    };
    struct BlobUse {
        std::shared_ptr<BlobCache> cache;
        std::set<std::string> users;  // mount ids
    };

    void enqueue(std::function<void(std::function<void()> next)> op);
    void run_next();
    void do_mount(MountRequest req, std::string req_id, Reply reply, std::function<void()> next);
    void do_umount(std::string mountpoint, std::string req_id, Reply reply, std::function<void()> next);
    // `maybe_marked`: blobs whose cache file may carry a mark from before (fds the holder kept).
    Result<void> attach_blobs(Mount& m, Frontend& fe, const std::map<std::string, std::shared_ptr<BlobCache>>& opened,
                              const std::set<std::string>& maybe_marked);
    // The front end for a mount request's "frontend" (auto, fanotify, fscache).
    Result<Frontend*> pick_frontend(const std::string& wanted, const std::string& req_id) const;
    void detach_blobs(Mount& m);
    std::vector<MountRecord> records(const MountRecord* extra) const;
    // Writes the state file on the sys pool, then calls done on the loop.
    void save_state(const MountRecord* extra, std::function<void(Result<void>)> done);
    void send_holder_mounts(const MountRecord* extra);
    std::string state_path() const { return d_.cache_dir + "/state/mounts.json"; }
    std::string blobs_dir() const { return d_.cache_dir + "/blobs"; }

    Deps d_;
    std::map<std::string, std::shared_ptr<Mount>> mounts_;  // by mount point
    std::map<std::string, BlobUse> blobs_;  // by blob hex
    // Cache fds the holder kept for blobs no mount of ours uses: the files may still be marked
    // (and in use by a mount this daemon lost track of), so they stay marked, reads of them get
    // EIO, and a later mount of the blob must fill it through this fd, never a new one.
    std::map<std::string, UniqueFd> held_;
    std::deque<std::function<void(std::function<void()>)>> ops_;
    bool running_ = false;
    uint64_t next_mount_ = 1;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// errno of a failed operation -> the HTTP status the control API answers with.
int http_status_for(const Error& e);

}  // namespace erostream
