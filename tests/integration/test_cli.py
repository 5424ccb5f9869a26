"""The erostream-mkfs command line: help, usage errors, inspect, and check catching corruption
of the blobs of an artifact in a layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import erostream_testlib as lib

COMMANDS = ["convert", "materialize", "inspect", "check"]


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in COMMANDS],
                         ids=["main"] + COMMANDS)
def test_help_exits_zero(mkfs, args):
    res = mkfs(*args)
    out = res.stdout + res.stderr
    assert "usage" in out.lower(), out
    if len(args) == 2:
        assert args[0] in out, out


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["convert"],
    ["convert", "oci:/nonexistent:x"],
    ["convert", "--bogus-option", "oci:/a:x", "oci:/b:y"],
    ["convert", "--chunk-size", "lots", "oci:/a:x", "oci:/b:y"],
    ["convert", "--chunk-size", "3000", "oci:/a:x", "oci:/b:y"],
    ["convert", "--chunk-size", "2048", "oci:/a:x", "oci:/b:y"],
    ["convert", "--platform", "linux", "oci:/a:x", "oci:/b:y"],
    ["convert", "oci:/a:x", "nonsense:/b"],
    ["materialize", "oci:/a:x"],
    ["inspect"],
    ["check"],
], ids=["nothing", "unknown-command", "convert-no-args", "convert-no-dest", "unknown-option",
        "chunk-not-a-number", "chunk-not-power-of-two", "chunk-below-4k", "platform-no-arch",
        "unknown-transport", "materialize-no-dir", "inspect-no-args", "check-no-args"])
def test_usage_errors_exit_2(mkfs, args):
    res = mkfs(*args, check=False)
    assert res.returncode == 2, f"exit {res.returncode} for {args}\n{res.stdout}\n{res.stderr}"
    assert res.stderr.strip(), "a usage error must say what is wrong on stderr"


def three_layers() -> list[lib.Layer]:
    l1 = lib.Layer()
    l1.dir("a")
    l1.file("a/one", bytes(range(256)) * 2000)
    l1.file("a/small", b"small")
    l2 = lib.Layer()
    l2.file("a/two", b"two" * 50_000)
    l3 = lib.Layer()
    l3.whiteout("a/small")
    l3.file("b", b"b" * 9000)
    return [l1, l2, l3]


@pytest.fixture(scope="module")
def converted(mkfs, tmp_path_factory):
    """One converted artifact for the module: (image, dest layout, artifact manifest)."""
    work = tmp_path_factory.mktemp("cli")
    img = lib.build_image(work / "src", "img", three_layers(), workdir=work)
    mkfs.convert(img.ref, f"oci:{work / 'dest'}:artifact")
    _, manifest = lib.artifact_manifest(work / "dest", "artifact")
    return img, work / "dest", manifest


@pytest.fixture
def dest_copy(converted, work):
    img, dest, manifest = converted
    copy = work / "dest"
    shutil.copytree(dest, copy)
    return img, copy, manifest


def test_check_accepts_a_good_artifact(mkfs, converted):
    _, dest, _ = converted
    mkfs.check(f"oci:{dest}:artifact")


def test_inspect_text_names_the_blobs(mkfs, converted):
    _, dest, manifest = converted
    out = mkfs("inspect", f"oci:{dest}:artifact").stdout
    for d in manifest["layers"]:
        assert d["digest"].split(":")[1][:12] in out, f"inspect does not name blob {d['digest']}:\n{out}"


def _walk_json(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from _walk_json(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk_json(x)


def _numbers(d: dict) -> list:
    return [v for v in d.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def test_inspect_json_has_per_layer_numbers(mkfs, converted):
    img, dest, manifest = converted
    doc = mkfs.inspect_json(f"oci:{dest}:artifact")
    data_digests = {d["digest"] for d in manifest["layers"][1:]}
    layer_digests = {l.digest for l in img.layers}
    per_layer = None
    for node in _walk_json(doc):
        if isinstance(node, list) and len(node) == len(img.layers) and all(isinstance(x, dict) for x in node):
            texts = [json.dumps(x) for x in node]
            if all(any(dg in t for dg in data_digests | layer_digests) for t in texts):
                per_layer = node
                break
    assert per_layer is not None, f"no per-layer list naming each data blob or layer:\n{json.dumps(doc, indent=1)}"
    for i, entry in enumerate(per_layer):
        nums = _numbers(entry)
        assert nums and any(n > 0 for n in nums), f"layer {i} entry has no numbers: {entry}"
    # the first layer holds data, the sizes must say so somewhere
    assert any(n >= 4096 for n in _numbers(per_layer[0])), per_layer[0]


def _assert_check_fails_naming(mkfs, dest: Path, digest: str, *alternatives: str):
    res = mkfs.check(f"oci:{dest}:artifact", check=False)
    out = f"\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 1, f"check exit {res.returncode} on a corrupted artifact{out}"
    names = [digest.split(":")[1][:12], *alternatives]
    assert any(n in res.stderr for n in names), f"check does not name any of {names}{out}"


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_check_detects_corrupt_data_blob(mkfs, dest_copy, where):
    img, dest, manifest = dest_copy
    d = manifest["layers"][1]
    path = lib.blob_path(dest, d["digest"])
    lib.replace_bytes(path, int(path.stat().st_size * where))
    _assert_check_fails_naming(mkfs, dest, d["digest"], img.layers[0].digest.split(":")[1][:12])


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_check_detects_corrupt_metadata_blob(mkfs, dest_copy, where):
    _, dest, manifest = dest_copy
    d = manifest["layers"][0]
    path = lib.blob_path(dest, d["digest"])
    lib.replace_bytes(path, min(int(path.stat().st_size * where), path.stat().st_size - 1))
    _assert_check_fails_naming(mkfs, dest, d["digest"], "metadata")


def test_check_detects_a_data_blob_swapped_with_a_consistent_descriptor(mkfs, dest_copy):
    """The blob is corrupted and the artifact manifest re-pointed at its new digest: the blob
    matches its descriptor, but not the chunk table in the metadata blob."""
    img, dest, manifest = dest_copy
    d = manifest["layers"][2]
    data = bytearray(lib.blob_path(dest, d["digest"]).read_bytes())
    data[len(data) // 3] ^= 0x55
    new_digest, new_size = lib.put_blob(dest, bytes(data))
    manifest = json.loads(json.dumps(manifest))
    manifest["layers"][2].update(digest=new_digest, size=new_size)
    m_digest, m_size = lib.put_blob(dest, lib.canonical_json(manifest))
    lib.tag_manifest(dest, "artifact", {"mediaType": lib.MT_OCI_MANIFEST, "digest": m_digest, "size": m_size,
                                        "artifactType": lib.ARTIFACT_TYPE})
    _assert_check_fails_naming(mkfs, dest, new_digest, d["digest"].split(":")[1][:12],
                               img.layers[1].digest.split(":")[1][:12])


def test_check_detects_a_missing_data_blob(mkfs, dest_copy):
    _, dest, manifest = dest_copy
    d = manifest["layers"][3]
    lib.blob_path(dest, d["digest"]).unlink()
    _assert_check_fails_naming(mkfs, dest, d["digest"])


def test_materialize_writes_one_device_per_layer(mkfs, converted, work):
    img, dest, manifest = converted
    meta, devices = mkfs.materialize(f"oci:{dest}:artifact", work / "out")
    assert len(devices) == len(img.layers)
    for dev in devices:
        assert dev.stat().st_size % 4096 == 0, f"{dev.name} is not a whole number of 4096-byte blocks"
    # the metadata file starts with the EROFS superblock at 1024
    with open(meta, "rb") as f:
        f.seek(1024)
        assert f.read(4) == (0xE0F5E1E2).to_bytes(4, "little"), "no EROFS superblock magic at 1024"


def test_quiet_convert_prints_nothing(mkfs, converted, work):
    img, _, _ = converted
    res = mkfs("convert", "--quiet", img.ref, f"oci:{work / 'quiet'}:artifact")
    assert res.stdout == "" and res.stderr == "", f"--quiet printed:\n{res.stdout}\n{res.stderr}"
    lib.artifact_manifest(work / "quiet", "artifact")


@pytest.mark.parametrize("command", ["inspect", "check", "materialize"])
def test_commands_refuse_what_is_not_an_artifact(mkfs, converted, work, command):
    """The source image is a valid OCI image, but no erostream artifact."""
    img, _, _ = converted
    args = [command, img.ref] + ([work / "out"] if command == "materialize" else [])
    res = mkfs(*args, check=False)
    assert res.returncode == 1, f"{command} of a plain image: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert res.stderr.strip()
