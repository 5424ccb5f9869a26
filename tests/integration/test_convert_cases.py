"""Every case of the converter: each test builds its own image, converts it with erostream-mkfs,
runs `check`, materializes the artifact, has fsck.erofs read it, mounts it with this machine's
kernel and compares the mounted tree entry by entry with `umoci unpack` of the same image."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest

import erostream_testlib as lib

pytestmark = pytest.mark.kernel

MiB = 1 << 20
GiB = 1 << 30


def roundtrip(mkfs, work: Path, layers, *, compression="gzip", media="oci", opts=(), **kw) -> lib.RoundTrip:
    img = lib.build_image(work / "src", "img", layers, workdir=work, compression=compression, media=media)
    return lib.convert_mount_compare(mkfs, img, work, convert_opts=opts, **kw)


def prng_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def basic_layers() -> list[lib.Layer]:
    l1 = lib.Layer()
    l1.dir("etc")
    l1.file("etc/hostname", b"erostream\n")
    l1.dir("usr")
    l1.dir("usr/bin")
    l1.file("usr/bin/tool", prng_bytes(1, 300_000), mode=0o755)
    l1.symlink("usr/bin/alias", "tool")
    l1.file("usr/gone", b"removed by layer 2")
    l2 = lib.Layer()
    l2.whiteout("usr/gone")
    l2.file("etc/hostname", b"replaced\n")
    l2.file("usr/bin/other", prng_bytes(2, 70_000), mode=0o700)
    return [l1, l2]


# --------------------------------------------------------------------------------------------
# Compression and media types
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("media", ["oci", "docker"])
@pytest.mark.parametrize("comp", ["tar", "gzip", "zstd"])
def test_compression_and_media_type(mkfs, work, media, comp):
    roundtrip(mkfs, work, basic_layers(), compression=comp, media=media)


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_mixed_compression_across_layers(mkfs, work, media):
    layers = basic_layers()
    l3 = lib.Layer()
    l3.file("usr/bin/third", prng_bytes(3, 10_000))
    roundtrip(mkfs, work, layers + [l3], compression=["zstd", "tar", "gzip"], media=media)


# --------------------------------------------------------------------------------------------
# Tar header formats
# --------------------------------------------------------------------------------------------


def test_ustar_headers_with_prefix_field(mkfs, work):
    l = lib.Layer(tarfile.USTAR_FORMAT)
    long_dir = "p" * 99
    l.dir(long_dir)
    l.dir(long_dir + "/" + "q" * 50)
    l.file(long_dir + "/" + "q" * 50 + "/" + "f" * 90, b"split between prefix and name")
    l.file("plain", b"plain", mode=0o640, uid=1000, gid=1000)
    l.hardlink("plain-link", "plain")
    l.symlink("sym", "plain")
    l.chardev("tty", 5, 0, mode=0o620)
    roundtrip(mkfs, work, [l])


def test_gnu_long_names_and_link_names(mkfs, work):
    l = lib.Layer(tarfile.GNU_FORMAT)
    d = "dir-" + "d" * 120
    l.dir(d)
    long_file = d + "/" + "file-" + "f" * 200
    l.file(long_file, b"GNU ././@LongLink 'L' record")
    l.symlink(d + "/sym-" + "s" * 110, "target-" + "t" * 300)   # 'K' record for the target
    l.hardlink(d + "/hard-" + "h" * 110, long_file)            # 'L' and 'K' records
    l.file("short", b"short")
    roundtrip(mkfs, work, [l])


def test_pax_records_override_ustar_fields(mkfs, work):
    """Each pax record carries a value the ustar field does not: a converter that ignores the
    record produces a visibly wrong entry."""
    l = lib.Layer(tarfile.PAX_FORMAT)
    l.dir("pax")
    ti = l.file("pax/size", prng_bytes(4, 12_345))
    ti.pax_headers["size"] = "12345"
    ti.ustar_override = {"size": 0}
    ti = l.file("pax/ids", b"ids")
    ti.pax_headers.update({"uid": "70000", "gid": "70001"})
    ti.ustar_override = {"uid": 0, "gid": 0}
    ti = l.file("pax/mtime", b"mtime", mtime="1600000000.987654321")
    ti.ustar_override = {"mtime": 0}
    ti = l.file("pax/" + "long-path-" + "x" * 200, b"path record")
    ti = l.file("pax/real-name", b"path record overriding a short name")
    ti.pax_headers["path"] = "pax/real-name"
    ti.ustar_override = {"name": "pax/wrong-name"}
    ti = l.symlink("pax/sym", "real-target")
    ti.pax_headers["linkpath"] = "real-target"
    ti.ustar_override = {"linkname": "wrong-target"}
    l.symlink("pax/long-sym", "/" + "/".join(["component"] * 40))
    l.hardlink("pax/hard-to-long", "pax/long-path-" + "x" * 200)
    l.file("pax/huge-ids", b"h", uid=5_000_000, gid=2**32 - 2)
    l.file("pax/utf8-\u00e9\u4e2d\U0001F600", b"non-ascii name")
    roundtrip(mkfs, work, [l])


def test_mtime_fractions(mkfs, work):
    l = lib.Layer(tarfile.PAX_FORMAT)
    l.dir("t", mtime="1600000000.000000001")
    for i, frac in enumerate(["0", "1", "5", "123456789", "999999999", "000000001", "25"]):
        l.file(f"t/f{i}", b"x", mtime=f"1650000000.{frac}")
    l.symlink("t/sym", "f0", mtime="1650000000.75")
    l.fifo("t/fifo", mtime="1650000000.5")
    l.file("t/no-fraction", b"x", mtime="1650000000")
    roundtrip(mkfs, work, [l])


@pytest.mark.parametrize("cut", ["no-zero-blocks", "no-final-padding"])
def test_tar_ending_without_end_of_archive_blocks(mkfs, work, cut):
    """Go's archive/tar (umoci, containerd) takes the end of the stream at a header boundary, or
    inside the last entry's padding, as the end of the archive; Debian's umoci 0.4.7 `insert`
    writes such layers (see test_harness_selfcheck.test_umoci_insert)."""
    l1 = lib.Layer()
    l1.dir("t")
    l1.file("t/first", b"first")
    l1.file("t/last", b"last entry, 27 bytes long.\n")
    raw = l1.to_bytes()
    _, data = lib.tar_member_offsets(raw)["t/last"]
    end = data + 27 if cut == "no-final-padding" else data + 512
    l2 = lib.Layer()
    l2.file("t/upper", b"upper")
    roundtrip(mkfs, work, [raw[:end], l2])


def test_pax_global_header_is_not_an_entry(mkfs, work):
    """A pax global header ('g', as `git archive` writes) carries no file. umoci 0.4.7 chokes on
    it (Go returns it as an entry), so the reference is the same layer without it."""
    def layer(global_pax):
        l = lib.Layer(tarfile.PAX_FORMAT, global_pax=global_pax)
        l.dir("src")
        l.file("src/main.c", b"int main(void) { return 0; }\n")
        return l
    img = lib.build_image(work / "src", "img", [layer({"comment": "a" * 40})], workdir=work)
    ref = lib.build_image(work / "ref", "ref", [layer(None)], workdir=work / "refw")
    assert img.layers[0].diff_id != ref.layers[0].diff_id
    lib.convert_mount_compare(mkfs, img, work, reference_image=ref)


def test_base256_numbers(mkfs, work):
    l = lib.Layer(tarfile.GNU_FORMAT)
    l.dir("b256", uid=2_097_152, gid=3_000_000)            # first values past 7 octal digits
    l.file("b256/ids", b"ids", uid=4_000_000_000, gid=4_000_000_001)
    l.file("b256/mtime", b"year 2255", mtime=9_000_000_000)
    l.symlink("b256/sym", "ids", uid=16_777_216, gid=16_777_217)
    roundtrip(mkfs, work, [l])


# --------------------------------------------------------------------------------------------
# Entry types, modes, owners, xattrs
# --------------------------------------------------------------------------------------------


def test_all_entry_types(mkfs, work):
    l = lib.Layer()
    l.dir("d")
    l.dir("d/empty-dir")
    l.dir("d/nested")
    l.dir("d/nested/deeper")
    for size in (0, 1, 100, 4095, 4096, 4097, 65536, MiB + 1):
        l.file(f"d/size-{size}", prng_bytes(size, size))
    l.symlink("d/rel", "size-1")
    l.symlink("d/abs", "/d/size-1")
    l.symlink("d/dangling", "does/not/exist")
    l.symlink("d/to-dir", "nested")
    l.symlink("d/dotdot", "../d/size-100")
    l.symlink("d/max", "m" * 4095)
    l.hardlink("d/nested/h1", "d/size-4097")
    l.hardlink("d/nested/deeper/h2", "d/size-4097")
    l.hardlink("d/h-empty", "d/size-0")
    l.chardev("d/null", 1, 3, mode=0o666)
    l.chardev("d/big-numbers", 4095, 1_048_575, mode=0o600)
    l.blockdev("d/loop7", 7, 7)
    l.blockdev("d/nvme", 259, 1)
    l.fifo("d/fifo", mode=0o620)
    roundtrip(mkfs, work, [l])


def test_special_mode_bits(mkfs, work):
    l = lib.Layer()
    l.dir("m")
    l.file("m/setuid", b"u", mode=0o4755)
    l.file("m/setgid", b"g", mode=0o2711, gid=50)
    l.file("m/sticky-file", b"t", mode=0o1644)
    l.file("m/all", b"a", mode=0o7777)
    l.file("m/none", b"n", mode=0o000)
    l.dir("m/tmp", mode=0o1777)
    l.dir("m/group-dir", mode=0o2775, gid=100)
    l.dir("m/all-dir", mode=0o7777)
    l.dir("m/locked", mode=0o000)
    l.file("m/locked-file", b"x", mode=0o400)
    l.fifo("m/setgid-fifo", mode=0o2660)
    roundtrip(mkfs, work, [l])


def test_large_uids_and_gids(mkfs, work):
    l = lib.Layer()
    l.dir("ids", uid=65535, gid=65535)
    l.file("ids/65536", b"a", uid=65536, gid=65536)
    l.file("ids/70000", b"b", uid=70000, gid=80000)
    l.file("ids/2g", b"c", uid=2**31 - 1, gid=2**31)
    l.file("ids/max", b"d", uid=2**32 - 2, gid=2**32 - 2)
    l.dir("ids/dir", uid=100000, gid=100000)
    l.symlink("ids/sym", "70000", uid=123456, gid=654321)
    l.chardev("ids/dev", 1, 5, uid=99999, gid=88888)
    roundtrip(mkfs, work, [l])


def test_xattrs(mkfs, work):
    l = lib.Layer(tarfile.PAX_FORMAT)
    l.dir("x", xattrs={"trusted.overlay.redirect": b"/elsewhere", "user.dir": b"d"})
    l.file("x/cap", b"\x7fELF", mode=0o755, xattrs={"security.capability": lib.CAPABILITY_NET_RAW})
    l.file("x/trusted", b"t", xattrs={"trusted.a": b"\x00\x01\x02", "trusted.b": b""})
    l.file("x/user", b"u", xattrs={"user.mime_type": b"text/plain", "user.empty": b"",
                                   "user.big": prng_bytes(7, 2000)})
    l.file("x/many", b"m", xattrs={f"user.k{i:02d}": f"value-{i}".encode() * (i + 1) for i in range(24)})
    l.symlink("x/sym", "cap", xattrs={"trusted.sym": b"on a symlink"})
    l.fifo("x/fifo", xattrs={"trusted.f": b"fifo"})
    l.chardev("x/dev", 1, 7, xattrs={"security.x": b"dev"})
    l.dir("x/shared")
    for i in range(40):  # the same xattr on many inodes (EROFS can share it)
        l.file(f"x/shared/f{i}", b"s", xattrs={"user.common": b"same value everywhere", "user.i": str(i).encode()})
    l.file("x/ns-mix", b"n", xattrs={"security.erostream-test": b"\x03\x02" + bytes(32), "trusted.c": b"c",
                                     "user.c": b"c"})
    roundtrip(mkfs, work, [l])


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """The kernel's posix_acl_xattr format: version 2, then (tag, perm, id) entries."""
    import struct
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def test_posix_acls(mkfs, work):
    # The modes agree with the ACLs (group bits = mask, other = ACL_OTHER): setting an access ACL
    # rewrites the mode on the reference's file system, and the tar should not contradict itself.
    access = posix_acl((ACL_USER_OBJ, 7, NO_ID), (ACL_USER, 4, 1000), (ACL_GROUP_OBJ, 5, NO_ID),
                       (ACL_GROUP, 5, 70000), (ACL_MASK, 5, NO_ID), (ACL_OTHER, 5, NO_ID))
    default = posix_acl((ACL_USER_OBJ, 7, NO_ID), (ACL_GROUP_OBJ, 5, NO_ID), (ACL_GROUP, 5, 4),
                        (ACL_MASK, 5, NO_ID), (ACL_OTHER, 0, NO_ID))
    l = lib.Layer(tarfile.PAX_FORMAT)
    l.dir("var")
    l.dir("var/log")
    l.dir("var/log/journal", mode=0o2755, gid=101,
          xattrs={"system.posix_acl_access": access, "system.posix_acl_default": default})
    l.file("var/log/journal/system.journal", b"j", mode=0o755, xattrs={"system.posix_acl_access": access})

    def check(ref: Path, mnt: Path):
        assert os.lstat(ref / "var/log/journal").st_mode & 0o7777 == 0o2755, "the reference rewrote the mode"
        assert os.getxattr(mnt / "var/log/journal", "system.posix_acl_default") == default

    roundtrip(mkfs, work, [l], extra_checks=check)


