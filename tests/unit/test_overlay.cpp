// The overlay rules of the OCI image spec, applied entry by entry.
#include <doctest.h>

#include "overlay.h"

using namespace erostream;

namespace {

TarEntry entry(std::string path, TarEntryType type = TarEntryType::Regular, std::string link = "") {
    TarEntry e;
    e.path = std::move(path);
    e.type = type;
    e.mode = type == TarEntryType::Directory ? 0755 : 0644;
    e.linkname = std::move(link);
    return e;
}
TarEntry dir(std::string p) { return entry(std::move(p), TarEntryType::Directory); }

const Node* find(const OverlayTree& t, std::initializer_list<std::string> comps) {
    const Node* n = &t.root();
    for (const auto& c : comps) {
        auto it = n->children.find(c);
        if (it == n->children.end()) return nullptr;
        n = it->second.get();
    }
    return n;
}

void apply(OverlayTree& t, const TarEntry& e, int layer) {
    auto r = t.apply(e, layer);
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().what()));
}

}  // namespace

TEST_CASE("paths are split and checked") {
    CHECK(*split_tar_path("./a//b/") == std::vector<std::string>{"a", "b"});
    CHECK(split_tar_path("./")->empty());
    CHECK(split_tar_path(".")->empty());
    CHECK(!split_tar_path("/etc/passwd"));
    CHECK(!split_tar_path("a/../../b"));
    CHECK(!split_tar_path(""));
    CHECK(!split_tar_path(std::string(256, 'x')));
    CHECK(split_tar_path(std::string(255, 'x')));
}

TEST_CASE("whiteouts hide lower entries only") {
    OverlayTree t;
    apply(t, dir("etc"), 0);
    apply(t, entry("etc/a"), 0);
    apply(t, entry("etc/b"), 0);
    apply(t, entry("etc/.wh.a"), 1);
    CHECK(find(t, {"etc", "a"}) == nullptr);
    CHECK(find(t, {"etc", "b"}) != nullptr);
    CHECK(find(t, {"etc", ".wh.a"}) == nullptr);
    // deleted and re-added later
    apply(t, entry("etc/a"), 2);
    CHECK(find(t, {"etc", "a"}) != nullptr);
    // a whiteout of something missing is harmless, also under a missing directory
    apply(t, entry("etc/.wh.zzz"), 3);
    apply(t, entry("nope/.wh.x"), 3);
    CHECK(find(t, {"nope"}) == nullptr);
}

TEST_CASE("opaque directories hide all lower content below them, whatever the entry order") {
    OverlayTree t;
    apply(t, dir("d"), 0);
    apply(t, entry("d/old"), 0);
    apply(t, dir("d/sub"), 0);
    apply(t, entry("d/sub/deep"), 0);
    // layer 1 re-creates d/sub/new before its opaque marker comes
    apply(t, entry("d/sub/new"), 1);
    apply(t, entry("d/.wh..wh..opq"), 1);
    apply(t, entry("d/late"), 1);
    CHECK(find(t, {"d", "old"}) == nullptr);
    CHECK(find(t, {"d", "sub", "deep"}) == nullptr);
    CHECK(find(t, {"d", "sub", "new"}) != nullptr);
    CHECK(find(t, {"d", "late"}) != nullptr);
}

TEST_CASE("type changes replace, directories merge") {
    OverlayTree t;
    apply(t, dir("x"), 0);
    apply(t, entry("x/child"), 0);
    apply(t, entry("x"), 1);  // dir -> file drops the subtree
    REQUIRE(find(t, {"x"}));
    CHECK(find(t, {"x"})->inode->type == FileType::Regular);
    CHECK(find(t, {"x"})->children.empty());
    apply(t, dir("x"), 2);  // file -> dir
    CHECK(find(t, {"x"})->is_dir());
    apply(t, entry("x/c2"), 2);
    auto d = dir("x");
    d.mode = 0700;
    apply(t, d, 3);  // dir over dir: metadata changes, children stay
    CHECK(find(t, {"x"})->inode->mode == 0700);
    CHECK(find(t, {"x", "c2"}) != nullptr);
}

TEST_CASE("the same path twice in one layer: the later wins") {
    OverlayTree t;
    auto a = entry("f");
    a.mode = 0600;
    apply(t, a, 0);
    auto b = entry("f");
    b.mode = 0640;
    apply(t, b, 0);
    CHECK(find(t, {"f"})->inode->mode == 0640);
}

TEST_CASE("hardlinks share an inode until a later layer replaces one name") {
    OverlayTree t;
    apply(t, entry("a"), 0);
    apply(t, entry("b", TarEntryType::Hardlink, "a"), 0);
    CHECK(find(t, {"a"})->inode == find(t, {"b"})->inode);
    apply(t, entry("a"), 1);
    CHECK(find(t, {"a"})->inode != find(t, {"b"})->inode);
    CHECK(!t.apply(entry("c", TarEntryType::Hardlink, "missing"), 1));
    CHECK(find(t, {"c"}) == nullptr);
    CHECK(!t.apply(entry("d", TarEntryType::Hardlink, "../a"), 1));
}

TEST_CASE("parent symlinks resolve inside the root") {
    OverlayTree t;
    apply(t, dir("usr"), 0);
    apply(t, dir("usr/lib"), 0);
    apply(t, entry("lib", TarEntryType::Symlink, "usr/lib"), 0);
    apply(t, entry("lib/libc.so"), 1);
    CHECK(find(t, {"usr", "lib", "libc.so"}) != nullptr);
    apply(t, entry("evil", TarEntryType::Symlink, "/../../../tmp"), 0);
    apply(t, entry("evil/x"), 1);  // clamps at the root: lands in /tmp of the image
    CHECK(find(t, {"tmp", "x"}) != nullptr);
    apply(t, entry("loop", TarEntryType::Symlink, "loop"), 0);
    CHECK(!t.apply(entry("loop/x"), 1));
    apply(t, entry("file"), 0);
    CHECK(!t.apply(entry("file/x"), 1));
}

TEST_CASE("entries that would escape or break the tree are refused") {
    OverlayTree t;
    CHECK(!t.apply(entry("/abs"), 0));
    CHECK(!t.apply(entry("a/../../b"), 0));
    CHECK(!t.apply(entry("./"), 0));  // the root as a regular file
    apply(t, dir("./"), 0);
}

TEST_CASE("regular files hand their inode back for content") {
    OverlayTree t;
    auto e = entry("big");
    e.size = 10;
    auto r = t.apply(e, 0);
    REQUIRE(r);
    REQUIRE(*r);
    CHECK((*r)->size == 10);
    CHECK(*t.apply(dir("d"), 0) == nullptr);
}
