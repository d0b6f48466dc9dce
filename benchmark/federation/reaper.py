"""Kill the processes of a run once its launcher is gone (standard library only).

``python reaper.py LAUNCHER_PID TAG`` (run by path, so it imports neither the package nor
torch) waits for ``LAUNCHER_PID`` to exit, then kills every process whose environment holds
``FEDVID_RUN_TAG=TAG`` and removes the run's shared-memory payload directories. :class:`benchmark.federation.engine.Processes` starts it, because a
SIGKILLed ``fedvid run`` cannot clean up itself and Ray's agents (children of the raylet)
ignore the parent-death signal.
"""

from __future__ import annotations

import glob
import os
import select
import shutil
import signal
import sys
import time

RUN_TAG_ENV = "FEDVID_RUN_TAG"
#: The address of a Ray head fedvid itself started on this machine (a sweep's,
#: benchmark.federation.sweep): ``RAY_ADDRESS`` equal to it is no cluster of other machines.
LOCAL_RAY_ENV = "FEDVID_LOCAL_RAY"
#: A run's payload files (benchmark.federation.payloads) live in SHARED_MEMORY/fedvid-<tag>-*.
SHARED_MEMORY = "/dev/shm"


def payload_directories(tag: str) -> list[str]:
    return glob.glob(os.path.join(SHARED_MEMORY, f"fedvid-{glob.escape(tag)}-*"))


def remove_payloads(tag: str) -> None:
    """Remove the shared-memory payload directories of the run (or sweep) tagged ``tag``."""
    for path in payload_directories(tag):
        shutil.rmtree(path, ignore_errors=True)


def tagged_processes(tag: str) -> list[int]:
    """PIDs (other than this process) whose environment holds ``FEDVID_RUN_TAG=tag``."""
    needle = f"{RUN_TAG_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tagged(tag: str, grace_s: float = 8.0, passes: int = 5) -> list[int]:
    """SIGTERM every process tagged ``tag``, SIGKILL those left after ``grace_s``; repeat
    (up to ``passes`` times) while tagged processes remain: one started during a pass (Ray
    spawns workers while its raylet is stopping) escapes that pass's scans.

    Then remove the run's shared-memory payload directories (nothing is left to write them).

    Returns the PIDs that needed SIGKILL."""
    killed: list[int] = []
    for _ in range(passes):
        killed += _kill_pass(tag, grace_s)
        if not tagged_processes(tag):
            break
    remove_payloads(tag)
    return killed


def _kill_pass(tag: str, grace_s: float) -> list[int]:
    for pid in tagged_processes(tag):
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (pids := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        send_signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


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
        print("usage: python reaper.py LAUNCHER_PID TAG", file=sys.stderr)
        return 2
    wait_for_exit(int(argv[0]))
    kill_tagged(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
