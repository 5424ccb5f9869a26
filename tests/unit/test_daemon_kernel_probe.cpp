// The kernel probe's pure half: config and release parsers, evaluation of facts, `auto`.
#include <doctest.h>

#include <nlohmann/json.hpp>

#include "kernel_probe.h"

using namespace erostream;

namespace {

// The facts of a kernel where every probe worked: a 6.12 guest built with guest.config.
KernelFacts guest_6_12() {
    KernelFacts f;
    f.release = "6.12.117";
    f.version = KernelVersion{6, 12, 117};
    f.config_source = "none (/proc/config.gz absent)";
    f.filesystems = {"ext4", "erofs", "tmpfs", "9p"};
    f.privileged = true;
    f.cache_dir = f.cache_probe_dir = "/mnt/cache";
    f.cache_fs = "ext4";
    f.cachefiles_dev.state = DeviceFact::State::ok;
    f.cachefiles_ondemand = {Support::yes, "cachefiles accepts 'bind ondemand'"};
    f.erofs_ondemand = {Support::yes, "EROFS accepts fsid="};
    f.erofs_file_backed = {Support::yes, "EROFS mounts regular files"};
    f.fanotify_pre_content = {Support::no, "fanotify_mark(FAN_PRE_ACCESS) on a file in /mnt/cache (ext4): Invalid argument"};
    f.ublk_control.state = DeviceFact::State::ok;
    f.io_uring = {Support::yes, "io_uring_setup works"};
    return f;
}

// This build machine: 6.18, Debian-like config without on-demand, no /dev/cachefiles.
KernelFacts host_6_18() {
    KernelFacts f;
    f.release = "6.18.44-fc-v1272";
    f.version = KernelVersion{6, 18, 44};
    f.config = *parse_kernel_config(
        "CONFIG_IO_URING=y\nCONFIG_FANOTIFY=y\nCONFIG_FANOTIFY_ACCESS_PERMISSIONS=y\nCONFIG_EROFS_FS=y\n"
        "CONFIG_EROFS_FS_XATTR=y\nCONFIG_EROFS_FS_POSIX_ACL=y\nCONFIG_EROFS_FS_SECURITY=y\n"
        "CONFIG_EROFS_FS_BACKED_BY_FILE=y\n# CONFIG_EROFS_FS_ONDEMAND is not set\n"
        "# CONFIG_BLK_DEV_UBLK is not set\nCONFIG_NETFS_SUPPORT=y\n# CONFIG_FSCACHE is not set\n");
    f.config_source = "/proc/config.gz";
    f.filesystems = {"ext4", "erofs", "xfs", "btrfs"};
    f.privileged = true;
    f.cache_dir = "/var/lib/erostream";
    f.cache_probe_dir = "/var/lib";
    f.cache_fs = "ext4";
    f.cachefiles_dev.state = DeviceFact::State::absent;
    f.cachefiles_ondemand = {Support::no, "/dev/cachefiles does not exist"};
    f.erofs_ondemand = {Support::no, "EROFS has no fscache mode: built without CONFIG_EROFS_FS_ONDEMAND"};
    f.erofs_file_backed = {Support::yes, "EROFS mounts regular files"};
    f.fanotify_pre_content = {Support::yes, "FAN_PRE_ACCESS marks work in /var/lib"};
    f.ublk_control.state = DeviceFact::State::absent;
    f.io_uring = {Support::yes, "io_uring_setup works"};
    return f;
}

bool any_contains(const std::vector<std::string>& v, std::string_view needle) {
    for (const auto& s : v)
        if (s.find(needle) != std::string::npos) return true;
    return false;
}

}  // namespace

TEST_CASE("kernel config: y, m, strings, not set, comments") {
    auto c = parse_kernel_config(
        "#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_CACHEFILES=m\nCONFIG_EROFS_FS=y\r\n"
        "# CONFIG_EROFS_FS_ONDEMAND is not set\nCONFIG_LOCALVERSION=\"-amd64\"\nCONFIG_NR_CPUS=64\n\n");
    REQUIRE(c);
    CHECK(c->module("CACHEFILES"));
    CHECK(c->enabled("CACHEFILES"));
    CHECK_FALSE(c->builtin("CACHEFILES"));
    CHECK(c->builtin("EROFS_FS"));
    CHECK_FALSE(c->value("EROFS_FS_ONDEMAND"));
    CHECK_FALSE(c->enabled("EROFS_FS_ONDEMAND"));
    CHECK(c->value("LOCALVERSION") == "\"-amd64\"");
    CHECK(c->value("NR_CPUS") == "64");
    CHECK_FALSE(c->value("NOT_THERE"));
    CHECK(c->size() == 4);
}

