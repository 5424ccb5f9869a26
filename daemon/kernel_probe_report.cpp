// --check-kernel output: one JSON object for machines, a table for people.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "kernel_probe.h"

namespace erostream {

namespace {

using Json = nlohmann::ordered_json;

Json feature_json(const FeatureReport& r) {
    Json j;
    j["usable"] = r.usable == Support::yes;
    j["status"] = std::string(support_name(r.usable));
    j["missing"] = r.missing;
    j["notes"] = r.notes;
    return j;
}

Json probe_json(const ProbeFact& p) {
    Json j;
    j["result"] = std::string(support_name(p.result));
    j["detail"] = p.detail;
    return j;
}

std::string_view device_state_name(DeviceFact::State s) {
    switch (s) {
    case DeviceFact::State::not_checked: return "not checked";
    case DeviceFact::State::absent: return "absent";
    case DeviceFact::State::ok: return "ok";
    case DeviceFact::State::busy: return "busy";
    case DeviceFact::State::no_permission: return "no permission";
    case DeviceFact::State::error: return "error";
    }
    return "?";
}

Json device_json(const DeviceFact& d) {
    Json j;
    j["state"] = std::string(device_state_name(d.state));
    if (d.err != 0 && d.state != DeviceFact::State::ok) j["error"] = std::strerror(d.err);
    if (!d.holders.empty()) j["held_by"] = d.holders;
    return j;
}

struct Row {
    std::string_view name;
    const FeatureReport* rep;
};

}  // namespace

std::string render_probe_json(const KernelProbe& p, const Result<FrontendChoice>& choice) {
    const KernelFacts& f = p.facts;
    Json j;
    j["kernel"] = {{"release", f.release}, {"version", f.version ? f.version->str() : std::string()}};
    j["config"] = {{"source", f.config ? f.config_source : std::string()},
                   {"found", f.config.has_value()},
                   {"detail", f.config ? std::string() : f.config_source}};
    j["privileged"] = f.privileged;
    j["cache_dir"] = {{"path", f.cache_dir}, {"probed", f.cache_probe_dir}, {"filesystem", f.cache_fs}};
    Json fe;
    fe["fscache"] = feature_json(p.fscache);
    fe["fanotify"] = feature_json(p.fanotify);
    fe["ublk"] = feature_json(p.ublk);
    j["frontends"] = fe;
    j["file_backed_erofs"] = feature_json(p.file_backed_erofs);
    Json pr;
    pr["cachefiles_device"] = device_json(f.cachefiles_dev);
    pr["cachefiles_ondemand"] = probe_json(f.cachefiles_ondemand);
    pr["erofs_ondemand"] = probe_json(f.erofs_ondemand);
    pr["erofs_file_backed"] = probe_json(f.erofs_file_backed);
    pr["fanotify_pre_content"] = probe_json(f.fanotify_pre_content);
    pr["io_uring"] = probe_json(f.io_uring);
    pr["ublk_control"] = device_json(f.ublk_control);
    j["probes"] = pr;
    if (choice) j["auto"] = {{"frontend", choice->name}, {"reason", choice->reason}};
    else j["auto"] = {{"frontend", nullptr}, {"error", choice.error().message}};
    j["usable"] = p.any_frontend_usable();
    return j.dump(2) + "\n";
}

std::string render_probe_table(const KernelProbe& p, const Result<FrontendChoice>& choice) {
    const KernelFacts& f = p.facts;
    std::string out;
    out += fmt::format("kernel      {}\n", f.release.empty() ? "unknown" : f.release);
    out += fmt::format("config      {}\n", f.config_source);
    out += fmt::format("cache dir   {} ({}{})\n", f.cache_dir, f.cache_fs.empty() ? "statfs failed" : f.cache_fs,
                       f.cache_probe_dir == f.cache_dir ? "" : ", probed at " + f.cache_probe_dir);
    if (!f.privileged) out += "            not root: the probes that need CAP_SYS_ADMIN were refused\n";
    out += "\n";
    const Row rows[] = {{"fscache", &p.fscache},
                        {"fanotify", &p.fanotify},
                        {"ublk", &p.ublk},
                        {"file-backed EROFS", &p.file_backed_erofs}};
    out += fmt::format("{:<19} {}\n", "front end", "usable");
    for (const auto& r : rows) {
        out += fmt::format("{:<19} {}\n", r.name, support_name(r.rep->usable));
        for (const auto& m : r.rep->missing) out += fmt::format("{:<19}   missing: {}\n", "", m);
        for (const auto& n : r.rep->notes) out += fmt::format("{:<19}   note: {}\n", "", n);
    }
    out += "\n";
    if (choice) out += fmt::format("--frontend auto: {} ({})\n", choice->name, choice->reason);
    else out += fmt::format("--frontend auto: none: {}\n", choice.error().message);
    return out;
}

}  // namespace erostream
