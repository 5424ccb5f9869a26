#include "mount_state.h"

#include <nlohmann/json.hpp>

namespace erostream {

std::string serialize_mount_state(const std::vector<MountRecord>& mounts) {
    nlohmann::ordered_json j;
    j["version"] = 1;
    j["mounts"] = nlohmann::ordered_json::array();
    for (const auto& m : mounts) {
        nlohmann::ordered_json e;
        e["mountpoint"] = m.mountpoint;
        e["ref"] = m.ref;
        e["source"] = m.source;
        e["artifact"] = nlohmann::ordered_json::parse(serialize_descriptor(m.artifact));
        e["subject"] = m.subject;
        e["frontend"] = m.frontend;
        e["prefetch"] = m.prefetch;
        j["mounts"].push_back(std::move(e));
    }
    return j.dump(1) + "\n";
}

Result<std::vector<MountRecord>> parse_mount_state(std::string_view text) {
    try {
        auto j = nlohmann::json::parse(text);
        if (!j.is_object() || j.value("version", 0) != 1) return fail("mount state: not version 1");
        std::vector<MountRecord> out;
        const auto& arr = j.at("mounts");
        if (!arr.is_array()) return fail("mount state: 'mounts' is not an array");
        for (size_t i = 0; i < arr.size(); ++i) {
            const auto& e = arr[i];
            MountRecord m;
            m.mountpoint = e.at("mountpoint").get<std::string>();
            m.ref = e.at("ref").get<std::string>();
            m.source = e.at("source").get<std::string>();
            auto d = parse_descriptor(e.at("artifact").dump());
            if (!d) return std::unexpected(d.error().prefix(fmt::format("mount state: mounts[{}].artifact", i)));
            m.artifact = std::move(*d);
            m.subject = e.value("subject", "");
            m.frontend = e.value("frontend", "fanotify");
            m.prefetch = e.value("prefetch", "all");
            if (m.mountpoint.empty() || m.mountpoint.front() != '/')
                return failf("mount state: mounts[{}]: mountpoint '{}' is not absolute", i, m.mountpoint);
            out.push_back(std::move(m));
        }
        return out;
    } catch (const nlohmann::json::exception& e) {
        return failf("mount state: {}", e.what());
    }
}

}  // namespace erostream