TEST_CASE("kernel config: garbage is an error that names the line") {
    CHECK_FALSE(parse_kernel_config(""));
    CHECK_FALSE(parse_kernel_config("# only a comment\n"));
    auto bad = parse_kernel_config("CONFIG_A=y\nnot a config line\n");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("line 2") != std::string::npos);
    CHECK_FALSE(parse_kernel_config("CONFIG_A\n"));
    CHECK_FALSE(parse_kernel_config("CONFIG_=y\n"));
    CHECK_FALSE(parse_kernel_config("CONFIG_A=\n"));
    CHECK_FALSE(parse_kernel_config("CONFIG_A=\"open\n"));
    CHECK_FALSE(parse_kernel_config("CONFIG_A-B=y\n"));
    // gzip bytes that were not decompressed
    CHECK_FALSE(parse_kernel_config(std::string_view("\x1f\x8b\x08\x00\x00", 5)));
    // "is not set" alone is a config (every option off)
    CHECK(parse_kernel_config("# CONFIG_X is not set\n"));
}

TEST_CASE("kernel release strings") {
    auto v = parse_kernel_release("6.18.44-fc-v1272");
    REQUIRE(v);
    CHECK(*v == KernelVersion{6, 18, 44});
    CHECK(parse_kernel_release("6.12.117")->str() == "6.12.117");
    CHECK(*parse_kernel_release("6.1.0-28-amd64") == KernelVersion{6, 1, 0});
    CHECK(*parse_kernel_release("5.19.0-rc1+") == KernelVersion{5, 19, 0});
    CHECK(*parse_kernel_release("6.14-rc3") == KernelVersion{6, 14, 0});
    CHECK(*parse_kernel_release("7.0") == KernelVersion{7, 0, 0});
    CHECK(parse_kernel_release("6.14.0")->at_least(6, 14));
    CHECK_FALSE(parse_kernel_release("6.13.12")->at_least(6, 14));
    CHECK(parse_kernel_release("7.1.0")->at_least(6, 14));
    CHECK_FALSE(parse_kernel_release(""));
    CHECK_FALSE(parse_kernel_release("six"));
    CHECK_FALSE(parse_kernel_release("6"));
    CHECK_FALSE(parse_kernel_release("0.1.2"));
    CHECK_FALSE(parse_kernel_release("99999999999.1"));
}

TEST_CASE("/proc/filesystems and filesystem names") {
    auto fs = parse_proc_filesystems("nodev\tsysfs\nnodev\ttmpfs\n\text4\n\terofs\nnodev\t9p\n");
    CHECK(fs.contains("ext4"));
    CHECK(fs.contains("erofs"));
    CHECK(fs.contains("tmpfs"));
    CHECK_FALSE(fs.contains("nodev"));
    CHECK(parse_proc_filesystems("").empty());
    CHECK(filesystem_name(0xEF53) == "ext4");
    CHECK(filesystem_name(0x01021994) == "tmpfs");
    CHECK(filesystem_name(0x1234) == "0x1234");
    CHECK(cache_filesystem_ok("xfs"));
    CHECK_FALSE(cache_filesystem_ok("tmpfs"));
    CHECK_FALSE(cache_filesystem_ok("overlay"));
}

TEST_CASE("config fragment: generated from the requirement table") {
    std::string frag = render_config_fragment();
    auto cfg = parse_kernel_config(frag);
    REQUIRE(cfg);
    for (const auto& r : kconfig_requirements()) CHECK_MESSAGE(cfg->builtin(r.option), r.option);
    for (const char* opt : {"CACHEFILES", "CACHEFILES_ONDEMAND", "FSCACHE", "EROFS_FS", "EROFS_FS_ONDEMAND",
                            "EROFS_FS_BACKED_BY_FILE", "FANOTIFY", "FANOTIFY_ACCESS_PERMISSIONS", "BLK_DEV_UBLK", "IO_URING"})
        CHECK_MESSAGE(cfg->builtin(opt), opt);
    // an option shared by several features is set once
    CHECK(frag.find("CONFIG_EROFS_FS=y") == frag.rfind("CONFIG_EROFS_FS=y"));
}

