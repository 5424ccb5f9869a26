// What MountManager needs from a kernel front end (docs/daemon.md, "Front ends"). A front end
// connects the kernel's requests for blob bytes to the core (FetchScheduler + BlobCache) and says
// how to call mount(2) for an image it serves:
//   - fanotify: file-backed EROFS over the metadata file, device=<cache file> per data blob,
//     FAN_PRE_ACCESS events on the cache files (fanotify_frontend.h);
//   - fscache: EROFS over cachefiles on-demand, fsid/domain_id/device=<tag> options, OPEN/READ/
//     CLOSE requests on /dev/cachefiles (cachefiles_frontend.h).
// The core is shared: a blob used by mounts of both front ends has one BlobCache.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "blob_cache.h"
#include "result.h"

namespace erostream {

// One mount as a front end sees it.
struct FrontendMount {
    std::string id;         // MountManager's mount id ("m3")
    std::string meta_hex;   // digest hex of the metadata blob
    std::string meta_path;  // the whole metadata blob in the cache (<cache>/meta/<hex>.erofs)
    uint64_t meta_size = 0;
    std::vector<std::shared_ptr<BlobCache>> blobs;  // data blobs, device order
};

// One way to call mount(2) (always type erofs, read-only).
struct MountCall {
    std::string source;
    std::string data;
};

class Frontend {
public:
    virtual ~Frontend() = default;
    virtual std::string_view name() const = 0;

    // Makes the mount's blobs servable; called before mount(2), and again for a mount that a
    // restarted daemon brings back. `maybe_marked`: blobs whose cache fd came from the holder.
    virtual Result<void> attach(const FrontendMount& m, const std::set<std::string>& maybe_marked) = 0;
    // The mount is gone (or its mount(2) failed): release what attach() took.
    virtual void detach(const std::string& mount_id) = 0;
    // mount(2) calls to try in order while the kernel answers EEXIST (fscache: an fsid that is
    // taken in the domain); one call for front ends without such names.
    virtual std::vector<MountCall> mount_calls(const std::string& mount_id) const = 0;

    // From the scheduler: chunk `i` of the blob was verified and written to its BlobCache;
    // `readers_waited`: kernel reads were waiting for it (they get it through their own path).
    virtual void chunk_ready(const std::shared_ptr<BlobCache>& blob, size_t i, bool readers_waited) = 0;
    // Every chunk of the blob is in its BlobCache.
    virtual void blob_complete(const std::shared_ptr<BlobCache>& blob) = 0;
};

}  // namespace erostream
