"""Process and mount chores of scripts/demo, done the way the tests do them (by pid, through a
pidfd, with deadlines; no sleeps), so that the demo's shell code stays about erostream.

  demo_proc.py holder CACHE_DIR HOLDER_SOCKET DAEMON_PID
      prints "PID START" of each process other than the daemon that holds a file under CACHE_DIR
      or the unix socket bound at HOLDER_SOCKET open: erostreamd's fd holder
  demo_proc.py stop PID START TIMEOUT_S
      SIGTERM, then SIGKILL if PID has not exited TIMEOUT_S seconds later; only if PID is still
      the process that started at START (clock ticks after boot; "-" for a child not reaped yet)
  demo_proc.py start-time PID
  demo_proc.py umount MOUNTPOINT
      umount2, falling back to a lazy detach when the mount is busy
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import daemon_fixtures as df  # noqa: E402
import erostream_testlib as lib  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "holder" and len(args) == 3:
        daemon_pid = int(args[2])
        for pid, start in sorted(df.pids_using([Path(args[0])], [Path(args[1])])):
            if pid != daemon_pid:
                print(pid, start)
        return 0
    if cmd == "stop" and len(args) == 3:
        start = None if args[1] == "-" else int(args[1])
        print(df.terminate_pid(int(args[0]), start, float(args[2])))
        return 0
    if cmd == "start-time" and len(args) == 1:
        st = df.proc_start_time(int(args[0]))
        if st is None:
            return 1
        print(st)
        return 0
    if cmd == "umount" and len(args) == 1:
        lib.umount(Path(args[0]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
