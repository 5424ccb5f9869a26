// erostreamctl: the command-line client of erostreamd's control socket (HTTP over a unix socket,
// through libcurl). Exit status: 0 ok, 1 error (from the daemon or reaching it), 2 usage.
#include <curl/curl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "control_http.h"

namespace {

constexpr int kExitOk = 0, kExitError = 1, kExitUsage = 2;

constexpr const char* kUsage = R"(Usage: erostreamctl [--socket PATH] COMMAND [ARGS]

Commands:
  mount REF MOUNTPOINT [--frontend auto|fanotify|fscache] [--prefetch all|none]
        REF: oci:DIR:TAG, oci:DIR@sha256:HEX, docker://REGISTRY/REPO:TAG or @sha256:HEX
  umount MOUNTPOINT
  list [--json]
  stats [--json]
  health

--socket defaults to $EROSTREAM_SOCKET, else /run/erostream/erostreamd.sock.
)";

int usage(const std::string& msg) {
    std::fprintf(stderr, "erostreamctl: %s\nTry 'erostreamctl --help'.\n", msg.c_str());
    return kExitUsage;
}

struct Response {
    long status = 0;
    std::string body;
    std::string error;  // transport failure
};

size_t collect(char* p, size_t size, size_t n, void* out) {
    static_cast<std::string*>(out)->append(p, size * n);
    return size * n;
}

class Curl {
public:
    Curl() : h_(curl_easy_init()) {}
    ~Curl() {
        if (h_) curl_easy_cleanup(h_);
    }
    Curl(const Curl&) = delete;
    Curl& operator=(const Curl&) = delete;
    CURL* get() const { return h_; }

private:
    CURL* h_;
};

class Headers {
public:
    ~Headers() {
        if (list_) curl_slist_free_all(list_);
    }
    void add(const char* h) { list_ = curl_slist_append(list_, h); }
    curl_slist* get() const { return list_; }

private:
    curl_slist* list_ = nullptr;
};

Response call(const std::string& socket, const std::string& method, const std::string& target,
              const std::string* body) {
    Response r;
    Curl c;
    if (!c.get()) {
        r.error = "curl_easy_init failed";
        return r;
    }
    std::string url = "http://localhost" + target;
    char errbuf[CURL_ERROR_SIZE] = {};
    Headers headers;
    curl_easy_setopt(c.get(), CURLOPT_UNIX_SOCKET_PATH, socket.c_str());
    curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(c.get(), CURLOPT_CUSTOMREQUEST, method.c_str());
    curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c.get(), CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
    // Mounting fetches the metadata blob first; give it time.
    curl_easy_setopt(c.get(), CURLOPT_TIMEOUT, 600L);
    if (body) {
        headers.add("Content-Type: application/json");
        curl_easy_setopt(c.get(), CURLOPT_POSTFIELDS, body->c_str());
        curl_easy_setopt(c.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
    }
    headers.add("Expect:");
    curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, headers.get());
    CURLcode rc = curl_easy_perform(c.get());
    if (rc != CURLE_OK) {
        r.error = fmt::format("cannot talk to erostreamd at {}: {}", socket, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return r;
    }
    curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &r.status);
    return r;
}

// Prints the daemon's error and returns 1; 0 when the call succeeded.
int check(const Response& r) {
    if (!r.error.empty()) {
        std::fprintf(stderr, "erostreamctl: %s\n", r.error.c_str());
        return kExitError;
    }
    if (r.status == 200) return kExitOk;
    std::string msg = r.body;
    std::string id;
    try {
        auto j = nlohmann::json::parse(r.body);
        if (j.is_object() && j.contains("error")) msg = j["error"].get<std::string>();
        if (j.is_object() && j.contains("request_id")) id = j["request_id"].get<std::string>();
    } catch (const nlohmann::json::exception&) {
    }
    std::fprintf(stderr, "erostreamctl: %s (HTTP %ld%s%s)\n", msg.c_str(), r.status, id.empty() ? "" : ", request ",
                 id.c_str());
    return kExitError;
}

std::string human(uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

int cmd_mount(const std::string& socket, const std::vector<std::string>& args) {
    std::vector<std::string> pos;
    std::string frontend = "auto", prefetch;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--frontend" || args[i] == "--prefetch") {
            if (i + 1 >= args.size()) return usage(args[i] + " needs a value");
            // Which one before ++i: in `a = b` the right side is evaluated first.
            std::string& out = args[i] == "--frontend" ? frontend : prefetch;
            out = args[++i];
        } else if (args[i].starts_with("--frontend=")) {
            frontend = args[i].substr(11);
        } else if (args[i].starts_with("--prefetch=")) {
            prefetch = args[i].substr(11);
        } else if (args[i].starts_with("--")) {
            return usage("mount: unknown option " + args[i]);
        } else {
            pos.push_back(args[i]);
        }
    }
    if (pos.size() != 2) return usage("mount needs REF and MOUNTPOINT");
    if (frontend != "auto" && frontend != "fanotify" && frontend != "fscache")
        return usage("--frontend: expected auto, fanotify or fscache");
    if (!prefetch.empty() && prefetch != "all" && prefetch != "none") return usage("--prefetch: expected all or none");
    std::error_code ec;
    std::string mp = std::filesystem::absolute(pos[1], ec).lexically_normal().string();
    if (mp.size() > 1 && mp.back() == '/') mp.pop_back();
    nlohmann::json j;
    j["ref"] = pos[0];
    j["mountpoint"] = mp;
    j["frontend"] = frontend;
    if (!prefetch.empty()) j["prefetch"] = prefetch;
    std::string body = j.dump();
    Response r = call(socket, "POST", "/v1/mounts", &body);
    if (int rc = check(r)) return rc;
    try {
        auto out = nlohmann::json::parse(r.body);
        std::printf("mounted %s on %s (artifact %s, %zu devices, %s)\n", pos[0].c_str(),
                    out.value("mountpoint", mp).c_str(), out.value("artifact", "?").c_str(),
                    static_cast<size_t>(out.value("devices", 0)), out.value("frontend", "?").c_str());
    } catch (const nlohmann::json::exception&) {
        std::printf("%s\n", r.body.c_str());
    }
    return kExitOk;
}

