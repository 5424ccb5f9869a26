"""Deterministic OCI test images written with the standard library (tarfile, gzip, json).

The same call always gives the same bytes (fixed mtimes, owners, seeds; gzip without name or
time), so a manifest digest can be compared across a push and a pull.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
MTIME = 1700000000


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Entry:
    """One tar entry: kind in file|dir|symlink|hardlink|whiteout|opaque."""

    def __init__(self, kind: str, path: str, data: bytes = b"", target: str = "", mode: int | None = None,
                 uid: int = 0, gid: int = 0, xattrs: dict[str, str] | None = None):
        self.kind = kind
        self.path = path.lstrip("/")
        self.data = data
        self.target = target
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.xattrs = xattrs or {}


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.mtime = MTIME
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = ""
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                ti.type = tarfile.REGTYPE
                ti.mode = 0o644 if e.mode is None else e.mode
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            elif e.kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755 if e.mode is None else e.mode
                tf.addfile(ti)
            elif e.kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.mode = 0o777
                ti.linkname = e.target
                tf.addfile(ti)
            elif e.kind == "hardlink":
                ti.type = tarfile.LNKTYPE
                ti.mode = 0o644 if e.mode is None else e.mode
                ti.linkname = e.target.lstrip("/")
                tf.addfile(ti)
            elif e.kind in ("whiteout", "opaque"):
                if e.kind == "opaque":
                    ti.name = e.path + "/.wh..wh..opq"
                else:
                    d, _, base = e.path.rpartition("/")
                    ti.name = (d + "/" if d else "") + ".wh." + base
                ti.type = tarfile.REGTYPE
                ti.mode = 0o644
                ti.size = 0
                tf.addfile(ti, io.BytesIO(b""))
            else:
                raise ValueError(f"unknown entry kind {e.kind}")
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0, filename="") as gz:
        gz.write(data)
    return out.getvalue()


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        idx = self.root / "index.json"
        self.index = json.loads(idx.read_text()) if idx.exists() else \
            {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}

    def put_blob(self, data: bytes) -> str:
        d = sha256_digest(data)
        p = self.root / "blobs" / "sha256" / d[7:]
        if not p.exists():
            p.write_bytes(data)
        return d

    def tag(self, desc: dict, tag: str) -> None:
        self.index["manifests"] = [m for m in self.index["manifests"]
                                   if m.get("annotations", {}).get(REF_NAME) != tag]
        self.index["manifests"].append(dict(desc, annotations={REF_NAME: tag}))
        (self.root / "index.json").write_text(json.dumps(self.index, separators=(",", ":")))


def write_image(layout: Layout, layers: list[list[Entry]], arch: str = "amd64", os_: str = "linux",
                variant: str | None = None, gzip_layers: bool = True) -> dict:
    """Writes layer, config and manifest blobs; returns the manifest descriptor."""
    layer_descs, diff_ids = [], []
    for entries in layers:
        tar = layer_tar(entries)
        diff_ids.append(sha256_digest(tar))
        blob = gzip_bytes(tar) if gzip_layers else tar
        layer_descs.append({"mediaType": MT_LAYER_GZIP if gzip_layers else MT_LAYER_TAR,
                            "digest": layout.put_blob(blob), "size": len(blob)})
    config = {"created": "2023-11-14T22:13:20Z", "architecture": arch, "os": os_,
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                         "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "erostream tests"}
                          for _ in layers]}
    if variant:
        config["variant"] = variant
    cfg = json.dumps(config, separators=(",", ":")).encode()
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": layout.put_blob(cfg), "size": len(cfg)},
                "layers": layer_descs}
    mb = json.dumps(manifest, separators=(",", ":")).encode()
    desc = {"mediaType": MT_MANIFEST, "digest": layout.put_blob(mb), "size": len(mb)}
    platform = {"architecture": arch, "os": os_}
    if variant:
        platform["variant"] = variant
    desc["platform"] = platform
    return desc


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def standard_layers(scale: int = 1, seed: int = 1) -> list[list[Entry]]:
    """Three layers exercising what a converter must handle: small (inline) files, multi-chunk
    random files, compressible and all-zero files, symlinks, a hardlink, an xattr, a whiteout,
    an opaque directory and a file replaced in an upper layer. scale multiplies the big files
    (scale=1: about 6 MiB of file data, about 4.5 MiB of gzip blobs)."""
    mib = 1 << 20
    base = [
        Entry("dir", "etc"), Entry("dir", "usr"), Entry("dir", "usr/bin"), Entry("dir", "var"),
        Entry("dir", "var/lib"), Entry("dir", "opt"), Entry("dir", "opt/old"),
        Entry("file", "etc/hostname", b"erostream-test\n"),
        Entry("file", "etc/os-release", b'NAME="erostream test"\nID=erostream\n'),
        Entry("file", "usr/bin/tool", _rand(seed, 3 * mib * scale + 12345), mode=0o755),
        Entry("file", "usr/bin/zeros", b"\0" * (mib * scale)),
        Entry("file", "var/lib/pattern", (b"erostream chunk pattern " * 43690)[: 2 * mib * scale]),
        Entry("file", "opt/old/gone", b"removed by the opaque dir above\n"),
        Entry("file", "etc/removed", b"whited out\n"),
        Entry("symlink", "usr/bin/sh", target="tool"),
        Entry("hardlink", "usr/bin/tool-link", target="usr/bin/tool", mode=0o755),
        Entry("file", "etc/capable", b"#!/bin/sh\n", mode=0o755,
              xattrs={"user.erostream": "yes"}),
    ]
    second = [
        Entry("dir", "etc"), Entry("dir", "usr"), Entry("dir", "usr/bin"),
        Entry("whiteout", "etc/removed"),
        Entry("file", "etc/hostname", b"erostream-test-upper\n"),
        Entry("file", "usr/bin/helper", _rand(seed + 1, mib * scale + 777), mode=0o755),
        Entry("dir", "opt"), Entry("dir", "opt/old"), Entry("opaque", "opt/old"),
        Entry("file", "opt/old/new", b"fresh after the opaque marker\n"),
    ]
    third = [
        Entry("dir", "srv"),
        Entry("file", "srv/small-1", _rand(seed + 2, 100)),
        Entry("file", "srv/small-2", _rand(seed + 3, 4096)),
        Entry("file", "srv/medium", _rand(seed + 4, 300000)),
        Entry("file", "srv/empty", b""),
    ]
    return [base, second, third]


def make_test_image(root: Path, tag: str = "v1", scale: int = 1, seed: int = 1) -> dict:
    """An OCI layout at ROOT with one single-platform image tagged TAG; returns its descriptor."""
    layout = Layout(root)
    desc = write_image(layout, standard_layers(scale, seed))
    layout.tag(desc, tag)
    return desc


def make_index_image(root: Path, tag: str = "multi", seed: int = 1) -> dict:
    """An OCI layout with an image index of two platforms (linux/amd64, linux/arm64/v8) whose
    contents differ, tagged TAG; returns the index descriptor (with "manifests" added)."""
    layout = Layout(root)
    manifests = []
    for i, (arch, variant) in enumerate((("amd64", None), ("arm64", "v8"))):
        layers = standard_layers(1, seed + 10 * i)[:2]
        manifests.append(write_image(layout, layers, arch=arch, variant=variant))
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
    ib = json.dumps(index, separators=(",", ":")).encode()
    desc = {"mediaType": MT_INDEX, "digest": layout.put_blob(ib), "size": len(ib)}
    layout.tag(desc, tag)
    return dict(desc, manifests=manifests)


def read_layout_manifest(root: Path, tag: str) -> tuple[dict, bytes]:
    """(descriptor, manifest bytes) of TAG in an OCI layout."""
    root = Path(root)
    idx = json.loads((root / "index.json").read_text())
    for m in idx["manifests"]:
        if m.get("annotations", {}).get(REF_NAME) == tag:
            return m, (root / "blobs" / m["digest"].replace(":", "/")).read_bytes()
    raise KeyError(f"tag {tag} not in {root}/index.json")


def verify_layout_blobs(root: Path) -> list[str]:
    """Names of blobs in an OCI layout whose content does not hash to their name."""
    bad = []
    for algo_dir in (Path(root) / "blobs").glob("*"):
        for p in algo_dir.iterdir():
            if algo_dir.name == "sha256" and hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
                bad.append(f"{algo_dir.name}:{p.name}")
    return bad