def test_xattrs_umoci_drops(mkfs, work):
    """umoci never sets security.selinux (tar_generate.go ignoreXattrs), so the reference lacks
    it: it is left out of the comparison and checked against the layer's own value instead."""
    ctx = b"system_u:object_r:container_file_t:s0\x00"
    l = lib.Layer(tarfile.PAX_FORMAT)
    l.dir("sel")
    l.file("sel/labelled", b"l", xattrs={"security.selinux": ctx, "user.kept": b"k"})

    def check(ref: Path, mnt: Path):
        assert "security.selinux" not in os.listxattr(ref / "sel/labelled"), "umoci now keeps security.selinux"
        assert os.getxattr(mnt / "sel/labelled", "security.selinux") == ctx

    roundtrip(mkfs, work, [l], ignore_xattrs={"security.selinux"}, extra_checks=check)


# --------------------------------------------------------------------------------------------
# Overlay rules across layers
# --------------------------------------------------------------------------------------------


def test_whiteouts(mkfs, work):
    l1 = lib.Layer()
    l1.dir("w")
    l1.file("w/file", b"f")
    l1.dir("w/dir")
    l1.dir("w/dir/sub")
    l1.file("w/dir/sub/deep", b"d")
    l1.symlink("w/sym", "file")
    l1.fifo("w/fifo")
    l1.file("w/kept", b"k")
    l1.file("top", b"t")
    l2 = lib.Layer()
    l2.whiteout("w/file")
    l2.whiteout("w/dir")          # a whole subtree
    l2.whiteout("w/sym")
    l2.whiteout("w/fifo")
    l2.whiteout("w/never-existed")
    l2.whiteout("top")
    l2.file("w/new", b"n")
    roundtrip(mkfs, work, [l1, l2])


