// The pure half of the kernel probe: parsers, the option table, evaluation, `auto`.
#include "kernel_probe.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace erostream {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

bool valid_option_name(std::string_view name) {
    if (name.empty()) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parsers

std::optional<std::string_view> KernelConfig::value(std::string_view option) const {
    auto it = values_.find(option);
    if (it == values_.end()) return std::nullopt;
    return std::string_view(it->second);
}
bool KernelConfig::builtin(std::string_view option) const { return value(option) == "y"; }
bool KernelConfig::module(std::string_view option) const { return value(option) == "m"; }

Result<KernelConfig> parse_kernel_config(std::string_view text) {
    KernelConfig cfg;
    size_t lineno = 0;
    bool saw_config = false;
    while (!text.empty()) {
        size_t nl = text.find('\n');
        std::string_view line = trim(text.substr(0, nl));
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        ++lineno;
        if (line.empty()) continue;
        if (line.front() == '#') {
            // "# CONFIG_FOO is not set": stated as unset; other comments carry nothing.
            std::string_view rest = trim(line.substr(1));
            if (rest.starts_with("CONFIG_") && rest.ends_with(" is not set")) {
                std::string_view name = rest.substr(7, rest.size() - 7 - 11);
                if (!valid_option_name(name)) return failf("kernel config line {}: bad option name in '{}'", lineno, line);
                saw_config = true;
            }
            continue;
        }
        if (!line.starts_with("CONFIG_")) return failf("kernel config line {}: not an option: '{}'", lineno, line.substr(0, 80));
        size_t eq = line.find('=');
        if (eq == std::string_view::npos) return failf("kernel config line {}: no '=' in '{}'", lineno, line.substr(0, 80));
        std::string_view name = line.substr(7, eq - 7);
        std::string_view value = line.substr(eq + 1);
        if (!valid_option_name(name)) return failf("kernel config line {}: bad option name in '{}'", lineno, line.substr(0, 80));
        if (value.empty()) return failf("kernel config line {}: CONFIG_{} has no value", lineno, name);
        if (value.front() == '"' && (value.size() < 2 || value.back() != '"'))
            return failf("kernel config line {}: CONFIG_{}: unterminated string", lineno, name);
        cfg.set(std::string(name), std::string(value));
        saw_config = true;
    }
    if (!saw_config) return fail("kernel config: no CONFIG_ lines (not a kernel config)", EINVAL);
    return cfg;
}

std::string KernelVersion::str() const { return fmt::format("{}.{}.{}", major, minor, patch); }

Result<KernelVersion> parse_kernel_release(std::string_view release) {
    KernelVersion v;
    unsigned* parts[] = {&v.major, &v.minor, &v.patch};
    const char* p = release.data();
    const char* end = release.data() + release.size();
    for (int i = 0; i < 3; ++i) {
        auto [next, ec] = std::from_chars(p, end, *parts[i]);
        if (ec != std::errc()) {
            // "6.1-rc1" has no patch level: fine once major and minor are there.
            if (i == 2) break;
            return failf("kernel release '{}': expected MAJOR.MINOR[.PATCH]", release.substr(0, 64));
        }
        p = next;
        if (i < 2) {
            if (p == end || *p != '.') {
                if (i == 1) break;
                return failf("kernel release '{}': expected MAJOR.MINOR[.PATCH]", release.substr(0, 64));
            }
            ++p;
        }
    }
    if (v.major == 0) return failf("kernel release '{}': major version 0", release.substr(0, 64));
    return v;
}

std::set<std::string, std::less<>> parse_proc_filesystems(std::string_view text) {
    std::set<std::string, std::less<>> out;
    while (!text.empty()) {
        size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        // "nodev\tproc" or "\text4": the name is the last field.
        size_t tab = line.rfind('\t');
        std::string_view name = trim(tab == std::string_view::npos ? line : line.substr(tab + 1));
        if (!name.empty() && name != "nodev") out.emplace(name);
    }
    return out;
}

std::string filesystem_name(uint64_t f_type) {
    switch (f_type) {
    case 0xEF53: return "ext4";  // ext2/3/4 share the magic
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlay";
    case 0x01021997: return "9p";
    case 0x65735546: return "fuse";
    case 0xE0F5E1E2: return "erofs";
    case 0x6969: return "nfs";
    case 0xFF534D42: return "cifs";
    case 0x2fc12fc1: return "zfs";
    case 0xca451a4e: return "bcachefs";
    case 0x73717368: return "squashfs";
    case 0x858458f6: return "ramfs";
    default: return fmt::format("0x{:x}", f_type);
    }
}

bool cache_filesystem_ok(std::string_view fs) { return fs == "ext4" || fs == "xfs" || fs == "btrfs"; }

// ---------------------------------------------------------------------------------------------
// The option table

std::string_view feature_name(Feature f) {
    switch (f) {
    case Feature::common: return "common";
    case Feature::fscache: return "fscache";
    case Feature::fanotify: return "fanotify";
    case Feature::file_backed_erofs: return "file-backed EROFS";
    case Feature::ublk: return "ublk";
    }
    return "?";
}

namespace {

// Order: the fragment's order. An option may serve several features; the fragment prints it once.
constexpr KconfigRequirement kRequirements[] = {
    {Feature::common, "IO_URING", false, "", "erostreamd's event loop, cache writes and the ublk front end use io_uring"},
    {Feature::common, "EROFS_FS", true, "erofs", "EROFS, the filesystem every erostream image is mounted as"},
    {Feature::common, "EROFS_FS_XATTR", false, "", "EROFS extended attributes: file capabilities and security labels of image files", false},
    {Feature::common, "EROFS_FS_POSIX_ACL", false, "", "EROFS POSIX ACLs of image files", false},
    {Feature::common, "EROFS_FS_SECURITY", false, "", "EROFS security labels (SELinux, Smack) of image files", false},

    {Feature::fscache, "FSCACHE", true, "", "fscache, the local cache layer cachefiles plugs into"},
    {Feature::fscache, "CACHEFILES", true, "cachefiles", "cachefiles: the cache on a local filesystem, /dev/cachefiles"},
    {Feature::fscache, "CACHEFILES_ONDEMAND", false, "", "cachefiles on-demand mode: a user daemon fills the cache on OPEN/READ requests"},
    {Feature::fscache, "EROFS_FS", true, "erofs", "EROFS"},
    {Feature::fscache, "EROFS_FS_ONDEMAND", false, "", "EROFS over fscache: mount -t erofs -o fsid=...,domain_id=..."},

    {Feature::file_backed_erofs, "EROFS_FS", true, "erofs", "EROFS"},
    {Feature::file_backed_erofs, "EROFS_FS_BACKED_BY_FILE", false, "", "EROFS mounts of regular files, device= files too (Linux 6.12+)"},

    {Feature::fanotify, "FANOTIFY", false, "", "fanotify"},
    {Feature::fanotify, "FANOTIFY_ACCESS_PERMISSIONS", false, "", "fanotify permission and pre-content events (FAN_PRE_ACCESS, Linux 6.14+)"},

    {Feature::ublk, "BLK_DEV_UBLK", true, "ublk_drv", "ublk: block devices served from user space over io_uring, /dev/ublk-control"},
};

std::string_view feature_heading(Feature f) {
    switch (f) {
    case Feature::common: return "every front end";
    case Feature::fscache: return "fscache front end: EROFS over fscache, cachefiles on-demand (Linux 5.19+)";
    case Feature::file_backed_erofs: return "file-backed EROFS (Linux 6.12+), needed by the fanotify front end";
    case Feature::fanotify: return "fanotify front end: pre-content events on the cache files (Linux 6.14+)";
    case Feature::ublk: return "ublk front end (Linux 6.0+; erostreamd does not serve it yet)";
    }
    return "?";
}

}  // namespace

std::span<const KconfigRequirement> kconfig_requirements() { return kRequirements; }

std::string render_config_fragment() {
    std::string out =
        "# erostream: the kernel options each front end needs, as a config fragment.\n"
        "# Generated by `erostreamd --kernel-config-fragment` from the table check-kernel uses\n"
        "# (daemon/kernel_probe.cpp); the kmod-config-fragment test fails when this file differs.\n"
        "# Merge onto a kernel config: scripts/kconfig/merge_config.sh -m .config erostream.config\n"
        "# Tristates may be =m instead of =y when their module is loaded at boot\n"
        "# (modules-load.d/erostream.conf).\n";
    std::set<std::string_view> printed;
    Feature current = Feature::common;
    bool first = true;
    for (const auto& req : kRequirements) {
        if (first || req.feature != current) {
            current = req.feature;
            out += fmt::format("\n# --- {} ---\n", feature_heading(current));
            first = false;
        }
        if (!printed.insert(req.option).second) {
            out += fmt::format("# CONFIG_{} (above)\n", req.option);
            continue;
        }
        std::string why(req.why);
        if (!req.required) why += " (recommended)";
        if (req.module_ok) why += fmt::format("; =m: module {}", req.module.empty() ? "(loaded with its users)" : req.module);
        out += fmt::format("# {}\nCONFIG_{}=y\n", why, req.option);
    }
    return out;
}

std::string_view support_name(Support s) {
    switch (s) {
    case Support::yes: return "yes";
    case Support::no: return "no";
    case Support::unknown: return "unknown";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------
// Evaluation

namespace {

// Accumulates one feature's report: definite gaps in `missing`, "could not tell" in `unknowns`.
struct ReportBuilder {
    FeatureReport rep;
    std::vector<std::string> unknowns;
    std::set<std::string_view> checked;  // options already reported (a shared option once)

    void missing(std::string s) { rep.missing.push_back(std::move(s)); }
    void note(std::string s) { rep.notes.push_back(std::move(s)); }
    void unknown(std::string s) { unknowns.push_back(std::move(s)); }

    FeatureReport finish() {
        if (!rep.missing.empty()) rep.usable = Support::no;
        else if (!unknowns.empty()) rep.usable = Support::unknown;
        else rep.usable = Support::yes;
        for (auto& u : unknowns) rep.notes.push_back("not checked: " + u);
        return std::move(rep);
    }
};

enum class OptState { unknown, unset, builtin, module, other };

OptState option_state(const KernelFacts& f, std::string_view opt) {
    if (!f.config) return OptState::unknown;
    auto v = f.config->value(opt);
    if (!v) return OptState::unset;
    if (*v == "y") return OptState::builtin;
    if (*v == "m") return OptState::module;
    return OptState::other;
}

bool option_missing(const KernelFacts& f, std::string_view opt) { return option_state(f, opt) == OptState::unset; }

// The configured state of every option of `feature`: unset (missing), =m where =y is needed.
void check_options(const KernelFacts& f, Feature feature, ReportBuilder& b) {
    if (!f.config) return;
    for (const auto& req : kRequirements) {
        if (req.feature != feature || !b.checked.insert(req.option).second) continue;
        OptState st = option_state(f, req.option);
        if (st == OptState::unset) {
            std::string msg = fmt::format("CONFIG_{} is not set ({})", req.option, req.why);
            if (req.required) b.missing(std::move(msg));
            else b.note(std::move(msg));
        } else if (st == OptState::module && !req.module_ok) {
            b.missing(fmt::format("CONFIG_{}=m must be =y ({})", req.option, req.why));
        }
    }
}

void check_version(const KernelFacts& f, unsigned maj, unsigned min, std::string_view what, ReportBuilder& b) {
    if (!f.version) {
        b.unknown(fmt::format("kernel release '{}' not understood; {} needs Linux {}.{}+", f.release, what, maj, min));
        return;
    }
    if (!f.version->at_least(maj, min))
        b.missing(fmt::format("Linux {}.{} or later for {} (this kernel is {})", maj, min, what, f.version->str()));
}

void check_cache_fs(const KernelFacts& f, std::string_view needs, ReportBuilder& b) {
    if (f.cache_fs.empty()) {
        b.unknown(fmt::format("the filesystem of the cache dir {} (statfs failed)", f.cache_dir));
        return;
    }
    if (!cache_filesystem_ok(f.cache_fs))
        b.missing(fmt::format("the cache dir {} is on {}: {} ext4, xfs or btrfs (choose another --cache-dir "
                              "or mount one there)",
                              f.cache_dir, f.cache_fs, needs));
    if (f.cache_probe_dir != f.cache_dir && !f.cache_probe_dir.empty())
        b.note(fmt::format("the cache dir {} does not exist yet; probed its parent {}", f.cache_dir, f.cache_probe_dir));
}

// A direct probe's verdict, unless the config already explains the gap (no duplicate lines).
void apply_probe(const ProbeFact& p, bool explained, ReportBuilder& b) {
    if (p.result == Support::no && !explained) b.missing(p.detail);
    else if (p.result == Support::unknown && !explained) b.unknown(p.detail);
}

void check_io_uring(const KernelFacts& f, ReportBuilder& b) {
    apply_probe(f.io_uring, option_missing(f, "IO_URING"), b);
}

bool held_by_erostream(const DeviceFact& d) { return d.holders.find("(erostreamd") != std::string::npos; }

FeatureReport eval_file_backed(const KernelFacts& f) {
    ReportBuilder b;
    check_version(f, 6, 12, "file-backed EROFS mounts", b);
    check_options(f, Feature::file_backed_erofs, b);
    bool explained = !b.rep.missing.empty();
    const ProbeFact& p = f.erofs_file_backed;
    if (p.result == Support::unknown && !explained) {
        bool config_yes = f.config && f.config->builtin("EROFS_FS_BACKED_BY_FILE") && f.config->enabled("EROFS_FS");
        if (config_yes) {
            b.note("from the kernel config; not probed (" + p.detail + ")");
        } else if (!f.config && f.version && f.version->at_least(6, 12) && f.filesystems.contains("erofs")) {
            b.note("assumed: Linux " + f.version->str() + " with erofs in /proc/filesystems and no kernel config to read "
                   "(not probed: " + p.detail + ")");
        } else {
            b.unknown(p.detail);
        }
    } else {
        apply_probe(p, explained, b);
    }
    return b.finish();
}

FeatureReport eval_fscache(const KernelFacts& f) {
    ReportBuilder b;
    check_version(f, 5, 19, "cachefiles on-demand", b);
    check_options(f, Feature::common, b);
    check_options(f, Feature::fscache, b);
    check_io_uring(f, b);

    bool cachefiles_unset = option_missing(f, "CACHEFILES") || option_missing(f, "FSCACHE");
    bool cf_ondemand_explained = cachefiles_unset || option_missing(f, "CACHEFILES_ONDEMAND") ||
                                 (f.version && !f.version->at_least(5, 19));
    bool erofs_ondemand_explained = option_missing(f, "EROFS_FS") || option_missing(f, "EROFS_FS_ONDEMAND") ||
                                    (f.version && !f.version->at_least(5, 19));

    const DeviceFact& dev = f.cachefiles_dev;
    switch (dev.state) {
    case DeviceFact::State::ok: break;
    case DeviceFact::State::absent:
        if (cachefiles_unset) break;
        if (option_state(f, "CACHEFILES") == OptState::module)
            b.missing("module cachefiles is not loaded: modprobe cachefiles (at boot: kmod-config/modules-load.d/erostream.conf)");
        else
            b.missing("/dev/cachefiles does not exist: the kernel has no cachefiles (CONFIG_CACHEFILES) or its module is "
                      "not loaded (modprobe cachefiles)");
        cf_ondemand_explained = true;
        break;
    case DeviceFact::State::busy:
        if (held_by_erostream(dev)) {
            b.note("/dev/cachefiles is held by " + dev.holders + ": erostream's own");
        } else {
            b.missing(fmt::format("/dev/cachefiles is held by {}: only one cache daemon may open it; stop that one "
                                  "(cachefilesd: systemctl disable --now cachefilesd) or use --frontend fanotify",
                                  dev.holders.empty() ? "another process" : dev.holders));
        }
        break;
    case DeviceFact::State::no_permission:
        b.unknown("opening /dev/cachefiles needs root (CAP_SYS_ADMIN): run check-kernel as root");
        break;
    case DeviceFact::State::error:
        b.missing(fmt::format("open /dev/cachefiles: {}", std::strerror(dev.err)));
        break;
    case DeviceFact::State::not_checked:
        b.unknown("/dev/cachefiles (not opened)");
        break;
    }

    // The bind probe needs the device; when someone else holds it the config is all we have.
    const ProbeFact& cf = f.cachefiles_ondemand;
    if (cf.result == Support::unknown && f.config && f.config->builtin("CACHEFILES_ONDEMAND")) {
        // the config says it is there
    } else if (cf.result == Support::unknown && held_by_erostream(dev)) {
        // erostream holds the device: it bound it in on-demand mode
    } else {
        apply_probe(cf, cf_ondemand_explained, b);
    }
    const ProbeFact& eo = f.erofs_ondemand;
    if (!(eo.result == Support::unknown && f.config && f.config->builtin("EROFS_FS_ONDEMAND")))
        apply_probe(eo, erofs_ondemand_explained, b);

    check_cache_fs(f, "cachefiles needs", b);
    if (f.version && f.version->at_least(6, 12))
        b.note("the cachefiles on-demand interface is deprecated since Linux 6.12; the fanotify front end serves 6.14+");
    return b.finish();
}

FeatureReport eval_fanotify(const KernelFacts& f, const FeatureReport& file_backed) {
    ReportBuilder b;
    check_version(f, 6, 14, "fanotify pre-content events (FAN_PRE_ACCESS)", b);
    check_options(f, Feature::common, b);
    check_options(f, Feature::fanotify, b);
    check_io_uring(f, b);
    bool explained = !b.rep.missing.empty();
    check_cache_fs(f, "fanotify pre-content events need", b);
    explained = explained || (!f.cache_fs.empty() && !cache_filesystem_ok(f.cache_fs));
    apply_probe(f.fanotify_pre_content, explained, b);
    for (const auto& m : file_backed.missing) b.missing("file-backed EROFS: " + m);
    if (file_backed.usable == Support::unknown) b.unknown("file-backed EROFS");
    return b.finish();
}

FeatureReport eval_ublk(const KernelFacts& f) {
    ReportBuilder b;
    check_version(f, 6, 0, "ublk", b);
    check_options(f, Feature::common, b);
    check_options(f, Feature::ublk, b);
    check_io_uring(f, b);
    if (f.ublk_control.state == DeviceFact::State::absent && !option_missing(f, "BLK_DEV_UBLK")) {
        if (option_state(f, "BLK_DEV_UBLK") == OptState::module)
            b.missing("module ublk_drv is not loaded: modprobe ublk_drv (at boot: kmod-config/modules-load.d/erostream.conf)");
        else
            b.missing("/dev/ublk-control does not exist: the kernel has no ublk (CONFIG_BLK_DEV_UBLK) or module ublk_drv "
                      "is not loaded");
    }
    b.note("erostreamd does not serve the ublk front end yet");
    return b.finish();
}

}  // namespace

bool KernelProbe::any_frontend_usable() const { return fscache.usable == Support::yes || fanotify.usable == Support::yes; }

KernelProbe evaluate_kernel(KernelFacts facts) {
    KernelProbe p;
    p.file_backed_erofs = eval_file_backed(facts);
    p.fscache = eval_fscache(facts);
    p.fanotify = eval_fanotify(facts, p.file_backed_erofs);
    p.ublk = eval_ublk(facts);
    p.facts = std::move(facts);
    return p;
}

// ---------------------------------------------------------------------------------------------
// `auto`

namespace {

// "CONFIG_X is not set (what it is for)" -> "CONFIG_X is not set": the table says the rest.
std::string_view short_item(std::string_view m) {
    if (m.starts_with("CONFIG_"))
        if (auto p = m.find(" ("); p != std::string_view::npos) return m.substr(0, p);
    return m;
}

std::string why_not(const FeatureReport& r) {
    if (!r.missing.empty()) {
        std::string s;
        for (const auto& m : r.missing) s += fmt::format("{}{}", s.empty() ? "" : "; ", short_item(m));
        return s;
    }
    std::string s;
    for (const auto& n : r.notes)
        if (n.starts_with("not checked: ")) s += (s.empty() ? "" : "; ") + n;
    return s.empty() ? std::string("unknown") : s;
}

}  // namespace

Result<FrontendChoice> choose_frontend(const KernelProbe& probe, std::string_view requested) {
    const auto& fs = probe.fscache;
    const auto& fa = probe.fanotify;
    if (requested == "fscache" || requested == "fanotify") {
        const FeatureReport& r = requested == "fscache" ? fs : fa;
        switch (r.usable) {
        case Support::yes: return FrontendChoice{std::string(requested), "requested, and the kernel offers it"};
        case Support::unknown:
            return FrontendChoice{std::string(requested), fmt::format("requested; the probe could not confirm it ({})", why_not(r))};
        case Support::no:
            return fail(fmt::format("front end {} is not available on this kernel: {}", requested, why_not(r)), ENOTSUP);
        }
    }
    if (requested != "auto") return fail(fmt::format("front end '{}': expected auto, fscache or fanotify", requested), EINVAL);

    if (fs.usable == Support::yes)
        return FrontendChoice{"fscache", "the kernel offers cachefiles on-demand and EROFS over fscache, and /dev/cachefiles is free"};
    if (fa.usable == Support::yes)
        return FrontendChoice{"fanotify", fmt::format("fscache is not available ({}); fanotify pre-content events and "
                                                      "file-backed EROFS work on the cache dir's {}",
                                                      why_not(fs), probe.facts.cache_fs)};
    return fail(fmt::format("no front end works on this kernel. fscache: {}. fanotify: {}", why_not(fs), why_not(fa)), ENOTSUP);
}

}  // namespace erostream
