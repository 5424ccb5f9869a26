#include "overlay.h"

#include <deque>

#include "erofs_format.h"

namespace erostream {

namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr std::string_view kAufsMetaPrefix = ".wh..wh.";
constexpr int kMaxSymlinkFollows = 40;  // the kernel's MAXSYMLINKS

FileType file_type_of(TarEntryType t) {
    switch (t) {
    case TarEntryType::Directory: return FileType::Directory;
    case TarEntryType::Symlink: return FileType::Symlink;
    case TarEntryType::CharDevice: return FileType::CharDevice;
    case TarEntryType::BlockDevice: return FileType::BlockDevice;
    case TarEntryType::Fifo: return FileType::Fifo;
    case TarEntryType::Regular:
    case TarEntryType::Hardlink: break;
    }
    return FileType::Regular;
}

std::shared_ptr<Inode> inode_from_entry(const TarEntry& e, int layer) {
    auto ino = std::make_shared<Inode>();
    ino->type = file_type_of(e.type);
    ino->mode = e.mode & 07777;
    ino->uid = e.uid;
    ino->gid = e.gid;
    ino->mtime = e.mtime;
    ino->mtime_nsec = e.mtime_nsec;
    // trusted.overlay.* is overlayfs' private metadata. The merged tree has applied every
    // whiteout already, and an overlayfs mounted over this image would obey such xattrs
    // (redirects, opaque dirs, metacopy), so they are dropped, as umoci does.
    for (const auto& x : e.xattrs)
        if (!x.name.starts_with("trusted.overlay.")) ino->xattrs.push_back(x);
    ino->layer = layer;
    switch (ino->type) {
    case FileType::Regular: ino->size = e.size; break;
    case FileType::Symlink:
        ino->symlink_target = e.linkname;
        ino->size = e.linkname.size();
        break;
    case FileType::CharDevice:
    case FileType::BlockDevice:
        ino->rdev_major = e.devmajor;
        ino->rdev_minor = e.devminor;
        break;
    default: break;
    }
    return ino;
}

// Removes everything below `dir` that lower layers (< layer) put there; entries this layer wrote
// stay, and so do lower directories on the way to them. Returns whether anything stayed.
bool prune_lower(Node& dir, int layer) {
    bool kept_any = false;
    for (auto it = dir.children.begin(); it != dir.children.end();) {
        Node& child = *it->second;
        bool keep = child.layer >= layer;
        if (child.is_dir()) keep = prune_lower(child, layer) || keep;
        if (keep) {
            kept_any = true;
            ++it;
        } else {
            it = dir.children.erase(it);
        }
    }
    return kept_any;
}

std::vector<std::string_view> split_loose(std::string_view s) {
    std::vector<std::string_view> out;
    size_t i = 0;
    while (i <= s.size()) {
        size_t j = s.find('/', i);
        if (j == std::string_view::npos) j = s.size();
        if (j > i) out.push_back(s.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

}  // namespace

Result<std::vector<std::string>> split_tar_path(std::string_view raw) {
    if (raw.empty()) return fail("empty path");
    if (raw.front() == '/') return failf("absolute path '{}' is not allowed in a layer", raw);
    if (raw.find('\0') != std::string_view::npos) return fail("path contains a NUL byte");
    std::vector<std::string> comps;
    for (auto c : split_loose(raw)) {
        if (c == ".") continue;
        if (c == "..") return failf("path '{}' has a '..' component", raw);
        if (c.size() > EROFS_NAME_LEN)
            return failf("name '{}...' is {} bytes long (at most {})", c.substr(0, 32), c.size(),
                         EROFS_NAME_LEN);
        comps.emplace_back(c);
    }
    return comps;
}

OverlayTree::OverlayTree() : root_(make_implicit_dir(-1)) {}

// Walks the first `count` components from the root, following symlinks as a chroot would
// (absolute targets restart at the root, ".." stops at the root). Missing directories are
// created when `create` is set; otherwise the walk fails with ENOENT.
Result<Node*> OverlayTree::resolve_dir(const std::vector<std::string>& comps, size_t count,
                                       int layer, bool create) {
    std::vector<Node*> stack{root_.get()};
    std::deque<std::string> pending(comps.begin(), comps.begin() + count);
    int follows = 0;
    std::string walked;
    while (!pending.empty()) {
        std::string c = std::move(pending.front());
        pending.pop_front();
        if (c.empty() || c == ".") continue;
        if (c == "..") {
            if (stack.size() > 1) stack.pop_back();
            continue;
        }
        Node* cur = stack.back();
        walked += "/" + c;
        auto it = cur->children.find(c);
        if (it == cur->children.end()) {
            if (!create) return fail_errno("parent directory " + walked + " does not exist", ENOENT);
            it = cur->children.emplace(c, make_implicit_dir(layer)).first;
        }
        Node* n = it->second.get();
        if (n->inode->type == FileType::Symlink) {
            if (++follows > kMaxSymlinkFollows)
                return fail_errno("too many symlinks while resolving " + walked, ELOOP);
            const std::string& target = n->inode->symlink_target;
            if (!target.empty() && target.front() == '/') stack.resize(1);
            auto parts = split_loose(target);
            for (auto p = parts.rbegin(); p != parts.rend(); ++p) pending.emplace_front(*p);
            continue;
        }
        if (!n->is_dir())
            return failf("parent {} is a {}, not a directory", walked, file_type_name(n->inode->type));
        stack.push_back(n);
    }
    return stack.back();
}

Result<Node*> OverlayTree::lookup_nofollow_last(const std::vector<std::string>& comps) {
    if (comps.empty()) return root_.get();
    Node* dir = EROS_TRY(resolve_dir(comps, comps.size() - 1, -1, false));
    auto it = dir->children.find(comps.back());
    if (it == dir->children.end()) return fail_errno("no such entry", ENOENT);
    return it->second.get();
}

Result<std::shared_ptr<Inode>> OverlayTree::apply(const TarEntry& e, int layer) {
    auto comps = split_tar_path(e.path);
    if (!comps) return std::unexpected(std::move(comps.error()));

    if (comps->empty()) {  // the root itself: only its metadata can change
        if (e.type != TarEntryType::Directory)
            return failf("the root can only be a directory, not a {}",
                         file_type_name(file_type_of(e.type)));
        root_->inode = inode_from_entry(e, layer);
        return nullptr;
    }

    const std::string& name = comps->back();
    if (std::string_view(name).starts_with(kWhiteoutPrefix)) {
        auto parent = resolve_dir(*comps, comps->size() - 1, layer, false);
        if (!parent) {
            if (parent.error().err == ENOENT) return nullptr;  // nothing there to hide
            return std::unexpected(std::move(parent.error()));
        }
        if (name == kOpaqueMarker) {
            prune_lower(**parent, layer);
        } else if (!std::string_view(name).starts_with(kAufsMetaPrefix)) {
            auto& children = (*parent)->children;
            auto it = children.find(name.substr(kWhiteoutPrefix.size()));
            if (it != children.end()) {
                // Whiteouts hide lower layers only: an entry this layer wrote stays, with
                // whatever this layer put below it.
                if (it->second->layer < layer) children.erase(it);
                else if (it->second->is_dir()) prune_lower(*it->second, layer);
            }
        }
        return nullptr;
    }

    Node* parent = EROS_TRY(resolve_dir(*comps, comps->size() - 1, layer, true));
    auto& slot = parent->children[name];

    if (e.type == TarEntryType::Hardlink) {
        auto target_comps = split_tar_path(e.linkname);
        if (!target_comps) return std::unexpected(target_comps.error().prefix("hardlink target"));
        auto target = lookup_nofollow_last(*target_comps);
        if (!target) {
            if (!slot) parent->children.erase(name);
            return failf("hardlink to '{}', which does not exist", e.linkname);
        }
        if ((*target)->is_dir()) {
            if (!slot) parent->children.erase(name);
            return failf("hardlink to '{}', which is a directory", e.linkname);
        }
        auto shared = (*target)->inode;
        slot = std::make_unique<Node>();
        slot->inode = std::move(shared);
        slot->layer = layer;
        return nullptr;
    }

    auto inode = inode_from_entry(e, layer);
    if (slot && slot->is_dir() && inode->type == FileType::Directory) {
        slot->inode = std::move(inode);  // directories merge: new metadata, children stay
        slot->layer = layer;
        return nullptr;
    }
    slot = std::make_unique<Node>();
    slot->inode = inode;
    slot->layer = layer;
    if (inode->type == FileType::Regular) return inode;
    return nullptr;
}

}  // namespace erostream
