#include "cachefiles_frontend.h"

#include <fcntl.h>
#include <linux/cachefiles.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "cachefiles_device.h"
#include "chunk_map.h"

namespace erostream {

namespace {

// The options of one mount(2) call must fit in a page (the kernel copies one page of them).
constexpr size_t kMaxMountData = 4000;

std::string short_hex(const std::string& hex) { return hex.substr(0, 12); }

}  // namespace

CachefilesFrontend::CachefilesFrontend(EventLoop& loop, FetchScheduler& sched, ThreadPool& io, Stats& stats,
                                       UniqueFd dev, CachefilesOptions opt)
    : loop_(loop), sched_(sched), io_(io), stats_(stats), dev_(std::move(dev)), opt_(std::move(opt)),
      copier_(loop, opt_.copier) {
    if (!opt_.complete_read)
        opt_.complete_read = [](int fd, uint32_t msg_id) {
            // The msg_id travels by value as the ioctl's argument (fs/cachefiles/ondemand.c).
            return ::ioctl(fd, CACHEFILES_IOC_READ_COMPLETE, static_cast<unsigned long>(msg_id)) == 0 ? 0 : -errno;
        };
    if (!opt_.write_command)
        opt_.write_command = [](int fd, const std::string& cmd) {
            auto r = cachefiles_command(fd, cmd);
            return r ? 0 : -(r.error().err ? r.error().err : EIO);
        };
    if (opt_.fsid_attempts == 0) opt_.fsid_attempts = 1;
}

CachefilesFrontend::~CachefilesFrontend() {
    *alive_ = false;
    if (watch_) loop_.cancel(watch_);
}

Result<void> CachefilesFrontend::start(bool restored) {
    watch_ = loop_.watch_fd(dev_.get(), POLLIN, [this](int revents) {
        if (revents < 0) {
            spdlog::critical("[cachefiles] poll /dev/cachefiles: {}", std::strerror(-revents));
            return;
        }
        on_readable();
    });
    if (restored) {
        int rc = opt_.write_command(dev_.get(), "restore");
        if (rc < 0) {
            if (rc == -EOPNOTSUPP || rc == -EINVAL)
                spdlog::error("[cachefiles] this kernel has no 'restore' (Linux 6.8+): requests the previous daemon "
                              "read and did not answer stay unanswered (their readers wait until killed)");
            else
                spdlog::error("[cachefiles] restore: {}", std::strerror(-rc));
        } else {
            spdlog::info("[cachefiles] restore: the kernel sends again what the previous daemon left unanswered");
        }
    }
    on_readable();
    return {};
}

void CachefilesFrontend::on_readable() {
    alignas(8) uint8_t buf[CACHEFILES_MSG_MAX_SIZE];
    unsigned errors = 0;
    // One request per read(2); read until the kernel has none (0), so that no wake-up is lost.
    for (;;) {
        ssize_t n = ::read(dev_.get(), buf, sizeof buf);
        if (n == 0) return;
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            // The kernel failed that request itself (e.g. no fd for an OPEN: EMFILE) and dropped
            // it; the next read gets the next one.
            stats_.errors++;
            spdlog::error("[cachefiles] read /dev/cachefiles: {}", std::strerror(errno));
            if (++errors >= 64) return;
            continue;
        }
        on_message(std::span<const uint8_t>(buf, static_cast<size_t>(n)));
    }
}

void CachefilesFrontend::on_message(std::span<const uint8_t> bytes) {
    std::string req = fmt::format("cf-{}", ++seq_);
    auto msg = parse_cachefiles_msg(bytes);
    if (!msg) return on_bad_message(bytes, msg.error(), req);
    std::visit(
        [&](auto& m) {
            using T = std::decay_t<decltype(m)>;
            req = fmt::format("cf-{}-{}", seq_, m.msg_id);
            if constexpr (std::is_same_v<T, CachefilesOpen>) on_open(std::move(m), req);
            else if constexpr (std::is_same_v<T, CachefilesRead>) on_read(m, req);
            else on_close(m, req);
        },
        *msg);
}