TEST_CASE("evaluate: the 6.12 test guest offers fscache, not fanotify") {
    KernelProbe p = evaluate_kernel(guest_6_12());
    CHECK(p.fscache.usable == Support::yes);
    CHECK(p.fscache.missing.empty());
    CHECK(p.file_backed_erofs.usable == Support::yes);
    CHECK(p.fanotify.usable == Support::no);
    CHECK(any_contains(p.fanotify.missing, "Linux 6.14 or later"));
    CHECK(p.ublk.usable == Support::yes);
    auto c = choose_frontend(p, "auto");
    REQUIRE(c);
    CHECK(c->name == "fscache");
    CHECK_FALSE(choose_frontend(p, "fanotify"));
    CHECK(choose_frontend(p, "fscache")->name == "fscache");
}

TEST_CASE("evaluate: this build machine's 6.18 has fanotify, and says what fscache lacks") {
    KernelProbe p = evaluate_kernel(host_6_18());
    CHECK(p.fanotify.usable == Support::yes);
    CHECK(p.fscache.usable == Support::no);
    CHECK(any_contains(p.fscache.missing, "CONFIG_EROFS_FS_ONDEMAND is not set"));
    CHECK(any_contains(p.fscache.missing, "CONFIG_FSCACHE is not set"));
    CHECK(any_contains(p.fscache.missing, "CONFIG_CACHEFILES is not set"));
    // the config explains the probes: no duplicate line from them
    CHECK_FALSE(any_contains(p.fscache.missing, "/dev/cachefiles does not exist"));
    CHECK(p.ublk.usable == Support::no);
    CHECK(any_contains(p.ublk.missing, "CONFIG_BLK_DEV_UBLK is not set"));
    CHECK(any_contains(p.fanotify.notes, "does not exist yet"));
    auto c = choose_frontend(p, "auto");
    REQUIRE(c);
    CHECK(c->name == "fanotify");
    CHECK(c->reason.find("CONFIG_EROFS_FS_ONDEMAND") != std::string::npos);
    auto refused = choose_frontend(p, "fscache");
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find("CONFIG_CACHEFILES") != std::string::npos);
    CHECK_FALSE(choose_frontend(p, "nbd"));
}

TEST_CASE("evaluate: /dev/cachefiles held by cachefilesd") {
    auto f = guest_6_12();
    f.cachefiles_dev.state = DeviceFact::State::busy;
    f.cachefiles_dev.err = EBUSY;
    f.cachefiles_dev.holders = "pid 812 (cachefilesd)";
    f.cachefiles_ondemand = {Support::unknown, "/dev/cachefiles is held by another process"};
    KernelProbe p = evaluate_kernel(f);
    CHECK(p.fscache.usable == Support::no);
    CHECK(any_contains(p.fscache.missing, "held by pid 812 (cachefilesd)"));
    CHECK(any_contains(p.fscache.missing, "systemctl disable --now cachefilesd"));
    auto c = choose_frontend(p, "auto");
    REQUIRE_FALSE(c);  // and fanotify does not work on 6.12 either
    CHECK(c.error().message.find("cachefilesd") != std::string::npos);
    CHECK(c.error().message.find("6.14") != std::string::npos);

    // held by erostream's own process (a restart): still usable
    f.cachefiles_dev.holders = "pid 77 (erostreamd)";
    KernelProbe own = evaluate_kernel(f);
    CHECK(own.fscache.usable == Support::yes);
    CHECK(choose_frontend(own, "auto")->name == "fscache");
}

TEST_CASE("evaluate: modules that are configured but not loaded") {
    auto f = guest_6_12();
    f.config = *parse_kernel_config(
        "CONFIG_IO_URING=y\nCONFIG_FSCACHE=m\nCONFIG_CACHEFILES=m\nCONFIG_CACHEFILES_ONDEMAND=y\nCONFIG_EROFS_FS=m\n"
        "CONFIG_EROFS_FS_ONDEMAND=y\nCONFIG_EROFS_FS_BACKED_BY_FILE=y\nCONFIG_BLK_DEV_UBLK=m\n");
    f.cachefiles_dev.state = DeviceFact::State::absent;
    f.cachefiles_ondemand = {Support::no, "/dev/cachefiles does not exist"};
    f.ublk_control.state = DeviceFact::State::absent;
    KernelProbe p = evaluate_kernel(f);
    CHECK(p.fscache.usable == Support::no);
    REQUIRE(p.fscache.missing.size() == 1);
    CHECK(p.fscache.missing[0].find("modprobe cachefiles") != std::string::npos);
    CHECK(any_contains(p.ublk.missing, "modprobe ublk_drv"));
    // recommended options are notes, not gaps
    CHECK(any_contains(p.fscache.notes, "CONFIG_EROFS_FS_XATTR is not set"));
}

