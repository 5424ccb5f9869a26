#include "holder.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <set>

#include "fanotify_abi.h"
#include "file_util.h"
#include "holder_protocol.h"
#include "unix_socket.h"

namespace erostream {

namespace {

using Clock = std::chrono::steady_clock;

struct Pending {
    UniqueFd fd;
    uint64_t dev = 0, ino = 0, offset = 0, count = 0;
    int32_t pid = 0;
};

struct Outgoing {
    HolderMsg msg;
    UniqueFd fd;  // a dup, owned until sent
};

class Holder {
public:
    explicit Holder(const HolderConfig& cfg) : cfg_(cfg) {}

    Result<void> setup() {
        listen_ = EROS_TRY(listen_unix(cfg_.socket_path, SOCK_SEQPACKET, 0600));
        // Unlimited queue: when a bounded queue overflows, the kernel drops permission events
        // and lets the access through, which for us would mean zeros read from holes.
        int g = ::fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE |
                                    FAN_UNLIMITED_MARKS,
                                O_RDONLY | O_LARGEFILE | O_CLOEXEC);
        if (g < 0) {
            // A kernel without fanotify permission events still has the fscache front end,
            // whose restart needs the holder too (for /dev/cachefiles).
            group_errno_ = errno;
            spdlog::warn("fanotify_init(FAN_CLASS_PRE_CONTENT): {}: holding no fanotify group",
                         std::strerror(group_errno_));
        } else {
            group_.reset(g);
        }
        orphan_since_ = Clock::now();
        return {};
    }

    int run() {
        for (;;) {
            std::vector<pollfd> pfds;
            pfds.push_back({listen_.get(), POLLIN, 0});
            pfds.push_back({group_.get(), POLLIN, 0});
            if (client_) {
                short ev = POLLIN;
                if (!outbox_.empty()) ev |= POLLOUT;
                pfds.push_back({client_.get(), ev, 0});
            }
            int timeout = client_ ? -1 : 500;
            int n = ::poll(pfds.data(), pfds.size(), timeout);
            if (n < 0 && errno != EINTR) {
                spdlog::critical("poll: {}", std::strerror(errno));
                return 1;
            }
            if (n > 0) {
                if (pfds[1].revents) read_events();
                if (pfds[0].revents & POLLIN) accept_client();
                if (pfds.size() > 2 && pfds[2].revents) {
                    if (pfds[2].revents & POLLOUT) flush();
                    if (pfds[2].revents & (POLLIN | POLLHUP | POLLERR)) read_client();
                }
            }
            if (shutdown_) {
                deny_all("the daemon shut the holder down");
                spdlog::info("shutting down as the daemon asked");
                return 0;
            }
            if (!client_) {
                auto orphaned = Clock::now() - orphan_since_;
                if (!denying_ && orphaned >= cfg_.deny_after) {
                    denying_ = true;
                    spdlog::error("no daemon for {} ms: answering {} pending and all new events with EIO",
                                  cfg_.deny_after.count(), pending_.size());
                    deny_all("no daemon");
                }
                if (orphaned >= cfg_.exit_grace && pending_.empty() && !any_mount_left()) {
                    spdlog::info("no daemon and none of {} mount points mounted: exiting", mounts_.size());
                    return 0;
                }
            }
        }
    }

private:
    bool any_mount_left() {
        if (mounts_.empty()) return false;
        auto text = read_small_file("/proc/self/mountinfo", 64u << 20);
        if (!text) return true;  // cannot tell: stay
        for (const auto& e : parse_mountinfo(*text))
            if (e.fstype == "erofs" && mounts_.count(e.mount_point)) return true;
        return false;
    }

    void answer(int fd, uint32_t response) {
        fanotify_response r{fd, response};
        if (::write(group_.get(), &r, sizeof r) != static_cast<ssize_t>(sizeof r))
            spdlog::warn("answer to event fd {}: {}", fd, std::strerror(errno));
    }

    void deny_all(const char* why) {
        for (auto& [fd, p] : pending_) {
            spdlog::warn("event fd {} (ino {} offset {} count {} pid {}): EIO: {}", fd, p.ino, p.offset, p.count,
                         p.pid, why);
            answer(fd, fan::deny_errno(EIO));
        }
        pending_.clear();
    }

