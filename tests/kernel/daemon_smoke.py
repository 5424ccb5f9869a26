#!/usr/bin/python3
"""Kernel smoke test of erostreamd (fanotify front end, this machine's kernel, root).

Builds a small two-layer image, converts it with erostream-mkfs, starts erostreamd with
--ready-fd, mounts the artifact with erostreamctl (prefetch off) and checks:

  1. a cold read of one small file is right and fetches only its chunks (stats);
  2. with the daemon frozen (SIGSTOP), readers of other files block inside the kernel waiting
     for their fanotify event; the daemon is then SIGKILLed while they wait: the fd holder keeps
     the group open, so they go on waiting instead of reading holes as zeros;
  3. a restarted daemon (same sockets, same cache) takes the pending events from the holder,
     serves the existing mount without remounting, and every reader gets the right bytes;
  4. everything reads back right; umount, SIGTERM: exit status 0, and the holder goes away.

Exit 0 on success, 1 on any failure (never a skip). Runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import erostream_testlib as t  # noqa: E402

BUILD = t.build_dir()
DAEMON = BUILD / "daemon" / "erostreamd"
CTL = BUILD / "daemon" / "erostreamctl"
DEADLINE = 30.0  # seconds for anything this test waits for


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


def wait_until(pred, what: str, timeout: float = DEADLINE) -> None:
    """Polls a condition on a deadline (the condition is what is awaited, not time)."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise Failure(f"timed out waiting for: {what}")
        time.sleep(0.01)


class Daemon:
    def __init__(self, work: Path):
        self.work = work
        self.sock = work / "run" / "d.sock"
        self.holder_sock = work / "run" / "h.sock"
        self.cache = work / "cache"
        self.log = open(work / "erostreamd.log", "ab")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [DAEMON, "--cache-dir", self.cache, "--socket", self.sock, "--holder-socket", self.holder_sock,
             "--ready-fd", str(w), "--log-level", "debug"],
            pass_fds=(w,), stdout=self.log, stderr=self.log)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            line = f.readline()
        check(line == b"READY\n", f"erostreamd did not get ready (got {line!r}); see {self.work}/erostreamd.log")

    def ctl(self, *args: str, check_rc: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([CTL, "--socket", self.sock, *args], capture_output=True, text=True, timeout=DEADLINE)
        if check_rc and res.returncode != 0:
            raise Failure(f"erostreamctl {' '.join(args)}: rc {res.returncode}: {res.stderr}")
        return res

    def stats(self) -> dict:
        return json.loads(self.ctl("stats", "--json").stdout)


def blocked_in_fanotify(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "fanotify_handle_event"
    except OSError:
        return False


def holder_listening(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


READER = """
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while b := f.read(1 << 16):
        h.update(b)
print(h.hexdigest())
"""


def main() -> int:
    if os.geteuid() != 0:
        print("FAIL: needs root (mount(2), fanotify pre-content)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="erostream-smoke-", dir="/tmp"))
    (work / "run").mkdir()
    mnt = work / "mnt"
    mnt.mkdir()
    d = Daemon(work)
    mounted = False
    try:
        rnd = random.Random(4)
        files = {f"data/f{i}": rnd.randbytes(300_000 + i * 250_000) for i in range(6)}
        files["etc/motd"] = b"streamed\n" * 100
        lower = t.Layer()
        lower.dir("data")
        lower.dir("etc")
        for name in ("data/f0", "data/f1", "data/f2", "etc/motd"):
            lower.file(name, files[name])
        upper = t.Layer()
        upper.dir("data")
        for name in ("data/f3", "data/f4", "data/f5"):
            upper.file(name, files[name])
        t.build_image(work / "src", "v1", [lower, upper], workdir=work / "tars")
        t.run([t.mkfs_binary(), "convert", "--quiet", "--chunk-size", "256k", f"oci:{work}/src:v1",
               f"oci:{work}/art:v1"])

        d.start()
        d.ctl("mount", f"oci:{work}/art:v1", str(mnt), "--prefetch", "none")
        mounted = True
        listed = json.loads(d.ctl("list", "--json").stdout)
        check(len(listed) == 1 and listed[0]["mountpoint"] == str(mnt), f"list: {listed}")

        # 1. One small file: a few chunks, not the image.
        check((mnt / "data/f0").read_bytes() == files["data/f0"], "data/f0 content")
        s = d.stats()
        total = sum(len(v) for v in files.values())
        check(0 < s["bytes_fetched"] < total // 3, f"fetched {s['bytes_fetched']} of {total} for one file")
        check(s["chunks_fetched"] <= 3, f"chunks fetched for one 300 kB file: {s['chunks_fetched']}")

        # 2. Readers wait for a frozen daemon; the daemon dies under them.
        d.proc.send_signal(signal.SIGSTOP)
        names = ["data/f2", "data/f4", "data/f5"]
        readers = {n: subprocess.Popen([sys.executable, "-c", READER, str(mnt / n)], stdout=subprocess.PIPE,
                                       text=True) for n in names}
        for n, p in readers.items():
            wait_until(lambda p=p: blocked_in_fanotify(p.pid), f"reader of {n} waiting for its fanotify event")
        d.proc.kill()
        d.proc.wait(timeout=DEADLINE)
        for n, p in readers.items():
            check(p.poll() is None, f"reader of {n} finished while no daemon was running: holes read as zeros?")

        # 3. A new daemon takes over the pending events and the mount.
        d.start()
        for n, p in readers.items():
            out, _ = p.communicate(timeout=DEADLINE)
            check(p.returncode == 0, f"reader of {n}: rc {p.returncode}")
            check(out.strip() == hashlib.sha256(files[n]).hexdigest(), f"reader of {n}: wrong bytes after restart")
        listed = json.loads(d.ctl("list", "--json").stdout)
        check(len(listed) == 1, f"mount not restored: {listed}")

        # 4. Everything reads back right.
        for n, content in files.items():
            check((mnt / n).read_bytes() == content, f"{n} content after restart")
        check(d.stats()["events_denied"] == 0, "events were denied")
        d.ctl("umount", str(mnt))
        mounted = False
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=DEADLINE)
        check(rc == 0, f"erostreamd exit status {rc} after SIGTERM")
        wait_until(lambda: not holder_listening(d.holder_sock), "the holder to exit after a clean stop without mounts")
        print("PASS: erostreamd smoke test")
        return 0
    except (Failure, t.CommandError, subprocess.TimeoutExpired) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        log = work / "erostreamd.log"
        if log.exists():
            sys.stderr.write(log.read_text(errors="replace")[-6000:])
        return 1
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        # A holder left behind (failure paths) goes once nothing is mounted and no daemon attached.
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