TEST_CASE("evaluate: a bool option built as module, and an old kernel") {
    auto f = host_6_18();
    f.release = "6.8.0-50-generic";
    f.version = KernelVersion{6, 8, 0};
    f.fanotify_pre_content = {Support::no, "fanotify_mark(FAN_PRE_ACCESS) on a file in /var/lib (ext4): Invalid argument"};
    f.erofs_file_backed = {Support::no, "EROFS mounts block devices only"};
    KernelProbe p = evaluate_kernel(f);
    CHECK(p.fanotify.usable == Support::no);
    CHECK(any_contains(p.fanotify.missing, "Linux 6.14 or later"));
    // the version explains the refused mark: not listed twice
    CHECK_FALSE(any_contains(p.fanotify.missing, "Invalid argument"));
    CHECK(any_contains(p.fanotify.missing, "file-backed EROFS: Linux 6.12 or later"));
    auto c = choose_frontend(p, "auto");
    REQUIRE_FALSE(c);
    CHECK(c.error().message.find("fscache:") != std::string::npos);
    CHECK(c.error().message.find("fanotify:") != std::string::npos);
}

TEST_CASE("evaluate: the cache dir on tmpfs") {
    auto f = host_6_18();
    f.cache_dir = f.cache_probe_dir = "/tmp/cache";
    f.cache_fs = "tmpfs";
    f.fanotify_pre_content = {Support::no, "fanotify_mark(FAN_PRE_ACCESS) on a file in /tmp/cache (tmpfs): Invalid argument"};
    KernelProbe p = evaluate_kernel(f);
    CHECK(p.fanotify.usable == Support::no);
    REQUIRE(p.fanotify.missing.size() == 1);
    CHECK(p.fanotify.missing[0].find("is on tmpfs") != std::string::npos);
}

TEST_CASE("evaluate: not root and no config: unknown, and requests still go through") {
    auto f = guest_6_12();
    f.privileged = false;
    f.cachefiles_dev.state = DeviceFact::State::no_permission;
    f.cachefiles_dev.err = EPERM;
    f.cachefiles_ondemand = {Support::unknown, "opening /dev/cachefiles needs root"};
    f.erofs_ondemand = {Support::unknown, "fsopen(erofs): Operation not permitted"};
    f.erofs_file_backed = {Support::unknown, "fsopen(erofs): Operation not permitted"};
    f.fanotify_pre_content = {Support::unknown, "fanotify_init(FAN_CLASS_PRE_CONTENT) needs root (CAP_SYS_ADMIN)"};
    f.version = KernelVersion{6, 14, 2};
    f.release = "6.14.2";
    KernelProbe p = evaluate_kernel(f);
    CHECK(p.fscache.usable == Support::unknown);
    CHECK(p.fanotify.usable == Support::unknown);
    // 6.12+ with erofs registered: file-backed is assumed
    CHECK(p.file_backed_erofs.usable == Support::yes);
    CHECK(any_contains(p.file_backed_erofs.notes, "assumed"));
    CHECK_FALSE(p.any_frontend_usable());
    CHECK_FALSE(choose_frontend(p, "auto"));
    auto c = choose_frontend(p, "fanotify");
    REQUIRE(c);
    CHECK(c->reason.find("could not confirm") != std::string::npos);
}

TEST_CASE("renderings: JSON carries every feature and the choice") {
    KernelProbe p = evaluate_kernel(guest_6_12());
    auto choice = choose_frontend(p, "auto");
    auto j = nlohmann::json::parse(render_probe_json(p, choice));
    CHECK(j["frontends"]["fscache"]["usable"] == true);
    CHECK(j["frontends"]["fanotify"]["usable"] == false);
    CHECK(j["file_backed_erofs"]["status"] == "yes");
    CHECK(j["auto"]["frontend"] == "fscache");
    CHECK(j["usable"] == true);
    CHECK(j["probes"]["cachefiles_device"]["state"] == "ok");
    std::string table = render_probe_table(p, choice);
    CHECK(table.find("fscache") != std::string::npos);
    CHECK(table.find("--frontend auto: fscache") != std::string::npos);

    KernelProbe none = evaluate_kernel(host_6_18());
    none.fanotify.usable = Support::no;
    auto j2 = nlohmann::json::parse(render_probe_json(none, choose_frontend(none, "auto")));
    CHECK(j2["auto"]["frontend"].is_null());
    CHECK(j2["auto"]["error"].get<std::string>().find("no front end") != std::string::npos);
}
