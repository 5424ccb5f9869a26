#include "mount_manager.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include <atomic>

#include "file_util.h"
#include "holder_protocol.h"

namespace erostream {

namespace {

// Runs `work` on the pool and `then(result)` on the loop, unless the manager is gone by then.
// Results travel in a shared_ptr: pool tasks are std::functions, which must be copyable.
template <class Work, class Then>
void hop(ThreadPool& pool, EventLoop& loop, std::weak_ptr<bool> alive, Work work, Then then) {
    using R = decltype(work());
    auto w = std::make_shared<Work>(std::move(work));
    auto t = std::make_shared<Then>(std::move(then));
    pool.submit([w, t, alive, &loop](unsigned) {
        auto r = std::make_shared<R>((*w)());
        loop.post([t, r, alive] {
            if (alive.expired()) return;
            (*t)(std::move(*r));
        });
    });
}

Result<std::string> normalize_mountpoint(const std::string& mp) {
    if (mp.empty() || mp.front() != '/') return fail(fmt::format("mountpoint '{}' must be an absolute path", mp), EINVAL);
    std::string out;
    size_t i = 0;
    while (i < mp.size()) {
        size_t j = mp.find('/', i + 1);
        std::string part = mp.substr(i + 1, j == std::string::npos ? std::string::npos : j - i - 1);
        if (part == "..") return fail(fmt::format("mountpoint '{}' must not contain '..'", mp), EINVAL);
        if (!part.empty() && part != ".") out += "/" + part;
        if (j == std::string::npos) break;
        i = j;
    }
    if (out.empty()) return fail("mountpoint '/' is not allowed", EINVAL);
    if (out.find('\n') != std::string::npos) return fail("mountpoint must not contain a newline", EINVAL);
    return out;
}

}  // namespace

int http_status_for(const Error& e) {
    switch (e.err) {
    case EINVAL: return 400;
    case ENOENT: return 404;
    case ENOTDIR: return 400;
    case EEXIST:
    case EBUSY: return 409;
    case ENOTSUP: return 501;
    case ENOSPC:
    case EDQUOT: return 507;
    case EACCES:
    case EPERM:
    case EIO:
    case ECONNREFUSED:
    case ECONNRESET:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EPROTO: return 502;
    default: return 500;
    }
}

MountManager::MountManager(Deps d) : d_(std::move(d)) {}

void MountManager::enqueue(std::function<void(std::function<void()> next)> op) {
    ops_.push_back(std::move(op));
    if (!running_) run_next();
}

void MountManager::run_next() {
    if (ops_.empty()) {
        running_ = false;
        return;
    }
    running_ = true;
    auto op = std::move(ops_.front());
    ops_.pop_front();
    std::weak_ptr<bool> alive = alive_;
    op([this, alive] {
        if (alive.expired()) return;
        // Not from inside the finishing op's stack: the next op starts on a fresh turn.
        d_.loop.post([this, alive] {
            if (!alive.expired()) run_next();
        });
    });
}

void MountManager::mount(MountRequest req, const std::string& req_id, Reply reply) {
    enqueue([this, req = std::move(req), req_id, reply = std::move(reply)](std::function<void()> next) mutable {
        do_mount(std::move(req), req_id, std::move(reply), std::move(next));
    });
}

void MountManager::umount(const std::string& mountpoint, const std::string& req_id, Reply reply) {
    enqueue([this, mountpoint, req_id, reply = std::move(reply)](std::function<void()> next) mutable {
        do_umount(mountpoint, req_id, std::move(reply), std::move(next));
    });
}

std::vector<MountRecord> MountManager::records(const MountRecord* extra) const {
    std::vector<MountRecord> out;
    for (const auto& [mp, m] : mounts_) out.push_back(m->rec);
    if (extra) out.push_back(*extra);
    return out;
}

void MountManager::save_state(const MountRecord* extra, std::function<void(Result<void>)> done) {
    std::string text = serialize_mount_state(records(extra));
    std::string dir = d_.cache_dir + "/state";
    std::string path = state_path();
    hop(
        d_.sys, d_.loop, alive_,
        [text, dir, path]() -> Result<void> {
            EROS_TRYV(make_dirs(dir));
            return replace_file(path, text);
        },
        std::move(done));
}

void MountManager::send_holder_mounts(const MountRecord* extra) {
    HolderMsg m;
    m.op = HolderOp::Mounts;
    for (const auto& r : records(extra)) m.text += r.mountpoint + "\n";
    d_.holder.send(std::move(m));
}

Result<Frontend*> MountManager::pick_frontend(const std::string& wanted, const std::string& req_id) const {
    std::string names;
    for (const auto& [n, f] : d_.frontends) names += (names.empty() ? "" : ", ") + n;
    if (names.empty()) names = "none";
    if (wanted == "auto") {
        auto it = d_.frontends.find(d_.auto_frontend);
        if (it == d_.frontends.end())
            return fail(fmt::format("no front end is available for 'auto' ({})", d_.auto_reason), ENOTSUP);
        spdlog::info("[{}] front end auto: {} ({})", req_id, d_.auto_frontend, d_.auto_reason);
        return it->second;
    }
    if (wanted != "fanotify" && wanted != "fscache")
        return fail(fmt::format("front end '{}': expected auto, fanotify or fscache", wanted), EINVAL);
    auto it = d_.frontends.find(wanted);
    if (it == d_.frontends.end())
        return fail(fmt::format("front end '{}' is not available in this daemon (available: {})", wanted, names),
                    ENOTSUP);
    return it->second;
}

Result<void> MountManager::attach_blobs(Mount& m, Frontend& fe,
                                        const std::map<std::string, std::shared_ptr<BlobCache>>& opened,
                                        const std::set<std::string>& maybe_marked) {
    FrontendMount fm;
    fm.id = m.id;
    fm.meta_hex = digest_hex(m.meta_desc.digest);
    fm.meta_path = m.store->meta_path(m.meta_desc);
    fm.meta_size = static_cast<uint64_t>(m.meta_desc.size);
    for (size_t i = 0; i < m.blobs.size(); ++i) {
        const std::string& hex = m.blobs[i];
        auto it = blobs_.find(hex);
        if (it == blobs_.end()) {
            auto o = opened.find(hex);
            if (o == opened.end()) {
                detach_blobs(m);
                return failf("blob sha256:{} was not opened", hex);
            }
            std::string h = hex;
            auto report = d_.persist_error;
            o->second->on_persist_error = [report, h](const Error& e) {
                if (report) report(h, e);
            };
            it = blobs_.emplace(hex, BlobUse{o->second, {}}).first;
        }
        it->second.users.insert(m.id);
        d_.sched.add_source(it->second.cache, m.data[i], m.backend, m.id);
        fm.blobs.push_back(it->second.cache);
    }
    auto r = fe.attach(fm, maybe_marked);
    if (!r) {
        detach_blobs(m);
        return r;
    }
    m.fe = &fe;
    return {};
}

void MountManager::detach_blobs(Mount& m) {
    if (m.fe) m.fe->detach(m.id);
    m.fe = nullptr;
    for (const auto& hex : m.blobs) {
        auto it = blobs_.find(hex);
        if (it == blobs_.end()) continue;
        d_.sched.remove_source(hex, m.id);
        it->second.users.erase(m.id);
        if (it->second.users.empty()) blobs_.erase(it);
    }
}

void MountManager::do_mount(MountRequest req, std::string req_id, Reply reply, std::function<void()> next) {
    auto finish = [reply, next, req_id](Result<Json> r) {
        if (!r) spdlog::error("[{}] mount: {}", req_id, r.error().what());
        reply(std::move(r));
        next();
    };
    auto mp = normalize_mountpoint(req.mountpoint);
    if (!mp) return finish(std::unexpected(mp.error()));
    if (req.ref.empty()) return finish(fail("'ref' is missing", EINVAL));
    auto fe = pick_frontend(req.frontend, req_id);
    if (!fe) return finish(std::unexpected(fe.error()));
    if (req.prefetch.empty()) req.prefetch = d_.default_prefetch;
    if (req.prefetch != "all" && req.prefetch != "none")
        return finish(fail(fmt::format("prefetch '{}': expected all or none", req.prefetch), EINVAL));
    if (mounts_.count(*mp)) return finish(fail(fmt::format("{} is already mounted by erostreamd", *mp), EEXIST));

    auto m = std::make_shared<Mount>();
    m->id = fmt::format("m{}", next_mount_++);
    m->rec.mountpoint = *mp;
    m->rec.ref = req.ref;
    m->rec.frontend = std::string((*fe)->name());
    m->rec.prefetch = req.prefetch;
    std::set<std::string> known;
    for (const auto& [hex, b] : blobs_) known.insert(hex);
    // Dups of kept fds: the originals stay in held_ until the blob is attached.
    auto held = std::make_shared<std::map<std::string, UniqueFd>>();
    for (const auto& [hex, fd] : held_) (*held)[hex] = UniqueFd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
    spdlog::info("[{}] mount {} on {}", req_id, req.ref, *mp);

    struct Prep {
        ResolvedArtifact src;
        std::unique_ptr<Artifact> art;
        std::map<std::string, std::shared_ptr<BlobCache>> opened;
    };
    std::string cache_dir = d_.cache_dir, blobs_dir = this->blobs_dir(), ref = req.ref, point = *mp;
    DaemonRegistry* registry = d_.registry;
    // Set once the request itself was found sound: later failures (fetching, verifying, cache
    // files) count in the error statistics.
    auto fetching = std::make_shared<std::atomic<bool>>(false);
    hop(
        d_.sys, d_.loop, alive_,
        [cache_dir, blobs_dir, ref, point, known, held, req_id, registry, fetching]() -> Result<std::shared_ptr<Prep>> {
            struct stat st{};
            if (::stat(point.c_str(), &st) != 0) return fail_errno("mountpoint " + point);
            if (!S_ISDIR(st.st_mode)) return fail(fmt::format("mountpoint {} is not a directory", point), ENOTDIR);
            fetching->store(true);
            auto p = std::make_shared<Prep>();
            p->src = EROS_TRY(resolve_artifact_ref(ref, cache_dir, registry));
            auto a = load_artifact(*p->src.store, p->src.artifact);
            if (!a) {
                Error e = a.error();
                if (e.err == 0) e.err = EIO;
                return std::unexpected(e.prefix(ref));
            }
            p->art = std::make_unique<Artifact>(std::move(*a));
            EROS_TRYV(make_dirs(blobs_dir));
            for (const auto& dev : p->art->meta.devices) {
                std::string hex = to_hex(dev.blob_digest);
                if (known.count(hex) || p->opened.count(hex)) continue;
                std::string note;
                UniqueFd fd;
                if (auto h = held->find(hex); h != held->end()) fd = std::move(h->second);
                auto c = BlobCache::open(blobs_dir, dev, std::move(fd), &note);
                if (!c) return std::unexpected(c.error());
                if (!note.empty()) spdlog::warn("[{}] blob sha256:{}: cached chunks not trusted: {}", req_id, hex, note);
                p->opened[hex] = *c;
            }
            return p;
        },
        [this, m, finish, req_id, fetching, fe = *fe](Result<std::shared_ptr<Prep>> prep) mutable {
            if (!prep) {
                if (fetching->load() && prep.error().err != EINVAL) d_.stats.errors++;
                return finish(std::unexpected(prep.error()));
            }
            Prep& p = **prep;
            m->store = p.src.store;
            m->meta_desc = p.art->meta_desc;
            m->data = p.art->data;
            m->rec.source = p.src.source;
            m->rec.artifact = p.src.artifact;
            m->rec.subject = p.art->manifest.subject ? p.art->manifest.subject->digest : "";
            for (const auto& dev : p.art->meta.devices) m->blobs.push_back(to_hex(dev.blob_digest));
            p.art.reset();  // the metadata blob (megabytes): the BlobCaches have the chunk records
            auto backend = d_.backends(m->rec.source, m->store);
            if (!backend) return finish(std::unexpected(backend.error()));
            m->backend = *backend;
            if (mounts_.count(m->rec.mountpoint))
                return finish(fail(fmt::format("{} is already mounted by erostreamd", m->rec.mountpoint), EEXIST));
            std::set<std::string> kept;
            for (const auto& [hex, c] : p.opened)
                if (held_.count(hex)) kept.insert(hex);
            auto att = attach_blobs(*m, *fe, p.opened, kept);
            if (!att) return finish(std::unexpected(att.error()));
            for (const auto& hex : kept) held_.erase(hex);
            // Recorded before mount(2): a daemon dying in between is found out at restart.
            save_state(&m->rec, [this, m, finish, req_id](Result<void> saved) mutable {
                if (!saved) {
                    detach_blobs(*m);
                    return finish(std::unexpected(saved.error().prefix("save the mount state")));
                }
                send_holder_mounts(&m->rec);
                std::vector<MountCall> calls = m->fe ? m->fe->mount_calls(m->id) : std::vector<MountCall>{};
                std::string target = m->rec.mountpoint;
                hop(
                    d_.sys, d_.loop, alive_,
                    [calls, target, req_id]() -> Result<void> {
                        if (calls.empty()) return fail("the front end has no mount(2) call for this mount", EINVAL);
                        for (size_t k = 0; k < calls.size(); ++k) {
                            const auto& c = calls[k];
                            if (::mount(c.source.c_str(), target.c_str(), "erofs", MS_RDONLY,
                                        c.data.empty() ? nullptr : c.data.c_str()) == 0) {
                                spdlog::debug("[{}] mount(\"{}\", \"{}\", \"erofs\", MS_RDONLY, \"{}\")", req_id,
                                              c.source, target, c.data);
                                return {};
                            }
                            int e = errno;
                            // fscache: the fsid is taken in the domain (the same image mounted
                            // elsewhere): the next call names it differently.
                            if (e == EEXIST && k + 1 < calls.size()) continue;
                            return fail_errno(fmt::format("mount(2) of {} on {} (erofs, ro, {})", c.source, target,
                                                          c.data.empty() ? "no options" : c.data),
                                              e);
                        }
                        return fail("mount(2): every fsid is taken", EEXIST);
                    },
                    [this, m, finish, req_id](Result<void> mounted) mutable {
                        if (!mounted) {
                            detach_blobs(*m);
                            save_state(nullptr, [](Result<void>) {});
                            send_holder_mounts(nullptr);
                            return finish(std::unexpected(mounted.error()));
                        }
                        mounts_[m->rec.mountpoint] = m;
                        d_.stats.mounts = mounts_.size();
                        if (m->rec.prefetch == "all")
                            for (const auto& hex : m->blobs) d_.sched.set_prefetch(hex, m->id, true);
                        size_t complete = 0;
                        for (const auto& hex : m->blobs)
                            if (blobs_[hex].cache->complete()) complete++;
                        spdlog::info("[{}] mounted {} on {}: artifact {}, {} devices ({} complete)", req_id,
                                     m->rec.ref, m->rec.mountpoint, m->rec.artifact.digest, m->blobs.size(), complete);
                        Json j;
                        j["mountpoint"] = m->rec.mountpoint;
                        j["artifact"] = m->rec.artifact.digest;
                        j["subject"] = m->rec.subject;
                        j["frontend"] = m->rec.frontend;
                        j["devices"] = m->blobs.size();
                        finish(j);
                    });
            });
        });
}

void MountManager::do_umount(std::string mountpoint, std::string req_id, Reply reply, std::function<void()> next) {
    auto finish = [reply, next, req_id](Result<Json> r) {
        if (!r) spdlog::error("[{}] umount: {}", req_id, r.error().what());
        reply(std::move(r));
        next();
    };
    auto mp = normalize_mountpoint(mountpoint);
    if (!mp) return finish(std::unexpected(mp.error()));
    auto it = mounts_.find(*mp);
    if (it == mounts_.end()) return finish(fail(fmt::format("{} is not mounted by erostreamd", *mp), ENOENT));
    auto m = it->second;
    std::string target = *mp;
    hop(
        d_.sys, d_.loop, alive_,
        [target]() -> Result<void> {
            if (::umount2(target.c_str(), UMOUNT_NOFOLLOW) != 0) {
                // EINVAL: not a mount point any more (someone unmounted it): fine, forget it.
                if (errno == EINVAL) return {};
                return fail_errno("umount " + target);
            }
            return {};
        },
        [this, m, finish, req_id](Result<void> r) mutable {
            if (!r) return finish(std::unexpected(r.error()));
            for (const auto& hex : m->blobs) d_.sched.set_prefetch(hex, m->id, false);
            detach_blobs(*m);
            mounts_.erase(m->rec.mountpoint);
            d_.stats.mounts = mounts_.size();
            spdlog::info("[{}] unmounted {}", req_id, m->rec.mountpoint);
            save_state(nullptr, [this, m, finish](Result<void> saved) mutable {
                if (!saved) spdlog::error("save the mount state: {}", saved.error().what());
                send_holder_mounts(nullptr);
                Json j;
                j["mountpoint"] = m->rec.mountpoint;
                finish(j);
            });
        });
}

MountManager::Json MountManager::list() const {
    Json arr = Json::array();
    for (const auto& [mp, m] : mounts_) {
        Json j;
        j["mountpoint"] = m->rec.mountpoint;
        j["ref"] = m->rec.ref;
        j["artifact"] = m->rec.artifact.digest;
        j["subject"] = m->rec.subject;
        j["frontend"] = m->rec.frontend;
        j["prefetch"] = m->rec.prefetch;
        Json devs = Json::array();
        for (const auto& hex : m->blobs) {
            Json d;
            d["blob"] = "sha256:" + hex;
            auto b = blobs_.find(hex);
            d["size"] = b == blobs_.end() ? 0 : b->second.cache->device_size();
            d["present_bytes"] = b == blobs_.end() ? 0 : b->second.cache->present_bytes();
            devs.push_back(std::move(d));
        }
        j["devices"] = std::move(devs);
        if (!m->error.empty()) j["error"] = m->error;
        arr.push_back(std::move(j));
    }
    return arr;
}

void MountManager::blob_complete(const std::shared_ptr<BlobCache>& blob) {
    for (const auto& [n, fe] : d_.frontends) fe->blob_complete(blob);
}

void MountManager::chunk_ready(const std::shared_ptr<BlobCache>& blob, size_t i, bool readers_waited) {
    for (const auto& [n, fe] : d_.frontends) fe->chunk_ready(blob, i, readers_waited);
}

std::map<std::string, std::shared_ptr<BlobCache>> MountManager::blobs() const {
    std::map<std::string, std::shared_ptr<BlobCache>> out;
    for (const auto& [hex, b] : blobs_) out[hex] = b.cache;
    return out;
}

void MountManager::sync_all() {
    for (const auto& [hex, b] : blobs_) {
        auto r = b.cache->sync_now();
        if (!r) spdlog::error("[shutdown] {}", r.error().what());
    }
}

Result<void> MountManager::restore(std::map<std::string, UniqueFd>& held, bool holder_fresh) {
    std::vector<MountRecord> recs;
    auto text = read_small_file(state_path(), 64u << 20);
    if (text) {
        auto parsed = parse_mount_state(*text);
        if (parsed) {
            recs = std::move(*parsed);
        } else {
            spdlog::error("[restore] {}: {}; starting without mounts", state_path(), parsed.error().what());
            ::rename(state_path().c_str(), (state_path() + ".bad").c_str());
        }
    } else if (text.error().err != ENOENT) {
        return std::unexpected(text.error());
    }
    std::vector<MountInfoEntry> mounted;
    if (auto mi = read_small_file("/proc/self/mountinfo", 64u << 20)) mounted = parse_mountinfo(*mi);
    auto is_mounted = [&](const std::string& mp) {
        for (const auto& e : mounted)
            if (e.mount_point == mp && e.fstype == "erofs") return true;
        return false;
    };
    std::map<std::string, std::shared_ptr<BlobCache>> opened;
    std::set<std::string> from_holder;
    for (const auto& [hex, fd] : held) from_holder.insert(hex);
    for (auto& rec : recs) {
        if (!is_mounted(rec.mountpoint)) {
            spdlog::info("[restore] {} is no longer mounted: forgotten", rec.mountpoint);
            continue;
        }
        auto m = std::make_shared<Mount>();
        m->id = fmt::format("m{}", next_mount_++);
        m->rec = rec;
        std::string req_id = "restore-" + m->id;
        auto served = [&]() -> Result<void> {
            m->store = EROS_TRY(reopen_source(rec.source, d_.cache_dir, d_.registry));
            auto a = load_artifact(*m->store, rec.artifact);
            if (!a) return std::unexpected(a.error().prefix("artifact " + rec.artifact.digest));
            m->meta_desc = a->meta_desc;
            m->data = a->data;
            for (const auto& dev : a->meta.devices) {
                std::string hex = to_hex(dev.blob_digest);
                m->blobs.push_back(hex);
                if (blobs_.count(hex) || opened.count(hex)) continue;
                UniqueFd fd;
                if (auto h = held.find(hex); h != held.end()) {
                    fd = std::move(h->second);
                    held.erase(h);
                } else if (!holder_fresh && rec.frontend == "fanotify") {
                    spdlog::warn("[{}] the holder kept no fd for blob sha256:{}; opening it again", req_id, hex);
                }
                std::string note;
                auto c = BlobCache::open(blobs_dir(), dev, std::move(fd), &note);
                if (!c) return std::unexpected(c.error());
                if (!note.empty()) spdlog::warn("[{}] blob sha256:{}: cached chunks not trusted: {}", req_id, hex, note);
                opened[hex] = *c;
            }
            m->backend = EROS_TRY(d_.backends(rec.source, m->store));
            auto fe = d_.frontends.find(rec.frontend);
            if (fe == d_.frontends.end())
                return fail(fmt::format("it was mounted through the '{}' front end, which this daemon does not run",
                                        rec.frontend),
                            ENOTSUP);
            if (rec.frontend == "fscache" && !d_.fscache_restored)
                return fail("the cachefiles device of the daemon that mounted it was lost (the fd holder died): the "
                            "kernel withdrew its cache; unmount and mount it again",
                            EIO);
            return attach_blobs(*m, *fe->second, opened, from_holder);
        }();
        if (!served) {
            m->error = served.error().what();
            spdlog::error("[{}] {} stays mounted but cannot be served (reads fail with EIO): {}", req_id,
                          rec.mountpoint, m->error);
            m->blobs.clear();
        } else {
            if (rec.prefetch == "all")
                for (const auto& hex : m->blobs) d_.sched.set_prefetch(hex, m->id, true);
            spdlog::info("[{}] serving {} again ({} devices)", req_id, rec.mountpoint, m->blobs.size());
        }
        mounts_[rec.mountpoint] = m;
    }
    // What the holder kept for blobs no restored mount uses: their files may still be marked and
    // even mounted (by a mount the state file lost), so they stay marked; reads of them get EIO.
    for (auto& [hex, fd] : held) {
        spdlog::warn("[restore] blob sha256:{}: kept by the holder but used by no known mount; its reads fail "
                     "until a mount uses it again",
                     hex);
        held_[hex] = std::move(fd);
    }
    held.clear();
    d_.stats.mounts = mounts_.size();
    std::string out = serialize_mount_state(records(nullptr));
    EROS_TRYV(make_dirs(d_.cache_dir + "/state"));
    EROS_TRYV(replace_file(state_path(), out));
    send_holder_mounts(nullptr);
    return {};
}

}  // namespace erostream
