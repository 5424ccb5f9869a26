#include "daemon.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "cachefiles_device.h"
#include "cachefiles_frontend.h"
#include "control_server.h"
#include "curl_multi.h"
#include "daemon_registry.h"
#include "event_loop.h"
#include "fanotify_abi.h"
#include "fanotify_frontend.h"
#include "fetch_scheduler.h"
#include "file_util.h"
#include "holder_link.h"
#include "kernel_probe.h"
#include "layout_backend.h"
#include "mount_manager.h"
#include "registry_backend.h"

namespace erostream {

namespace {

constexpr long kExt4Magic = 0xEF53;
constexpr long kXfsMagic = 0x58465342;
constexpr long kBtrfsMagic = 0x9123683E;

std::string directory_of(const std::string& path) {
    size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

using Json = nlohmann::ordered_json;

std::string error_body(const std::string& msg, const std::string& req_id) {
    Json j;
    j["error"] = msg;
    j["request_id"] = req_id;
    return j.dump();
}

class Daemon {
public:
    explicit Daemon(const DaemonConfig& cfg) : cfg_(cfg) {}

    int run(int ready_fd) {
        auto r = start();
        if (!r) {
            spdlog::error("[startup] {}", r.error().what());
            if (ready_fd >= 0) ::close(ready_fd);
            return 1;
        }
        if (ready_fd >= 0) {
            [[maybe_unused]] auto w = ::write(ready_fd, "READY\n", 6);
            ::close(ready_fd);
        }
        spdlog::info("ready: control socket {}, cache {}, {} mounts", cfg_.socket, cfg_.cache_dir, mounts_->count());
        auto ran = loop_->run();
        if (!ran) spdlog::critical("[loop] {}", ran.error().what());
        shutdown();
        return ran ? 0 : 1;
    }

private:
    Result<void> start() {
        EROS_TRYV(make_dirs(cfg_.cache_dir, 0700));
        std::string fs = EROS_TRY(check_cache_filesystem(cfg_.cache_dir));
        EROS_TRYV(make_dirs(directory_of(cfg_.socket), 0755));
        EROS_TRYV(make_dirs(directory_of(cfg_.holder_socket_path()), 0755));

        spawn_.socket_path = cfg_.holder_socket_path();
        spawn_.log_path = cfg_.cache_dir + "/holder.log";
        spawn_.deny_after = std::chrono::milliseconds(cfg_.holder_deny_after_ms);
        spawn_.log_level = cfg_.log_level;
        auto [link, handover] = EROS_TRY(HolderLink::attach(spawn_));
        holder_ = std::move(link);
        spdlog::info("fd holder at {}: {} ({} cache fds kept{}, {} events pending)", spawn_.socket_path,
                     handover.spawned ? "started" : "attached", handover.blobs.size(),
                     handover.cachefiles ? ", /dev/cachefiles kept" : "", handover.pending_events);
        EROS_TRYV(pick_frontends(handover));
        spdlog::info("cache {} on {}; front ends: {}; auto = {} ({})", cfg_.cache_dir, fs, frontend_names(), auto_.name,
                     auto_.reason);

        loop_ = EROS_TRY(EventLoop::create(512));
        cpu_ = std::make_unique<ThreadPool>(cfg_.workers);
        io_ = std::make_unique<ThreadPool>(cfg_.io_workers);
        sys_ = std::make_unique<ThreadPool>(2);

        registry_ = std::make_unique<DaemonRegistry>(cfg_);
        CurlMultiOptions co;
        co.max_host_connections = cfg_.max_connections_per_host;
        co.max_cached_connections = std::max(32u, 2 * cfg_.max_connections_per_host);
        co.curl = registry_->options().curl;
        curl_ = EROS_TRY(CurlMulti::create(*loop_, co));

        SchedulerOptions so;
        so.max_run_bytes = cfg_.max_range_bytes;
        so.max_attempts = cfg_.retry_max + 1;
        so.retry_base = std::chrono::milliseconds(cfg_.retry_base_ms);
        so.prefetch_rate = cfg_.prefetch_bandwidth;
        so.readahead = cfg_.readahead;
        sched_ = std::make_unique<FetchScheduler>(*loop_, *cpu_, stats_, so);
        std::map<std::string, Frontend*> frontends;
        if (run_fanotify_) {
            fanotify_ = std::make_unique<FanotifyFrontend>(*sched_, stats_, *holder_, std::move(handover.group));
            frontends["fanotify"] = fanotify_.get();
        }
        if (cachefiles_dev_) {
            cachefiles_ = std::make_unique<CachefilesFrontend>(*loop_, *sched_, *io_, stats_, std::move(cachefiles_dev_));
            frontends["fscache"] = cachefiles_.get();
        }

        MountManager::Deps deps{.loop = *loop_,
                                .sys = *sys_,
                                .sched = *sched_,
                                .frontends = frontends,
                                .auto_frontend = auto_.name,
                                .auto_reason = auto_.reason,
                                .holder = *holder_,
                                .stats = stats_,
                                .backends = [this](const std::string& source, std::shared_ptr<CachingStore> store) {
                                    return make_backend(source, std::move(store));
                                },
                                .cache_dir = cfg_.cache_dir,
                                .default_prefetch = cfg_.prefetch,
                                .persist_error =
                                    [this](const std::string& hex, const Error& e) {
                                        stats_.errors++;
                                        spdlog::error("[persist-{}] {}", hex.substr(0, 12), e.what());
                                    },
                                .registry = registry_.get(),
                                .fscache_restored = cachefiles_restored_};
        mounts_ = std::make_unique<MountManager>(deps);
        sched_->on_blob_complete = [this](const std::shared_ptr<BlobCache>& b) { mounts_->blob_complete(b); };
        sched_->on_chunk_ready = [this](const std::shared_ptr<BlobCache>& b, size_t i, bool waited) {
            mounts_->chunk_ready(b, i, waited);
        };
        EROS_TRYV(mounts_->restore(handover.blobs, handover.spawned));
        // After the restored mounts are attached: the kernel's re-sent requests name their keys.
        if (cachefiles_) EROS_TRYV(cachefiles_->start(cachefiles_restored_));

        server_ = EROS_TRY(ControlServer::listen(cfg_.socket, *loop_,
                                                 [this](const ControlRequest& req, const std::string& id,
                                                        ControlServer::Respond respond) { route(req, id, respond); }));

        // Signals arrive through a signalfd on the loop; they are blocked in every thread (the
        // pools were started after main blocked them).
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        int sfd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
        if (sfd < 0) return fail_errno("signalfd");
        sigfd_.reset(sfd);
        loop_->watch_fd(sigfd_.get(), POLLIN, [this](int) {
            signalfd_siginfo si{};
            while (::read(sigfd_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
                spdlog::info("signal {}: stopping (mounts stay; the next daemon serves them)", si.ssi_signo);
                loop_->stop();
            }
        });
        holder_->start(
            *loop_,
            [this](const HolderMsg& ev) {
                if (fanotify_) return fanotify_->on_event(ev);
                // No fanotify front end here, but events from a group a previous daemon marked:
                // nobody can fill them.
                stats_.events_denied++;
                spdlog::error("[ev-{}] EIO: a fanotify event, and this daemon runs no fanotify front end", ev.id);
                holder_->answer(ev.id, fan::deny_errno(EIO));
            },
            [this](const Error& e) { holder_lost(e); });
        server_->start();
        return {};
    }

    // One backend per source: mounts of one layout or one registry repository share it (and its
    // cached storage URLs); the scheduler bounds requests per registry host across backends.
    Result<std::shared_ptr<FetchBackend>> make_backend(const std::string& source, std::shared_ptr<CachingStore> store) {
        if (source.starts_with("oci:"))
            return std::make_shared<LayoutBackend>(store, *io_, *loop_, cfg_.max_connections_per_host);
        if (!source.starts_with("docker://")) return failf("no backend for source '{}'", source);
        if (auto it = registry_backends_.find(source); it != registry_backends_.end())
            if (auto b = it->second.lock()) return std::shared_ptr<FetchBackend>(b);
        auto [reg, repo] = EROS_TRY(split_registry_source(source));
        auto access = registry_->access(reg);
        if (!access) return failf("{}: the registry was not prepared (internal)", source);
        RegistryBackendOptions o;
        o.max_inflight = cfg_.max_connections_per_host;
        o.retry = registry_->options().retry;
        auto b = std::make_shared<RegistryBackend>(*loop_, *curl_, stats_, registry_->auth(), std::move(*access), repo, o);
        std::erase_if(registry_backends_, [](const auto& kv) { return kv.second.expired(); });
        registry_backends_[source] = b;
        return std::shared_ptr<FetchBackend>(b);
    }

    // The counters as the API shows them: bytes the blocking registry clients received (while
    // mounting: manifests, referrers, metadata blobs) count as fetched too.
    Stats stats_view() {
        stats_.mounts = mounts_->count();
        Stats s = stats_;
        s.bytes_fetched += registry_->bytes_received();
        return s;
    }

    void holder_lost(const Error& e) {
        // The group is closed: the kernel now lets every access through. Get a new holder and
        // mark again at once; reads in between may have seen holes. /dev/cachefiles is still
        // open here: the new holder gets it again.
        spdlog::critical("[holder] connection to the fd holder lost ({}): starting a new one and marking again",
                         e.what());
        auto h = holder_->reattach(spawn_);
        if (!h) {
            spdlog::critical("[holder] {}: stopping", h.error().what());
            loop_->stop();
            return;
        }
        if (cachefiles_) {
            HolderMsg m;
            m.op = HolderOp::Cachefiles;
            holder_->send(m, cachefiles_->device_fd());
        }
        if (fanotify_) {
            if (!h->group) {
                spdlog::critical("[holder] the new holder has no fanotify group: fanotify mounts cannot be served");
                return;
            }
            auto r = fanotify_->rebind(std::move(h->group));
            if (!r) spdlog::critical("[holder] {}", r.error().what());
        }
    }

    // Which front ends this daemon runs, and what "auto" means (kernel_probe.h).
    Result<void> pick_frontends(HolderLink::Handover& handover) {
        KernelProbeOptions po;
        po.cache_dir = cfg_.cache_dir;
        // The probe opens /dev/cachefiles to test it; a restarted daemon must not: the holder has
        // it (the device is exclusive) and it is bound already.
        bool kept = static_cast<bool>(handover.cachefiles);
        KernelProbe probe = probe_kernel(po);
        if (kept) {
            probe.facts.cachefiles_dev = DeviceFact{DeviceFact::State::ok, 0, ""};
            probe.facts.cachefiles_ondemand = {Support::yes, "bound on-demand by the previous daemon (kept by the holder)"};
            probe = evaluate_kernel(std::move(probe.facts));
        }
        auto chosen = choose_frontend(probe, cfg_.frontend);
        if (!chosen && !kept) return std::unexpected(chosen.error());
        if (chosen) auto_ = *chosen;
        if (chosen && cfg_.frontend != "auto")
            auto_.reason = fmt::format("this daemon runs with --frontend {}: {}", cfg_.frontend, chosen->reason);
        // fanotify: when asked for, or with auto when the kernel offers it.
        if (cfg_.frontend == "fanotify" || (cfg_.frontend == "auto" && probe.fanotify.usable == Support::yes)) {
            if (handover.group) run_fanotify_ = true;
            else if (cfg_.frontend == "fanotify")
                return fail_errno("the fd holder has no fanotify group", handover.group_errno);
        }
        // fscache: when asked for, with auto when the kernel offers it, and always when the holder
        // kept the device (mounts of the previous daemon may need it).
        if (kept) {
            cachefiles_dev_ = std::move(handover.cachefiles);
            cachefiles_restored_ = true;
        } else if (cfg_.frontend == "fscache" || (cfg_.frontend == "auto" && probe.fscache.usable == Support::yes)) {
            std::string dir = cfg_.cache_dir + "/fscache";
            EROS_TRYV(make_dirs(dir, 0700));
            auto dev = bind_cachefiles_ondemand(dir, "erostream");
            if (dev) {
                cachefiles_dev_ = std::move(*dev);
                // The holder keeps a copy: the cache and its pending requests outlive this process.
                HolderMsg m;
                m.op = HolderOp::Cachefiles;
                holder_->send(m, cachefiles_dev_.get());
                holder_->flush_blocking();
            } else if (cfg_.frontend == "fscache") {
                return std::unexpected(dev.error());
            } else {
                spdlog::warn("fscache front end not started: {}", dev.error().what());
                if (auto_.name == "fscache")
                    auto_ = {"fanotify", "fscache could not be started (" + dev.error().what() + ")"};
            }
        }
        if (cfg_.frontend == "fanotify" && !run_fanotify_) return fail("the fanotify front end could not be started");
        if (!run_fanotify_ && !cachefiles_dev_) return fail("no front end could be started", ENOTSUP);
        if ((auto_.name == "fanotify" && !run_fanotify_) || (auto_.name == "fscache" && !cachefiles_dev_) ||
            auto_.name.empty())
            auto_ = {run_fanotify_ ? "fanotify" : "fscache", "the only front end running"};
        return {};
    }

    std::string frontend_names() const {
        std::string s;
        if (run_fanotify_) s += "fanotify";
        if (cachefiles_dev_ || cachefiles_) s += std::string(s.empty() ? "" : ", ") + "fscache";
        return s;
    }

    void route(const ControlRequest& req, const std::string& id, const ControlServer::Respond& respond) {
        auto json_ok = [respond](const Json& j) { respond(200, "application/json", j.dump()); };
        auto json_err = [respond, id](int status, const std::string& msg) {
            respond(status, "application/json", error_body(msg, id));
        };
        auto reply = [json_ok, json_err](Result<Json> r) {
            if (r) json_ok(*r);
            else json_err(http_status_for(r.error()), r.error().what());
        };
        const std::string& p = req.path;
        if (p == "/health") {
            if (req.method != "GET") return json_err(405, "use GET");
            Json j;
            j["status"] = "ok";
            j["frontend"] = auto_.name;
            j["frontends"] = Json::array();
            if (fanotify_) j["frontends"].push_back("fanotify");
            if (cachefiles_) j["frontends"].push_back("fscache");
            j["mounts"] = mounts_->count();
            return json_ok(j);
        }
        if (p == "/v1/stats") {
            if (req.method != "GET") return json_err(405, "use GET");
            return respond(200, "application/json", stats_json(stats_view()));
        }
        if (p == "/metrics") {
            if (req.method != "GET") return json_err(405, "use GET");
            return respond(200, "text/plain; version=0.0.4", stats_prometheus(stats_view()));
        }
        if (p == "/v1/mounts") {
            if (req.method == "GET") return json_ok(mounts_->list());
            if (req.method == "POST") {
                MountRequest mr;
                try {
                    auto j = nlohmann::json::parse(req.body);
                    if (!j.is_object()) return json_err(400, "the body must be a JSON object");
                    auto str = [&](const char* k, std::string& out) -> bool {
                        if (!j.contains(k)) return true;
                        if (!j[k].is_string()) return false;
                        out = j[k].get<std::string>();
                        return true;
                    };
                    if (!str("ref", mr.ref) || !str("mountpoint", mr.mountpoint) || !str("frontend", mr.frontend) ||
                        !str("prefetch", mr.prefetch))
                        return json_err(400, "ref, mountpoint, frontend and prefetch must be strings");
                } catch (const nlohmann::json::exception& e) {
                    return json_err(400, fmt::format("the body is not JSON: {}", e.what()));
                }
                if (mr.mountpoint.empty()) return json_err(400, "'mountpoint' is missing");
                mounts_->mount(mr, id, reply);
                return;
            }
            if (req.method == "DELETE") {
                auto q = parse_query(req.query);
                std::string mp = q.count("mountpoint") ? q["mountpoint"] : "";
                if (mp.empty() && !req.body.empty()) {
                    try {
                        auto j = nlohmann::json::parse(req.body);
                        if (j.is_object() && j.contains("mountpoint") && j["mountpoint"].is_string())
                            mp = j["mountpoint"].get<std::string>();
                    } catch (const nlohmann::json::exception&) {
                    }
                }
                if (mp.empty()) return json_err(400, "'mountpoint' is missing (DELETE /v1/mounts?mountpoint=ABS)");
                mounts_->umount(mp, id, reply);
                return;
            }
            return json_err(405, "use GET, POST or DELETE");
        }
        json_err(404, fmt::format("no such endpoint: {} {}", req.method, p));
    }

    void shutdown() {
        if (server_) server_->stop();
        // READs still open stay with the kernel for the next daemon (`restore`), unless nothing
        // is mounted any more; failures from here on complete none of them.
        if (cachefiles_ && mounts_->count() > 0) cachefiles_->leave_pending_to_next_daemon();
        // Registry requests in flight fail now, so that every reader waiting on one is answered
        // (the scheduler sees the failure; nothing wrong is written).
        const std::string why = "erostreamd is stopping";
        for (auto& [source, weak] : registry_backends_)
            if (auto b = weak.lock()) b->shutdown(why);
        if (curl_) curl_->shutdown(why);
        loop_->drain(std::chrono::milliseconds(5000));
        mounts_->sync_all();
        if (mounts_->count() == 0) {
            HolderMsg m;
            m.op = HolderOp::Shutdown;
            holder_->send(m);
        }
        holder_->flush_blocking();
        ::unlink(cfg_.socket.c_str());
        spdlog::info("stopped");
    }

    const DaemonConfig& cfg_;
    HolderSpawn spawn_;
    Stats stats_;
    std::unique_ptr<HolderLink> holder_;
    std::unique_ptr<EventLoop> loop_;
    // Before the pools: tasks still queued when they drain (resolving on the sys pool) use it.
    std::unique_ptr<DaemonRegistry> registry_;
    std::unique_ptr<ThreadPool> cpu_, io_, sys_;
    // Before the scheduler and the mounts: their registry backends use it until they are gone.
    std::unique_ptr<CurlMulti> curl_;
    std::map<std::string, std::weak_ptr<RegistryBackend>> registry_backends_;
    std::unique_ptr<FetchScheduler> sched_;
    FrontendChoice auto_;
    bool run_fanotify_ = false;
    UniqueFd cachefiles_dev_;
    bool cachefiles_restored_ = false;
    std::unique_ptr<FanotifyFrontend> fanotify_;
    std::unique_ptr<CachefilesFrontend> cachefiles_;
    std::unique_ptr<MountManager> mounts_;
    std::unique_ptr<ControlServer> server_;
    UniqueFd sigfd_;
};

}  // namespace

Result<std::string> check_cache_filesystem(const std::string& dir) {
    struct statfs sf{};
    if (::statfs(dir.c_str(), &sf) != 0) return fail_errno("statfs " + dir);
    switch (static_cast<long>(sf.f_type)) {
    case kExt4Magic: return std::string("ext4");
    case kXfsMagic: return std::string("xfs");
    case kBtrfsMagic: return std::string("btrfs");
    default:
        return fail(fmt::format("cache dir {} is on a filesystem of type 0x{:x}: erostreamd needs ext4, xfs or btrfs "
                                "(sparse cache files with fanotify pre-content events)",
                                dir, static_cast<unsigned long>(sf.f_type)),
                    EINVAL);
    }
}

int run_daemon(const DaemonConfig& cfg, int ready_fd) {
    Daemon d(cfg);
    return d.run(ready_fd);
}

}  // namespace erostream
