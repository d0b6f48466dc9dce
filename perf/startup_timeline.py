"""Where a run's Flower/Ray start-up and shutdown go: one `fedvid run` (or `-m` sweep) of the
tiny config, watched from outside with timestamps.

    .venv/bin/python perf/startup_timeline.py [--seeds 0,1] [--code DIR] [--data-root PATH]

``--seeds 0`` runs a single run, ``--seeds 0,1`` a Hydra multirun. ``--code`` runs another
source tree (e.g. the old commit checked out by perf/sides.py) with ``PYTHONPATH``. Nothing in
the run is changed: every 0.1 s the script scans /proc for the processes that carry the
launcher's PID in ``FEDVID_LAUNCHER_PID`` (all of them: SuperLink, `flwr run`, SuperExec,
`flwr-simulation`, Ray head/GCS/raylet, Ray workers) and notes when each kind first appears,
when a Ray worker becomes a `ClientAppActor` and when it has torch loaded (libtorch mapped),
and when each is gone; it reads the jobs' ``federation_status.json`` (``connecting`` = the
ServerApp started, ``running`` = every client answered, ``completed``) and timestamps the
launcher's output lines (``engine.echo_log=true``). Prints one table per job, times in seconds
from the job's start (its run directory appearing; the launch for the first job).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sides import TINY_FEDERATION  # noqa: E402

from benchmark.config import TINY_INPUT_OVERRIDES  # noqa: E402

TINY = [*TINY_INPUT_OVERRIDES, *TINY_FEDERATION, "engine.echo_log=true"]

#: process kind by a substring of its command line (first match wins)
KINDS = [
    ("flower-superlink", "SuperLink"),
    ("flower-superexec", "SuperExec"),
    ("flwr-simulation", "flwr-simulation"),
    ("flwr run", "flwr run CLI"),
    ("gcs_server", "Ray GCS"),
    ("ClientAppActor", "Ray worker"),
    ("default_worker.py", "Ray worker"),
    ("ray::", "Ray worker"),
    ("raylet/raylet", "Ray raylet"),
    ("ray start", "ray start --head"),
]
#: output lines worth a timestamp (substring -> event name)
LINES = [
    ("Successfully started run", "StartRun answered (CLI)"),
    ("Starting Flower Simulation", "simulation log: started"),
    ("FedVidStrategy", "ServerApp: strategy ready"),
    ("round 1/", "round 1 done (log)"),
    ("federation done", "launcher: federation done"),
    ("wall time", "launcher: summary printed"),
]


def _cmdline(pid: str) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def _has_torch(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtorch_cpu" in f.read()
    except OSError:
        return False


class Watcher(threading.Thread):
    def __init__(self, launcher_pid: int, run_dirs: callable):
        super().__init__(daemon=True)
        self.needle = f"FEDVID_LAUNCHER_PID={launcher_pid}".encode()
        self.run_dirs = run_dirs
        self.events: list[tuple[float, str]] = []
        self.seen: dict[int, str] = {}
        self.actor: set[int] = set()
        self.torch: set[int] = set()
        self.states: dict[tuple[str, str], float] = {}
        self.dirs: dict[str, float] = {}
        self.done = threading.Event()

    def note(self, what: str, t: float | None = None) -> None:
        self.events.append((t or time.time(), what))

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            alive = set()
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if self.needle not in f.read().split(b"\0"):
                            continue
                    cmd = _cmdline(pid)
                except OSError:
                    continue
                kind = next((k for s, k in KINDS if s in cmd), None)
                if kind is None:
                    continue
                p = int(pid)
                alive.add(p)
                if p not in self.seen:
                    self.seen[p] = kind
                    self.note(f"{kind} started (pid {p})", now)
                if kind == "Ray worker" and "ClientAppActor" in cmd and p not in self.actor:
                    self.actor.add(p)
                    self.note(f"Ray worker is a ClientAppActor (pid {p})", now)
                if kind == "Ray worker" and p not in self.torch and _has_torch(pid):
                    self.torch.add(p)
                    self.note(f"Ray worker has torch loaded (pid {p})", now)
            for p in [p for p in self.seen if p not in alive and self.seen[p] != "gone"]:
                self.note(f"{self.seen[p]} gone (pid {p})", now)
                self.seen[p] = "gone"
            for d in self.run_dirs():
                self.dirs.setdefault(d.name, now)
                try:
                    state = json.loads((d / "federation_status.json").read_text()).get("state")
                except (OSError, ValueError):
                    continue
                if state and (d.name, state) not in self.states:
                    self.states[(d.name, state)] = now
                    self.note(f"status {state}", now)
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--code", default=str(ROOT))
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    args = parser.parse_args()
    sweep = "," in args.seeds
    with tempfile.TemporaryDirectory(prefix="fedvid-timeline-") as tmp:
        out = Path(tmp) / "out"
        where = ["-m", f"hydra.sweep.dir={out}"] if sweep else [f"hydra.run.dir={out}"]
        cmd = [sys.executable, "-m", "benchmark.cli", "run", *where, f"data_root={args.data_root}", *TINY]
        cmd.append(f"seed={args.seeds}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        t0 = time.time()
        proc = subprocess.Popen(
            cmd,
            cwd=args.code,
            env={**os.environ, "PYTHONPATH": args.code},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def run_dirs() -> list[Path]:
            if not sweep:
                return [out] if out.is_dir() else []
            return sorted((p for p in out.glob("[0-9]*") if p.is_dir()), key=lambda p: int(p.name))

        watch = Watcher(proc.pid, run_dirs)
        watch.start()
        tail: list[str] = []
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            tail = [*tail[-30:], line]
            for s, what in LINES:
                if s in line:
                    watch.note(what)
        proc.wait()
        watch.note(f"launcher exited (code {proc.returncode})")
        time.sleep(0.3)
        watch.done.set()
        watch.join()
        if proc.returncode != 0:
            print("".join(tail))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        starts = sorted((t, name) for name, t in watch.dirs.items())
        bounds = [t0] + [t for t, _ in starts[1:]] + [float("inf")]
        for k in range(max(1, len(starts))):
            begin, end = bounds[k], bounds[k + 1]
            print(f"\njob {k} (times from {'the launch' if k == 0 else 'its run dir appearing'}):")
            for t, what in sorted(watch.events):
                if begin <= t < end:
                    print(f"  {t - begin:7.2f} s  {what}")


if __name__ == "__main__":
    main()
