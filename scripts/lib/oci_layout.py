"""Minimal OCI image layout reader/writer for the project's scripts.

Only what the scripts need: write a single-layer image from an existing
layer tar.gz, and look up a tagged manifest to sum its blob sizes. Stdlib only,
so it runs with Debian's /usr/bin/python3 on a fresh machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj) -> bytes:
    # Sorted keys and no whitespace: the same input always gives the same digest.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _put_blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64:
        raise ValueError(f"{layout}: unsupported digest {digest!r}")
    return layout / "blobs" / algo / hexd


def write_single_layer_image(layout: Path, tag: str, layer_tar: Path, layer_gz: Path,
                             config_extra: dict, created_by: str) -> dict:
    """Create `layout` (must not hold an index yet) with one gzip layer.

    layer_tar is the uncompressed tar (for the diff_id), layer_gz its gzip
    form; layer_gz is moved into the layout. Returns the index descriptor.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    diff_id = "sha256:" + sha256_file(layer_tar)
    layer_digest = sha256_file(layer_gz)
    layer_size = layer_gz.stat().st_size
    shutil.move(str(layer_gz), blob_path(layout, "sha256:" + layer_digest))

    config = {
        "architecture": config_extra.pop("architecture", "amd64"),
        "os": "linux",
        "config": config_extra.pop("config", {}),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": created_by}],
    }
    config.update(config_extra)
    cfg_desc = _put_blob(layout, _canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, **cfg_desc},
        "layers": [{"mediaType": MT_LAYER_GZIP,
                    "digest": f"sha256:{layer_digest}", "size": layer_size}],
    }
    man_desc = {"mediaType": MT_MANIFEST, **_put_blob(layout, _canonical(manifest)),
                "annotations": {REF_NAME: tag}}
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [man_desc]}
    (layout / "index.json").write_bytes(_canonical(index))
    return man_desc


def find_manifest(layout: Path, tag: str) -> tuple[dict, dict]:
    """Return (index descriptor, parsed manifest) of the manifest tagged `tag`."""
    index = json.loads((layout / "index.json").read_text())
    matches = [d for d in index.get("manifests", [])
               if d.get("annotations", {}).get(REF_NAME) == tag]
    if not matches:
        known = [d.get("annotations", {}).get(REF_NAME) for d in index.get("manifests", [])]
        raise LookupError(f"{layout}/index.json: no manifest tagged {tag!r} (tags: {known})")
    desc = matches[-1]
    manifest = json.loads(blob_path(layout, desc["digest"]).read_bytes())
    return desc, manifest


@dataclass
class ArtifactSizes:
    layers: list[tuple[str, str, int]]  # (mediaType, digest, size) as in the manifest
    config_size: int
    manifest_size: int

    @property
    def layer_bytes(self) -> int:
        return sum(s for _, _, s in self.layers)


def artifact_sizes(layout: Path, tag: str) -> ArtifactSizes:
    """Sizes of the blobs a tagged manifest references, checked against the files on disk."""
    desc, manifest = find_manifest(layout, tag)
    layers = []
    for l in manifest.get("layers", []):
        on_disk = blob_path(layout, l["digest"]).stat().st_size
        if on_disk != l["size"]:
            raise ValueError(f"{layout}: blob {l['digest']} is {on_disk} bytes, "
                             f"manifest says {l['size']}")
        layers.append((l.get("mediaType", "?"), l["digest"], l["size"]))
    cfg = manifest.get("config", {})
    return ArtifactSizes(layers, int(cfg.get("size", 0)), int(desc["size"]))


def layer_gz_path(layout: Path, tag: str) -> Path:
    """Path of the single gzip layer of an image (the scripts' test images have one)."""
    _, manifest = find_manifest(layout, tag)
    layers = manifest.get("layers", [])
    if len(layers) != 1:
        raise ValueError(f"{layout}:{tag}: expected 1 layer, found {len(layers)}")
    return blob_path(layout, layers[0]["digest"])


def _main(argv: list[str]) -> int:
    # CLI used by scripts/make-debian-image.
    if len(argv) >= 1 and argv[0] == "write":
        import argparse
        p = argparse.ArgumentParser(prog="oci_layout.py write")
        p.add_argument("layout", type=Path)
        p.add_argument("--tag", required=True)
        p.add_argument("--layer-tar", type=Path, required=True)
        p.add_argument("--layer-gz", type=Path, required=True)
        p.add_argument("--created-by", required=True)
        p.add_argument("--created", help="RFC 3339 time for the config's created field")
        p.add_argument("--env", action="append", default=[])
        p.add_argument("--cmd", action="append", default=[])
        a = p.parse_args(argv[1:])
        extra: dict = {"config": {}}
        if a.env:
            extra["config"]["Env"] = a.env
        if a.cmd:
            extra["config"]["Cmd"] = a.cmd
        if a.created:
            extra["created"] = a.created
        desc = write_single_layer_image(a.layout, a.tag, a.layer_tar, a.layer_gz,
                                        extra, a.created_by)
        print(f"{a.layout}:{a.tag} manifest {desc['digest']}")
        return 0
    if len(argv) == 3 and argv[0] == "sizes":
        s = artifact_sizes(Path(argv[1]), argv[2])
        for mt, dg, sz in s.layers:
            print(f"{sz}\t{dg}\t{mt}")
        print(f"{s.layer_bytes}\ttotal")
        return 0
    print("usage: oci_layout.py write LAYOUT --tag T --layer-tar F --layer-gz F.gz "
          "--created-by TEXT | sizes LAYOUT TAG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