def test_whiteout_and_readd_in_one_layer(mkfs, work):
    """A whiteout hides the layers below only: whatever order, the entry of its own layer stays."""
    l1 = lib.Layer()
    l1.dir("r")
    l1.file("r/first", b"old first")
    l1.file("r/last", b"old last")
    l1.dir("r/dir")
    l1.file("r/dir/old-child", b"old child")
    l2 = lib.Layer()
    l2.whiteout("r/first")
    l2.file("r/first", b"new first")
    l2.file("r/last", b"new last")
    l2.whiteout("r/last")
    l2.dir("r/dir")
    l2.file("r/dir/new-child", b"new child")
    l2.whiteout("r/dir")
    roundtrip(mkfs, work, [l1, l2])


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_opaque_directories(mkfs, work, marker_first):
    l1 = lib.Layer()
    l1.dir("o", mode=0o750, mtime=1_500_000_000)
    l1.file("o/lower", b"hidden by the opaque marker")
    l1.dir("o/lowerdir")
    l1.file("o/lowerdir/x", b"x")
    l1.file("o/same-name", b"lower version")
    l1.dir("other")
    l1.file("other/untouched", b"u")
    l2 = lib.Layer()
    if marker_first:
        l2.opaque("o")
    l2.file("o/upper", b"added with the marker")
    l2.file("o/same-name", b"upper version")
    if not marker_first:
        l2.opaque("o")
    l3 = lib.Layer()
    l3.file("o/third", b"on top of the opaque layer")
    roundtrip(mkfs, work, [l1, l2, l3])


