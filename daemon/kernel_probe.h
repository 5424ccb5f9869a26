// What the running kernel offers erostream, shared by erostreamd (`--frontend auto`,
// `--check-kernel`) and kmod-config/check-kernel, so that the operator's tool and the daemon can
// never disagree.
//
// Three layers, so that everything but the system calls is pure and unit-tested:
//   1. parsers of kernel text (the config, the release string, /proc/filesystems);
//   2. probe_kernel(): gathers KernelFacts from the config and from probes that ask the kernel
//      itself (no config is needed: the test guest has none) and evaluates them;
//   3. evaluate_kernel() (pure): facts -> per front end usable yes/no/unknown and what is missing,
//      in words a node operator can act on; choose_frontend() (pure) implements `auto`.
// The kernel options each feature needs live in one table (kconfig_requirements()); the config
// fragment kmod-config/erostream.config is generated from it (render_config_fragment()).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

namespace erostream {

// ---------------------------------------------------------------------------------------------
// Parsers

// A kernel .config: option name (without "CONFIG_") -> value as written ("y", "m", "\"str\"",
// "4096"). "# CONFIG_X is not set" and absent options have no value.
class KernelConfig {
public:
    std::optional<std::string_view> value(std::string_view option) const;
    bool builtin(std::string_view option) const;  // =y
    bool module(std::string_view option) const;   // =m
    bool enabled(std::string_view option) const { return builtin(option) || module(option); }
    size_t size() const { return values_.size(); }

    void set(std::string name, std::string value) { values_.insert_or_assign(std::move(name), std::move(value)); }

private:
    std::map<std::string, std::string, std::less<>> values_;
};

// Lines "CONFIG_X=v", "# CONFIG_X is not set", other comments and blank lines; anything else is an
// error naming the line. A text without a single CONFIG_ line is an error too (not a config).
Result<KernelConfig> parse_kernel_config(std::string_view text);

struct KernelVersion {
    unsigned major = 0, minor = 0, patch = 0;
    auto operator<=>(const KernelVersion&) const = default;
    bool at_least(unsigned maj, unsigned min) const { return *this >= KernelVersion{maj, min, 0}; }
    std::string str() const;
};

// uname -r: "6.18.44-fc-v1272", "6.12.117", "5.19.0-rc1+", "6.1.0-28-amd64" -> major.minor.patch.
Result<KernelVersion> parse_kernel_release(std::string_view release);

// /proc/filesystems ("nodev\tproc\n\text4\n") -> the filesystem names.
std::set<std::string, std::less<>> parse_proc_filesystems(std::string_view text);

// statfs f_type -> "ext4", "xfs", "btrfs", "tmpfs", "overlay", "9p"...; "0x<hex>" when unknown.
std::string filesystem_name(uint64_t f_type);
// The filesystems a cache dir may live on: sparse files, pre-content events (6.14 enables them
// per filesystem: ext4, xfs, btrfs), and what cachefiles needs of its backing filesystem.
bool cache_filesystem_ok(std::string_view fs_name);

// ---------------------------------------------------------------------------------------------
// The kernel options each feature needs: the one source of truth for check-kernel's "missing"
// lists and for kmod-config/erostream.config.

enum class Feature : uint8_t { common, fscache, fanotify, file_backed_erofs, ublk };
std::string_view feature_name(Feature f);  // "common", "fscache", "fanotify", "file-backed EROFS", "ublk"

struct KconfigRequirement {
    Feature feature;
    std::string_view option;  // without "CONFIG_"
    bool module_ok;           // a tristate that may be =m (then a module must be loaded)
    std::string_view module;  // its module name when module_ok ("cachefiles"), else empty
    std::string_view why;     // one line for the fragment's comment and for "missing" messages
    bool required = true;     // false: recommended (a note when unset, not "missing")
};
std::span<const KconfigRequirement> kconfig_requirements();

// kmod-config/erostream.config, generated from kconfig_requirements() (a test compares them).
std::string render_config_fragment();

// ---------------------------------------------------------------------------------------------
// Facts gathered from the running system

enum class Support : uint8_t { yes, no, unknown };  // unknown: could not tell (not root, no config)
std::string_view support_name(Support s);           // "yes", "no", "unknown"

// A character device the front ends open.
struct DeviceFact {
    enum class State : uint8_t { not_checked, absent, ok, busy, no_permission, error } state = State::not_checked;
    int err = 0;          // errno of the failed open
    std::string holders;  // busy: "pid 812 (cachefilesd)", from /proc/*/fd; empty when unseen
};

// A probe that asks the kernel directly (no config needed).
struct ProbeFact {
    Support result = Support::unknown;
    std::string detail;  // what was tried and what the kernel said
};

struct KernelFacts {
    std::string release;  // uname -r
    std::optional<KernelVersion> version;
    std::optional<KernelConfig> config;
    std::string config_source;  // the file read, or why none could be ("no /proc/config.gz ...")
    std::set<std::string, std::less<>> filesystems;  // /proc/filesystems
    bool privileged = false;  // euid 0: the probes below could run

