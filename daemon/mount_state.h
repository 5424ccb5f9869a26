// The daemon's record of its mounts, <cache>/state/mounts.json, rewritten atomically before each
// mount(2) and after each umount, so that a restarted daemon knows what the kernel still has
// mounted and what each mount needs. Pure serialization, for tests and fuzzing.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "oci_types.h"
#include "result.h"

namespace erostream {

struct MountRecord {
    std::string mountpoint;
    std::string ref;       // as the client gave it
    std::string source;    // "oci:DIR" / "docker://REG/REPO": where the blobs come from
    Descriptor artifact;   // the artifact manifest
    std::string subject;   // the image manifest digest the artifact was made from
    std::string frontend;  // "fanotify"
    std::string prefetch;  // "all" / "none"
    bool operator==(const MountRecord&) const = default;
};

std::string serialize_mount_state(const std::vector<MountRecord>& mounts);
Result<std::vector<MountRecord>> parse_mount_state(std::string_view json);

}  // namespace erostream
