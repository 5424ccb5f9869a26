"""Checks of the harness itself, with reference tools only (no erostream code): the tar and
layout writers produce what they claim, umoci and skopeo read them, and the whole judge
(umoci unpack -> kernel mount -> compare_trees) agrees with Debian's mkfs.erofs and fsck.erofs
and catches a wrong tree."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

import erostream_testlib as lib


def _pax_records(raw: bytes) -> list[dict[bytes, bytes]]:
    """Every pax extended header ('x') of an archive, as raw keyword -> raw value."""
    out, off = [], 0
    while off + 512 <= len(raw):
        hdr = raw[off : off + 512]
        if hdr == bytes(512):
            break
        size = int(hdr[124:136].rstrip(b"\0 ") or b"0", 8) if hdr[124] < 0x80 else 0
        body = raw[off + 512 : off + 512 + size]
        if hdr[156:157] == b"x":
            recs, i = {}, 0
            while i < len(body):
                sp = body.index(b" ", i)
                n = int(body[i:sp])
                k, _, v = body[sp + 1 : i + n - 1].partition(b"=")
                recs[k] = v
                i += n
            out.append(recs)
        off += 512 + (size + 511) // 512 * 512
    return out


def test_pax_records_are_written_raw():
    layer = lib.Layer(tarfile.PAX_FORMAT)
    layer.file("f", b"x", mtime="1600000000.123456789",
               xattrs={"security.capability": lib.CAPABILITY_NET_RAW, "user.a": b"\xff\x00\x01"})
    recs = _pax_records(layer.to_bytes())
    assert len(recs) == 1
    r = recs[0]
    assert r[b"mtime"] == b"1600000000.123456789"
    assert r[b"SCHILY.xattr.security.capability"] == lib.CAPABILITY_NET_RAW
    assert r[b"SCHILY.xattr.user.a"] == b"\xff\x00\x01"
    assert b"hdrcharset" not in r
    # python's reader agrees on the mtime's integral part and the xattrs
    m = tarfile.open(fileobj=io.BytesIO(layer.to_bytes())).getmember("f")
    assert int(m.mtime) == 1600000000


def test_gnu_headers_use_base256_for_big_numbers():
    layer = lib.Layer(tarfile.GNU_FORMAT)
    layer.file("ids", b"i", uid=3_000_000, gid=4_000_000, mtime=9_000_000_000)
    raw = layer.to_bytes()
    hdr = raw[:512]
    assert hdr[108] & 0x80 and hdr[116] & 0x80 and hdr[136] & 0x80, "uid, gid, mtime not base-256"
    m = tarfile.open(fileobj=io.BytesIO(raw)).getmember("ids")
    assert (m.uid, m.gid, m.mtime) == (3_000_000, 4_000_000, 9_000_000_000)


def test_gnu_long_names_and_ustar_prefix():
    g = lib.Layer(tarfile.GNU_FORMAT)
    g.file("n" * 150, b"x")
    g.symlink("s", "t" * 180)
    raw = g.to_bytes()
    assert raw[156:157] == b"L", "no GNU long name record"
    members = tarfile.open(fileobj=io.BytesIO(raw)).getmembers()
    assert [m.name for m in members] == ["n" * 150, "s"] and members[1].linkname == "t" * 180
    u = lib.Layer(tarfile.USTAR_FORMAT)
    u.file("p" * 120 + "/" + "f" * 90, b"x")
    raw = u.to_bytes()
    assert raw[345:345 + 120] == b"p" * 120, "ustar prefix field not used"


def test_sparse_content_and_sparse_tar(work: Path):
    c = lib.SparseContent(3 * (1 << 20) + 7, head=b"HEAD", tail=b"TAIL!")
    with c.open() as f:
        data = f.read()
    assert data == b"HEAD" + bytes(len(data) - 9) + b"TAIL!" and len(data) == c.size
    assert c.sha256() == hashlib.sha256(data).hexdigest()
    layer = lib.Layer()
    layer.big_file("z", 64 << 20, b"a", b"b")
    diff_id, size = lib.write_tar_file(layer, work / "z.tar")
    st = (work / "z.tar").stat()
    assert st.st_size == size > 64 << 20
    assert st.st_blocks * 512 < 1 << 20, "zero runs were not written as holes"
    assert lib.sha256_file(work / "z.tar") == diff_id
    with tarfile.open(work / "z.tar") as tf:
        f = tf.extractfile("z")
        assert f.read(1) == b"a"
        f.seek((64 << 20) - 1)
        assert f.read() == b"b"


@pytest.mark.parametrize("media", ["oci", "docker"])
@pytest.mark.parametrize("comp", ["tar", "gzip", "zstd"])
def test_layouts_are_consistent(work: Path, media: str, comp: str):
    img = lib.build_image(work / "layout", "t", lib.demo_layers(), workdir=work, compression=comp, media=media)
    lib.verify_layout(img.layout, "t")
    idx = json.loads((img.layout / "index.json").read_text())
    assert idx["manifests"][0]["annotations"][lib.REF_NAME] == "t"
    assert json.loads((img.layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    if media == "oci":
        # skopeo verifies every digest on copy
        lib.run(["skopeo", "--insecure-policy", "copy", "--quiet", img.ref, f"dir:{work / 'copy'}"])


def test_retagging_replaces_the_index_entry(work: Path):
    a = lib.build_image(work / "layout", "t", lib.demo_layers()[:1], workdir=work)
    b = lib.build_image(work / "layout", "t", lib.demo_layers(), workdir=work)
    c = lib.build_image(work / "layout", "other", lib.demo_layers(), workdir=work, compression="tar")
    idx = json.loads((work / "layout" / "index.json").read_text())
    tags = {m["annotations"][lib.REF_NAME]: m["digest"] for m in idx["manifests"]}
    assert tags == {"t": b.manifest_digest, "other": c.manifest_digest} and a.manifest_digest != b.manifest_digest


def test_reference_twin_equals_direct_unpack(work: Path):
    """A zstd + Docker media type image (umoci cannot read it) gets a reference from a twin with
    the same tars: it must equal umoci's unpack of a gzip OCI image of the same layers."""
    layers = lib.kitchen_sink_layers()
    direct = lib.build_image(work / "a", "t", layers, workdir=work / "wa", compression="gzip")
    other = lib.build_image(work / "b", "t", layers, workdir=work / "wb", compression="zstd", media="docker")
    assert not other.umoci_readable()
    assert [l.diff_id for l in direct.layers] == [l.diff_id for l in other.layers]
    ref_a = lib.reference_rootfs(direct, work / "wa")
    ref_b = lib.reference_rootfs(other, work / "wb")
    skip = lib.implicit_dirs(direct.tar_paths)
    assert lib.compare_trees(ref_a, ref_b, skip_mtime=skip) == []


