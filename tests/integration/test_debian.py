"""The realistic tier: a Debian root filesystem made with debootstrap (scripts/make-debian-image,
cached under /var/cache/erostream), converted, checked, materialized, mounted by the kernel and
compared entry by entry with umoci's unpack; then programs of the image run from the mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import erostream_testlib as lib

REPO = Path(__file__).resolve().parents[2]
IMAGE = Path(os.environ.get("EROSTREAM_DEBIAN_IMAGE", "/var/cache/erostream/debian-minbase"))
TAG = "bookworm-minbase"


@pytest.fixture(scope="module")
def debian_layout() -> Path:
    # Builds the image once per machine (about a minute: debootstrap from Debian's mirror).
    subprocess.run([str(REPO / "scripts" / "make-debian-image"), str(IMAGE)], check=True, timeout=1800)
    return IMAGE


def _run_in_image(mnt: Path, argv: list[str]) -> str:
    res = subprocess.run(["chroot", str(mnt), *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{argv} in the image: exit {res.returncode}: {res.stderr}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.kernel
def test_debian_minbase_round_trip(mkfs, work, debian_layout):
    img = lib.image_from_layout(debian_layout, TAG, work)

    def programs_run(reference: Path, mnt: Path) -> None:
        # Dynamic linking, many small files and symlinks, all through the kernel's EROFS.
        assert "Debian" in (mnt / "etc" / "os-release").read_text()
        packages = _run_in_image(mnt, ["/usr/bin/dpkg-query", "-W", "-f", "${Package}\n"]).split()
        assert "libc6" in packages and "bash" in packages
        out = _run_in_image(mnt, ["/bin/sh", "-c", "ls /usr/bin | wc -l"])
        assert int(out) == len(os.listdir(reference / "usr" / "bin"))

    rt = lib.convert_mount_compare(mkfs, img, work, extra_checks=programs_run)

    info = mkfs.inspect_json(rt.artifact_ref)
    assert info["files"] > 4000, info
    assert info["directories"] > 500, info
    assert info["compression_ratio"] > 2.0, info

    # Deterministic: a second conversion, with another number of workers, gives the same bytes.
    dest2 = work / "again"
    lib.run([str(lib.mkfs_binary()), "convert", "--quiet", "--jobs", "1", img.ref, f"oci:{dest2}:artifact"])
    first, _ = lib.artifact_manifest(work / "dest", "artifact")
    second, _ = lib.artifact_manifest(dest2, "artifact")
    assert first == second, "the same image converted twice gave different artifacts"