int cmd_umount(const std::string& socket, const std::vector<std::string>& args) {
    if (args.size() != 1) return usage("umount needs MOUNTPOINT");
    std::error_code ec;
    std::string mp = std::filesystem::absolute(args[0], ec).lexically_normal().string();
    if (mp.size() > 1 && mp.back() == '/') mp.pop_back();
    Response r = call(socket, "DELETE", "/v1/mounts?mountpoint=" + erostream::percent_encode(mp), nullptr);
    if (int rc = check(r)) return rc;
    std::printf("unmounted %s\n", mp.c_str());
    return kExitOk;
}

int cmd_list(const std::string& socket, const std::vector<std::string>& args) {
    bool json = false;
    for (const auto& a : args) {
        if (a == "--json") json = true;
        else return usage("list: unknown argument " + a);
    }
    Response r = call(socket, "GET", "/v1/mounts", nullptr);
    if (int rc = check(r)) return rc;
    if (json) {
        std::printf("%s\n", r.body.c_str());
        return kExitOk;
    }
    try {
        auto arr = nlohmann::json::parse(r.body);
        std::printf("%-32s %-20s %-40s %s\n", "MOUNTPOINT", "ARTIFACT", "REF", "CACHED");
        for (const auto& m : arr) {
            uint64_t size = 0, present = 0;
            for (const auto& d : m.value("devices", nlohmann::json::array())) {
                size += d.value("size", uint64_t{0});
                present += d.value("present_bytes", uint64_t{0});
            }
            std::string art = m.value("artifact", "");
            if (art.size() > 19) art = art.substr(0, 19);
            std::string cached = fmt::format("{} / {} ({:.0f}%)", human(present), human(size),
                                             size ? 100.0 * static_cast<double>(present) / static_cast<double>(size) : 100.0);
            std::printf("%-32s %-20s %-40s %s\n", m.value("mountpoint", "").c_str(), art.c_str(),
                        m.value("ref", "").c_str(), cached.c_str());
        }
    } catch (const nlohmann::json::exception& e) {
        std::fprintf(stderr, "erostreamctl: unexpected answer: %s\n", e.what());
        return kExitError;
    }
    return kExitOk;
}

int cmd_stats(const std::string& socket, const std::vector<std::string>& args) {
    bool json = false;
    for (const auto& a : args) {
        if (a == "--json") json = true;
        else return usage("stats: unknown argument " + a);
    }
    Response r = call(socket, "GET", "/v1/stats", nullptr);
    if (int rc = check(r)) return rc;
    if (json) {
        std::printf("%s\n", r.body.c_str());
        return kExitOk;
    }
    try {
        auto j = nlohmann::ordered_json::parse(r.body);
        for (const auto& [k, v] : j.items()) {
            if (k.find("bytes") != std::string::npos && v.is_number_unsigned())
                std::printf("%-16s %s\n", k.c_str(), human(v.get<uint64_t>()).c_str());
            else
                std::printf("%-16s %s\n", k.c_str(), v.dump().c_str());
        }
    } catch (const nlohmann::json::exception& e) {
        std::fprintf(stderr, "erostreamctl: unexpected answer: %s\n", e.what());
        return kExitError;
    }
    return kExitOk;
}

int cmd_health(const std::string& socket, const std::vector<std::string>& args) {
    if (!args.empty()) return usage("health takes no arguments");
    Response r = call(socket, "GET", "/health", nullptr);
    if (int rc = check(r)) return rc;
    std::printf("%s\n", r.body.c_str());
    return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
    std::string socket;
    if (const char* env = std::getenv("EROSTREAM_SOCKET"); env && *env) socket = env;
    else socket = "/run/erostream/erostreamd.sock";
    int i = 1;
    for (; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            std::fputs(kUsage, stdout);
            return kExitOk;
        }
        if (a == "--socket") {
            if (i + 1 >= argc) return usage("--socket needs a value");
            socket = argv[++i];
        } else if (a.starts_with("--socket=")) {
            socket = a.substr(9);
        } else if (a.starts_with("-")) {
            return usage("unknown option " + a);
        } else {
            break;
        }
    }
    if (i >= argc) return usage("no command");
    std::string cmd = argv[i++];
    std::vector<std::string> args(argv + i, argv + argc);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (cmd == "mount") rc = cmd_mount(socket, args);
    else if (cmd == "umount" || cmd == "unmount") rc = cmd_umount(socket, args);
    else if (cmd == "list" || cmd == "ls") rc = cmd_list(socket, args);
    else if (cmd == "stats") rc = cmd_stats(socket, args);
    else if (cmd == "health") rc = cmd_health(socket, args);
    else rc = usage("unknown command '" + cmd + "'");
    curl_global_cleanup();
    return rc;
}
