#include "fanotify_frontend.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include "fanotify_abi.h"

namespace erostream {

Result<void> FanotifyFrontend::attach(const FrontendMount& m, const std::set<std::string>& maybe_marked) {
    MountEntry me;
    me.meta_path = m.meta_path;
    for (const auto& b : m.blobs) {
        if (!blobs_.count(b->hex())) {
            auto r = add_blob(b, maybe_marked.count(b->hex()) > 0);
            if (!r) {
                mounts_[m.id] = std::move(me);
                detach(m.id);
                return r;
            }
        }
        blobs_[b->hex()].users.insert(m.id);
        me.hexes.push_back(b->hex());
    }
    mounts_[m.id] = std::move(me);
    return {};
}

void FanotifyFrontend::detach(const std::string& mount_id) {
    auto it = mounts_.find(mount_id);
    if (it == mounts_.end()) return;
    for (const auto& hex : it->second.hexes) {
        auto b = blobs_.find(hex);
        if (b == blobs_.end()) continue;
        b->second.users.erase(mount_id);
        if (b->second.users.empty()) remove_blob(hex);
    }
    mounts_.erase(it);
}

std::vector<MountCall> FanotifyFrontend::mount_calls(const std::string& mount_id) const {
    auto it = mounts_.find(mount_id);
    if (it == mounts_.end()) return {};
    MountCall c;
    c.source = it->second.meta_path;
    for (const auto& hex : it->second.hexes) {
        if (!c.data.empty()) c.data += ",";
        c.data += "device=" + blobs_.at(hex).blob->img_path();
    }
    return {c};
}

Result<void> FanotifyFrontend::add_blob(const std::shared_ptr<BlobCache>& blob, bool maybe_marked) {
    auto [it, fresh] = blobs_.try_emplace(blob->hex());
    Entry& e = it->second;
    if (!fresh) return {};
    e.blob = blob;
    struct stat st{};
    if (::fstat(blob->data_fd(), &st) != 0) {
        blobs_.erase(it);
        return fail_errno("stat " + blob->img_path());
    }
    by_inode_[{st.st_dev, st.st_ino}] = blob->hex();
    // The holder gets the fd first: from the moment the mark exists, no new fd to the file may
    // be opened for writing without raising events, so this one must survive us.
    HolderMsg m;
    m.op = HolderOp::Blob;
    m.text = blob->hex();
    holder_.send(m, blob->data_fd());
    if (!blob->complete()) {
        auto r = mark(e);
        if (!r) {
            remove_blob(blob->hex());
            return r;
        }
    } else if (maybe_marked) {
        e.marked = true;
        unmark(e);
    }
    return {};
}

Result<void> FanotifyFrontend::mark(Entry& e) {
    if (::fanotify_mark(group_.get(), FAN_MARK_ADD, fan::kPreAccess, e.blob->data_fd(), nullptr) != 0)
        return fail_errno("fanotify_mark(FAN_PRE_ACCESS) " + e.blob->img_path());
    e.marked = true;
    return {};
}

void FanotifyFrontend::unmark(Entry& e) {
    if (!e.marked) return;
    if (::fanotify_mark(group_.get(), FAN_MARK_REMOVE, fan::kPreAccess, e.blob->data_fd(), nullptr) != 0 &&
        errno != ENOENT)
        spdlog::warn("remove the mark of {}: {}", e.blob->img_path(), std::strerror(errno));
    e.marked = false;
}

void FanotifyFrontend::remove_blob(const std::string& hex) {
    auto it = blobs_.find(hex);
    if (it == blobs_.end()) return;
    unmark(it->second);
    std::erase_if(by_inode_, [&](const auto& kv) { return kv.second == hex; });
    blobs_.erase(it);
    HolderMsg m;
    m.op = HolderOp::Release;
    m.text = hex;
    holder_.send(m);
}

void FanotifyFrontend::blob_complete(const std::shared_ptr<BlobCache>& blob) {
    auto it = blobs_.find(blob->hex());
    if (it == blobs_.end()) return;
    if (it->second.marked) spdlog::info("blob sha256:{} complete: mark removed", blob->hex());
    unmark(it->second);
}

bool FanotifyFrontend::marked(const std::string& hex) const {
    auto it = blobs_.find(hex);
    return it != blobs_.end() && it->second.marked;
}

Result<void> FanotifyFrontend::rebind(UniqueFd group) {
    group_ = std::move(group);
    auto old = std::move(blobs_);
    blobs_.clear();
    by_inode_.clear();
    Result<void> out;
    for (auto& [hex, e] : old) {
        auto r = add_blob(e.blob, false);
        if (!r && out) out = r;
        if (r) blobs_[hex].users = std::move(e.users);
    }
    return out;
}

void FanotifyFrontend::on_event(const HolderMsg& ev) {
    uint64_t id = ev.id;
    std::string req = fmt::format("ev-{}-{}", ++seq_, id);
    stats_.events++;
    auto deny = [this, id, req](const std::string& why) {
        stats_.events_denied++;
        spdlog::error("[{}] EIO: {}", req, why);
        holder_.answer(id, fan::deny_errno(EIO));
    };
    auto it = by_inode_.find({ev.a, ev.b});
    if (it == by_inode_.end()) {
        deny(fmt::format("access to a file this daemon does not serve (dev {} ino {}, offset {})", ev.a, ev.b, ev.c));
        return;
    }
    const std::string hex = it->second;
    spdlog::debug("[{}] blob {} offset {} count {} pid {}", req, hex.substr(0, 12), ev.c, ev.d, ev.e);
    sched_.ensure(hex, ev.c, ev.d, req, [this, id, req, hex, deny](Result<void> r) {
        if (!r) {
            deny(fmt::format("blob sha256:{}: {}", hex, r.error().what()));
            return;
        }
        holder_.answer(id, FAN_ALLOW);
    });
}

}  // namespace erostream
