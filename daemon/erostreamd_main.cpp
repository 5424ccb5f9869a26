// erostreamd: flags, config file, logging; then the daemon (daemon.cpp) or, with the internal
// --holder flag, the fd holder it starts for itself (holder.cpp).
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "daemon.h"
#include "daemon_config.h"
#include "file_util.h"
#include "holder.h"
#include "kernel_probe.h"

using namespace erostream;

namespace {

constexpr int kExitUsage = 2;
constexpr const char* kDefaultConfig = "/etc/erostream/erostreamd.toml";

constexpr const char* kUsage = R"(Usage: erostreamd [OPTIONS]

Node daemon of erostream: mounts streaming artifacts with the kernel's EROFS and fetches their
chunks on demand. Runs in the foreground; ready when its control socket accepts.

Options:
  --config FILE          TOML config file (default /etc/erostream/erostreamd.toml if present)
  --cache-dir DIR        chunk cache (default /var/lib/erostream); ext4, xfs or btrfs
  --socket PATH          control socket (default /run/erostream/erostreamd.sock)
  --holder-socket PATH   where the fd holder listens (default: beside the control socket)
  --frontend F           auto | fanotify | fscache (default auto: fanotify in this build;
                         --check-kernel shows what this kernel offers)
  --ready-fd N           write "READY\n" to fd N once the control socket accepts, then close it
  --log-level L          debug | info | warn (default info)
  --check-kernel         print which front ends this kernel offers and what the others lack,
                         then exit: 0 if at least one works, 1 if none (needs root to probe;
                         with --cache-dir, probes that directory's filesystem)
  --json                 with --check-kernel: one JSON object instead of a table
  --kernel-config-fragment
                         print the kernel config fragment of kmod-config/erostream.config
  -h, --help             this text

SIGTERM or SIGINT: clean stop; mounts stay and the next erostreamd serves them.
)";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "erostreamd: %s\nTry 'erostreamd --help'.\n", msg.c_str());
    return kExitUsage;
}

bool parse_int(std::string_view s, int& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
}

void init_logging(const std::string& name, const std::string& level) {
    auto logger = spdlog::stderr_logger_mt(name);
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e " + name + " %l: %v");
    logger->set_level(level == "debug" ? spdlog::level::debug
                      : level == "warn" ? spdlog::level::warn
                                        : spdlog::level::info);
    logger->flush_on(spdlog::level::debug);
    spdlog::set_default_logger(logger);
}

// Event fds (the holder keeps one per pending event) and cache fds add up: use the hard limit.
void raise_fd_limit() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int holder_main(int argc, char** argv) {
    HolderConfig cfg;
    std::string level = "info";
    for (int i = 2; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        if (a == "--holder-socket" && (v = value())) cfg.socket_path = v;
        else if (a == "--ready-fd" && (v = value())) {
            if (!parse_int(v, cfg.ready_fd)) return usage_error("--ready-fd: not a number");
        } else if (a == "--deny-after-ms" && (v = value())) {
            int ms = 0;
            if (!parse_int(v, ms) || ms < 0) return usage_error("--deny-after-ms: not a number");
            cfg.deny_after = std::chrono::milliseconds(ms);
        } else if (a == "--log-level" && (v = value())) level = v;
        else return usage_error("holder: unknown argument " + std::string(a));
    }
    if (cfg.socket_path.empty()) return usage_error("holder: --holder-socket is required");
    init_logging("erostream-holder", level);
    raise_fd_limit();
    return run_holder(cfg);
}

// --check-kernel: the same probe `--frontend auto` uses, for operators (kmod-config/check-kernel).
int check_kernel_main(const DaemonConfig& cfg, bool json) {
    KernelProbeOptions opts;
    opts.cache_dir = cfg.cache_dir;
    KernelProbe probe = probe_kernel(opts);
    auto choice = choose_frontend(probe, cfg.frontend);
    std::string out = json ? render_probe_json(probe, choice) : render_probe_table(probe, choice);
    std::fputs(out.c_str(), stdout);
    return probe.any_frontend_usable() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 2 && std::string_view(argv[1]) == "--holder") return holder_main(argc, argv);

    std::string config_path;
    std::optional<std::string> cache_dir, socket, holder_socket, frontend, log_level;
    int ready_fd = -1;
    bool check_kernel = false, json = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        std::string_view inline_value;
        bool has_inline = false;
        if (a.starts_with("--") && a.find('=') != std::string_view::npos) {
            inline_value = a.substr(a.find('=') + 1);
            a = a.substr(0, a.find('='));
            has_inline = true;
        }
        auto value = [&]() -> std::optional<std::string> {
            if (has_inline) return std::string(inline_value);
            if (i + 1 < argc) return std::string(argv[++i]);
            return std::nullopt;
        };
        if (a == "-h" || a == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (a == "--kernel-config-fragment") {
            std::fputs(render_config_fragment().c_str(), stdout);
            return 0;
        }
        std::optional<std::string> v;
        if (a == "--check-kernel") {
            check_kernel = true;
        } else if (a == "--json") {
            json = true;
        } else if (a == "--config") {
            if (!(v = value())) return usage_error("--config needs a value");
            config_path = *v;
        } else if (a == "--cache-dir") {
            if (!(cache_dir = value())) return usage_error("--cache-dir needs a value");
        } else if (a == "--socket") {
            if (!(socket = value())) return usage_error("--socket needs a value");
        } else if (a == "--holder-socket") {
            if (!(holder_socket = value())) return usage_error("--holder-socket needs a value");
        } else if (a == "--frontend") {
            if (!(frontend = value())) return usage_error("--frontend needs a value");
        } else if (a == "--log-level") {
            if (!(log_level = value())) return usage_error("--log-level needs a value");
        } else if (a == "--ready-fd") {
            if (!(v = value()) || !parse_int(*v, ready_fd) || ready_fd < 0)
                return usage_error("--ready-fd needs a file descriptor number");
            if (::fcntl(ready_fd, F_GETFD) < 0) return usage_error("--ready-fd " + *v + ": not an open file descriptor");
        } else {
            return usage_error("unknown argument '" + std::string(argv[i]) + "'");
        }
    }

    DaemonConfig cfg;
    bool explicit_config = !config_path.empty();
    if (!explicit_config) {
        struct stat st{};
        if (::stat(kDefaultConfig, &st) == 0) config_path = kDefaultConfig;
    }
    if (!config_path.empty()) {
        auto text = read_small_file(config_path, 1u << 20);
        if (!text) {
            std::fprintf(stderr, "erostreamd: config %s: %s\n", config_path.c_str(), text.error().what().c_str());
            return explicit_config ? kExitUsage : 1;
        }
        auto r = apply_config_toml(cfg, *text, config_path);
        if (!r) {
            std::fprintf(stderr, "erostreamd: %s\n", r.error().what().c_str());
            return kExitUsage;
        }
    }
    apply_retry_env(cfg);
    if (cache_dir) cfg.cache_dir = *cache_dir;
    if (socket) cfg.socket = *socket;
    if (holder_socket) cfg.holder_socket = *holder_socket;
    if (frontend) cfg.frontend = *frontend;
    if (log_level) cfg.log_level = *log_level;
    if (auto v = validate_config(cfg); !v) return usage_error(v.error().what());
    if (json && !check_kernel) return usage_error("--json goes with --check-kernel");
    if (check_kernel) return check_kernel_main(cfg, json);

    init_logging("erostreamd", cfg.log_level);
    raise_fd_limit();
    // Block the stop signals before any thread starts; the loop reads them from a signalfd.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    return run_daemon(cfg, ready_fd);
}