void CachefilesFrontend::on_bad_message(std::span<const uint8_t> bytes, const Error& e, const std::string& req) {
    stats_.errors++;
    auto h = peek_cachefiles_header(bytes);
    spdlog::error("[{}] {}", req, e.what());
    if (!h) return;
    if (h->opcode == CACHEFILES_OP_OPEN) {
        // The kernel installed an fd for it: close it, and fail the OPEN so the mount does not hang.
        if (h->open_fd && *h->open_fd >= 0) ::close(*h->open_fd);
        command(cachefiles_copen(h->msg_id, -EIO), req);
    } else if (h->opcode == CACHEFILES_OP_READ) {
        auto it = objects_.find(h->object_id);
        if (it != objects_.end()) read_token(it->second, h->msg_id, req)->answer(false);
    }
}

void CachefilesFrontend::command(const std::string& cmd, const std::string& req) {
    int rc = opt_.write_command(dev_.get(), cmd);
    if (rc < 0) {
        stats_.errors++;
        spdlog::error("[{}] cachefiles command '{}': {}", req, cmd, std::strerror(-rc));
    }
}

void CachefilesFrontend::on_open(CachefilesOpen o, const std::string& req) {
    auto obj = std::make_shared<Object>();
    obj->object_id = o.object_id;
    obj->key = o.cookie_key;
    obj->anon.reset(o.fd);  // ours from here on, whatever the answer
    std::weak_ptr<bool> alive = alive_;
    int dev = dev_.get();
    auto write_command = opt_.write_command;
    auto tok = std::make_shared<OpenToken>(
        o.msg_id, req,
        [this, alive, dev, write_command, req](uint32_t id, int64_t size) {
            if (alive.expired()) return;
            if (size >= 0) stats_.cachefiles_opens++;
            int rc = write_command(dev, cachefiles_copen(id, size));
            if (rc < 0) {
                stats_.errors++;
                spdlog::error("[{}] copen {},{}: {}", req, id, size, std::strerror(-rc));
            }
        },
        abandon_);
    auto cookie = parse_fscache_cookie(o.volume_key, o.cookie_key, opt_.domain);
    if (!cookie) {
        spdlog::warn("[{}] OPEN refused (ENOENT): {}", req, cookie.error().what());
        return tok->answer(-ENOENT);
    }
    obj->cookie = *cookie;
    if (auto m = metas_.find(cookie->hex); m != metas_.end()) {
        obj->cookie.kind = FscacheCookie::Kind::Meta;
        spdlog::debug("[{}] OPEN object {} = metadata blob {} (fsid {})", req, o.object_id, short_hex(cookie->hex),
                      o.cookie_key);
        return open_meta(std::move(obj), std::move(tok), m->second);
    }
    auto b = blobs_.find(cookie->hex);
    if (cookie->kind != FscacheCookie::Kind::Data || b == blobs_.end()) {
        spdlog::warn("[{}] OPEN refused (ENOENT): cookie {} is no blob of a mount this daemon serves", req,
                     o.cookie_key);
        return tok->answer(-ENOENT);
    }
    obj->blob = b->second.blob;
    obj->size = obj->blob->device_size();
    obj->written = Bitset(obj->blob->chunks().size());
    obj->queued = Bitset(obj->blob->chunks().size());
    objects_[obj->object_id] = obj;
    data_objects_[cookie->hex] = obj;
    spdlog::debug("[{}] OPEN object {} = data blob {} ({} bytes)", req, o.object_id, short_hex(cookie->hex), obj->size);
    tok->answer(static_cast<int64_t>(obj->size));
    scan_object(obj);
}

void CachefilesFrontend::open_meta(std::shared_ptr<Object> obj, std::shared_ptr<OpenToken> tok, const MetaUse& meta) {
    auto path = std::make_shared<std::string>(meta.path);
    uint64_t size = meta.size;
    std::weak_ptr<bool> alive = alive_;
    // Opened through the ring: the loop never waits for a file system.
    loop_.submit(
        [path](io_uring_sqe* sqe) { io_uring_prep_openat(sqe, AT_FDCWD, path->c_str(), O_RDONLY | O_CLOEXEC, 0); },
        [this, alive, obj, tok, path, size](int res, uint32_t) {
            if (alive.expired()) {
                if (res >= 0) ::close(res);
                return;
            }
            if (res < 0) {
                stats_.errors++;
                spdlog::error("[{}] OPEN fails with EIO: open {}: {}", tok->req_id(), *path, std::strerror(-res));
                return tok->answer(-EIO);
            }
            obj->meta_fd.reset(res);
            obj->size = size;
            objects_[obj->object_id] = obj;
            tok->answer(static_cast<int64_t>(size));
        });
}

