"""The embedded default (`fedvid run`, seed 0) end to end: old code vs new, side by side.

    .venv/bin/python perf/bench_demo.py [--old-ref 294c33e] [--repeats 1] [--data-root PATH]
        [--overrides KEY=VALUE ...] [--old-overrides KEY=VALUE ...]

Runs the complete `fedvid run` (Flower/Ray start-up, 4 rounds x 2 clients x 75 steps,
evaluation) of the code at ``--old-ref`` (``git archive`` into a temporary directory, its
own config) and of this work tree, alternating (old, new, new, old, ...), each in its own
run directory under a temporary folder. Prints per run: wall time of the command, the
record's Flower/Ray start-up, the sum of client compute, per-round losses and the learning
result (retrieval Top-1 and linear probe, trained vs random init vs chance, on both
synthetic sets), the CPU seconds of the run's whole process tree (:class:`TreeCPU`: the
figure to compare when other jobs share the machine), then the ratios new / old of the
median wall times and CPU seconds. Every run computes its
evaluation features itself (its own ``eval.feature_cache_dir``). ``--overrides`` go to both
sides (e.g. ``federation.rounds=2 evaluate=false``), ``--old-overrides`` to the old side only:
``--old-ref HEAD --old-overrides engine.client_resources.num_cpus=2`` compares this tree's
parallel clients with one client at a time, in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sides import alternating, old_tree

ROOT = Path(__file__).resolve().parent.parent


class TreeCPU:
    """CPU seconds of every process whose environment carries ``marker`` (the launcher and
    everything it starts inherit it: SuperLink, SuperExec, simulation, Ray, actors, decode
    workers), polled from /proc every ``interval`` s on a thread: per process the last value
    seen, so at most ``interval`` s of each process's end is missed."""

    def __init__(self, marker: str, interval: float = 0.5):
        self.marker, self.interval = marker.encode(), interval
        self.seen: dict[int, float] = {}
        self._done = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(self.interval):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                try:
                    if pid not in self.seen and not self._marked(pid):
                        continue
                    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                self.seen[pid] = (int(fields[11]) + int(fields[12])) / self._tick

    def _marked(self, pid: int) -> bool:
        return self.marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

    def __enter__(self) -> "TreeCPU":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def run_demo(code_dir: Path, run_dir: Path, data_root: str, overrides: list[str]) -> dict:
    marker = f"FEDVID_BENCH_DEMO={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(code_dir), marker.split("=")[0]: marker.split("=")[1]}
    start = time.perf_counter()
    with TreeCPU(marker) as cpu:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmark.cli",
                "run",
                f"hydra.run.dir={run_dir}",
                f"data_root={data_root}",
                "engine.echo_log=false",
                # each run computes its own features: a cache shared under data_root would hand the
                # second run the first one's (same random-init weights, same trained weights on a rerun)
                f"eval.feature_cache_dir={run_dir / 'feature_cache'}",
                *overrides,
            ],
            cwd=code_dir,
            env=env,
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"fedvid run in {code_dir} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads((run_dir / "result.json").read_text())
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "cpu_s": cpu.seconds, "record": record, "rounds": rounds}


def learning(record: dict) -> list[str]:
    """One line per downstream set: retrieval Top-1 and linear-probe video top-1, trained vs
    random init vs chance (names from the record's one reader, ``Evaluations.metrics()``)."""
    from leaderboard.record import Evaluations

    evaluations = record.get("evaluations", {})
    trained = Evaluations.from_json(evaluations).metrics()
    random_init = Evaluations.from_json(evaluations.get("random_init") or {}).metrics()
    datasets = sorted({k.split(".")[1] for k in trained if k.startswith("retrieval.")})
    out = []
    for ds in datasets:

        def pct(metrics: dict, key: str) -> str:
            value = metrics.get(key)
            return "n/a" if value is None else f"{100 * value:.1f}"

        out.append(
            f"{ds}: retrieval top-1 {pct(trained, f'retrieval.{ds}.top1')} % "
            f"(random init {pct(random_init, f'retrieval.{ds}.top1')}, chance {pct(trained, f'retrieval.{ds}.chance_top1')}); "
            f"linear probe {pct(trained, f'linear_probe.{ds}.video_top1')} % "
            f"(random init {pct(random_init, f'linear_probe.{ds}.video_top1')})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-ref", default="294c33e")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-root", default=os.environ.get("FEDVID_DATA_ROOT", str(ROOT / "data")))
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of both sides")
    parser.add_argument("--old-overrides", nargs="*", default=[], help="Hydra overrides of the old side only")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"old": [], "new": []}
    cpus: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-demo-") as tmp, old_tree(args.old_ref) as old:
        for k, name in enumerate(alternating(args.repeats)):
            code = old if name == "old" else ROOT
            extra = args.overrides + (args.old_overrides if name == "old" else [])
            r = run_demo(code, Path(tmp) / f"run_{k}_{name}", args.data_root, extra)
            walls[name].append(r["wall_s"])
            cpus[name].append(r["cpu_s"])
            rec = r["record"]
            compute = sum(c["compute_s"] for rd in r["rounds"] for c in rd["clients"])
            startup = rec["systems"].get("startup_s") or 0
            rounds_wall = sum(rd["round_wall_s"] for rd in r["rounds"])
            print(
                f"{name}: wall {r['wall_s']:.1f} s = start-up {startup:.1f} + rounds {rounds_wall:.1f} "
                f"(client compute {compute:.1f}) + the rest {r['wall_s'] - startup - rounds_wall:.1f} "
                f"(evaluation, Flower shutdown, writing); CPU of the run's processes {r['cpu_s']:.1f} s; "
                f"losses {[round(rd['loss'], 4) for rd in r['rounds']]}, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            for line in learning(rec):
                print(f"    {line}", flush=True)
    old_m, new_m = statistics.median(walls["old"]), statistics.median(walls["new"])
    old_c, new_c = statistics.median(cpus["old"]), statistics.median(cpus["new"])
    print(
        f"\nmedian wall: old {old_m:.1f} s, new {new_m:.1f} s, ratio new/old {new_m / old_m:.2f} "
        "(shared machine: compare only within this run)"
    )
    print(f"median CPU of the run's processes: old {old_c:.1f} s, new {new_c:.1f} s, ratio new/old {new_c / old_c:.2f}")


if __name__ == "__main__":
    main()
