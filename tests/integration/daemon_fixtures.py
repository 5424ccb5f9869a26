"""Helpers and pytest fixtures for erostreamd's integration tests (test_daemon_*.py).

What lives here:
  * the daemon's binaries (EROSTREAM_BUILD/daemon/erostreamd and erostreamctl): a test that
    needs them fails, with the path it looked at, when they are missing;
  * starting a process with a readiness pipe (--ready-fd N: it writes "READY\\n" to fd N when it
    serves, then closes it). The wait is a select() on the pipe and on a pidfd of the process
    with a deadline: no sleeps, and a process that dies before it is ready is reported with its
    exit status and the tail of its log;
  * stopping by pid: SIGTERM, then SIGKILL after a deadline, through a pidfd so that a reused pid
    is never signalled. Besides the daemon itself, every process that holds one of the test's
    cache files or bound sockets open (the daemon's fd holder, which outlives a daemon on
    purpose) is found through /proc and stopped the same way;
  * a private cache directory on ext4/xfs/btrfs (the fanotify front end needs one of them):
    under the test's work dir when that is on such a file system, else in an ext4 image mounted
    on a loop device; LoopExt4 also makes the small file systems of the full-disk test;
  * a private, short socket directory (unix socket paths are limited to 107 bytes);
  * Daemon: start/stop/kill/restart, erostreamctl wrapper, the HTTP control API over the unix
    socket (python's http.client, and curl --unix-socket), stats(), health();
  * a strict parser of the Prometheus text format;
  * the test images: deterministic OCI images (two sharing their base layer) with many files of
    random bytes, converted by erostream-mkfs, their umoci reference trees, and their
    publication in Debian's docker-registry;
  * checked reads: every block read from a mount is compared with the reference bytes; EIO is
    counted, wrong bytes (zeros included) are described.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import http.client
import json
import os
import random
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pytest

import erostream_testlib as lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the registry package

from registry.client import RegistryClient  # noqa: E402
from registry.fault_proxy import FaultProxy  # noqa: E402
from registry.images import Entry, Layout, MT_INDEX, MT_MANIFEST, write_image  # noqa: E402
from registry.registry import DockerRegistry, push_oci, skopeo_env  # noqa: E402
from registry import tools as reg_tools  # noqa: E402

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CTL_TIMEOUT = 180.0
READER_TIMEOUT = 300.0

ARTIFACT_TYPE = lib.ARTIFACT_TYPE
STAT_KEYS = ("bytes_fetched", "chunks_fetched", "cache_hits", "cache_misses", "errors", "events",
             "events_denied", "prefetch_bytes", "mounts")


# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------


def daemon_binary(name: str) -> Path:
    """BUILD/daemon/NAME (BUILD: $EROSTREAM_BUILD or <repo>/build). Fails, never skips, when it
    is missing: a daemon test that cannot run the daemon has verified nothing."""
    p = lib.build_dir() / "daemon" / name
    if not os.access(p, os.X_OK):
        raise AssertionError(
            f"{name} not found or not executable at {p}: build the daemon (meson: daemon/meson.build, "
            f"ninja -C {lib.build_dir()}) or set EROSTREAM_BUILD to the meson build root")
    return p


def erostreamd_binary() -> Path:
    return daemon_binary("erostreamd")


def erostreamctl_binary() -> Path:
    return daemon_binary("erostreamctl")


# ---------------------------------------------------------------------------------------------
# File systems
# ---------------------------------------------------------------------------------------------

EXT4_SUPER_MAGIC = 0xEF53
XFS_SUPER_MAGIC = 0x58465342
BTRFS_SUPER_MAGIC = 0x9123683E
TMPFS_MAGIC = 0x01021994
CACHE_FS = {EXT4_SUPER_MAGIC: "ext4", XFS_SUPER_MAGIC: "xfs", BTRFS_SUPER_MAGIC: "btrfs"}


class _Statfs(ctypes.Structure):
    # struct statfs of x86_64/aarch64 glibc (all fields 8 bytes but f_fsid: 2 ints).
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]


def fs_magic(path: Path) -> int:
    """statfs(2) f_type of the file system holding path."""
    buf = _Statfs()
    if _libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"statfs({path}): {os.strerror(e)}")
    return buf.f_type & 0xFFFFFFFF


def fs_name(path: Path) -> str:
    m = fs_magic(path)
    return CACHE_FS.get(m, "tmpfs" if m == TMPFS_MAGIC else hex(m))


class LoopExt4:
    """An ext4 file system in a sparse image file, mounted on a loop device at `mountpoint`
    (mount(8) -o loop: the loop device is detached when the last user lets go). mkfs.ext4 -m 0:
    no blocks reserved for root (the daemon runs as root, so a reserve would hide 'disk full')."""

    def __init__(self, image: Path, mountpoint: Path, size_bytes: int):
        self.image, self.mountpoint, self.size = Path(image), Path(mountpoint), size_bytes
        self.mounted = False

    def __enter__(self) -> "LoopExt4":
        self.image.parent.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        lib.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", "-E",
                 "lazy_itable_init=0,lazy_journal_init=0", self.image], timeout=120)
        lib.run(["mount", "-t", "ext4", "-o", "loop", self.image, self.mountpoint], timeout=120)
        self.mounted = True
        return self

    def loop_devices(self) -> list[str]:
        r = lib.run(["losetup", "-j", self.image], check=False, timeout=60)
        return [l.split(":", 1)[0] for l in r.stdout.splitlines() if l.strip()]

    def close(self) -> None:
        if self.mounted and lib.is_mountpoint(self.mountpoint):
            lib.umount(self.mountpoint)
        self.mounted = False
        for dev in self.loop_devices():  # autoclear normally did it already
            lib.run(["losetup", "-d", dev], check=False, timeout=60)

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def cache_directory(base: Path, name: str = "cache", image_size: int = 1 << 30) -> Iterator[Path]:
    """A fresh directory for erostreamd's cache on ext4/xfs/btrfs: base/name when base is on one
    of them, else an ext4 image (image_size bytes, sparse) mounted on a loop device."""
    base = Path(base)
    if fs_magic(base) in CACHE_FS:
        d = base / name
        d.mkdir(parents=True)
        yield d
        return
    with LoopExt4(base / f"{name}.ext4", base / name, image_size) as fs:
        yield fs.mountpoint


def fill_disk(path: Path, leave_free: int = 0) -> Path:
    """Writes a file under `path` until the file system is full, then gives `leave_free` bytes
    back (rounded to 4 KiB blocks). Returns the filler file."""
    filler = Path(path) / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = 0
        for block in (b"\xa5" * (1 << 20), b"\xa5" * 4096):  # then the last partial MiB
            while True:
                try:
                    n = os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
                size += n
                if n < len(block):
                    break
        os.fsync(fd)
        if leave_free:
            os.ftruncate(fd, max(0, size - ((leave_free + 4095) // 4096) * 4096))
            os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# ---------------------------------------------------------------------------------------------
# Processes: readiness pipe, stop by pid, finding the daemon's other processes
# ---------------------------------------------------------------------------------------------


class DaemonStartError(AssertionError):
    """The process did not become ready. An AssertionError: the test fails, never skips."""


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of pid, to tell it from a later process with the
    same pid; None when there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[19])


def proc_alive(pid: int, start: int | None = None) -> bool:
    st = proc_start_time(pid)
    if st is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        state = state[state.rindex(")") + 2:].split()[0]
    except OSError:
        return False
    return state != "Z" and (start is None or st == start)


def _ppid_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> set[tuple[int, int]]:
    """{(pid, start time)} of every living descendant of pid."""
    kids = _ppid_map()
    out: set[tuple[int, int]] = set()
    stack = list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        st = proc_start_time(p)
        if st is not None:
            out.add((p, st))
        stack.extend(kids.get(p, []))
    return out


def _unix_socket_inodes(paths: Iterable[Path]) -> set[int]:
    want = {str(p) for p in paths}
    inodes = set()
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return inodes
    for line in lines:
        parts = line.split()
        if len(parts) >= 8 and parts[7] in want:
            inodes.add(int(parts[6]))
    return inodes


def pids_using(files_under: Sequence[Path] = (), sockets: Sequence[Path] = ()) -> set[tuple[int, int]]:
    """{(pid, start time)} of processes (not this one) with an open fd on a file below one of
    `files_under`, or on a unix socket bound to one of `sockets`."""
    prefixes = [str(Path(p).resolve()) + "/" for p in files_under]
    inodes = _unix_socket_inodes(sockets)
    found: set[tuple[int, int]] = set()
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{d}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{d}/fd/{fd}")
            except OSError:
                continue
            hit = any(target.startswith(p) for p in prefixes)
            if not hit and target.startswith("socket:["):
                hit = int(target[8:-1]) in inodes
            if hit:
                st = proc_start_time(int(d))
                if st is not None:
                    found.add((int(d), st))
                break
    return found


def wait_pid_exit(pidfd: int, timeout: float) -> bool:
    r, _, _ = select.select([pidfd], [], [], max(0.0, timeout))
    return bool(r)


def terminate_pid(pid: int, start: int | None, timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM, then SIGKILL after `timeout` seconds; through a pidfd, and only if pid still is
    the process that started at `start`. Returns gone|terminated|killed. Does not reap: the
    caller that owns the child reaps it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        if start is not None and proc_start_time(pid) != start:
            return "gone"
        if not proc_alive(pid):
            return "gone"
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if wait_pid_exit(pidfd, timeout):
            return "terminated"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if not wait_pid_exit(pidfd, timeout):
            raise AssertionError(f"pid {pid} did not exit {timeout}s after SIGKILL (stuck in the kernel?)")
        return "killed"
    except ProcessLookupError:
        return "gone"
    finally:
        os.close(pidfd)


def log_tail(path: Path | None, lines: int = 60) -> str:
    if path is None:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(ready_r: int, proc: subprocess.Popen, timeout: float, what: str,
               log: Path | None = None) -> None:
    """Waits until `proc` writes "READY\\n" to the pipe whose read end is ready_r: select() on the
    pipe and on a pidfd of proc, with a deadline. Raises DaemonStartError when the process exits,
    closes the pipe without READY, or the deadline passes."""
    import time  # monotonic clock for the deadline only
    pidfd = os.pidfd_open(proc.pid)
    buf = b""
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonStartError(f"{what} wrote no READY within {timeout:.0f}s\n--- log:\n{log_tail(log)}")
            r, _, _ = select.select([ready_r, pidfd], [], [], left)
            if ready_r in r:
                data = os.read(ready_r, 256)
                buf += data
                if b"READY\n" in buf:
                    return
                if data:
                    continue
                # EOF: the process closed the pipe or is exiting (the pipe closes before the pidfd
                # turns readable); give it a moment to tell which, as a wait on the pidfd.
                exited = pidfd in r or wait_pid_exit(pidfd, 2.0)
                code = proc.wait(timeout=STOP_TIMEOUT) if exited else None
                raise DaemonStartError(
                    f"{what} closed its ready pipe without writing READY (wrote {buf!r}"
                    + (f", exit status {code}" if code is not None else ", still running")
                    + f")\n--- log:\n{log_tail(log)}")
            if pidfd in r:
                code = proc.wait(timeout=STOP_TIMEOUT)
                raise DaemonStartError(
                    f"{what} exited with status {code} before it was ready (wrote {buf!r} to the "
                    f"ready pipe)\n--- log:\n{log_tail(log)}")
    finally:
        os.close(pidfd)


def start_with_ready_fd(argv: Sequence[object], *, env: dict | None, log: Path,
                        timeout: float = READY_TIMEOUT, what: str | None = None,
                        ready_flag: str = "--ready-fd") -> subprocess.Popen:
    """Starts argv + [ready_flag, N] with the write end of a pipe as fd N, stdout and stderr
    appended to `log`, in its own session; returns once it wrote READY. On failure the process
    is stopped and DaemonStartError raised."""
    r, w = os.pipe()
    what = what or Path(str(argv[0])).name
    try:
        with open(log, "ab") as logf:
            proc = subprocess.Popen([str(a) for a in argv] + [ready_flag, str(w)], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT, pass_fds=(w,), env=env,
                                    start_new_session=True)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    os.close(w)
    try:
        wait_ready(r, proc, timeout, what, log)
    except BaseException:
        if proc.poll() is None:
            terminate_pid(proc.pid, proc_start_time(proc.pid), timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        raise
    finally:
        os.close(r)
    return proc


def short_socket_dir() -> Path:
    """A fresh private directory with a short path for unix sockets (at most 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="erosd-", dir="/tmp"))
    os.chmod(d, 0o700)
    return d