def test_type_changes_between_layers(mkfs, work):
    l1 = lib.Layer()
    l1.file("file-to-dir", b"was a file")
    l1.dir("dir-to-file")
    l1.file("dir-to-file/child", b"goes away")
    l1.dir("dir-to-symlink")
    l1.file("dir-to-symlink/child", b"goes away")
    l1.symlink("symlink-to-dir", "/tmp")
    l1.file("file-to-symlink", b"f")
    l1.symlink("symlink-to-file", "x")
    l1.fifo("fifo-to-file")
    l1.file("file-to-device", b"f")
    l1.dir("target")
    l2 = lib.Layer()
    l2.dir("file-to-dir", mode=0o700)
    l2.file("file-to-dir/child", b"new child")
    l2.file("dir-to-file", b"now a file")
    l2.symlink("dir-to-symlink", "target")
    l2.dir("symlink-to-dir")
    l2.file("symlink-to-dir/inside", b"in a real dir")
    l2.symlink("file-to-symlink", "target")
    l2.file("symlink-to-file", b"now a file")
    l2.file("fifo-to-file", b"now a file")
    l2.chardev("file-to-device", 1, 9)
    roundtrip(mkfs, work, [l1, l2])


def test_deleted_then_readded(mkfs, work):
    l1 = lib.Layer()
    l1.file("f", b"version 1", mode=0o600, mtime=1_500_000_001)
    l1.dir("d", mode=0o700)
    l1.file("d/old", b"must not come back")
    l2 = lib.Layer()
    l2.whiteout("f")
    l2.whiteout("d")
    l3 = lib.Layer()
    l3.file("f", b"version 3", mode=0o644, mtime=1_500_000_003)
    l3.dir("d", mode=0o755)
    l3.file("d/new", b"new")
    roundtrip(mkfs, work, [l1, l2, l3])


