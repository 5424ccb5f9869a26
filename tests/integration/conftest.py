"""pytest wiring for the integration tests: markers, the converter fixture, per-test work dirs
that are removed when the test passed (kept for a look when it failed), and a guard that no
mount outlives its test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import erostream_testlib as lib


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix):
                found.append(mp)
    return found


@pytest.fixture
def work(request, tmp_path: Path):
    """A fresh directory for one test. Any mount left below it is detached and reported as a
    failure; the directory is deleted when the test passed (it may hold >4 GiB)."""
    d = tmp_path / "w"
    d.mkdir()
    yield d
    leftover = _mounts_under(tmp_path)
    for mp in reversed(leftover):
        try:
            lib.umount(Path(mp))
        except OSError:
            pass
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed and not leftover:
        shutil.rmtree(tmp_path, ignore_errors=True)
    if leftover:
        pytest.fail(f"mounts left behind by the test (now detached): {leftover}")


@pytest.fixture(scope="session")
def mkfs() -> lib.Mkfs:
    return lib.Mkfs()


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0
