"""pytest wiring for the tests that run inside the guest kernel (tests/vm/run-in-guest).

Fixtures for guest test files (add a test_*.py here and a line in tests/meson.build's vm list):
  guest        asserts that this is the guest (not the build machine) and returns its facts
  build_dir    the meson build dir (EROSTREAM_BUILD), with erostreamd and erostream-mkfs
  results_dir  a host-visible directory for files worth keeping (build/vm-results/<file>/work)
  ext4_dir     a fresh directory on an ext4 loop filesystem (cachefiles refuses tmpfs)
  registry     Debian's docker-registry on the guest's 127.0.0.1 (port from its log), per test
The integration helpers (tests/integration/daemon_fixtures.py, erostream_testlib.py) and the
registry package (tests/registry) import as they do on the host.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for p in (TESTS, TESTS / "integration"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from daemon_fixtures import LoopExt4  # noqa: E402
from registry.registry import DockerRegistry  # noqa: E402

GUEST_MARK = Path("/run/vm/cmd")  # written by scripts/vm-run, read by scripts/vm-init


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"FAILED: {len(skipped)} test(s) skipped; guest tests must run or fail")
        session.exitstatus = 1
    if reporter and session.testscollected == 0 and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def guest() -> dict:
    if not GUEST_MARK.exists():
        pytest.fail("not inside the guest: run this file through tests/vm/run-in-guest")
    assert os.geteuid() == 0, "the guest runs tests as root"
    return {"release": os.uname().release}


@pytest.fixture(scope="session")
def build_dir(guest) -> Path:
    b = os.environ.get("EROSTREAM_BUILD")
    if not b:
        pytest.fail("EROSTREAM_BUILD is not set (run-in-guest sets it)")
    d = Path(b)
    assert (d / "daemon" / "erostreamd").is_file(), f"{d}/daemon/erostreamd is missing: build first"
    return d


@pytest.fixture(scope="session")
def results_dir(guest) -> Path:
    d = Path(os.environ.get("EROSTREAM_VM_RESULTS", "/tmp/vm-results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def ext4_dir(guest, tmp_path):
    with LoopExt4(tmp_path / "ext4.img", tmp_path / "ext4", 256 << 20) as fs:
        d = fs.mountpoint / "dir"
        d.mkdir()
        yield d


@pytest.fixture
def registry(guest, tmp_path):
    with DockerRegistry(tmp_path / "registry") as reg:
        yield reg