def test_same_path_twice_in_one_layer(mkfs, work):
    l = lib.Layer()
    l.file("twice", b"first", mode=0o600, uid=1)
    l.file("twice", b"second wins", mode=0o644, uid=2)
    l.dir("dir-twice", mode=0o700, mtime=1_500_000_000)
    l.file("dir-twice/child", b"kept: directories merge")
    l.dir("dir-twice", mode=0o755, mtime=1_500_000_999)
    l.file("file-then-dir", b"f")
    l.dir("file-then-dir")
    l.dir("dir-then-file")
    l.file("dir-then-file", b"now a file")
    l.symlink("sym-twice", "first")
    l.symlink("sym-twice", "second")
    l.file("linked", b"linked content")
    l.hardlink("link-twice", "linked")
    l.file("link-twice", b"replaced the hardlink")
    l2 = lib.Layer()
    l2.file("twice", b"third, in layer 2")
    l2.file("twice", b"fourth wins")
    roundtrip(mkfs, work, [l, l2])


def test_hardlinks_broken_by_later_layers(mkfs, work):
    l1 = lib.Layer()
    l1.dir("h")
    l1.file("h/a", b"shared content", mode=0o640)
    l1.hardlink("h/b", "h/a")
    l1.file("h/x", b"three names")
    l1.hardlink("h/y", "h/x")
    l1.hardlink("h/z", "h/x")
    l1.file("h/p", b"whiteout breaks it")
    l1.hardlink("h/q", "h/p")
    l2 = lib.Layer()
    l2.file("h/b", b"b replaced")     # a keeps the old content, both unlinked
    l2.file("h/z", b"z replaced")     # x and y stay linked
    l2.whiteout("h/q")                # p alone
    roundtrip(mkfs, work, [l1, l2])