def test_docker_archive_round_trip(work: Path):
    img = lib.build_image(work / "layout", "t", lib.kitchen_sink_layers(), workdir=work)
    archive = lib.skopeo_docker_archive(img, work / "image.tar")
    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
    assert len(manifest) == 1 and len(manifest[0]["Layers"]) == 3
    lib.run(["skopeo", "--insecure-policy", "copy", "--quiet", f"docker-archive:{archive}", f"oci:{work / 'back'}:t"])
    back = lib.image_from_layout(work / "back", "t", work / "wback")
    assert [l.diff_id for l in back.layers] == [l.diff_id for l in img.layers]
    ref = lib.umoci_unpack(img.layout, "t", work / "b1")
    again = lib.umoci_unpack(back.layout, "t", work / "b2")
    assert lib.compare_trees(ref, again, skip_mtime=lib.implicit_dirs(img.tar_paths)) == []


def test_umoci_built_image(work: Path):
    """umoci_add_layer: what a fill function writes is what umoci unpack gives back."""
    layout = work / "layout"
    lib.umoci_init(layout, "t")

    def fill1(root: Path):
        (root / "etc").mkdir()
        (root / "etc" / "conf").write_bytes(b"conf\n")
        os.setxattr(root / "etc" / "conf", "user.k", b"v")
        (root / "bin").mkdir()
        (root / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
        os.chmod(root / "bin" / "tool", 0o4755)
        os.link(root / "bin" / "tool", root / "bin" / "tool2")
        os.symlink("tool", root / "bin" / "sym")
        os.chown(root / "etc" / "conf", 100000, 100001)

    def fill2(root: Path):
        (root / "etc" / "conf").unlink()
        (root / "bin" / "new").write_bytes(b"new")

    lib.umoci_add_layer(layout, "t", work, fill1)
    lib.umoci_add_layer(layout, "t", work, fill2)
    img = lib.image_from_layout(layout, "t", work)
    assert len(img.layers) == 2
    names = [[m.name for m in lib.tar_members(t)] for t in img.tar_paths]
    assert any(n.endswith(".wh.conf") for n in names[1]), names[1]
    ref = lib.umoci_unpack(layout, "t", work / "bundle")
    assert sorted(p.name for p in (ref / "bin").iterdir()) == ["new", "sym", "tool", "tool2"]
    assert not (ref / "etc" / "conf").exists()
    assert os.stat(ref / "bin" / "tool").st_nlink == 2 and os.stat(ref / "bin" / "tool").st_mode & 0o4000


def test_umoci_insert(work: Path):
    layout = work / "layout"
    lib.umoci_init(layout, "t")

    def fill(root: Path):
        (root / "opt").mkdir()
        (root / "opt" / "old").write_bytes(b"old")
        (root / "gone").write_bytes(b"gone")
    lib.umoci_add_layer(layout, "t", work, fill)
    src = work / "src"
    src.mkdir()
    (src / "new").write_bytes(b"new")
    lib.umoci_insert(layout, "t", src, "/opt", opaque=True)
    lib.umoci_insert(layout, "t", None, "/gone", whiteout=True)
    img = lib.image_from_layout(layout, "t", work)
    names = [[m.name for m in lib.tar_members(t)] for t in img.tar_paths]
    assert any(n.endswith("opt/.wh..wh..opq") for n in names[1]), names[1]
    # umoci 0.4.7 insert ends its tars without the two zero blocks, the opaque one even inside
    # the last entry's padding (Go's reader takes both as a clean end; converters must too)
    sizes = [t.stat().st_size for t in img.tar_paths]
    assert sizes[1] % 512 != 0 and sizes[2] == 512, sizes
    assert any(n.endswith(".wh.gone") for n in names[2]), names[2]
    ref = lib.umoci_unpack(layout, "t", work / "bundle")
    assert sorted(p.name for p in ref.iterdir()) == ["opt"]
    assert sorted(p.name for p in (ref / "opt").iterdir()) == ["new"]


@pytest.mark.kernel
def test_mkfs_erofs_round_trip_is_judged_equal(work: Path):
    """The judge itself: umoci unpack -> Debian's mkfs.erofs (chunked, one blob device) ->
    fsck.erofs -> mount(2) of the file-backed EROFS -> compare_trees finds no difference."""
    img = lib.build_image(work / "layout", "t", lib.kitchen_sink_layers(), workdir=work,
                          compression=["gzip", "tar", "gzip"])
    ref = lib.reference_rootfs(img, work)
    meta, dev = work / "meta.erofs", work / "blob.img"
    lib.run(["mkfs.erofs", "--quiet", "--chunksize=4096", f"--blobdev={dev}", "--preserve-mtime", meta, ref])
    lib.fsck_erofs(meta, [dev])
    with lib.mounted(meta, [dev], work / "mnt") as mnt:
        assert lib.compare_trees(ref, mnt, skip_mtime=lib.implicit_dirs(img.tar_paths)) == []
        assert os.getxattr(mnt / "bin/ping", "security.capability") == lib.CAPABILITY_NET_RAW
    assert not lib.is_mountpoint(work / "mnt")


@pytest.mark.kernel
def test_mkfs_erofs_round_trip_of_a_different_tree_is_caught(work: Path):
    layers = lib.kitchen_sink_layers()
    img = lib.build_image(work / "layout", "t", layers, workdir=work)
    ref = lib.reference_rootfs(img, work)
    changed = lib.build_image(work / "layout", "changed", layers[:2], workdir=work)
    other = lib.umoci_unpack(changed.layout, "changed", work / "other-bundle")
    meta, dev = work / "meta.erofs", work / "blob.img"
    lib.run(["mkfs.erofs", "--quiet", "--chunksize=4096", f"--blobdev={dev}", "--preserve-mtime", meta, other])
    with lib.mounted(meta, [dev], work / "mnt") as mnt:
        diffs = lib.compare_trees(ref, mnt, skip_mtime=lib.implicit_dirs(img.tar_paths))
    text = "\n".join(diffs)
    assert "/pax-ids: missing" in text
    assert "/etc/passwd: content sha256" in text
    assert "/etc/passwd: hardlinked with ['/etc/passwd.link']" in text


@pytest.mark.kernel
def test_refused_mount_fails_loudly(work: Path):
    bogus = work / "meta.erofs"
    bogus.write_bytes(bytes(8192))
    with pytest.raises(lib.MountError, match="EINVAL|EIO|ENOTBLK|EUCLEAN"):
        with lib.mounted(bogus, [], work / "mnt"):
            pass
    assert not lib.is_mountpoint(work / "mnt")
