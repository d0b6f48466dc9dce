"""``python -m benchmark.federation.reaper LAUNCHER_PID TAG``: once the launcher is gone,
kill every process carrying ``FEDVID_RUN_TAG=TAG`` (see :class:`engine.Processes`)."""

from __future__ import annotations

import os
import select
import sys
import time


def wait_for_exit(pid: int) -> None:
    """Block until ``pid`` has exited (pidfd where the kernel has it, else polling)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m benchmark.federation.reaper LAUNCHER_PID TAG", file=sys.stderr)
        return 2
    from benchmark.federation.engine import kill_tagged  # imported first: kill at once when it is time

    wait_for_exit(int(argv[0]))
    kill_tagged(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