def test_hardlink_to_a_lower_layer_file(mkfs, work):
    l1 = lib.Layer()
    l1.dir("lib")
    l1.file("lib/libc.so.6", prng_bytes(9, 50_000), mode=0o755)
    l2 = lib.Layer()
    l2.hardlink("lib/libc-alias.so", "lib/libc.so.6")
    roundtrip(mkfs, work, [l1, l2])


def test_symlinked_parent_is_resolved_inside_root(mkfs, work):
    l1 = lib.Layer()
    l1.dir("real")
    l1.dir("real2")
    l1.symlink("rel-link", "real")
    l1.symlink("abs-link", "/real2")
    l2 = lib.Layer()
    l2.file("rel-link/through-relative", b"lands in /real")
    l2.file("abs-link/through-absolute", b"lands in /real2, not the host's")
    roundtrip(mkfs, work, [l1, l2])


def test_root_directory_entry(mkfs, work):
    l = lib.Layer()
    l.dir(".", mode=0o700, uid=0, gid=0, mtime=1_500_000_000)
    l.dir("./etc")
    l.file("./etc/with-dot-slash", b"./ prefix")
    l.file("etc/without", b"no prefix")
    l.dir("usr/")
    l.file("usr//double-slash", b"x")
    roundtrip(mkfs, work, [l])


def test_umoci_made_image(mkfs, work):
    """An image made by umoci itself: repacked layers, inserted trees, its whiteouts and opaque markers."""
    layout = work / "src"
    lib.umoci_init(layout, "img")

    def fill1(root: Path):
        (root / "etc").mkdir()
        (root / "etc" / "conf").write_bytes(b"a=1\n")
        (root / "etc" / "gone").write_bytes(b"gone\n")
        (root / "bin").mkdir()
        (root / "bin" / "app").write_bytes(prng_bytes(11, 200_000))
        os.chmod(root / "bin" / "app", 0o4711)
        os.setxattr(root / "bin" / "app", "security.capability", lib.CAPABILITY_NET_RAW)
        os.link(root / "bin" / "app", root / "bin" / "app-link")
        os.symlink("app", root / "bin" / "app-sym")
        os.mkfifo(root / "fifo")
        os.mknod(root / "null", 0o20666, os.makedev(1, 3))
        os.chown(root / "etc" / "conf", 70000, 70000)

    def fill2(root: Path):
        (root / "etc" / "gone").unlink()
        (root / "etc" / "conf").write_bytes(b"a=2\n")
        (root / "var").mkdir()
        (root / "var" / "log").write_bytes(b"")
        os.setxattr(root / "var", "user.v", b"v")

    lib.umoci_add_layer(layout, "img", work, fill1)
    lib.umoci_add_layer(layout, "img", work, fill2)
    extra = work / "insert-src"
    (extra / "sub").mkdir(parents=True)
    (extra / "sub" / "tool2").write_bytes(prng_bytes(12, 30_000))
    (extra / "readme").write_bytes(b"inserted by umoci insert\n")
    lib.umoci_insert(layout, "img", extra, "/opt/extra")
    lib.umoci_insert(layout, "img", extra, "/bin", opaque=True)     # /bin's old content hidden
    lib.umoci_insert(layout, "img", None, "/fifo", whiteout=True)
    img = lib.image_from_layout(layout, "img", work)
    assert len(img.layers) == 5
    lib.convert_mount_compare(mkfs, img, work)


def test_kitchen_sink(mkfs, work):
    roundtrip(mkfs, work, lib.kitchen_sink_layers(), compression=["gzip", "tar", "zstd"])


def test_large_directory_and_deep_nesting(mkfs, work):
    l = lib.Layer()
    l.dir("many")
    for i in range(3000):
        l.file(f"many/entry-{i:05d}-" + "n" * (i % 200), b"" if i % 3 else str(i).encode())
    path = "deep"
    l.dir(path)
    for i in range(60):
        path += f"/level{i:02d}"
        l.dir(path)
    l.file(path + "/bottom", b"bottom")
    roundtrip(mkfs, work, [l])