# ---------------------------------------------------------------------------------------------
# HTTP over the unix control socket
# ---------------------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._unix_path)
        self.sock = s


@dataclass
class ApiResponse:
    status: int
    headers: dict
    body: bytes
    via: str = "http.client"

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"{self.via}: body is no JSON ({e}): {self.body[:500]!r}")

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def unix_http(sock_path: Path, method: str, path: str, body=None, timeout: float = CTL_TIMEOUT) -> ApiResponse:
    """One HTTP/1.1 request over a unix socket; body: bytes, str, or a JSON-able object."""
    conn = _UnixHTTPConnection(str(sock_path), timeout)
    try:
        headers = {}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else \
                json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return ApiResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def curl_unix(sock_path: Path, method: str, path: str, body=None, timeout: float = CTL_TIMEOUT) -> ApiResponse:
    """The same request with curl --unix-socket: the control API must work with plain curl."""
    with tempfile.NamedTemporaryFile() as out, tempfile.NamedTemporaryFile() as hdr:
        argv = ["curl", "-sS", "--max-time", str(int(timeout)), "--unix-socket", str(sock_path),
                "-X", method, "-o", out.name, "-D", hdr.name, "-w", "%{http_code}"]
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            argv += ["-H", "Content-Type: application/json", "--data-binary",
                     data if isinstance(data, str) else data.decode()]
        argv.append("http://localhost" + path)
        r = lib.run(argv, check=False, timeout=timeout + 10)
        assert r.returncode == 0, f"curl failed (exit {r.returncode}): {r.stderr}"
        headers = {}
        for line in Path(hdr.name).read_text(errors="replace").splitlines()[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return ApiResponse(int(r.stdout.strip()), headers, Path(out.name).read_bytes(), via="curl")


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------


def daemon_env(docker_config: Path, extra: dict | None = None) -> dict[str, str]:
    """No proxies, DOCKER_CONFIG = a test dir (no credentials of the machine's user), fast
    retries (EROSTREAM_RETRY_MAX, EROSTREAM_RETRY_BASE_MS as in the registry client)."""
    env = reg_tools.isolated_env(docker_config, {"EROSTREAM_RETRY_MAX": "3", "EROSTREAM_RETRY_BASE_MS": "20"})
    env.update(extra or {})
    return env


class Daemon:
    """One erostreamd of a test: its cache dir, control socket, holder socket and logs. The same
    object can be stopped, killed and started again (same paths), as a restarted service is."""

    def __init__(self, cache_dir: Path, logdir: Path, sockdir: Path, env: dict, *,
                 frontend: str = "fanotify", log_level: str = "debug", extra_args: Sequence[str] = (),
                 name: str = "erostreamd", binary: Sequence[str] | None = None):
        # binary: the command to run instead of BUILD/daemon/erostreamd (the fixtures' own
        # self-test runs a stand-in through the same start/stop/API code)
        self.binary = list(binary) if binary else None
        self.cache_dir = Path(cache_dir)
        self.logdir = Path(logdir)
        self.sockdir = Path(sockdir)
        self.env = env
        self.frontend = frontend
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.name = name
        self.socket = self.sockdir / f"{name}.sock"
        self.holder_socket = self.sockdir / f"{name}-holder.sock"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exit_codes: list[int] = []
        self.known: set[tuple[int, int]] = set()  # every process seen belonging to this daemon
        self.mounts: list[Path] = []  # mountpoints this object mounted (for the cleanup)

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def log(self) -> Path:
        return self.logdir / f"{self.name}.{self.starts}.log"

    def argv(self) -> list[str]:
        return [*(self.binary or [str(erostreamd_binary())]), "--cache-dir", str(self.cache_dir), "--socket", str(self.socket),
                "--holder-socket", str(self.holder_socket), "--frontend", self.frontend,
                "--log-level", self.log_level, *self.extra_args]

    def start(self, timeout: float = READY_TIMEOUT) -> "Daemon":
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.proc = start_with_ready_fd(self.argv(), env=self.env, log=self.log, timeout=timeout,
                                        what=f"erostreamd ({self.name})")
        self.track()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def track(self) -> None:
        """Remembers the daemon's processes (itself, its holder) for the cleanup."""
        if self.running():
            st = proc_start_time(self.proc.pid)
            if st is not None:
                self.known.add((self.proc.pid, st))
            self.known |= descendants(self.proc.pid)
        self.known |= self.other_processes()

    def other_processes(self) -> set[tuple[int, int]]:
        """Processes holding our cache files or our sockets, besides the daemon itself."""
        found = pids_using([self.cache_dir], [self.socket, self.holder_socket])
        if self.proc is not None:
            found = {(p, s) for p, s in found if p != self.proc.pid}
        return found

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (clean shutdown; the mounts stay, served through the holder), SIGKILL after
        the deadline. Returns the exit status (negative: killed by that signal)."""
        assert self.proc is not None
        self.track()
        if self.proc.poll() is None:
            terminate_pid(self.proc.pid, proc_start_time(self.proc.pid), timeout)
        code = self.proc.wait(timeout=STOP_TIMEOUT)
        self.exit_codes.append(code)
        return code

    def kill(self) -> int:
        """SIGKILL of the daemon process alone (the crash of the tests)."""
        assert self.proc is not None
        self.track()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=STOP_TIMEOUT)
        self.exit_codes.append(code)
        return code

    def restart(self) -> "Daemon":
        if self.running():
            self.stop()
        return self.start()

    def cleanup(self) -> list[str]:
        """Unmounts what this object mounted (through the daemon, else umount2 with a lazy
        fallback), stops the daemon and every process of it that is left (the holder). Returns
        notes on what had to be forced."""
        notes = []
        for mnt in reversed(self.mounts):
            if not lib.is_mountpoint(mnt):
                continue
            if self.running():
                r = self.ctl("umount", str(mnt), timeout=60)
                if r.returncode == 0 and not lib.is_mountpoint(mnt):
                    continue
                notes.append(f"erostreamctl umount {mnt}: exit {r.returncode}: {r.stderr.strip()}")
            try:
                lib.umount(mnt)
            except OSError as e:
                notes.append(f"umount2({mnt}): {e}")
        if self.proc is not None and self.proc.poll() is None:
            self.track()
            terminate_pid(self.proc.pid, proc_start_time(self.proc.pid))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.known |= self.other_processes()
        for pid, st in sorted(self.known):
            if proc_alive(pid, st):
                how = terminate_pid(pid, st)
                if how == "killed":
                    notes.append(f"pid {pid} needed SIGKILL")
        return notes

    # -- erostreamctl ---------------------------------------------------------------------------

    def ctl(self, *args: object, timeout: float = CTL_TIMEOUT) -> subprocess.CompletedProcess:
        return lib.run([erostreamctl_binary(), "--socket", self.socket, *args], check=False, timeout=timeout,
                       env=self.env)

    def describe(self, r) -> str:
        return (f"$ {shlex.join(r.args)}\n-> exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\n"
                f"stderr:\n{r.stderr[-3000:]}\n{self.log_digest()}")

    def log_digest(self) -> str:
        """The daemon log's warnings and errors (last 20) and its last 20 lines."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no daemon log at {self.log})"
        bad = [l for l in lines if " error:" in l or " warn" in l or " critical:" in l]
        return (f"--- daemon log {self.log}: warnings and errors:\n" + "\n".join(bad[-20:]) +
                "\n--- last lines:\n" + "\n".join(lines[-20:]))

    def mount(self, ref: str, mountpoint: Path, *, prefetch: str | None = "none",
              frontend: str | None = None, ok: bool = True):
        """erostreamctl mount REF MOUNTPOINT [--frontend F] [--prefetch P]. With ok (default) a
        failure raises AssertionError with the daemon's log, and the mountpoint must be a mount."""
        mountpoint = Path(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        args = ["mount", ref, str(mountpoint)]
        if frontend:
            args += ["--frontend", frontend]
        if prefetch:
            args += ["--prefetch", prefetch]
        r = self.ctl(*args)
        if lib.is_mountpoint(mountpoint) and mountpoint not in self.mounts:
            self.mounts.append(mountpoint)
        self.track()
        if ok:
            assert r.returncode == 0, f"mount failed:\n{self.describe(r)}"
            assert lib.is_mountpoint(mountpoint), f"erostreamctl mount exited 0 but {mountpoint} is no mount"
        return r

    def umount(self, mountpoint: Path, ok: bool = True):
        r = self.ctl("umount", str(mountpoint))
        if ok:
            assert r.returncode == 0, f"umount failed:\n{self.describe(r)}"
            assert not lib.is_mountpoint(mountpoint), f"erostreamctl umount exited 0 but {mountpoint} is mounted"
        return r

    def stats(self) -> dict:
        """`erostreamctl stats --json`: one object with integer counters (STAT_KEYS)."""
        r = self.ctl("stats", "--json")
        assert r.returncode == 0, f"stats failed:\n{self.describe(r)}"
        try:
            s = json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"erostreamctl stats --json printed no JSON ({e}):\n{r.stdout[:2000]}")
        assert isinstance(s, dict), f"stats --json is not an object: {s!r}"
        for k in ("bytes_fetched", "chunks_fetched", "cache_hits", "cache_misses", "errors"):
            assert isinstance(s.get(k), int) and s[k] >= 0, f"stats --json: {k} = {s.get(k)!r}\n{s}"
        return s

    def list_mounts(self) -> list[dict]:
        r = self.api("GET", "/v1/mounts")
        assert r.status == 200, f"GET /v1/mounts: {r.status} {r.text}"
        return r.json()

    def mount_info(self, mountpoint: Path) -> dict:
        for m in self.list_mounts():
            if m.get("mountpoint") == str(mountpoint):
                return m
        raise AssertionError(f"{mountpoint} not in GET /v1/mounts")

    # -- control API ---------------------------------------------------------------------------

    def api(self, method: str, path: str, body=None, timeout: float = CTL_TIMEOUT) -> ApiResponse:
        return unix_http(self.socket, method, path, body, timeout)

    def curl(self, method: str, path: str, body=None, timeout: float = CTL_TIMEOUT) -> ApiResponse:
        return curl_unix(self.socket, method, path, body, timeout)

    def health(self) -> dict:
        """GET /health must answer 200 {"status": "ok", ...} and the process must be alive."""
        assert self.running(), \
            f"erostreamd is not running (exit {self.proc and self.proc.poll()})\n{self.log_digest()}"
        r = self.api("GET", "/health", timeout=30)
        assert r.status == 200, f"GET /health: {r.status} {r.text}"
        h = r.json()
        assert h.get("status") == "ok", f"GET /health: {h}"
        return h


# ---------------------------------------------------------------------------------------------
# Prometheus text format
# ---------------------------------------------------------------------------------------------

_METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE_RE = re.compile(
    rf"^({_METRIC})(?:\{{((?:{_LABEL}={_LABEL_VALUE}(?:,{_LABEL}={_LABEL_VALUE})*,?)?)\}})?"
    r" ([^ ]+)(?: (-?[0-9]+))?$")
_LABEL_PAIR_RE = re.compile(rf"({_LABEL})=({_LABEL_VALUE})")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
_SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")


def _prom_float(s: str) -> float:
    if s in ("+Inf", "Inf"):
        return float("inf")
    if s == "-Inf":
        return float("-inf")
    if s == "NaN":
        return float("nan")
    if not re.fullmatch(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", s):
        raise ValueError(f"bad sample value {s!r}")
    return float(s)


@dataclass
class Metrics:
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def value(self, name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        if key in self.samples:
            return self.samples[key]
        hits = [v for (n, _), v in self.samples.items() if n == name]
        if not labels and len(hits) == 1:
            return hits[0]
        raise KeyError(f"no sample {name}{labels or ''} (names: {sorted({n for n, _ in self.samples})})")

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


def parse_prometheus(text: str) -> Metrics:
    """Parses the Prometheus text exposition format (0.0.4) strictly: HELP/TYPE comments, one
    TYPE per family placed before its samples, sample lines `name{labels} value [timestamp]`,
    no duplicate series, a final newline. Raises ValueError naming the line."""
    m = Metrics()
    if text and not text.endswith("\n"):
        raise ValueError("the exposition does not end with a newline")
    seen_family_samples: set[str] = set()
    helps: set[str] = set()

    def family_of(name: str) -> str | None:
        if name in m.types:
            return name
        for suf in _SUFFIXES:
            if name.endswith(suf) and name[: -len(suf)] in m.types:
                return name[: -len(suf)]
        return None

    for no, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(_METRIC, name):
                    raise ValueError(f"line {no}: bad metric name {name!r}: {line!r}")
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3].strip() not in _TYPES:
                        raise ValueError(f"line {no}: bad TYPE line {line!r}")
                    if name in m.types:
                        raise ValueError(f"line {no}: second TYPE for {name}")
                    if name in seen_family_samples:
                        raise ValueError(f"line {no}: TYPE for {name} after its samples")
                    m.types[name] = parts[3].strip()
                else:
                    if name in helps:
                        raise ValueError(f"line {no}: second HELP for {name}")
                    helps.add(name)
            continue
        s = _SAMPLE_RE.match(line)
        if not s:
            raise ValueError(f"line {no}: not a sample line: {line!r}")
        name, labels_s, value_s, _ = s.groups()
        labels = tuple(sorted((k, v[1:-1]) for k, v in _LABEL_PAIR_RE.findall(labels_s or "")))
        if len({k for k, _ in labels}) != len(labels):
            raise ValueError(f"line {no}: a label given twice: {line!r}")
        key = (name, labels)
        if key in m.samples:
            raise ValueError(f"line {no}: duplicate series {name}{dict(labels)}")
        m.samples[key] = _prom_float(value_s)
        seen_family_samples.add(family_of(name) or name)
    return m


# ---------------------------------------------------------------------------------------------
# Test images
# ---------------------------------------------------------------------------------------------

KIB, MIB = 1 << 10, 1 << 20
N_DATA_FILES = 40


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def data_file_size(i: int) -> int:
    # irregular sizes from 48 KiB to ~555 KiB: none a multiple of the block size
    return 48 * KIB + i * 13 * KIB + 7 * i + 1


def base_layer(seed: int = 7) -> list[Entry]:
    """The shared base: 40 files of random bytes (one chunk each at the default 1 MiB chunk
    size), a 5 MiB random file (six chunks), inlined and not inlined small files, a compressible
    file, a symlink, a hardlink and an xattr."""
    e = [Entry("dir", "etc"), Entry("dir", "data"), Entry("dir", "big"), Entry("dir", "usr"),
         Entry("dir", "usr/lib")]
    e.append(Entry("file", "etc/small.txt", b"small enough to live in the metadata blob\n"))
    e.append(Entry("file", "etc/mid.bin", _rand(seed, 3000)))
    for i in range(N_DATA_FILES):
        e.append(Entry("file", f"data/f{i:02d}", _rand(seed * 1000 + i, data_file_size(i)),
                       mode=0o755 if i % 7 == 0 else 0o644))
    e.append(Entry("file", "big/blob", _rand(seed + 99, 5 * MIB + 4321)))
    e.append(Entry("file", "usr/lib/text", (b"erostream daemon test pattern line\n" * 45000)[: 3 * MIB // 2]))
    e.append(Entry("symlink", "etc/link", target="../data/f01"))
    e.append(Entry("hardlink", "data/f00-link", target="data/f00"))
    e.append(Entry("file", "etc/attr", b"with an xattr\n", xattrs={"user.erostream": "daemon"}))
    return e


def upper_layer(name: str, seed: int) -> list[Entry]:
    """An image's own top layer: a whiteout and a replacement in the base's directory, and ten
    random files of its own."""
    e = [Entry("dir", "data"), Entry("dir", "app"),
         Entry("whiteout", f"data/f{N_DATA_FILES - 1:02d}"),
         Entry("file", f"data/f{N_DATA_FILES - 2:02d}", _rand(seed, 70 * KIB + 5)),
         Entry("file", "app/name", f"image {name}\n".encode())]
    for i in range(10):
        e.append(Entry("file", f"app/g{i:02d}", _rand(seed * 100 + i, 100 * KIB + 333 * i)))
    return e


@dataclass
class StreamImage:
    """A source image, its erostream artifact (local OCI layout) and its umoci reference."""
    name: str
    layout: Path
    tag: str
    image: lib.Image
    reference: Path  # umoci unpack rootfs
    skip_mtime: set[str]
    artifact_layout: Path
    artifact_tag: str
    artifact_digest: str
    artifact_manifest: dict
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # rel -> (size, sha256 hex)

    @property
    def source_ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def artifact_ref(self) -> str:
        return f"oci:{self.artifact_layout}:{self.artifact_tag}"

    @property
    def artifact_ref_by_digest(self) -> str:
        return f"oci:{self.artifact_layout}@{self.artifact_digest}"

    @property
    def meta_blob(self) -> dict:
        return self.artifact_manifest["layers"][0]

    @property
    def data_blobs(self) -> list[dict]:
        return self.artifact_manifest["layers"][1:]

    def data_bytes(self) -> int:
        return sum(d["size"] for d in self.data_blobs)

    def artifact_bytes(self) -> int:
        return sum(d["size"] for d in self.artifact_manifest["layers"])

    def expected(self, rel: str) -> bytes:
        return (self.reference / rel).read_bytes()

    def regular_files(self, prefix: str = "") -> list[str]:
        return sorted(r for r in self.files if r.startswith(prefix))


def reference_files(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def build_stream_images(root: Path, mkfs: lib.Mkfs, names: Sequence[str] = ("a", "b"),
                        convert_opts: Sequence[str] = ()) -> dict[str, StreamImage]:
    """Images NAME = [base, upper NAME] in one layout (tags = names), converted by
    erostream-mkfs into root/artifacts (tag art-NAME), unpacked by umoci as references."""
    root = Path(root)
    layout_dir = root / "images"
    layout = Layout(layout_dir)
    base = base_layer()
    out = {}
    for i, name in enumerate(names):
        desc = write_image(layout, [base, upper_layer(name, 500 + i)])
        layout.tag(desc, name)
    arts = root / "artifacts"
    for name in names:
        mkfs("convert", "--quiet", *convert_opts, f"oci:{layout_dir}:{name}", f"oci:{arts}:art-{name}")
        digest, manifest = lib.artifact_manifest(arts, f"art-{name}")
        work = root / f"work-{name}"
        image = lib.image_from_layout(layout_dir, name, work)
        reference = lib.umoci_unpack(layout_dir, name, work / "bundle")
        out[name] = StreamImage(name, layout_dir, name, image, reference, lib.implicit_dirs(image.tar_paths),
                                arts, f"art-{name}", digest, manifest, reference_files(reference))
    return out


# ---------------------------------------------------------------------------------------------
# Publication in a registry
# ---------------------------------------------------------------------------------------------


@dataclass
class Published:
    host: str
    repo: str
    tag: str
    image_digest: str
    artifact_digest: str

    def image_ref(self, host: str | None = None, by_digest: bool = False) -> str:
        h = host or self.host
        return f"docker://{h}/{self.repo}@{self.image_digest}" if by_digest else f"docker://{h}/{self.repo}:{self.tag}"

    def artifact_ref(self, host: str | None = None) -> str:
        return f"docker://{host or self.host}/{self.repo}@{self.artifact_digest}"

    def blob_path(self, digest: str) -> str:
        """Regex for the fault proxy's rules: GETs of this blob."""
        return rf"^/v2/{re.escape(self.repo)}/blobs/{re.escape(digest)}$"


def publish(registry_host: str, img: StreamImage, repo: str, tmp: Path, *, referrers_tag: bool = True,
            creds: tuple[str, str] | None = None) -> Published:
    """The source image pushed with skopeo (byte-identical, --preserve-digests), the artifact
    uploaded with the tests' own registry client (so that pull-side tests do not depend on
    erostream-mkfs's push), and, with referrers_tag, the referrers tag-schema index (tag
    sha256-<hex of the image digest>) that discovery reads on a registry without referrers API.
    creds: (user, password) for a registry with authentication."""
    push_oci(img.layout, img.tag, registry_host, repo, dest_tag=img.tag, creds=creds, env=skopeo_env(tmp))
    c = RegistryClient(registry_host, creds)
    m = img.artifact_manifest
    for d in [m["config"], *m["layers"]]:
        data = lib.blob_path(img.artifact_layout, d["digest"]).read_bytes()
        assert c.put_blob(repo, data) == d["digest"]
    raw = lib.blob_path(img.artifact_layout, img.artifact_digest).read_bytes()
    c.put_manifest(repo, img.artifact_digest, raw, m.get("mediaType", MT_MANIFEST))
    if referrers_tag:
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
            {"mediaType": m.get("mediaType", MT_MANIFEST), "digest": img.artifact_digest, "size": len(raw),
             "artifactType": m.get("artifactType", ARTIFACT_TYPE)}]}
        c.put_manifest(repo, img.image.manifest_digest.replace(":", "-"),
                       json.dumps(index, separators=(",", ":")).encode(), MT_INDEX)
    return Published(registry_host, repo, img.tag, img.image.manifest_digest, img.artifact_digest)


# ---------------------------------------------------------------------------------------------
# Checked reads
# ---------------------------------------------------------------------------------------------


@dataclass
class ReadOutcome:
    path: str
    ok_bytes: int = 0
    eio: int = 0
    wrong: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.wrong and not self.other_errors


def describe_mismatch(got: bytes, want: bytes, offset: int) -> str:
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    region = got[i:min(len(got), i + 4096)]
    kind = "ZEROS where data should be" if region and region.count(0) == len(region) else "WRONG bytes"
    if len(got) != len(want) and i == n:
        kind = f"short read ({len(got)} of {len(want)} bytes)"
    return f"{kind} at byte {offset + i} (read of {len(want)} bytes at {offset})"


def checked_read(path: Path, expected: bytes, block: int = 64 * KIB, offsets: Iterable[int] | None = None,
                 drop_cache: bool = False) -> ReadOutcome:
    """Reads `path` block by block with pread and compares every block with `expected`. EIO is
    counted (acceptable where the daemon cannot get the data); any other error and any wrong
    byte is recorded. drop_cache first drops the file's page cache (posix_fadvise DONTNEED) so
    the reads go down to the daemon's cache files."""
    out = ReadOutcome(str(path))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        out.other_errors.append(f"open: {e}")
        return out
    try:
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        size = len(expected)
        for off in (offsets if offsets is not None else range(0, max(size, 1), block)):
            want = expected[off:off + block]
            try:
                got = os.pread(fd, block, off)
            except OSError as e:
                if e.errno == errno.EIO:
                    out.eio += 1
                else:
                    out.other_errors.append(f"pread at {off}: {e}")
                continue
            if got != want:
                out.wrong.append(describe_mismatch(got, want, off))
            else:
                out.ok_bytes += len(got)
    finally:
        os.close(fd)
    return out


def drop_file_cache(root: Path) -> None:
    """posix_fadvise(DONTNEED) on every regular file under root: later reads go to the device
    (the daemon's cache files) again instead of the mount's page cache."""
    for p in Path(root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_tree_matches(img: StreamImage, mnt: Path) -> None:
    lib.assert_same_tree(img.reference, mnt, skip_mtime=img.skip_mtime)


def assert_contents_match(img: StreamImage, mnt: Path, drop_cache: bool = True) -> None:
    """Every regular file of the reference reads back with its exact bytes (block by block)."""
    problems = []
    for rel in img.regular_files():
        o = checked_read(mnt / rel, img.expected(rel), drop_cache=drop_cache)
        if not o.clean or o.eio:
            problems.append(f"/{rel}: {o.eio} EIO, {o.wrong[:3]} {o.other_errors[:3]}")
    assert not problems, f"{len(problems)} file(s) do not read back correctly:\n  " + "\n  ".join(problems[:30])


class ReaderThreads:
    """Threads that each read files block by block and check every block (checked_read); any
    exception inside a thread is kept and reported."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.outcomes: list[ReadOutcome] = []
        self.exceptions: list[str] = []
        self.first_block = threading.Event()
        self._lock = threading.Lock()

    def add(self, fn, *args) -> None:
        def run():
            try:
                for o in fn(*args):
                    with self._lock:
                        self.outcomes.append(o)
                    self.first_block.set()
            except BaseException as e:  # noqa: BLE001 - reported by check()
                with self._lock:
                    self.exceptions.append(f"{type(e).__name__}: {e}")
                self.first_block.set()
        t = threading.Thread(target=run, daemon=True)
        self.threads.append(t)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float = READER_TIMEOUT) -> None:
        import time
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(t.is_alive() for t in self.threads)
        assert not stuck, f"{stuck} reader thread(s) still blocked {timeout:.0f}s later (a read never answered?)"

    def wrong(self) -> list[str]:
        return [f"{o.path}: {w}" for o in self.outcomes for w in o.wrong] + \
               [f"{o.path}: {e}" for o in self.outcomes for e in o.other_errors] + self.exceptions


# ---------------------------------------------------------------------------------------------
# pytest fixtures
# ---------------------------------------------------------------------------------------------


def start_readers(img, mnt: Path, n_threads: int, exclude: tuple[str, ...] = ()) -> ReaderThreads:
    """n_threads threads reading every regular file of img under mnt (but `exclude`), each a
    share of them, every block checked; started."""
    files = [f for f in img.regular_files() if f not in exclude]
    readers = ReaderThreads()

    def read_share(share):
        for rel in share:
            yield checked_read(mnt / rel, img.expected(rel), block=64 * KIB)

    for i in range(n_threads):
        readers.add(read_share, files[i::n_threads])
    readers.start()
    return readers


@pytest.fixture(scope="session")
def stream_images(tmp_path_factory, mkfs) -> dict[str, StreamImage]:
    """Images "a" and "b" (shared base layer), converted, with umoci references."""
    mkfs.require()
    return build_stream_images(tmp_path_factory.mktemp("stream-images"), mkfs)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 (no auth), for the whole session."""
    d = tmp_path_factory.mktemp("daemon-registry")
    with DockerRegistry(d / "reg") as reg:
        yield reg


@pytest.fixture(scope="session")
def published(registry, stream_images, tmp_path_factory) -> dict[str, Published]:
    """Both images and their artifacts in the registry (repos daemon/a, daemon/b), discoverable
    through the referrers tag schema."""
    d = tmp_path_factory.mktemp("publish")
    return {n: publish(registry.host, img, f"daemon/{n}", d) for n, img in stream_images.items()}


@pytest.fixture(params=["oci", "registry"])
def source(request):
    """Where the daemon gets artifacts from: "oci" (local layouts) or "registry" (Debian's
    docker-registry). Returns ref(name) -> the digest-pinned artifact reference of image NAME."""
    images = request.getfixturevalue("stream_images")
    if request.param == "oci":
        def ref(name: str) -> str:
            return images[name].artifact_ref
    else:
        pubs = request.getfixturevalue("published")

        def ref(name: str) -> str:
            return pubs[name].artifact_ref()
    ref.kind = request.param
    return ref


@pytest.fixture
def proxies():
    """proxies(upstream_host) -> a started FaultProxy, stopped after the test."""
    started: list[FaultProxy] = []

    def make(upstream: str, name: str = "proxy") -> FaultProxy:
        p = FaultProxy(upstream, name=name).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def cache_dir(work) -> Iterator[Path]:
    with cache_directory(work) as d:
        yield d


@pytest.fixture
def docker_config_dir(work) -> Path:
    d = work / "docker-config"
    reg_tools.write_docker_config(d)
    return d


@pytest.fixture
def daemons(work, docker_config_dir):
    """daemons(cache_dir=None, name=..., env_extra=..., **kw) -> a started Daemon; every daemon
    made here is cleaned up after the test (mounts, daemon, holder)."""
    made: list[Daemon] = []
    sockdir = short_socket_dir()
    stack = contextlib.ExitStack()

    def make(cache_dir: Path | None = None, *, name: str | None = None, env_extra: dict | None = None,
             start: bool = True, **kw) -> Daemon:
        name = name or f"erostreamd{len(made) + 1}"
        if cache_dir is None:
            cache_dir = stack.enter_context(cache_directory(work, f"cache-{name}"))
        d = Daemon(cache_dir, work / "logs", sockdir, daemon_env(docker_config_dir, env_extra), name=name, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    try:
        yield make
    finally:
        notes = []
        for d in reversed(made):
            notes += d.cleanup()
        stack.close()
        shutil.rmtree(sockdir, ignore_errors=True)
        if notes:
            print("daemon cleanup:\n  " + "\n  ".join(notes), file=sys.stderr)


@pytest.fixture
def daemon(daemons) -> Daemon:
    return daemons()
