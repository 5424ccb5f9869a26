// The TOML config file, sizes, validation; the mount state file; stats renderings.
#include <doctest.h>

#include <nlohmann/json.hpp>

#include "daemon_config.h"
#include "mount_state.h"
#include "stats.h"

using namespace erostream;

TEST_CASE("config: every key, sizes as numbers or strings") {
    DaemonConfig c;
    const char* text = R"(
cache_dir = "/srv/cache"
socket = "/run/x/d.sock"
frontend = "fanotify"
log_level = "debug"
workers = 3
[fetch]
max_range_bytes = "8M"
max_connections_per_host = 2
retry_max = 1
retry_base_ms = 10
readahead = false
[prefetch]
default = "none"
bandwidth = 1048576
[holder]
deny_after_ms = 500
[registry]
hosts_dir = "/etc/hosts.d"
insecure = ["localhost:5000"]
https_proxy = "http://proxy:3128"
)";
    REQUIRE(apply_config_toml(c, text, "test.toml"));
    CHECK(c.cache_dir == "/srv/cache");
    CHECK(c.holder_socket_path() == "/run/x/erostreamd-holder.sock");
    CHECK(c.workers == 3);
    CHECK(c.max_range_bytes == 8u << 20);
    CHECK(c.max_connections_per_host == 2);
    CHECK(!c.readahead);
    CHECK(c.prefetch == "none");
    CHECK(c.prefetch_bandwidth == 1u << 20);
    CHECK(c.holder_deny_after_ms == 500);
    CHECK(c.insecure_registries == std::vector<std::string>{"localhost:5000"});
    CHECK(c.https_proxy == "http://proxy:3128");
    CHECK(validate_config(c));
}

TEST_CASE("config: typos, wrong types and bad values are errors that say where") {
    DaemonConfig c;
    auto r = apply_config_toml(c, "cache_dri = \"/x\"\n", "a.toml");
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("cache_dri") != std::string::npos);
    CHECK(r.error().message.find("a.toml") != std::string::npos);
    CHECK_FALSE(apply_config_toml(c, "[fetch]\nmax_range = 1\n", "a.toml"));
    CHECK_FALSE(apply_config_toml(c, "workers = \"two\"\n", "a.toml"));
    CHECK_FALSE(apply_config_toml(c, "workers = -1\n", "a.toml"));
    CHECK_FALSE(apply_config_toml(c, "[prefetch]\nbandwidth = \"3X\"\n", "a.toml"));
    CHECK_FALSE(apply_config_toml(c, "this is not toml", "a.toml"));
    DaemonConfig v;
    v.cache_dir = "relative";
    CHECK_FALSE(validate_config(v));
    v = DaemonConfig{};
    v.cache_dir = "/a,b";
    CHECK_FALSE(validate_config(v));
    v = DaemonConfig{};
    v.frontend = "ublk";
    CHECK_FALSE(validate_config(v));
    CHECK(validate_config(DaemonConfig{}));
}

TEST_CASE("config: byte sizes") {
    CHECK(*parse_byte_size("4096") == 4096);
    CHECK(*parse_byte_size("4k") == 4096);
    CHECK(*parse_byte_size("2MiB") == 2u << 20);
    CHECK(*parse_byte_size("1G") == 1ull << 30);
    CHECK_FALSE(parse_byte_size("M"));
    CHECK_FALSE(parse_byte_size("12q"));
    CHECK_FALSE(parse_byte_size("99999999999999999999G"));
}

TEST_CASE("mount state: round trip and refusal of damaged files") {
    MountRecord m;
    m.mountpoint = "/mnt/a";
    m.ref = "oci:/l:t";
    m.source = "oci:/l";
    m.artifact.media_type = "application/vnd.oci.image.manifest.v1+json";
    m.artifact.digest = "sha256:" + std::string(64, 'a');
    m.artifact.size = 123;
    m.subject = "sha256:" + std::string(64, 'b');
    m.frontend = "fanotify";
    m.prefetch = "none";
    auto text = serialize_mount_state({m, m});
    auto back = parse_mount_state(text);
    REQUIRE(back);
    REQUIRE(back->size() == 2);
    CHECK((*back)[0] == m);
    CHECK_FALSE(parse_mount_state("{"));
    CHECK_FALSE(parse_mount_state(R"({"version":2,"mounts":[]})"));
    CHECK_FALSE(parse_mount_state(R"({"version":1,"mounts":[{"mountpoint":"rel","ref":"","source":"","artifact":{}}]})"));
    CHECK(parse_mount_state(R"({"version":1,"mounts":[]})")->empty());
}

TEST_CASE("stats: JSON fields and Prometheus text") {
    Stats s;
    s.bytes_fetched = 10;
    s.chunks_fetched = 2;
    s.mounts = 1;
    auto j = nlohmann::json::parse(stats_json(s));
    for (const char* k : {"bytes_fetched", "chunks_fetched", "cache_hits", "cache_misses", "errors", "events",
                          "events_denied", "prefetch_bytes", "mounts"})
        CHECK(j.contains(k));
    CHECK(j["bytes_fetched"] == 10);
    std::string prom = stats_prometheus(s);
    CHECK(prom.find("erostream_bytes_fetched_total 10\n") != std::string::npos);
    CHECK(prom.find("# TYPE erostream_mounts gauge\nerostream_mounts 1\n") != std::string::npos);
}
