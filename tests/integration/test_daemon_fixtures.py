"""Self-tests of daemon_fixtures.py: everything the daemon tests rely on that does not need the
daemon itself. A stand-in program (Python) plays erostreamd for the readiness pipe, stop by pid,
the holder process that outlives the daemon, and the HTTP control API over a unix socket."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import erostream_testlib as lib
from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import (CACHE_FS, EXT4_SUPER_MAGIC, Daemon, DaemonStartError, LoopExt4, N_DATA_FILES,
                             RegistryClient, cache_directory, checked_read, daemon_env, fill_disk, free_bytes,
                             fs_magic, parse_prometheus, pids_using, proc_alive, proc_start_time,
                             short_socket_dir, start_with_ready_fd, terminate_pid)

pytestmark = [pytest.mark.daemon]

# A stand-in for erostreamd: takes the daemon's flags, serves a tiny version of the control API
# over --socket, writes READY to --ready-fd. The first argument picks a behaviour.
STANDIN = r'''
import http.server, json, os, signal, socket, socketserver, sys
mode = sys.argv[1]
args = sys.argv[2:]
def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default
ready = int(opt("--ready-fd"))
print(f"stand-in {mode} starting: {args}", file=sys.stderr, flush=True)
if mode == "exit-early":
    print("stand-in: cache dir is on tmpfs, refusing to start", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "close-silently":
    os.close(ready)
    signal.pause()
if mode == "never":
    signal.pause()
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(ready, b"READY\n"); os.close(ready)
    while True:
        signal.pause()
# "serve" and "holder": a control socket with /health, /v1/stats, an error body elsewhere
if mode == "holder":
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.close(ready)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(opt("--holder-socket")); s.listen(4)
        os.write(w, b"bound"); os.close(w)
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        while True:
            signal.pause()
    os.close(w)
    assert os.read(r, 16) == b"bound"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def address_string(self): return "unix"
    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok", "frontend": "fanotify", "mounts": 0})
        if self.path == "/v1/stats":
            return self.reply(200, {"bytes_fetched": 0, "chunks_fetched": 0, "cache_hits": 0,
                                    "cache_misses": 0, "errors": 0})
        self.reply(404, {"error": f"no route {self.path}", "request_id": "r-1"})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n))
        self.reply(200, {"echo": body})
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
if os.path.exists(opt("--socket")):
    os.unlink(opt("--socket"))  # a stale socket of the previous run, as a restarted daemon finds it
srv = S(opt("--socket"), H)
os.chmod(opt("--socket"), 0o600)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
os.write(ready, b"READY\n"); os.close(ready)
srv.serve_forever()
'''


@pytest.fixture
def standin(work) -> Path:
    p = work / "standin.py"
    p.write_text(STANDIN)
    return p


def standin_daemon(standin: Path, mode: str, work: Path, sockdir: Path) -> Daemon:
    cache = work / "cache"
    cache.mkdir(exist_ok=True)
    return Daemon(cache, work / "logs", sockdir, daemon_env(work / "dc"), binary=[sys.executable, str(standin), mode])


# -- readiness pipe and stop by pid ------------------------------------------------------------

def test_ready_fd_serves_and_stops_cleanly(standin, work):
    sockdir = short_socket_dir()
    d = standin_daemon(standin, "serve", work, sockdir)
    try:
        d.start(timeout=30)
        assert d.running()
        assert os.stat(d.socket).st_mode & 0o777 == 0o600
        h = d.health()
        assert h == {"status": "ok", "frontend": "fanotify", "mounts": 0}
        r = d.api("GET", "/nope")
        assert r.status == 404 and r.json()["request_id"] == "r-1"
        c = d.curl("GET", "/nope")
        assert (c.status, c.json()) == (r.status, r.json())
        p = d.curl("POST", "/v1/mounts", {"ref": "oci:/x:y", "mountpoint": "/m"})
        assert p.status == 200 and p.json() == {"echo": {"ref": "oci:/x:y", "mountpoint": "/m"}}
        p2 = d.api("POST", "/v1/mounts", {"ref": "oci:/x:y", "mountpoint": "/m"})
        assert p2.json() == p.json()
        assert d.stop(timeout=10) == 0
        assert not d.running()
        # a second start with the same paths works (restart)
        d.start(timeout=30)
        assert d.health()["status"] == "ok"
        assert d.starts == 2
    finally:
        d.cleanup()
        import shutil
        shutil.rmtree(sockdir, ignore_errors=True)


def test_ready_fd_process_exits_before_ready(standin, work):
    log = work / "early.log"
    with pytest.raises(DaemonStartError) as e:
        start_with_ready_fd([sys.executable, standin, "exit-early"], env=None, log=log, timeout=30, what="stand-in")
    msg = str(e.value)
    assert "exited with status 3" in msg or "exit status 3" in msg, msg
    assert "refusing to start" in msg, "the log tail must be in the message"


def test_ready_fd_closed_without_ready(standin, work):
    with pytest.raises(DaemonStartError) as e:
        start_with_ready_fd([sys.executable, standin, "close-silently"], env=None, log=work / "c.log",
                            timeout=30, what="stand-in")
    assert "without writing READY" in str(e.value)
    # the stand-in was stopped: nothing of it is left holding the log
    assert not pids_using([work])


def test_ready_fd_deadline(standin, work):
    with pytest.raises(DaemonStartError) as e:
        start_with_ready_fd([sys.executable, standin, "never"], env=None, log=work / "n.log", timeout=2,
                            what="stand-in")
    assert "wrote no READY within 2s" in str(e.value)
    assert not pids_using([work])


def test_stop_escalates_to_sigkill(standin, work):
    proc = start_with_ready_fd([sys.executable, standin, "stubborn"], env=None, log=work / "s.log",
                               timeout=30, what="stand-in")
    try:
        assert terminate_pid(proc.pid, proc_start_time(proc.pid), timeout=2) == "killed"
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_terminate_pid_never_signals_a_reused_pid(standin, work):
    proc = start_with_ready_fd([sys.executable, standin, "stubborn"], env=None, log=work / "r.log",
                               timeout=30, what="stand-in")
    try:
        start = proc_start_time(proc.pid)
        assert terminate_pid(proc.pid, start + 1, timeout=1) == "gone"
        assert proc.poll() is None, "a process with another start time was signalled"
    finally:
        proc.kill()
        proc.wait()


def test_cleanup_finds_holder_that_outlives_the_daemon(standin, work):
    sockdir = short_socket_dir()
    d = standin_daemon(standin, "holder", work, sockdir)
    try:
        d.start(timeout=30)
        holders = pids_using(sockets=[d.holder_socket])
        assert len(holders) == 1, holders
        (hpid, hstart), = holders
        assert hpid != d.pid
        assert d.stop(timeout=10) == 0
        assert proc_alive(hpid, hstart), "the holder must outlive a stopped daemon"
        assert (hpid, hstart) in d.other_processes()
        d.cleanup()
        assert not proc_alive(hpid, hstart), "cleanup left the holder running"
    finally:
        d.cleanup()
        import shutil
        shutil.rmtree(sockdir, ignore_errors=True)


# -- file systems ------------------------------------------------------------------------------

def test_cache_dir_fixture_is_on_a_supported_fs(cache_dir):
    assert fs_magic(cache_dir) in CACHE_FS, f"{cache_dir}: f_type {fs_magic(cache_dir):#x}"
    assert not any(cache_dir.iterdir())


def test_cache_directory_falls_back_to_loop_ext4_on_tmpfs(work):
    tmpfs = work / "tmpfs"
    tmpfs.mkdir()
    lib.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", tmpfs])
    try:
        assert fs_magic(tmpfs) not in CACHE_FS
        with cache_directory(tmpfs, image_size=64 << 20) as d:
            assert fs_magic(d) == EXT4_SUPER_MAGIC
            (d / "probe").write_bytes(b"x")
        assert not lib.is_mountpoint(tmpfs / "cache")
    finally:
        lib.umount(tmpfs)


def test_small_loop_ext4_fills_up_and_goes_away(work):
    fs = LoopExt4(work / "small.ext4", work / "small", 16 << 20)
    with fs:
        assert fs_magic(fs.mountpoint) == EXT4_SUPER_MAGIC
        assert fs.loop_devices(), "no loop device behind the mount"
        filler = fill_disk(fs.mountpoint, leave_free=1 << 20)
        assert filler.stat().st_size > 8 << 20
        left = free_bytes(fs.mountpoint)
        assert (1 << 20) <= left < (3 << 20), left
        with pytest.raises(OSError) as e:
            with open(fs.mountpoint / "more", "wb") as f:
                for _ in range(8):
                    f.write(b"\x01" * (1 << 20))
                    f.flush()
                os.fsync(f.fileno())
        assert e.value.errno == errno.ENOSPC
    assert not lib.is_mountpoint(fs.mountpoint)
    assert fs.loop_devices() == []


# -- reads and metrics -------------------------------------------------------------------------

def test_checked_read_reports_zeros_and_wrong_bytes(work):
    want = os.urandom(200_000)
    good, zeros, wrong = work / "good", work / "zeros", work / "wrong"
    good.write_bytes(want)
    zeros.write_bytes(want[:65536] + bytes(65536) + want[131072:])
    wrong.write_bytes(want[:150_000] + b"\x00\x01" + want[150_002:])
    assert checked_read(good, want).clean
    z = checked_read(zeros, want, drop_cache=True)
    assert len(z.wrong) == 1 and "ZEROS" in z.wrong[0] and "byte 65536" in z.wrong[0], z.wrong
    w = checked_read(wrong, want)
    assert len(w.wrong) == 1 and "byte 150000" in w.wrong[0], w.wrong
    short = work / "short"
    short.write_bytes(want[:100_000])
    s = checked_read(short, want)
    assert any("short read" in x for x in s.wrong), s.wrong


GOOD_METRICS = """# HELP erostream_bytes_fetched_total Bytes received from registries.
# TYPE erostream_bytes_fetched_total counter
erostream_bytes_fetched_total 1234
# TYPE erostream_mounts gauge
erostream_mounts 2
# HELP erostream_fetch_seconds Fetch latency.
# TYPE erostream_fetch_seconds histogram
erostream_fetch_seconds_bucket{le="0.1"} 3
erostream_fetch_seconds_bucket{le="+Inf"} 4
erostream_fetch_seconds_sum 0.25
erostream_fetch_seconds_count 4
erostream_cache_bytes{blob="sha256:ab",state="present"} 1.5e+06 1700000000000
"""


def test_prometheus_parser():
    m = parse_prometheus(GOOD_METRICS)
    assert m.value("erostream_bytes_fetched_total") == 1234
    assert m.types["erostream_fetch_seconds"] == "histogram"
    assert m.value("erostream_fetch_seconds_bucket", le="+Inf") == 4
    assert m.value("erostream_cache_bytes", blob="sha256:ab", state="present") == 1.5e6
    bad = [
        GOOD_METRICS.rstrip("\n"),                                  # no final newline
        GOOD_METRICS + "erostream_mounts 3\n",                      # duplicate series
        GOOD_METRICS + "# TYPE erostream_mounts gauge\n",           # second TYPE
        GOOD_METRICS + "erostream bytes 1\n",                       # space in name
        GOOD_METRICS + "erostream_x{a=1} 1\n",                      # unquoted label value
        GOOD_METRICS + "erostream_x 12abc\n",                       # bad value
        GOOD_METRICS + "# TYPE erostream_y countr\n",               # unknown type
        "erostream_z 1\n# TYPE erostream_z counter\n",              # TYPE after samples
        GOOD_METRICS + '{le="1"} 1\n',                              # no name
    ]
    for text in bad:
        with pytest.raises(ValueError):
            parse_prometheus(text)


# -- images, artifacts, registry ---------------------------------------------------------------

@pytest.mark.kernel
def test_stream_images_convert_and_match_reference(stream_images, mkfs, work):
    """The test images the daemon tests use: both convert, share their base data blob (the
    premise of the shared-cache test), differ above it, and a materialized artifact mounted with
    the kernel equals the umoci reference."""
    a, b = stream_images["a"], stream_images["b"]
    assert len(a.data_blobs) == 2 and len(b.data_blobs) == 2
    assert a.data_blobs[0]["digest"] == b.data_blobs[0]["digest"], "base layer data blob not shared"
    assert a.data_blobs[1]["digest"] != b.data_blobs[1]["digest"]
    assert a.meta_blob["digest"] != b.meta_blob["digest"]
    assert a.artifact_manifest["subject"]["digest"] == a.image.manifest_digest
    assert len([r for r in a.files if r.startswith("data/f")]) == N_DATA_FILES  # -1 whiteout +1 link
    assert f"data/f{N_DATA_FILES - 1:02d}" not in a.files
    assert a.data_bytes() > 15 << 20, "the image must be big enough for the fetch-volume assertions"
    for img in (a, b):
        meta, devices = mkfs.materialize(img.artifact_ref, work / f"mat-{img.name}")
        with lib.mounted(meta, devices, work / f"mnt-{img.name}") as mnt:
            lib.assert_same_tree(img.reference, mnt, skip_mtime=img.skip_mtime)


def test_registry_publication(published, stream_images, registry):
    """The images and artifacts are in the registry as the daemon will look for them."""
    c = RegistryClient(registry.host)
    for name, pub in published.items():
        img = stream_images[name]
        data, _, d = c.get_manifest(pub.repo, pub.tag)
        assert d == img.image.manifest_digest
        data, _, d = c.get_manifest(pub.repo, pub.artifact_digest)
        m = json.loads(data)
        assert m["subject"]["digest"] == pub.image_digest and m["artifactType"] == lib.ARTIFACT_TYPE
        for layer in m["layers"]:
            st, _, body = c.get_blob(pub.repo, layer["digest"], "bytes=0-99")
            assert st == 206 and len(body) == min(100, layer["size"])
        idx_raw, _, _ = c.get_manifest(pub.repo, pub.image_digest.replace(":", "-"))
        idx = json.loads(idx_raw)
        assert [e["digest"] for e in idx["manifests"]] == [pub.artifact_digest]
