// The fanotify pre-content front end, daemon side. The holder reads the group and forwards each
// FAN_PRE_ACCESS event as (event id, st_dev, st_ino, offset, count); this class maps the file to
// its blob, has the scheduler fill the range, and answers FAN_ALLOW once the bytes are in the
// cache file, or FAN_DENY with EIO when they cannot be had. Every event gets exactly one answer,
// on every path.
//
// Marks: a blob's cache file is marked for FAN_PRE_ACCESS while incomplete, before any mount
// opens it; the fd used to fill it was opened before the mark and is registered with the holder
// first, so that it survives a daemon death. Once a blob is complete its mark goes: reads of it
// then never leave the kernel.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "blob_cache.h"
#include "event_loop.h"
#include "frontend.h"
#include "fetch_scheduler.h"
#include "holder_link.h"
#include "stats.h"

namespace erostream {

class FanotifyFrontend final : public Frontend {
public:
    FanotifyFrontend(FetchScheduler& sched, Stats& stats, HolderLink& holder, UniqueFd group)
        : sched_(sched), stats_(stats), holder_(holder), group_(std::move(group)) {}

    std::string_view name() const override { return "fanotify"; }
    // Registers every blob of the mount (add_blob) and remembers its device= paths.
    Result<void> attach(const FrontendMount& m, const std::set<std::string>& maybe_marked) override;
    void detach(const std::string& mount_id) override;
    // mount(2) of the metadata file with device=<cache file> per data blob.
    std::vector<MountCall> mount_calls(const std::string& mount_id) const override;
    void chunk_ready(const std::shared_ptr<BlobCache>&, size_t, bool) override {}
    // Every chunk present: the mark is not needed any more.
    void blob_complete(const std::shared_ptr<BlobCache>& blob) override;

    void on_event(const HolderMsg& ev);

    // A new holder (the old one died): new group; every blob registered and marked again.
    Result<void> rebind(UniqueFd group);
    bool marked(const std::string& hex) const;

private:
    struct Entry {
        std::shared_ptr<BlobCache> blob;
        bool marked = false;
        std::set<std::string> users;  // mount ids
    };
    struct MountEntry {
        std::string meta_path;
        std::vector<std::string> hexes;
    };
    // Registers the blob's fd with the holder and marks the file unless the blob is complete.
    // `maybe_marked`: the group may carry a mark from a previous daemon (restart): a complete
    // blob's mark is then removed.
    Result<void> add_blob(const std::shared_ptr<BlobCache>& blob, bool maybe_marked);
    // Unmarks and releases the fd in the holder (no mount uses the blob any more).
    void remove_blob(const std::string& hex);
    Result<void> mark(Entry& e);
    void unmark(Entry& e);

    FetchScheduler& sched_;
    Stats& stats_;
    HolderLink& holder_;
    UniqueFd group_;
    std::map<std::string, Entry> blobs_;
    std::map<std::string, MountEntry> mounts_;  // by mount id
    std::map<std::pair<uint64_t, uint64_t>, std::string> by_inode_;  // (dev, ino) -> hex
    uint64_t seq_ = 0;
};

}  // namespace erostream
