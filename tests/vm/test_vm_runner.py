"""The guest runner itself, from the build machine: scripts/vm-run passes a command's status,
output, environment and working directory through and lets it write its shares; a guest that
cannot boot or does not finish in time is a failure with a reason, never a pass or a skip; and
tests/vm/run-in-guest fails a run in which a test skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VM_RUN = REPO / "scripts" / "vm-run"
RUN_IN_GUEST = REPO / "tests" / "vm" / "run-in-guest"


def run(args, *, env=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    """Runs in a session of its own, so that a run past `timeout` is stopped with its QEMU."""
    p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **(env or {})), cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_status_output_env_cwd_and_share(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    script = (
        'echo "out $EROSTREAM_SMOKE_VALUE"; echo "cwd $PWD"; echo err >&2; '
        f'echo "$(uname -r)" > {share}/written; '
        'touch /should-fail 2>/dev/null && echo "root is writable"; exit 7'
    )
    r = run([VM_RUN, "--timeout", "240", "--share", share, "--", "sh", "-c", script],
            env={"EROSTREAM_SMOKE_VALUE": "a b  c"}, cwd=share, timeout=300)
    assert r.returncode == 7, r.stderr
    assert "out a b  c" in r.stdout
    assert f"cwd {share}" in r.stdout
    assert "root is writable" not in r.stdout
    assert r.stderr.strip().endswith("err")
    guest_release = (share / "written").read_text().strip()
    assert guest_release and guest_release != os.uname().release, "the command did not run in the guest kernel"


def test_unbootable_kernel_fails_with_a_reason(tmp_path):
    junk = tmp_path / "bzImage"
    junk.write_bytes(b"not a kernel" * 1000)
    r = run([VM_RUN, "--timeout", "120", "--kernel", junk, "--", "true"], timeout=180)
    assert r.returncode == 125, (r.returncode, r.stderr)
    assert "did not report a status" in r.stderr


def test_run_in_guest_fails_when_the_guest_cannot_boot(tmp_path):
    junk = tmp_path / "bzImage"
    junk.write_bytes(b"not a kernel" * 1000)
    build = tmp_path / "build"
    (build / "daemon").mkdir(parents=True)
    r = run([RUN_IN_GUEST, REPO / "tests" / "vm" / "test_guest_smoke.py"],
            env={"EROSTREAM_GUEST_KERNEL": str(junk), "EROSTREAM_BUILD": str(build),
                 "EROSTREAM_VM_TIMEOUT": "60"}, timeout=180)
    assert r.returncode != 0
    assert "did not report a status" in r.stdout + r.stderr


def test_deadline(tmp_path):
    r = run([VM_RUN, "--timeout", "45", "--", "sleep", "600"], timeout=120)
    assert r.returncode == 124, (r.returncode, r.stderr)
    assert "did not finish within" in r.stderr


def test_a_skipped_test_fails_the_guest_run(tmp_path):
    # The same pytest configuration run-in-guest uses, on a file whose only test skips.
    f = tmp_path / "test_skips.py"
    f.write_text("import pytest\n\ndef test_cannot_run():\n    pytest.skip('no kernel feature')\n")
    vm = REPO / "tests" / "vm"
    r = run([sys.executable, "-m", "pytest", "-c", vm / "pytest.ini", "--rootdir", tmp_path,
             "-p", "conftest", f], env={"PYTHONPATH": str(vm)}, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stdout
    assert "skipped; guest tests must run or fail" in r.stdout