    void read_events() {
        alignas(fanotify_event_metadata) char buf[64 * 1024];
        for (;;) {
            ssize_t n = ::read(group_.get(), buf, sizeof buf);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno != EAGAIN) spdlog::error("read fanotify group: {}", std::strerror(errno));
                return;
            }
            if (n == 0) return;
            FanEvents evs = parse_fanotify_events(std::string_view(buf, static_cast<size_t>(n)));
            for (const FanEvent& ev : evs.events) take_event(ev);
            if (evs.error) spdlog::error("{}", evs.error->what());
        }
    }

    void take_event(const FanEvent& ev) {
        if (ev.fd < 0) {
            if (ev.mask & FAN_Q_OVERFLOW) spdlog::error("fanotify queue overflow");
            return;
        }
        Pending p;
        p.fd.reset(ev.fd);
        p.pid = ev.pid;
        struct stat st{};
        if (::fstat(ev.fd, &st) != 0) {
            spdlog::error("event fd {}: fstat: {}: EIO", ev.fd, std::strerror(errno));
            answer(ev.fd, fan::deny_errno(EIO));
            return;
        }
        if (!(ev.mask & fan::kPreAccess)) {
            // Not an event we asked for; it is not about cache content.
            answer(ev.fd, FAN_ALLOW);
            return;
        }
        p.dev = st.st_dev;
        p.ino = st.st_ino;
        p.offset = ev.has_range ? ev.offset : 0;
        p.count = ev.has_range ? ev.count : static_cast<uint64_t>(st.st_size);
        if (denying_) {
            spdlog::warn("event fd {} (ino {} offset {} count {} pid {}): EIO: no daemon", ev.fd, p.ino, p.offset,
                         p.count, p.pid);
            answer(ev.fd, fan::deny_errno(EIO));
            return;
        }
        int fd = ev.fd;
        auto [it, fresh] = pending_.emplace(fd, std::move(p));
        if (!fresh) {
            // The kernel hands out a number only while it is free in this process: this cannot
            // happen unless the table is wrong; refuse rather than risk the wrong answer.
            spdlog::critical("event fd {} is pending twice", fd);
            return;
        }
        if (client_) queue_event(fd, it->second);
    }

    void queue_event(int fd, const Pending& p) {
        HolderMsg m;
        m.op = HolderOp::Event;
        m.id = static_cast<uint64_t>(fd);
        m.a = p.dev;
        m.b = p.ino;
        m.c = p.offset;
        m.d = p.count;
        m.e = static_cast<uint64_t>(static_cast<uint32_t>(p.pid));
        send(std::move(m));
    }

    void send(HolderMsg m, int fd = -1) {
        Outgoing o;
        o.msg = std::move(m);
        if (fd >= 0) o.fd.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        outbox_.push_back(std::move(o));
        flush();
    }

    void flush() {
        while (client_ && !outbox_.empty()) {
            auto& o = outbox_.front();
            auto r = send_holder_msg(client_.get(), o.msg, o.fd ? o.fd.get() : -1);
            if (!r) {
                if (r.error().err == EAGAIN) return;
                spdlog::warn("daemon connection: {}", r.error().what());
                drop_client();
                return;
            }
            outbox_.pop_front();
        }
    }

    void drop_client() {
        client_.reset();
        outbox_.clear();
        orphan_since_ = Clock::now();
        spdlog::warn("daemon disconnected; {} events pending, kept for the next daemon", pending_.size());
    }

    void accept_client() {
        int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) return;
        UniqueFd conn(c);
        ucred cred{};
        socklen_t len = sizeof cred;
        if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != 0 && cred.uid != ::getuid())) {
            spdlog::warn("refusing a connection from uid {}", cred.uid);
            return;
        }
        if (client_) {
            // One daemon at a time: a second one gets the connection closed and says so.
            spdlog::warn("refusing a second daemon (pid {}) while pid {} is attached", cred.pid, client_pid_);
            return;
        }
        client_ = std::move(conn);
        client_pid_ = cred.pid;
        denying_ = false;
        spdlog::info("daemon pid {} connected", cred.pid);
    }

    void read_client() {
        while (client_) {
            auto r = recv_holder_msg(client_.get());
            if (!r) {
                if (r.error().err != ECONNRESET) spdlog::warn("daemon connection: {}", r.error().what());
                drop_client();
                return;
            }
            if (!*r) return;
            handle(std::move(**r));
        }
    }

    void handle(ReceivedHolderMsg in) {
        const HolderMsg& m = in.msg;
        switch (m.op) {
        case HolderOp::Hello: {
            HolderMsg g;
            g.op = HolderOp::Group;
            g.a = static_cast<uint64_t>(group_errno_);
            send(g, group_ ? group_.get() : -1);
            for (auto& [hex, fd] : blobs_) {
                HolderMsg b;
                b.op = HolderOp::Blob;
                b.text = hex;
                send(b, fd.get());
            }
            if (cachefiles_) {
                HolderMsg c;
                c.op = HolderOp::Cachefiles;
                send(c, cachefiles_.get());
            }
            HolderMsg ready;
            ready.op = HolderOp::Ready;
            ready.a = pending_.size();
            send(ready);
            for (auto& [fd, p] : pending_) queue_event(fd, p);
            spdlog::info("handed the group, {} cache fds{} and {} pending events to the daemon", blobs_.size(),
                         cachefiles_ ? ", /dev/cachefiles" : "", pending_.size());
            break;
        }
        case HolderOp::Blob:
            if (!in.fd || m.text.empty()) {
                spdlog::warn("Blob message without fd or name");
                break;
            }
            blobs_[m.text] = std::move(in.fd);
            break;
        case HolderOp::Release: blobs_.erase(m.text); break;
        case HolderOp::Cachefiles:
            if (!in.fd) {
                spdlog::warn("Cachefiles message without fd");
                break;
            }
            if (!cachefiles_) spdlog::info("keeping /dev/cachefiles for the daemon");
            cachefiles_ = std::move(in.fd);
            break;
        case HolderOp::Answer: {
            auto it = pending_.find(static_cast<int>(m.id));
            if (it == pending_.end()) {
                spdlog::warn("answer for event fd {} which is not pending", m.id);
                break;
            }
            answer(it->first, static_cast<uint32_t>(m.a));
            pending_.erase(it);
            break;
        }
        case HolderOp::Mounts: {
            mounts_.clear();
            std::string_view t = m.text;
            while (!t.empty()) {
                size_t nl = t.find('\n');
                auto line = t.substr(0, nl);
                if (!line.empty()) mounts_.insert(std::string(line));
                t = nl == std::string_view::npos ? std::string_view{} : t.substr(nl + 1);
            }
            break;
        }
        case HolderOp::Shutdown: shutdown_ = true; break;
        default: spdlog::warn("unexpected message {} from the daemon", static_cast<int>(m.op)); break;
        }
    }

    const HolderConfig& cfg_;
    UniqueFd listen_, group_, client_;
    int group_errno_ = 0;
    // /dev/cachefiles, bound by a daemon: closing it would withdraw the cache (every fscache
    // mount would fail its reads from then on) and drop the requests a restarted daemon needs.
    UniqueFd cachefiles_;
    pid_t client_pid_ = 0;
    std::map<int, Pending> pending_;
    std::map<std::string, UniqueFd> blobs_;
    std::set<std::string> mounts_;
    std::deque<Outgoing> outbox_;
    Clock::time_point orphan_since_{};
    bool denying_ = false;
    bool shutdown_ = false;
};

}  // namespace

