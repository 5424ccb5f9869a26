"""The guest kernel is what the fscache tests need: run inside it by tests/vm/run-in-guest.

check-kernel (the daemon's own probe) finds the fscache front end usable there, /dev/cachefiles
opens and binds in on-demand mode on an ext4 loop filesystem (and refuses tmpfs, which is why the
cache dir must be on ext4), and Debian's docker-registry serves on the guest's loopback.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK_KERNEL = REPO / "kmod-config" / "check-kernel"


def check_kernel(build_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EROSTREAMD=str(build_dir / "daemon" / "erostreamd"))
    return subprocess.run([str(CHECK_KERNEL), *args], capture_output=True, text=True, env=env, timeout=120)


def test_check_kernel_offers_fscache(build_dir, ext4_dir, results_dir):
    r = check_kernel(build_dir, "--json", "--cache-dir", str(ext4_dir))
    (results_dir / "check-kernel.json").write_text(r.stdout)
    assert r.returncode == 0, f"check-kernel exit {r.returncode}: {r.stderr}\n{r.stdout}"
    j = json.loads(r.stdout)
    fscache = j["frontends"]["fscache"]
    assert fscache["usable"] is True, fscache
    assert fscache["missing"] == []
    assert j["probes"]["cachefiles_device"]["state"] == "ok"
    assert j["probes"]["cachefiles_ondemand"]["result"] == "yes"
    assert j["probes"]["erofs_ondemand"]["result"] == "yes"
    assert j["file_backed_erofs"]["usable"] is True
    assert j["cache_dir"]["filesystem"] == "ext4"
    assert j["auto"]["frontend"] == "fscache", j["auto"]
    # 6.12 has no pre-content events: the probe says so, and why
    assert j["frontends"]["fanotify"]["usable"] is False
    assert any("6.14" in m for m in j["frontends"]["fanotify"]["missing"])


def test_check_kernel_refuses_a_tmpfs_cache_dir(build_dir, tmp_path):
    assert os.statvfs(tmp_path)  # /tmp is tmpfs in the guest (vm-init)
    r = check_kernel(build_dir, "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 1, r.stdout
    assert "is on tmpfs" in r.stdout
    assert "--frontend auto: none" in r.stdout


def cachefiles_bind(cache_dir: Path) -> None:
    fd = os.open("/dev/cachefiles", os.O_RDWR)
    try:
        for cmd in (f"dir {cache_dir}", "tag erostream-smoke", "bind ondemand"):
            os.write(fd, cmd.encode())
        # bound: a second opener is refused while this one holds the device
        with pytest.raises(OSError) as busy:
            os.open("/dev/cachefiles", os.O_RDWR)
        assert busy.value.errno == errno.EBUSY
    finally:
        os.close(fd)


def test_cachefiles_binds_on_demand_on_ext4(ext4_dir):
    cachefiles_bind(ext4_dir)
    # cachefiles made its tree there
    assert (ext4_dir / "cache").is_dir() and (ext4_dir / "graveyard").is_dir()


def test_cachefiles_refuses_tmpfs(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    with pytest.raises(OSError) as refused:
        cachefiles_bind(d)
    assert refused.value.errno == errno.EOPNOTSUPP, refused.value


def test_docker_registry_on_guest_loopback(registry):
    assert registry.port and registry.port > 0
    with urllib.request.urlopen(f"{registry.url}/v2/", timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