# --------------------------------------------------------------------------------------------
# Data: chunks, dedup, big files
# --------------------------------------------------------------------------------------------


def data_layers(chunk: int) -> list[lib.Layer]:
    block = prng_bytes(20, 4096)
    l1 = lib.Layer()
    l1.dir("data")
    l1.file("data/random", prng_bytes(21, 3 * MiB + 123))
    l1.file("data/repeated-blocks", block * 700)                      # dedup inside one file
    l1.file("data/exact-chunk", prng_bytes(22, chunk))
    l1.file("data/chunk-plus-one", prng_bytes(23, chunk + 1))
    l1.file("data/zero-middle", prng_bytes(24, 100_000) + bytes(3 * max(chunk, MiB)) + prng_bytes(25, 5000))
    l1.file("data/all-zero", bytes(2 * max(chunk, MiB)))
    l1.file("data/tiny", b"t")
    l2 = lib.Layer()
    l2.file("data/copy-of-random", prng_bytes(21, 3 * MiB + 123))   # dedup across layers
    l2.file("data/more", prng_bytes(26, 40 * MiB if chunk >= 16 * MiB else 2 * MiB))
    return [l1, l2]


@pytest.mark.parametrize("chunk", [4096, 16 * MiB], ids=["4k", "16m"])
def test_chunk_sizes(mkfs, work, chunk):
    roundtrip(mkfs, work, data_layers(chunk), opts=["--chunk-size", chunk])


def test_default_chunk_size(mkfs, work):
    roundtrip(mkfs, work, data_layers(MiB))


@pytest.mark.parametrize("inline_max", [0, 4096])
def test_inline_max(mkfs, work, inline_max):
    l = lib.Layer()
    l.dir("small")
    for size in (0, 1, 63, 100, 2048, 4095, 4096, 4097, 10_000):
        l.file(f"small/s{size}", prng_bytes(size + 1000, size))
    l.symlink("small/link", "s1")
    roundtrip(mkfs, work, [l], opts=["--inline-max", inline_max])


def test_layers_of_duplicates_and_empty_files(mkfs, work):
    """A layer whose files all repeat content already stored, and a layer of empty files only:
    their data blobs hold (almost) nothing."""
    l1 = lib.Layer()
    l1.dir("a")
    l1.file("a/one", prng_bytes(30, 200_000))
    l1.file("a/two", prng_bytes(31, 70_000))
    l2 = lib.Layer()
    l2.dir("b")
    l2.file("b/one-again", prng_bytes(30, 200_000))
    l2.file("b/two-again", prng_bytes(31, 70_000))
    l3 = lib.Layer()
    l3.dir("c")
    l3.file("c/empty", b"")
    l3.file("c/empty2", b"", mode=0o600)
    l3.dir("c/dir")
    l3.symlink("c/sym", "empty")
    rt = roundtrip(mkfs, work, [l1, l2, l3])
    for dev in rt.devices[1:]:
        assert dev.stat().st_size <= 4096, f"{dev.name}: {dev.stat().st_size} bytes for a layer with no new data"


