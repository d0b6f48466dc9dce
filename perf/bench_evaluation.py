"""The embedded default's evaluation (`fedvid evaluate`, conf/eval/default.yaml): old code vs new, side by side.

    .venv/bin/python perf/bench_evaluation.py --checkpoint RUN_DIR/checkpoints [--old-ref ca4cd01] [--repeats 2]

Evaluates one checkpoint (e.g. the one `fedvid run` left) with the code at ``--old-ref``
(``git archive`` into a temporary directory) and with this work tree, alternating (old, new,
new, old, ...), each with its own empty feature cache, so every run decodes the clips and
computes every feature itself: trained and random-init backbones on both synthetic sets,
retrieval, linear probe, perturbation robustness, plots. Prints per run the command's wall
time, the evaluation's own wall time and its per-dataset parts, checks that the
``evaluations`` blocks of old and new are identical, and prints the ratio new / old of the
median evaluation times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sides import alternating, old_tree

ROOT = Path(__file__).resolve().parent.parent


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def evaluate(code_dir: Path, run_dir: Path, checkpoint: str, data_root: str) -> tuple[float, float, dict]:
    """-> (wall s of `fedvid evaluate`, its CPU s with its decode workers, its evaluation.json)."""
    cpu = children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark.cli",
            "evaluate",
            f"checkpoint={checkpoint}",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            f"eval.feature_cache_dir={run_dir / 'feature_cache'}",
        ],
        cwd=code_dir,
        env={**os.environ, "PYTHONPATH": str(code_dir)},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    cpu = children_cpu_s() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"fedvid evaluate in {code_dir} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, cpu, json.loads((run_dir / "evaluation.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a fedvid-checkpoint/1 file or a run's checkpoints/ folder")
    parser.add_argument("--old-ref", default="ca4cd01")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-root", default=os.environ.get("FEDVID_DATA_ROOT", str(ROOT / "data")))
    args = parser.parse_args()
    checkpoint = str(Path(args.checkpoint).resolve())
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpus: dict[str, list[float]] = {"old": [], "new": []}
    blocks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-evaluation-") as tmp, old_tree(args.old_ref) as old:
        for k, name in enumerate(alternating(args.repeats)):
            wall, cpu, report = evaluate(
                old if name == "old" else ROOT, Path(tmp) / f"run_{k}_{name}", checkpoint, args.data_root
            )
            times[name].append(report["wall_time_s"])
            cpus[name].append(cpu)
            blocks.setdefault(name, report["evaluations"])
            parts = "; ".join(
                f"{ds}: " + ", ".join(f"{part} {s:.1f}" for part, s in sorted(meta["seconds"].items()) if s >= 0.05)
                for ds, meta in sorted(report["datasets"].items())
            )
            print(
                f"{name}: command {wall:.1f} s ({cpu:.1f} CPU s), evaluation {report['wall_time_s']:.1f} s ({parts}); "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    same = blocks["old"] == blocks["new"]
    old_m, new_m = statistics.median(times["old"]), statistics.median(times["new"])
    old_c, new_c = statistics.median(cpus["old"]), statistics.median(cpus["new"])
    print(
        f"\nevaluations old == new: {same}\n"
        f"median CPU s of the command: old {old_c:.1f}, new {new_c:.1f}, ratio new/old {new_c / old_c:.2f}\n"
        f"median evaluation time: old {old_m:.1f} s, new {new_m:.1f} s, ratio new/old {new_m / old_m:.2f} "
        "(shared machine: compare only within this run)"
    )
    if not same:
        raise SystemExit("the evaluations differ")


if __name__ == "__main__":
    main()
