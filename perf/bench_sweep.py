"""A small Hydra sweep (`fedvid run -m seed=0,1,2` of the tiny config, 1 round each): old code
vs new, one after the other in one invocation.

    .venv/bin/python perf/bench_sweep.py [--old-ref ca4cd01] [--seeds 0,1,2] [--repeats 1] [--data-root PATH]

The old code is checked out with ``git worktree add --detach`` into a temporary directory
(removed afterwards with ``git worktree remove``) and run with ``PYTHONPATH`` pointing at it;
the new code is this work tree. Each sweep gets its own sweep directory. Prints per sweep:
its wall time (the whole `fedvid run -m` command), the sum over its jobs of the Flower/Ray
start-up the runs record (``systems.startup_s``: from the engine's start to the ServerApp's
``running``, which includes starting the SuperLink and Ray where a job starts them) and
each job's start-up, the SuperLink PIDs the jobs used, the per-job losses (same seed =>
same numbers, old and new), the load average; then the ratios new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sides import TINY_FEDERATION, alternating, old_tree  # noqa: E402

from benchmark.config import TINY_INPUT_OVERRIDES  # noqa: E402

#: the tiny federation of the tests: 3 clients, 2 per round, 1 step, 1 round, no evaluation
SWEEP = [*TINY_INPUT_OVERRIDES, *TINY_FEDERATION, "engine.echo_log=false"]


def run_sweep(code_dir: Path, sweep_dir: Path, data_root: str, seeds: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark.cli",
            "run",
            "-m",
            f"hydra.sweep.dir={sweep_dir}",
            f"data_root={data_root}",
            *SWEEP,
            f"seed={seeds}",
        ],
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"fedvid run -m in {code_dir} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        record = json.loads((job / "result.json").read_text())
        status = json.loads((job / "federation_status.json").read_text())
        rounds = [json.loads(line) for line in (job / "rounds.jsonl").read_text().splitlines()]
        jobs.append(
            {
                "startup_s": record["systems"]["startup_s"],
                "superlink_pid": (status.get("flower") or {}).get("superlink_pid"),  # absent in the old code
                "shared_start_s": (status.get("flower") or {}).get("start_s"),
                "losses": [r["loss"] for r in rounds],
            }
        )
    return {"wall_s": wall, "jobs": jobs}


def _shared_start(jobs: list[dict]) -> str:
    """Seconds the shared SuperLink + Ray head took to start, once per instance (new code only)."""
    starts = {(j["superlink_pid"], j["shared_start_s"]) for j in jobs if j["shared_start_s"] is not None}
    return " + ".join(f"{s:.1f} s" for _, s in sorted(starts, key=str)) or "n/a (one per job)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-ref", default="ca4cd01")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-root", default=None, help="default: a temporary folder (tiny sets generated once)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-sweep-") as tmp, old_tree(args.old_ref) as old:
        data_root = args.data_root or str(Path(tmp) / "data")
        for k, name in enumerate(alternating(args.repeats)):
            r = run_sweep(old if name == "old" else ROOT, Path(tmp) / f"sweep_{k}_{name}", data_root, args.seeds)
            results[name].append(r)
            startups = [j["startup_s"] or 0.0 for j in r["jobs"]]
            print(
                f"{name}: sweep wall {r['wall_s']:.1f} s, start-up {sum(startups):.1f} s "
                f"(per job {', '.join(f'{s:.1f}' for s in startups)}), "
                f"SuperLink PIDs {[j['superlink_pid'] for j in r['jobs']]}, "
                f"starting the shared SuperLink + Ray {_shared_start(r['jobs'])}, "
                f"losses {[[round(x, 4) for x in j['losses']] for j in r['jobs']]}, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    same = all(
        [j["losses"] for j in o["jobs"]] == [j["losses"] for j in n["jobs"]]
        for o in results["old"]
        for n in results["new"]
    )

    def mean(name: str, what) -> float:
        return sum(what(r) for r in results[name]) / len(results[name])

    wall_old, wall_new = mean("old", lambda r: r["wall_s"]), mean("new", lambda r: r["wall_s"])
    up_old = mean("old", lambda r: sum(j["startup_s"] or 0.0 for j in r["jobs"]))
    up_new = mean("new", lambda r: sum(j["startup_s"] or 0.0 for j in r["jobs"]))
    print(
        f"\nsweep of seeds {args.seeds}: start-up old {up_old:.1f} s, new {up_new:.1f} s, ratio new/old "
        f"{up_new / up_old:.2f}; sweep wall old {wall_old:.1f} s, new {wall_new:.1f} s, ratio new/old "
        f"{wall_new / wall_old:.2f}; same losses old and new: {same} "
        "(shared machine: compare only within this run)"
    )


if __name__ == "__main__":
    main()
