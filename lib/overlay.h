// Merges layer tar entries into one tree with the OCI image-spec's overlay rules: `.wh.NAME`
// whiteouts and `.wh..wh..opq` opaque directories hide what lower layers put there, a later
// entry replaces an earlier one at the same path (directories merge), parent components that are
// symlinks are resolved inside the root (as umoci and containerd do), and nothing may escape it.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fs_tree.h"
#include "result.h"
#include "tar_reader.h"

namespace erostream {

// Splits a tar path into components: "./a//b/" -> {"a","b"}; "." and "./" -> {} (the root).
// Rejects absolute paths, ".." components and names over 255 bytes. Pure, for fuzzing.
Result<std::vector<std::string>> split_tar_path(std::string_view raw);

class OverlayTree {
public:
    OverlayTree();

    Node& root() { return *root_; }
    const Node& root() const { return *root_; }

    // Applies one entry of layer `layer` (0-based, bottom first). Returns the inode that now holds
    // the entry's content for a regular file (the caller fills its data), nullptr otherwise.
    // Errors do not name the layer; the caller adds it.
    Result<std::shared_ptr<Inode>> apply(const TarEntry& e, int layer);

private:
    Result<Node*> resolve_dir(const std::vector<std::string>& comps, size_t count, int layer,
                              bool create);
    Result<Node*> lookup_nofollow_last(const std::vector<std::string>& comps);

    std::unique_ptr<Node> root_;
};

}  // namespace erostream
