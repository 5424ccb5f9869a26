"""Shared helpers for the benchmark scripts under scripts/.

Measuring: each command runs under GNU time (/usr/bin/time, Debian package
`time`), which forks it, reaps it with wait4 and reports that rusage: user and
system CPU time and the peak RSS of the command (and of any descendants it
waited for). Wall time is taken here around the whole launch. Stdlib only.

Why not wait4 from Python directly: posix_spawn (and fork) start the child in
this interpreter's address space, and Linux carries the peak RSS of the
address space an exec replaces into the new program's ru_maxrss, so every
command would show at least the interpreter's own ~20 MiB.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Measurement:
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class CommandFailed(RuntimeError):
    pass


GNU_TIME = "/usr/bin/time"
# user s, system s, peak RSS KiB of the command, on the report file's last line.
GNU_TIME_FORMAT = "%U %S %M"


def run_measured(argv: list[str], *, stdout: str | None = None, stderr_log: Path,
                 cwd: Path | None = None) -> Measurement:
    """Run argv, stdout to the file `stdout` (default /dev/null), stderr appended to
    stderr_log. Raises CommandFailed (with the log's tail) on a non-zero exit."""
    exe = shutil.which(argv[0]) if "/" not in argv[0] else argv[0]
    if exe is None:
        raise CommandFailed(f"{argv[0]}: not found in PATH")
    if not os.access(GNU_TIME, os.X_OK):
        raise CommandFailed(f"{GNU_TIME}: missing (apt-get install time)")
    report_fd, report_name = tempfile.mkstemp(prefix="bench-rusage.")
    os.close(report_fd)
    report = Path(report_name)
    try:
        wall, code = _spawn_timed([GNU_TIME, "--quiet", "-f", GNU_TIME_FORMAT, "-o", str(report),
                                   exe, *argv[1:]], stdout, stderr_log, cwd)
        fields = report.read_text().split()
    finally:
        report.unlink(missing_ok=True)
    if code != 0:
        tail = ""
        try:
            tail = "\n".join(stderr_log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            pass
        raise CommandFailed(f"{shlex.join(argv)}: exit {code}\n{tail}")
    try:
        user_s, sys_s, maxrss_kib = float(fields[-3]), float(fields[-2]), int(fields[-1])
    except (IndexError, ValueError):
        raise CommandFailed(f"{shlex.join(argv)}: unreadable {GNU_TIME} report {fields!r}")
    return Measurement(wall, user_s, sys_s, maxrss_kib)


def _spawn_timed(argv: list[str], stdout: str | None, stderr_log: Path,
                 cwd: Path | None) -> tuple[float, int]:
    """Run argv with stdin from /dev/null; returns (wall seconds, exit code)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout or "/dev/null",
         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(stderr_log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
    ]
    old_cwd = None
    if cwd is not None:
        # posix_spawn has no portable chdir action in Python 3.11.
        old_cwd = os.getcwd()
        os.chdir(cwd)
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        wall = time.perf_counter() - t0
    finally:
        if old_cwd is not None:
            os.chdir(old_cwd)
    return wall, os.waitstatus_to_exitcode(status)


def sum_measurements(ms: list[Measurement]) -> Measurement:
    """Steps run one after another: times add up, the peak is the largest peak."""
    return Measurement(sum(m.wall_s for m in ms), sum(m.user_s for m in ms),
                       sum(m.sys_s for m in ms), max(m.maxrss_kib for m in ms))


@dataclass
class Series:
    """All measured runs of one step (warm-up excluded)."""
    runs: list[Measurement] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in self.runs)

    def lo(self, attr: str) -> float:
        return min(getattr(m, attr) for m in self.runs)

    def hi(self, attr: str) -> float:
        return max(getattr(m, attr) for m in self.runs)

    def size_median(self) -> int | None:
        return int(statistics.median(self.sizes)) if self.sizes else None


def drop_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(m.group(1)) / (1 << 20) if m else None
    except OSError:
        return None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def tool_version(argv: list[str], pattern: str = r"[0-9][0-9A-Za-z.+~:-]*") -> str:
    """First version-looking token of a tool's version output, or 'missing'."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (out.stdout + out.stderr).strip()
    m = re.search(pattern, text)
    return m.group(0) if m else text.splitlines()[0] if text else "unknown"


def git_describe(repo: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def mib(n: float) -> str:
    v = n / (1 << 20)
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def replace_marked_section(path: Path, name: str, body: str) -> None:
    """Put body between <!-- NAME:begin --> and <!-- NAME:end --> in path,
    appending the markers at the end when the file has none yet."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    elif i >= 0 or j >= 0:
        raise ValueError(f"{path}: unbalanced {name} markers")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
