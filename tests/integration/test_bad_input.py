"""Broken inputs: convert must exit 1 with a message on stderr naming what is wrong and where
(the layer, the entry), and leave nothing behind: the DEST layout (which already holds another
image) keeps exactly its files, index.json included, and no temporary file stays anywhere it
could write (DEST, next to DEST, the source layout, TMPDIR)."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

import erostream_testlib as lib


def good_layers() -> list[lib.Layer]:
    l1 = lib.Layer()
    l1.dir("etc")
    l1.file("etc/config", b"config\n" * 1000)
    l1.file("etc/other", bytes(range(256)) * 100)
    l2 = lib.Layer()
    l2.dir("usr")
    l2.file("usr/first", b"first entry of layer 2\n" * 50)
    l2.file("usr/second", b"second entry of layer 2\n" * 50)
    l2.file("usr/third", b"third\n")
    return [l1, l2]


def names_layer(stderr: str, image: lib.Image, i: int) -> bool:
    """The message names layer i: by digest (at least 12 hex digits) or as "layer N" (0- or
    1-based, since either is a fair way to count)."""
    hexd = image.manifest["layers"][i]["digest"].split(":")[1]
    if hexd[:12] in stderr:
        return True
    return re.search(rf"\blayer\s*#?\s*({i}|{i + 1})\b", stderr, re.I) is not None


def assert_rejected(mkfs: lib.Mkfs, work: Path, source: str, *, image: lib.Image | None = None,
                    layer: int | None = None, entry: str | None = None, words: tuple[str, ...] = ()):
    dest = work / "dest"
    if not dest.exists():
        keep = lib.Layer()
        keep.file("keep", b"an unrelated image already in DEST")
        lib.build_image(dest, "keep", [keep], workdir=work / "destw")
    src_layout = Path(source.split(":", 1)[1].split("@")[0].rsplit(":", 1)[0]) if source.startswith("oci:") else None
    tmpdir = work / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    before_dest = lib.layout_snapshot(dest)
    before_siblings = sorted(p.name for p in dest.parent.iterdir())
    before_src = lib.layout_snapshot(src_layout) if src_layout else None

    res = mkfs("convert", source, f"oci:{dest}:artifact", check=False, env={"TMPDIR": str(tmpdir)})
    context = f"\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 1, f"exit {res.returncode}, expected 1 (error){context}"
    assert res.stderr.strip(), "no message on stderr"
    if layer is not None:
        assert names_layer(res.stderr, image, layer), f"stderr does not name layer {layer}{context}"
    if entry is not None:
        assert entry in res.stderr, f"stderr does not name the entry {entry!r}{context}"
    for w in words:
        assert re.search(w, res.stderr, re.I), f"stderr does not say {w!r}{context}"
    assert lib.layout_snapshot(dest) == before_dest, "DEST layout changed by a failed conversion"
    assert sorted(p.name for p in dest.parent.iterdir()) == before_siblings, \
        f"files left next to DEST: {sorted(set(p.name for p in dest.parent.iterdir()) - set(before_siblings))}"
    if src_layout:
        assert lib.layout_snapshot(src_layout) == before_src, "source layout changed"
    assert list(tmpdir.iterdir()) == [], f"temporary files left in TMPDIR: {list(tmpdir.iterdir())}"
    return res


def image_with(work: Path, layers, compression="gzip", **kw) -> lib.Image:
    return lib.build_image(work / "src", "img", layers, workdir=work, compression=compression, **kw)


# --------------------------------------------------------------------------------------------
# Broken layer streams
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_truncated_compressed_stream(mkfs, work, comp):
    img = image_with(work, good_layers(), compression=comp)
    blob = lib.blob_path(img.layout, img.layers[1].digest).read_bytes()
    bad = lib.rewrite_image(img, "truncated", layer_blobs={1: blob[: len(blob) * 6 // 10]})
    assert_rejected(mkfs, work, bad.ref, image=bad, layer=1, words=("trunc|unexpected end|premature|short|incomplete|eof",))


def test_bad_tar_header_checksum(mkfs, work):
    img = image_with(work, good_layers(), compression="tar")
    tar = lib.blob_path(img.layout, img.layers[1].digest).read_bytes()
    hdr, _ = lib.tar_member_offsets(tar)["usr/second"]
    broken = bytearray(tar)
    broken[hdr + 5] ^= 0x01  # in the name field: the stored checksum no longer matches
    broken = bytes(broken)
    bad = lib.rewrite_image(img, "badsum", layer_blobs={1: broken},
                            diff_ids={1: "sha256:" + hashlib.sha256(broken).hexdigest()})
    assert_rejected(mkfs, work, bad.ref, image=bad, layer=1, words=("checksum",))


def test_layer_digest_differs_from_manifest(mkfs, work):
    """The blob file's bytes are not what its digest says (the tar inside is still well formed,
    so only the digest check can tell): the conversion must not leave an artifact."""
    img = image_with(work, good_layers(), compression="tar")
    path = lib.blob_path(img.layout, img.layers[1].digest)
    tar = path.read_bytes()
    _, data = lib.tar_member_offsets(tar)["usr/third"]
    lib.replace_bytes(path, data, b"X")
    assert_rejected(mkfs, work, img.ref, image=img, layer=1, words=("digest|sha256|mismatch",))


def test_missing_layer_blob(mkfs, work):
    img = image_with(work, good_layers())
    lib.blob_path(img.layout, img.layers[0].digest).unlink()
    assert_rejected(mkfs, work, img.ref, image=img, layer=0)


# --------------------------------------------------------------------------------------------
# Entries that must not be
# --------------------------------------------------------------------------------------------


def _bad_entry_image(work: Path, add) -> lib.Image:
    layers = good_layers()
    add(layers[1])
    layers[1].file("usr/after", b"entries after the bad one")
    return image_with(work, layers)


@pytest.mark.parametrize("name", ["usr/../../escape-dotdot", "../escape-dotdot", "usr/a/../../../escape-dotdot"])
def test_dotdot_components(mkfs, work, name):
    img = _bad_entry_image(work, lambda l: l.file(name, b"escape"))
    assert_rejected(mkfs, work, img.ref, image=img, layer=1, entry="escape-dotdot")


def test_dotdot_in_hardlink_target(mkfs, work):
    img = _bad_entry_image(work, lambda l: l.hardlink("usr/evil-link", "../../etc/shadow-escape"))
    assert_rejected(mkfs, work, img.ref, image=img, layer=1, entry="evil-link")


def test_absolute_path(mkfs, work):
    img = _bad_entry_image(work, lambda l: l.file("/abs-entry", b"absolute"))
    raw = lib.blob_path(img.layout, img.layers[1].digest).read_bytes()
    assert b"/abs-entry\0" in gzip.decompress(raw), "the harness did not write the leading '/'"
    assert_rejected(mkfs, work, img.ref, image=img, layer=1, entry="abs-entry")


def test_name_over_255_bytes(mkfs, work):
    long = "n" * 256
    img = _bad_entry_image(work, lambda l: l.file("usr/" + long, b"too long"))
    assert_rejected(mkfs, work, img.ref, image=img, layer=1, entry="n" * 40)


def test_hardlink_to_missing_name(mkfs, work):
    img = _bad_entry_image(work, lambda l: l.hardlink("usr/link-to-nothing", "usr/missing-target"))
    res = assert_rejected(mkfs, work, img.ref, image=img, layer=1)
    assert "link-to-nothing" in res.stderr or "missing-target" in res.stderr, res.stderr


# --------------------------------------------------------------------------------------------
# Broken layouts and manifests
# --------------------------------------------------------------------------------------------


def test_manifest_not_json(mkfs, work):
    img = image_with(work, good_layers())
    digest, size = lib.put_blob(img.layout, b'{"schemaVersion": 2, "layers": [')
    lib.tag_manifest(img.layout, "broken", {"mediaType": lib.MT_OCI_MANIFEST, "digest": digest, "size": size})
    assert_rejected(mkfs, work, f"oci:{img.layout}:broken", words=("json|parse", ))


def test_index_not_json(mkfs, work):
    img = image_with(work, good_layers())
    (img.layout / "index.json").write_bytes(b'{"schemaVersion": 2, "manifests": [{"digest": ')
    assert_rejected(mkfs, work, img.ref, words=("index.json",))


@pytest.mark.parametrize("field", ["layers", "config", "schemaVersion"])
def test_manifest_missing_required_field(mkfs, work, field):
    img = image_with(work, good_layers())
    bad = lib.rewrite_image(img, "nofield", manifest_edit=lambda m: m.pop(field))
    assert_rejected(mkfs, work, bad.ref, words=(field,))


def test_unknown_layer_media_type(mkfs, work):
    img = image_with(work, good_layers())
    mt = "application/vnd.example.layer.v1.tar+lz4"
    bad = lib.rewrite_image(img, "unknown-mt", layer_media_types={1: mt})
    assert_rejected(mkfs, work, bad.ref, image=bad, layer=1, words=(re.escape(mt),))


def test_unknown_tag(mkfs, work):
    img = image_with(work, good_layers())
    assert_rejected(mkfs, work, f"oci:{img.layout}:no-such-tag", words=("no-such-tag",))


def test_missing_config_blob(mkfs, work):
    img = image_with(work, good_layers())
    lib.blob_path(img.layout, img.manifest["config"]["digest"]).unlink()
    assert_rejected(mkfs, work, img.ref, words=(img.manifest["config"]["digest"].split(":")[1][:12],))


def test_failure_in_last_layer_leaves_no_blobs_of_earlier_layers(mkfs, work):
    """Layers 0 and 1 convert fine; layer 2 is broken at its very end."""
    layers = good_layers()
    l3 = lib.Layer()
    l3.file("last", b"x" * 100_000)
    img = image_with(work, layers + [l3], compression="gzip")
    blob = lib.blob_path(img.layout, img.layers[2].digest).read_bytes()
    bad = lib.rewrite_image(img, "late-failure", layer_blobs={2: blob[:-12]})  # gzip trailer gone
    assert_rejected(mkfs, work, bad.ref, image=bad, layer=2)