std::shared_ptr<ReadToken> CachefilesFrontend::read_token(const std::shared_ptr<Object>& obj, uint32_t msg_id,
                                                          const std::string& req) {
    std::weak_ptr<bool> alive = alive_;
    auto complete_read = opt_.complete_read;
    // The token keeps the object (its anonymous fd) alive until the READ is completed.
    return std::make_shared<ReadToken>(
        msg_id, req,
        [this, alive, obj, complete_read, req](uint32_t id, bool ok) {
            int rc = complete_read(obj->anon.get(), id);
            if (alive.expired()) return;
            stats_.cachefiles_reads++;
            if (!ok) stats_.events_denied++;
            // EINVAL: the kernel dropped the request already (the object was withdrawn).
            if (rc < 0) spdlog::warn("[{}] READ_COMPLETE {}: {}", req, id, std::strerror(-rc));
        },
        abandon_);
}

void CachefilesFrontend::on_read(const CachefilesRead& r, const std::string& req) {
    stats_.events++;
    auto it = objects_.find(r.object_id);
    if (it == objects_.end()) {
        // Only possible if the kernel and this daemon disagree about what is open; without the
        // object's fd the READ cannot be completed.
        stats_.errors++;
        spdlog::critical("[{}] READ for object {}, which this daemon did not open: cannot complete it", req,
                         r.object_id);
        return;
    }
    auto obj = it->second;
    auto tok = read_token(obj, r.msg_id, req);
    spdlog::debug("[{}] READ object {} ({}) {}+{}", req, r.object_id, short_hex(obj->cookie.hex), r.off, r.len);
    if (obj->cookie.kind == FscacheCookie::Kind::Meta) serve_meta_read(obj, r, std::move(tok));
    else serve_data_read(obj, r, std::move(tok));
}

void CachefilesFrontend::serve_meta_read(const std::shared_ptr<Object>& obj, const CachefilesRead& r,
                                         std::shared_ptr<ReadToken> tok) {
    const uint64_t end_all = page_up(obj->size);
    if (r.off >= end_all) {
        spdlog::error("[{}] EIO: READ {}+{} past the end of metadata blob {} ({} bytes)", tok->req_id(), r.off, r.len,
                      short_hex(obj->cookie.hex), obj->size);
        return tok->answer(false);
    }
    const uint64_t window = std::max<uint64_t>(4096, page_down(opt_.meta_window));
    uint64_t start = r.off / window * window;
    uint64_t end = std::min(end_all, std::max(start + window, page_up(r.off + r.len)));
    CopyJob job;
    job.keep = obj;
    job.src_fd = obj->meta_fd.get();
    job.dst_fd = obj->anon.get();
    job.offset = start;
    job.length = end - start;
    job.src_size = obj->size;
    std::weak_ptr<bool> alive = alive_;
    job.done = [this, alive, tok, n = job.length](Result<void> w) {
        // Torn down: the token decides (completed, or left to the next daemon).
        if (alive.expired()) return;
        if (!w) spdlog::error("[{}] EIO: {}", tok->req_id(), w.error().what());
        else stats_.cachefiles_bytes_written += n;
        tok->answer(w.has_value());
    };
    copier_.copy(std::move(job), true);
}