int run_holder(const HolderConfig& cfg) {
    // The holder outlives terminals and service stops on purpose: only SIGKILL ends it early.
    ::signal(SIGPIPE, SIG_IGN);
    ::signal(SIGHUP, SIG_IGN);
    ::signal(SIGINT, SIG_IGN);
    ::signal(SIGTERM, SIG_IGN);
    Holder h(cfg);
    auto r = h.setup();
    if (!r) {
        spdlog::critical("{}", r.error().what());
        if (cfg.ready_fd >= 0) {
            std::string msg = "ERROR " + r.error().what() + "\n";
            [[maybe_unused]] auto w = ::write(cfg.ready_fd, msg.data(), msg.size());
            ::close(cfg.ready_fd);
        }
        return 1;
    }
    spdlog::info("holding the fanotify group at {}", cfg.socket_path);
    if (cfg.ready_fd >= 0) {
        [[maybe_unused]] auto w = ::write(cfg.ready_fd, "READY\n", 6);
        ::close(cfg.ready_fd);
    }
    return h.run();
}

Result<void> spawn_holder(const HolderSpawn& s) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return fail_errno("pipe");
    UniqueFd rd(p[0]), wr(p[1]);
    int logfd = ::open(s.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0) return fail_errno("open holder log " + s.log_path);
    UniqueFd log(logfd);
    std::string deny = std::to_string(s.deny_after.count());
    std::vector<std::string> args = {"erostreamd", "--holder",        "--holder-socket", s.socket_path,
                                     "--ready-fd", "3",               "--deny-after-ms", deny,
                                     "--log-level", s.log_level};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    pid_t child = ::fork();
    if (child < 0) return fail_errno("fork");
    if (child == 0) {
        // Only async-signal-safe calls from here on.
        if (::setsid() < 0) ::_exit(127);
        pid_t grandchild = ::fork();
        if (grandchild != 0) ::_exit(grandchild < 0 ? 127 : 0);
        int devnull = ::open("/dev/null", O_RDWR);
        if (devnull < 0) ::_exit(127);
        ::dup2(devnull, 0);
        ::dup2(devnull, 1);
        ::dup2(log.get(), 2);
        if (wr.get() == 3) ::fcntl(3, F_SETFD, 0);
        else ::dup2(wr.get(), 3);
        ::close_range(4, ~0u, 0);
        ::execv(s.exe.c_str(), argv.data());
        ::_exit(127);
    }
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    wr.reset();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return fail("could not start the holder process");
    std::string got;
    for (;;) {
        pollfd pfd{rd.get(), POLLIN, 0};
        int n = ::poll(&pfd, 1, 10000);
        if (n == 0) return fail("the holder process did not get ready within 10 s (see " + s.log_path + ")");
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("poll");
        }
        char buf[512];
        ssize_t r = ::read(rd.get(), buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got.append(buf, static_cast<size_t>(r));
        if (got.find('\n') != std::string::npos) break;
    }
    if (got.starts_with("READY")) return {};
    if (got.starts_with("ERROR ")) return fail("holder: " + got.substr(6, got.find('\n') - 6));
    return fail("the holder process exited before it was ready (see " + s.log_path + ")");
}

}  // namespace erostream
