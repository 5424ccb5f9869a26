"""The comparator is the judge of every conversion test, so it is tested itself: an exact copy
compares equal, and each kind of change made to a copy is reported, naming the entry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import erostream_testlib as lib

MT = 1_600_000_000_123_456_789  # ns


def _make_tree(root: Path) -> None:
    root.mkdir()
    (root / "d").mkdir(mode=0o755)
    (root / "d" / "sub").mkdir()
    (root / "d" / "f").write_bytes(b"hello world\n")
    (root / "d" / "g").write_bytes(b"x" * 5000)
    os.link(root / "d" / "g", root / "d" / "g2")
    (root / "h").write_bytes(b"h")
    os.symlink("d/f", root / "s")
    os.mknod(root / "c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(root / "b", stat.S_IFBLK | 0o600, os.makedev(8, 1))
    os.mkfifo(root / "p")
    os.chown(root / "h", 70000, 80000)
    os.chmod(root / "h", 0o4755)
    os.setxattr(root / "d" / "f", "user.k", b"v1")
    os.setxattr(root / "d", "trusted.t", b"\x00\x01")
    os.setxattr(root / "s", "trusted.sym", b"1", follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in dirnames + filenames + ["."]:
            os.utime(os.path.join(dirpath, n), ns=(MT, MT), follow_symlinks=False)


@pytest.fixture
def trees(work: Path):
    a, b = work / "a", work / "b"
    _make_tree(a)
    lib.run(["cp", "-a", "--preserve=all", a, b])
    return a, b


def _restamp(p: Path, ns: int = MT) -> None:
    os.utime(p, ns=(ns, ns), follow_symlinks=False)


def test_identical_copy_has_no_differences(trees):
    a, b = trees
    assert lib.compare_trees(a, b) == []


def _only(diffs: list[str], path: str, *words: str) -> None:
    assert diffs, "the change was not reported"
    hits = [d for d in diffs if d.startswith(path + ":") and all(w in d for w in words)]
    assert hits, f"no difference for {path} mentioning {words}: {diffs}"


@pytest.mark.parametrize(
    "change, path, words",
    [
        (lambda b: os.chmod(b / "d/f", 0o600), "/d/f", ("mode 0600", "reference 0644")),
        (lambda b: os.chmod(b / "h", 0o755), "/h", ("mode 0755", "reference 4755")),
        (lambda b: os.chmod(b / "d", 0o1755), "/d", ("mode 1755",)),
        (lambda b: os.chmod(b / "d", 0o2755), "/d", ("mode 2755",)),
        (lambda b: os.chown(b / "h", 70001, 80000), "/h", ("uid 70001", "reference 70000")),
        (lambda b: os.chown(b / "h", 70000, 80001), "/h", ("gid 80001", "reference 80000")),
        (lambda b: _restamp(b / "d/f", MT + 1), "/d/f", ("mtime 1600000000.123456790",)),
        (lambda b: _restamp(b / "d", MT - 10**9), "/d", ("mtime 1599999999.123456789",)),
        (lambda b: _restamp(b / "s", MT + 1000), "/s", ("mtime",)),
        (lambda b: os.setxattr(b / "d/f", "user.k", b"v2"), "/d/f", ("xattr user.k", "v2")),
        (lambda b: os.removexattr(b / "d/f", "user.k"), "/d/f", ("xattr user.k missing",)),
        (lambda b: os.setxattr(b / "h", "user.new", b"n"), "/h", ("extra xattr user.new",)),
        (lambda b: os.setxattr(b / "d", "trusted.t", b"\x00\x02"), "/d", ("xattr trusted.t",)),
        (lambda b: os.removexattr(b / "s", "trusted.sym", follow_symlinks=False), "/s", ("xattr trusted.sym missing",)),
        (lambda b: os.setxattr(b / "h", "security.capability",
                               bytes.fromhex("0100000200200000000000000000000000000000")), "/h",
         ("extra xattr security.capability",)),
    ],
    ids=["mode", "setuid", "sticky", "setgid", "uid", "gid", "mtime-ns", "dir-mtime", "symlink-mtime",
         "xattr-value", "xattr-missing", "xattr-extra", "dir-xattr", "symlink-xattr", "capability"],
)
def test_metadata_change_is_reported(trees, change, path, words):
    a, b = trees
    change(b)
    _only(lib.compare_trees(a, b), path, *words)


def _rewrite(p: Path, data: bytes) -> None:
    st = p.lstat()
    p.write_bytes(data)
    _restamp(p, st.st_mtime_ns)


def test_content_change_same_size_is_reported(trees):
    a, b = trees
    _rewrite(b / "d/f", b"hello World\n")
    diffs = lib.compare_trees(a, b)
    _only(diffs, "/d/f", "content sha256")
    assert not [d for d in diffs if "size" in d], diffs


def test_size_change_is_reported(trees):
    a, b = trees
    _rewrite(b / "d/f", b"hello world\n\n")
    _only(lib.compare_trees(a, b), "/d/f", "size 13", "reference 12")


def test_hardlink_content_change_reports_both_names(trees):
    a, b = trees
    _rewrite(b / "d/g", b"y" * 5000)
    diffs = lib.compare_trees(a, b)
    _only(diffs, "/d/g", "content")
    _only(diffs, "/d/g2", "content")


def test_broken_hardlink_is_reported(trees):
    a, b = trees
    g2 = b / "d/g2"
    st = g2.lstat()
    data = g2.read_bytes()
    g2.unlink()
    g2.write_bytes(data)
    os.chmod(g2, stat.S_IMODE(st.st_mode))
    _restamp(g2, st.st_mtime_ns)
    _restamp(b / "d")
    diffs = lib.compare_trees(a, b)
    _only(diffs, "/d/g2", "hardlinked with []", "reference ['/d/g']")
    _only(diffs, "/d/g", "hardlinked with []", "reference ['/d/g2']")


def test_extra_hardlink_is_reported(trees):
    a, b = trees
    h = b / "d/f"
    (b / "d/f").unlink()
    os.link(b / "h", h)
    _restamp(b / "d")
    diffs = lib.compare_trees(a, b)
    _only(diffs, "/d/f", "hardlinked with ['/h']")


def test_symlink_target_is_reported(trees):
    a, b = trees
    (b / "s").unlink()
    os.symlink("d/g", b / "s")
    os.setxattr(b / "s", "trusted.sym", b"1", follow_symlinks=False)
    _restamp(b / "s")
    _restamp(b)
    _only(lib.compare_trees(a, b), "/s", "symlink target 'd/g'", "reference 'd/f'")


@pytest.mark.parametrize("name, new_dev, words", [
    ("c", os.makedev(1, 5), ("device 1:5", "reference 1:3")),
    ("b", os.makedev(9, 1), ("device 9:1", "reference 8:1")),
])
def test_device_numbers_are_reported(trees, name, new_dev, words):
    a, b = trees
    p = b / name
    st = p.lstat()
    p.unlink()
    os.mknod(p, st.st_mode, new_dev)
    _restamp(p)
    _only(lib.compare_trees(a, b), "/" + name, *words)


def test_type_change_is_reported(trees):
    a, b = trees
    (b / "p").unlink()
    (b / "p").write_bytes(b"")
    os.chmod(b / "p", 0o644)
    _restamp(b / "p")
    _only(lib.compare_trees(a, b), "/p", "type file", "reference fifo")


def test_missing_and_extra_entries_are_reported(trees):
    a, b = trees
    (b / "h").unlink()
    (b / "d/new").write_bytes(b"")
    _restamp(b / "d/new")
    diffs = lib.compare_trees(a, b)
    _only(diffs, "/h", "missing")
    _only(diffs, "/d/new", "extra file")


def test_missing_subtree_is_reported_entry_by_entry(trees):
    a, b = trees
    (b / "d/sub").rmdir()
    diffs = lib.compare_trees(a, b)
    _only(diffs, "/d/sub", "missing")
    _only(diffs, "/d", "link count 2", "reference 3")


def test_root_mtime_and_skip_mtime_are_the_only_exceptions(trees):
    a, b = trees
    _restamp(b, MT + 5)
    assert lib.compare_trees(a, b) == []
    _restamp(b / "d", MT + 5)
    assert lib.compare_trees(a, b, skip_mtime={"d"}) == []
    os.chmod(b / "d", 0o700)
    _only(lib.compare_trees(a, b, skip_mtime={"d"}), "/d", "mode 0700")
    os.chmod(b, 0o700)
    _only(lib.compare_trees(a, b, skip_mtime={"d"}), "/", "mode 0700")


def test_ignore_xattrs_ignores_only_the_named_ones(trees):
    a, b = trees
    os.setxattr(b / "h", "security.selinux", b"ctx\0")
    os.setxattr(b / "h", "user.other", b"1")
    diffs = lib.compare_trees(a, b, ignore_xattrs={"security.selinux"})
    assert diffs == ["/h: extra xattr user.other=b'1'"], diffs


def test_implicit_dirs_follow_overlay_rules(work):
    """implicit_dirs decides which mtimes are not compared; it must not over-report."""
    l1 = lib.Layer()
    l1.dir("etc")
    l1.file("etc/a", b"a")          # etc explicit: reliable
    l1.file("usr/lib/x", b"x")      # usr, usr/lib implicit; the root gets an implicit child
    l1.dir("var")
    l1.file("var/cache/y", b"y")    # var/cache implicit made after var's header: var unreliable
    l1.dir("opt")
    l1.dir("opt/o")
    l2 = lib.Layer()
    l2.dir("var")                   # header again: var reliable again
    l2.whiteout("usr")              # gone with its subtree
    l2.file("opt/o/q/z", b"z")      # opt/o/q implicit, opt/o unreliable
    tars = []
    for i, layer in enumerate((l1, l2)):
        p = work / f"l{i}.tar"
        lib.write_tar_file(layer, p)
        tars.append(p)
    assert lib.implicit_dirs(tars[:1]) == {"", "usr", "usr/lib", "var", "var/cache"}
    assert lib.implicit_dirs(tars) == {"", "var/cache", "opt/o", "opt/o/q"}