void CachefilesFrontend::serve_data_read(const std::shared_ptr<Object>& obj, const CachefilesRead& r,
                                         std::shared_ptr<ReadToken> tok) {
    std::weak_ptr<bool> alive = alive_;
    const std::string hex = obj->cookie.hex;
    sched_.ensure(hex, r.off, r.len, tok->req_id(), [this, alive, obj, r, tok, hex](Result<void> res) {
        if (alive.expired()) return;  // the token answers (or, stopping cleanly, leaves it)
        if (!res) {
            spdlog::error("[{}] EIO: blob sha256:{} {}+{}: {}", tok->req_id(), hex, r.off, r.len, res.error().what());
            return tok->answer(false);
        }
        ChunkSpan span = chunks_for_range(obj->blob->chunks(), r.off, r.len);
        if (span.empty()) {
            spdlog::error("[{}] EIO: READ {}+{} past the end of blob sha256:{}", tok->req_id(), r.off, r.len, hex);
            return tok->answer(false);
        }
        copy_chunks(obj, span.first, span.last, true, [alive, tok, hex](Result<void> w) {
            if (alive.expired()) return;
            if (!w) spdlog::error("[{}] EIO: blob sha256:{}: {}", tok->req_id(), hex, w.error().what());
            tok->answer(w.has_value());
        });
    });
}

void CachefilesFrontend::copy_chunks(const std::shared_ptr<Object>& obj, size_t first, size_t last, bool urgent,
                                     std::function<void(Result<void>)> done) {
    auto chunks = obj->blob->chunks();
    const uint64_t start = chunk_device_offset(chunks[first]);
    const uint64_t end =
        std::min(obj->size, chunk_device_offset(chunks[last - 1]) + chunk_device_bytes(chunks[last - 1]));
    for (size_t i = first; i < last; ++i) obj->queued.set(i);
    CopyJob job;
    job.keep = obj;
    job.src_fd = obj->blob->data_fd();
    job.dst_fd = obj->anon.get();
    job.offset = start;
    job.length = end - start;
    job.src_size = obj->size;
    std::weak_ptr<bool> alive = alive_;
    job.done = [this, alive, obj, first, last, n = job.length, done = std::move(done)](Result<void> w) {
        if (!alive.expired()) {
            for (size_t i = first; i < last; ++i) {
                obj->queued.reset(i);
                if (w) obj->written.set(i);
            }
            if (w) stats_.cachefiles_bytes_written += n;
        }
        done(std::move(w));
    };
    copier_.copy(std::move(job), urgent);
}

void CachefilesFrontend::chunk_ready(const std::shared_ptr<BlobCache>& blob, size_t i, bool readers_waited) {
    if (readers_waited) return;  // the READs that waited copy it themselves
    auto it = data_objects_.find(blob->hex());
    if (it == data_objects_.end()) return;
    auto& obj = it->second;
    if (i >= obj->written.size() || obj->written.test(i) || obj->queued.test(i)) return;
    copy_chunks(obj, i, i + 1, false, [hex = blob->hex(), i](Result<void> w) {
        if (!w) spdlog::warn("[prefetch-{}] chunk {} not copied into the cache object: {}", short_hex(hex), i,
                             w.error().what());
    });
}