    std::string cache_dir;       // as asked
    std::string cache_probe_dir; // the directory probed: cache_dir, or its nearest existing parent
    std::string cache_fs;        // filesystem_name() of cache_probe_dir; empty when statfs failed

    DeviceFact cachefiles_dev;   // /dev/cachefiles, opened O_RDWR (exclusive: EBUSY when held)
    ProbeFact cachefiles_ondemand;  // "bind ondemand" accepted by /dev/cachefiles
    ProbeFact erofs_ondemand;       // EROFS takes the fsid= option (fsopen/fsconfig, no mount)
    ProbeFact erofs_file_backed;    // EROFS accepts a regular file as its source (no mount made)
    ProbeFact fanotify_pre_content; // FAN_CLASS_PRE_CONTENT group + FAN_PRE_ACCESS mark in the cache dir
    DeviceFact ublk_control;        // /dev/ublk-control (existence only)
    ProbeFact io_uring;             // io_uring_setup works (kernel.io_uring_disabled can forbid it)
};

// ---------------------------------------------------------------------------------------------
// Evaluation (pure)

struct FeatureReport {
    Support usable = Support::unknown;
    std::vector<std::string> missing;  // what to change, one item each, operator words
    std::vector<std::string> notes;    // facts worth knowing that block nothing
};

struct KernelProbe {
    KernelFacts facts;
    FeatureReport fscache;            // cachefiles on-demand + EROFS over fscache
    FeatureReport fanotify;           // fanotify pre-content + file-backed EROFS
    FeatureReport ublk;               // ublk block device
    FeatureReport file_backed_erofs;  // mount(2) of a regular file
    // The front ends erostreamd can serve today, in `auto` order of preference.
    bool any_frontend_usable() const;
};

KernelProbe evaluate_kernel(KernelFacts facts);

struct KernelProbeOptions {
    std::string cache_dir = "/var/lib/erostream";
    // Where the config is looked for, in order; "{release}" is replaced by uname -r.
    std::vector<std::string> config_paths = {"/proc/config.gz", "/boot/config-{release}"};
    // false: only read files (config, /proc, /dev); no fanotify group, no /dev/cachefiles open,
    // no fsopen. The daemon and check-kernel run them; unit tests do not need this.
    bool active_probes = true;
};

// Reads and probes the running kernel. Never fails as a whole: what could not be learned is in
// the facts (config_source, ProbeFact::detail, DeviceFact::err) and ends up as `unknown`.
// Blocking (file reads, a few system calls): start-up or a CLI, never the event loop.
KernelProbe probe_kernel(const KernelProbeOptions& opts);

// ---------------------------------------------------------------------------------------------
// `--frontend auto`

struct FrontendChoice {
    std::string name;    // "fscache" | "fanotify"
    std::string reason;  // one sentence: why this one (and why not the preferred one)
};

// requested: "auto" picks fscache when the kernel offers it (cachefiles + EROFS on-demand,
// /dev/cachefiles free), else fanotify (6.14+, file-backed EROFS, cache dir on ext4/xfs/btrfs),
// else an error saying what each lacks. "fscache"/"fanotify" are checked: refused when the probe
// says `no`, allowed with a reason when it says `unknown`.
Result<FrontendChoice> choose_frontend(const KernelProbe& probe, std::string_view requested);

// Renderings for --check-kernel: one JSON object; a table for people.
std::string render_probe_json(const KernelProbe& probe, const Result<FrontendChoice>& choice);
std::string render_probe_table(const KernelProbe& probe, const Result<FrontendChoice>& choice);

}  // namespace erostream
