"""kmod-config/ agrees with the probe that erostreamd and check-kernel use.

- erostream.config is exactly what `erostreamd --kernel-config-fragment` prints (the option table
  in daemon/kernel_probe.cpp is the one source of truth);
- the test guest's guest.config builds every one of those options in (and build-guest-kernel
  checks, against the real Kconfig, that every option of guest.config takes);
- modules-load.d and modprobe.d name only the modules the table names;
- the systemd unit passes `systemd-analyze verify` and keeps the fd holder alive across restarts;
- check-kernel finds erostreamd and prints the daemon's own probe; its exit status says whether a
  front end works, consistently with its JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KMOD = REPO / "kmod-config"


def build_dir() -> Path:
    b = os.environ.get("EROSTREAM_BUILD")
    if not b:
        pytest.fail("EROSTREAM_BUILD is not set (meson sets it)")
    return Path(b)


def erostreamd() -> Path:
    p = build_dir() / "daemon" / "erostreamd"
    assert p.is_file(), f"{p} is missing: build first"
    return p


def config_options(text: str) -> dict[str, str]:
    """CONFIG_X=v lines and '# CONFIG_X is not set' (value 'n')."""
    out = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"CONFIG_(\w+)=(.*)", line.strip()):
            out[m[1]] = m[2]
        elif m := re.fullmatch(r"# CONFIG_(\w+) is not set", line.strip()):
            out[m[1]] = "n"
    return out


def table_modules(fragment: str) -> set[str]:
    return set(re.findall(r"=m: module (\w+)", fragment))


def test_fragment_is_generated_from_the_probe_table():
    r = subprocess.run([erostreamd(), "--kernel-config-fragment"], capture_output=True, text=True, check=True)
    committed = (KMOD / "erostream.config").read_text()
    assert r.stdout == committed, (
        "kmod-config/erostream.config differs from the probe's table: regenerate it with\n"
        "  build/daemon/erostreamd --kernel-config-fragment > kmod-config/erostream.config")
    opts = config_options(committed)
    for must in ("CACHEFILES", "CACHEFILES_ONDEMAND", "FSCACHE", "EROFS_FS", "EROFS_FS_ONDEMAND",
                 "EROFS_FS_BACKED_BY_FILE", "FANOTIFY", "FANOTIFY_ACCESS_PERMISSIONS", "BLK_DEV_UBLK", "IO_URING"):
        assert opts.get(must) == "y", must


def test_guest_config_builds_in_every_option():
    fragment = config_options((KMOD / "erostream.config").read_text())
    guest = config_options((KMOD / "guest.config").read_text())
    missing = [o for o, v in fragment.items() if v == "y" and guest.get(o) != "y"]
    assert not missing, f"guest.config lacks {missing}"
    assert guest.get("MODULES") == "n"  # the guest loads nothing: everything it needs is built in
    assert guest.get("IKCONFIG_PROC") == "y"


def test_module_files_name_the_table_modules():
    modules = table_modules((KMOD / "erostream.config").read_text())
    assert {"cachefiles", "erofs", "ublk_drv"} <= modules
    loaded = [l.strip() for l in (KMOD / "modules-load.d" / "erostream.conf").read_text().splitlines()
              if l.strip() and not l.lstrip().startswith("#")]
    assert loaded == ["cachefiles", "erofs"]
    assert set(loaded) <= modules
    for line in (KMOD / "modprobe.d" / "erostream.conf").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        assert words[0] in ("softdep", "options", "alias", "blacklist"), line
        named = [w for w in words[1:] if not w.endswith(":")]
        assert set(named) <= modules, f"{line}: unknown module"


def test_systemd_unit(tmp_path):
    unit = (KMOD / "systemd" / "erostreamd.service").read_text()
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), v.strip())
    assert settings["KillMode"] == "process"
    assert settings["RuntimeDirectory"] == "erostream"
    assert settings["RuntimeDirectoryPreserve"] == "yes"
    assert settings["Type"] == "simple"  # erostreamd does not implement sd_notify
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (package systemd; scripts/install-deps)"
    # verify against the built binary: the unit's own path is where `ninja install` puts it
    copy = tmp_path / "erostreamd.service"
    copy.write_text(unit.replace("/usr/local/bin/erostreamd", str(erostreamd())))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    problems = [l for l in (r.stdout + r.stderr).splitlines() if "erostreamd.service" in l]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def run_check_kernel(*args: str, env: dict | None = None, script: Path = KMOD / "check-kernel"):
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def test_check_kernel_prints_the_daemons_probe(tmp_path):
    env = {"EROSTREAMD": str(erostreamd())}
    r = run_check_kernel("--json", "--cache-dir", str(tmp_path), env=env)
    assert r.returncode in (0, 1), r.stderr
    j = json.loads(r.stdout)
    assert j["kernel"]["release"] == os.uname().release
    assert set(j["frontends"]) == {"fscache", "fanotify", "ublk"}
    assert j["cache_dir"]["path"] == str(tmp_path)
    assert (r.returncode == 0) == j["usable"]
    assert j["usable"] == any(j["frontends"][f]["usable"] for f in ("fscache", "fanotify"))
    # the same answer as the daemon's own flag
    d = subprocess.run([erostreamd(), "--check-kernel", "--json", "--cache-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert d.returncode == r.returncode
    assert json.loads(d.stdout)["frontends"] == j["frontends"]
    table = run_check_kernel("--cache-dir", str(tmp_path), env=env)
    assert table.returncode == r.returncode
    assert "--frontend auto:" in table.stdout


def test_check_kernel_on_this_machine(tmp_path):
    """The build machine: Linux 6.14+ with file-backed EROFS and a disk filesystem under the
    test's tmp dir, run as root: fanotify works, and fscache's gaps are named."""
    if os.geteuid() != 0:
        pytest.fail("run as root: the probes need CAP_SYS_ADMIN")
    r = run_check_kernel("--json", "--cache-dir", str(tmp_path / "cache"), env={"EROSTREAMD": str(erostreamd())})
    j = json.loads(r.stdout)
    fa = j["frontends"]["fanotify"]
    assert fa["usable"] is True, fa
    assert r.returncode == 0
    fs = j["frontends"]["fscache"]
    assert fs["usable"] or fs["missing"], "an unusable front end must say what is missing"
    assert j["auto"]["frontend"] in ("fscache", "fanotify")


def test_check_kernel_finds_erostreamd(tmp_path):
    # an install: check-kernel beside erostreamd
    inst = tmp_path / "bin"
    inst.mkdir()
    shutil.copy(KMOD / "check-kernel", inst / "check-kernel")
    (inst / "erostreamd").symlink_to(erostreamd())
    env = {"EROSTREAMD": "", "PATH": "/usr/bin:/bin"}
    r = run_check_kernel("--json", env=env, script=inst / "check-kernel")
    assert r.returncode in (0, 1) and json.loads(r.stdout)["kernel"]["release"], r.stderr
    # nowhere to be found: a usage error that says where it looked
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(KMOD / "check-kernel", lonely / "check-kernel")
    r = run_check_kernel(env=env, script=lonely / "check-kernel")
    assert r.returncode == 2 and "erostreamd not found" in r.stderr
    r = run_check_kernel("--bogus", env={"EROSTREAMD": str(erostreamd())})
    assert r.returncode == 2 and "unknown option" in r.stderr
    r = run_check_kernel("--help")
    assert r.returncode == 0 and "check-kernel" in r.stdout