void CachefilesFrontend::scan_object(const std::shared_ptr<Object>& obj) {
    // Chunks the daemon has that the kernel's object may lack (a new object, or one kept from
    // before): the kernel's file is sparse, so SEEK_DATA/SEEK_HOLE through the anonymous fd tell
    // what it holds. Blocking lookups: on the io pool.
    struct Want {
        size_t i;
        uint64_t off, end;
    };
    std::vector<Want> want;
    auto chunks = obj->blob->chunks();
    for (size_t i = 0; i < chunks.size(); ++i)
        if (obj->blob->present(i))
            want.push_back({i, chunk_device_offset(chunks[i]), chunk_device_offset(chunks[i]) + chunk_device_bytes(chunks[i])});
    if (want.empty()) return;
    std::weak_ptr<bool> alive = alive_;
    EventLoop* loop = &loop_;
    io_.submit([this, alive, loop, obj, want = std::move(want)](unsigned) mutable {
        std::vector<std::pair<uint64_t, uint64_t>> data;  // extents with data
        const int fd = obj->anon.get();
        off_t pos = 0;
        bool ok = true;
        while (static_cast<uint64_t>(pos) < obj->size) {
            off_t d = ::lseek(fd, pos, SEEK_DATA);
            if (d < 0) {
                ok = errno == ENXIO;  // no data past pos
                break;
            }
            off_t h = ::lseek(fd, d, SEEK_HOLE);
            if (h < 0) {
                ok = false;
                break;
            }
            data.emplace_back(static_cast<uint64_t>(d), static_cast<uint64_t>(h));
            pos = h;
        }
        std::vector<std::pair<size_t, bool>> result;  // chunk, already in the object
        for (const auto& w : want) {
            bool in = false;
            if (ok)
                for (const auto& [a, b] : data)
                    if (a <= w.off && w.end <= b) in = true;
            result.emplace_back(w.i, in);
        }
        loop->post([this, alive, obj = std::move(obj), result = std::move(result)]() mutable {
            if (alive.expired()) return;
            size_t copying = 0;
            for (auto [i, in] : result) {
                if (in) {
                    obj->written.set(i);
                } else if (!obj->written.test(i) && !obj->queued.test(i)) {
                    copying++;
                    copy_chunks(obj, i, i + 1, false, [](Result<void>) {});
                }
            }
            if (copying)
                spdlog::debug("[cachefiles] object {} ({}): {} cached chunks copied in ahead of reads", obj->object_id,
                              short_hex(obj->cookie.hex), copying);
        });
    });
}

void CachefilesFrontend::on_close(const CachefilesClose& c, const std::string& req) {
    auto it = objects_.find(c.object_id);
    if (it == objects_.end()) {
        spdlog::debug("[{}] CLOSE of object {}, not open here", req, c.object_id);
        return;
    }
    auto obj = it->second;
    objects_.erase(it);
    if (auto d = data_objects_.find(obj->cookie.hex); d != data_objects_.end() && d->second == obj)
        data_objects_.erase(d);
    // The fd closes when the last copy or READ using it is over.
    spdlog::debug("[{}] CLOSE object {} ({})", req, c.object_id, short_hex(obj->cookie.hex));
}

Result<void> CachefilesFrontend::attach(const FrontendMount& m, const std::set<std::string>&) {
    if (mounts_.count(m.id)) return failf("mount {} is attached already", m.id);
    MountEntry me;
    me.meta_hex = m.meta_hex;
    auto& meta = metas_[m.meta_hex];
    meta.path = m.meta_path;
    meta.size = m.meta_size;
    meta.users.insert(m.id);
    for (const auto& b : m.blobs) {
        auto& use = blobs_[b->hex()];
        use.blob = b;
        use.users.insert(m.id);
        me.hexes.push_back(b->hex());
    }
    mounts_[m.id] = std::move(me);
    return {};
}

void CachefilesFrontend::detach(const std::string& mount_id) {
    auto it = mounts_.find(mount_id);
    if (it == mounts_.end()) return;
    if (auto m = metas_.find(it->second.meta_hex); m != metas_.end()) {
        m->second.users.erase(mount_id);
        if (m->second.users.empty()) metas_.erase(m);
    }
    for (const auto& hex : it->second.hexes) {
        auto b = blobs_.find(hex);
        if (b == blobs_.end()) continue;
        b->second.users.erase(mount_id);
        if (b->second.users.empty()) blobs_.erase(b);
    }
    mounts_.erase(it);
}

std::vector<MountCall> CachefilesFrontend::mount_calls(const std::string& mount_id) const {
    auto it = mounts_.find(mount_id);
    if (it == mounts_.end()) return {};
    std::string devices;
    for (const auto& hex : it->second.hexes) devices += ",device=" + hex;
    std::vector<MountCall> out;
    for (unsigned a = 0; a < opt_.fsid_attempts; ++a) {
        MountCall c;
        c.source = "none";
        c.data = fmt::format("fsid={},domain_id={}", fscache_fsid(it->second.meta_hex, a), opt_.domain);
        // Without device= the kernel names each data blob by its device table tag, which the
        // converter sets to the same hex: the options only spell it out while they fit.
        if (c.data.size() + devices.size() <= kMaxMountData) c.data += devices;
        out.push_back(std::move(c));
    }
    return out;
}

}  // namespace erostream
