"""pytest wiring for the tests that run inside the guest kernel (tests/vm/run-in-guest).

Fixtures for guest test files (add a test_*.py here and a line in tests/meson.build's vm list):
  guest        asserts that this is the guest (not the build machine) and returns its facts
  build_dir    the meson build dir (EROSTREAM_BUILD), with erostreamd and erostream-mkfs
  results_dir  a host-visible directory for files worth keeping (build/vm-results/<file>/work)
  ext4_dir     a fresh directory on an ext4 loop filesystem (cachefiles refuses tmpfs)
  registry     Debian's docker-registry on the guest's 127.0.0.1 (port from its log), per test
  vm_images, fsdaemon, work, daemons, proxies, mkfs
               erostreamd with the fscache front end and the integration tests' images (below)
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


# ---------------------------------------------------------------------------------------------
# The fscache front end's tests (test_fscache*.py): erostreamd with the integration tests'
# fixtures. Their images are built on the host before the boot (tests/vm/run-guest-tests sets
# $EROSTREAM_VM_FIXTURES: software emulation makes building them here slow), else here.

import importlib.util  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402

import daemon_fixtures as df  # noqa: E402
import erostream_testlib as lib  # noqa: E402
from daemon_fixtures import daemons, docker_config_dir, proxies  # noqa: E402,F401

# The integration conftest's report hook and mkfs fixture, loaded under another name (this file
# is "conftest" too).
_spec = importlib.util.spec_from_file_location("integration_conftest", TESTS / "integration" / "conftest.py")
_ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ic)
pytest_runtest_makereport = _ic.pytest_runtest_makereport
mkfs = _ic.mkfs


@pytest.fixture
def work(request, guest, tmp_path: Path):
    """A fresh directory per test (as in tests/integration); afterwards the daemon logs under it
    are copied to $EROSTREAM_VM_RESULTS/<test>/ (kept on the host), and any mount left below it
    fails the test."""
    d = tmp_path / "w"
    d.mkdir()
    yield d
    results = os.environ.get("EROSTREAM_VM_RESULTS")
    if results:
        dest = Path(results) / request.node.name
        for p in list(d.glob("logs/*.log")) + list(d.glob("**/holder.log")):
            dest.mkdir(parents=True, exist_ok=True)
            name = p.name if p.name != "holder.log" else f"holder-{p.parent.name}.log"
            try:
                shutil.copy(p, dest / name)
            except OSError:
                pass
    leftover = _ic._mounts_under(tmp_path)
    for mp in reversed(leftover):
        try:
            lib.umount(Path(mp))
        except OSError:
            pass
    if leftover:
        pytest.fail(f"mounts left behind by the test (now detached): {leftover}")


@pytest.fixture(scope="session")
def vm_images(guest, tmp_path_factory, mkfs) -> dict[str, df.StreamImage]:
    """Images "a" and "b" (shared base layer), converted, with umoci references: from the host
    ($EROSTREAM_VM_FIXTURES/images.pickle), else built in the guest."""
    fixtures = os.environ.get("EROSTREAM_VM_FIXTURES")
    if fixtures:
        with open(Path(fixtures) / "images.pickle", "rb") as f:
            return pickle.load(f)
    mkfs.require()
    return df.build_stream_images(tmp_path_factory.mktemp("stream-images"), mkfs)


@pytest.fixture
def fsdaemon(guest, daemons):
    """An erostreamd whose front end is fscache, its cache dir on ext4 in a loop device (the
    guest's /tmp is tmpfs, which cachefiles refuses)."""
    return daemons(frontend="fscache")
