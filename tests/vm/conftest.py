"""pytest wiring for the guest-kernel tests. They run inside the guest that tests/vm/run-guest-tests
boots (scripts/vm-run): the host's root filesystem read-only, fresh tmpfs on /tmp. They reuse the
integration tests' helpers (tests/integration: erostream_testlib, daemon_fixtures, the `work` and
`mkfs` fixtures), and take the test images from $EROSTREAM_VM_FIXTURES, built on the host before
the boot (software emulation makes building them in the guest slow); without it they are built
here. Each test's daemon logs are copied to $EROSTREAM_VM_LOGS (a host folder shared read-write)
so that a failure can be read after the guest is gone."""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(_INTEGRATION))

import erostream_testlib as lib  # noqa: E402
import daemon_fixtures as df  # noqa: E402
from daemon_fixtures import *  # noqa: E402,F401,F403  (fixtures: daemons, docker_config_dir, ...)

# The integration conftest's hooks and fixtures, loaded under another name (this file is
# "conftest" too).
_spec = importlib.util.spec_from_file_location("integration_conftest", _INTEGRATION / "conftest.py")
_ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ic)
pytest_runtest_makereport = _ic.pytest_runtest_makereport
mkfs = _ic.mkfs


@pytest.fixture
def work(request, tmp_path: Path):
    """A fresh directory per test (as in tests/integration); afterwards the daemon logs under it
    go to $EROSTREAM_VM_LOGS/<test>/, and any mount left below it fails the test."""
    d = tmp_path / "w"
    d.mkdir()
    yield d
    logs = os.environ.get("EROSTREAM_VM_LOGS")
    if logs:
        dest = Path(logs) / request.node.name
        for p in list(d.glob("logs/*.log")) + list(d.glob("**/holder.log")):
            dest.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy(p, dest / (p.name if p.name != "holder.log" else f"holder-{p.parent.name}.log"))
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
def vm_images(tmp_path_factory, mkfs) -> dict[str, df.StreamImage]:
    """Images "a" and "b" (shared base layer), converted, with umoci references: from the host
    ($EROSTREAM_VM_FIXTURES/images.pickle), else built in the guest."""
    fixtures = os.environ.get("EROSTREAM_VM_FIXTURES")
    if fixtures:
        with open(Path(fixtures) / "images.pickle", "rb") as f:
            return pickle.load(f)
    mkfs.require()
    return df.build_stream_images(tmp_path_factory.mktemp("stream-images"), mkfs)


@pytest.fixture
def fsdaemon(daemons):
    """An erostreamd whose front end is fscache, its cache dir on ext4 in a loop device (the
    guest's /tmp is tmpfs, which cachefiles refuses)."""
    return daemons(frontend="fscache")