@pytest.mark.slow
def test_file_over_4gib(mkfs, work):
    """A file past 4 GiB, mostly zeros (holes in the artifact) with data at both ends; the
    mounted content is checked by hashing, as is everything compare_trees sees."""
    size = 4 * GiB + 3 * MiB + 123
    head, tail = prng_bytes(40, 1 * MiB + 17), prng_bytes(41, 2 * MiB + 5)
    l = lib.Layer(tarfile.PAX_FORMAT)
    l.dir("big")
    l.big_file("big/file", size, head, tail, mode=0o640)
    l.file("big/after", b"an entry after the big one")
    img = lib.build_image(work / "src", "img", [l], workdir=work, compression="tar")
    expected = lib.SparseContent(size, head, tail).sha256()

    def check(ref: Path, mnt: Path):
        st = os.stat(mnt / "big/file")
        assert st.st_size == size
        with open(mnt / "big/file", "rb") as f:
            f.seek(size - len(tail) - 10)
            assert f.read() == bytes(10) + tail
        h = hashlib.sha256()
        with open(mnt / "big/file", "rb") as f:
            while chunk := f.read(8 * MiB):
                h.update(chunk)
        assert h.hexdigest() == expected

    try:
        lib.convert_mount_compare(mkfs, img, work, extra_checks=check)
    finally:
        # a failed run keeps its work dir for a look, but not 8 GiB of it
        shutil.rmtree(work / "reference-bundle", ignore_errors=True)
        shutil.rmtree(work / "materialized", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Source forms, platforms, determinism
# --------------------------------------------------------------------------------------------


def test_source_by_digest(mkfs, work):
    img = lib.build_image(work / "src", "img", basic_layers(), workdir=work)
    lib.build_image(work / "src", "other", basic_layers()[:1], workdir=work)  # not the only one
    lib.convert_mount_compare(mkfs, img, work, source=img.ref_by_digest)


def test_docker_archive_source(mkfs, work):
    img = lib.build_image(work / "src", "img", lib.kitchen_sink_layers(), workdir=work)
    archive = lib.skopeo_docker_archive(img, work / "image.tar")
    lib.convert_mount_compare(mkfs, img, work, source=f"docker-archive:{archive}", expect_subject=False)


def _platform_images(work: Path):
    def layer(arch: str) -> lib.Layer:
        l = lib.Layer()
        l.dir("etc")
        l.file("etc/arch", arch.encode())
        l.file(f"only-on-{arch}", prng_bytes(len(arch), 5000))
        return l
    amd = lib.build_image(work / "src", None, [layer("amd64")], workdir=work, arch="amd64", tag_it=False)
    arm = lib.build_image(work / "src", None, [layer("arm64")], workdir=work, arch="arm64", variant="v8",
                          tag_it=False)
    index_digest, _ = lib.build_index(work / "src", "multi", [amd, arm])
    return amd, arm


def test_index_selects_platform(mkfs, work):
    amd, arm = _platform_images(work)
    lib.convert_mount_compare(mkfs, arm, work, source=f"oci:{work / 'src'}:multi",
                              convert_opts=["--platform", "linux/arm64/v8"])


def test_index_converts_every_platform(mkfs, work):
    amd, arm = _platform_images(work)
    res, doc = mkfs.convert(f"oci:{work / 'src'}:multi", f"oci:{work / 'dest'}:artifacts")
    arts = doc["artifacts"]
    got = sorted((a["subject"], a["platform"]) for a in arts)
    assert got == sorted([(amd.manifest_digest, "linux/amd64"), (arm.manifest_digest, "linux/arm64/v8")]), got
    for a in arts:
        p = lib.blob_path(work / "dest", a["digest"])
        assert p.is_file() and p.stat().st_size == a["size"]
        m = json.loads(p.read_bytes())
        assert m["artifactType"] == lib.ARTIFACT_TYPE and m["subject"]["digest"] == a["subject"]


def test_conversion_is_deterministic(mkfs, work):
    """Same layers, same options: byte-identical artifact, whatever the thread count; and two
    images on one base share that base's data blob."""
    base = basic_layers()[0]
    top_a, top_b = lib.Layer(), lib.Layer()
    top_a.file("a", prng_bytes(50, 100_000))
    top_b.file("b", prng_bytes(51, 100_000))
    img_a = lib.build_image(work / "src", "a", [base, top_a], workdir=work)
    img_b = lib.build_image(work / "src", "b", [base, top_b], workdir=work)
    _, d1 = mkfs.convert(img_a.ref, f"oci:{work / 'd1'}:x", "--jobs", "1")
    _, d2 = mkfs.convert(img_a.ref, f"oci:{work / 'd2'}:x", "--jobs", "4")
    assert d1["artifacts"][0]["digest"] == d2["artifacts"][0]["digest"]
    assert lib.layout_snapshot(work / "d1") == lib.layout_snapshot(work / "d2")
    mkfs.convert(img_b.ref, f"oci:{work / 'd3'}:x")
    _, ma = lib.artifact_manifest(work / "d1", "x")
    _, mb = lib.artifact_manifest(work / "d3", "x")
    assert ma["layers"][1]["digest"] == mb["layers"][1]["digest"], "the shared base gave different data blobs"
    assert ma["layers"][2]["digest"] != mb["layers"][2]["digest"]
