"""Federated overhead and memory of `fedvid run` (Flower simulation engine).

    .venv/bin/python perf/bench_federation.py [--rounds 3] [--skip-memory] [--data-root PATH]

1. Overhead: the default configuration (CtP, tiny R3D, 5 clients, all sampled) without
   evaluation, one client at a time (``engine.client_resources.num_cpus`` = all CPUs of
   the Ray instance), so a round's wall time is the clients' compute plus what Flower/Ray
   and the server add. Per round: overhead = (round wall - sum of client compute_s) /
   sum of client compute_s, all measured in the same run (``rounds.jsonl``); Flower/Ray
   start-up (SuperLink, Ray, actors, client handshake) is reported separately.
   Target: overhead <= 10 % of compute per round.
2. Memory: 10 vs 100 clients, 5 sampled per round, 2 rounds of 1 local step; peak memory
   = the largest sum of PSS over every process of the run (SuperLink, ServerApp, Ray
   GCS/raylet/workers), sampled every 0.5 s. Target: peak(100) <= 1.2 x peak(10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fedvid_run(run_dir: Path, overrides: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmark.cli",
        "run",
        f"hydra.run.dir={run_dir}",
        "evaluate=false",
        "engine.echo_log=false",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fedvid run failed ({' '.join(overrides)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return {"result": json.loads((run_dir / "result.json").read_text()), "rounds": rounds}


def overhead(tmp: Path, common: list[str], rounds: int, cpus: int) -> None:
    run = fedvid_run(tmp / "overhead", [*common, f"federation.rounds={rounds}"])
    print(f"== overhead: default configuration, {rounds} rounds, clients one at a time ({cpus} CPUs)")
    print(f"{'round':>5} {'clients':>7} {'wall s':>8} {'compute s':>10} {'overhead s':>10} {'ratio':>7}")
    ratios = []
    for r in run["rounds"]:
        wall, compute = r["round_wall_s"], r["client_compute_s"]
        ratio = (wall - compute) / compute
        ratios.append(ratio)
        print(
            f"{r['round']:>5} {len(r['replied_clients']):>7} {wall:>8.2f} {compute:>10.2f} "
            f"{wall - compute:>10.2f} {ratio:>7.3f}"
        )
    systems = run["result"]["systems"]
    print(f"overhead ratio per round: mean {sum(ratios) / len(ratios):.3f}, max {max(ratios):.3f} (target <= 0.10)")
    print(
        f"Flower/Ray start-up (to the first round): {systems['startup_s']:.1f} s; "
        f"whole federation incl. start-up and teardown: {systems['wall_time_s']:.1f} s"
    )


def memory(tmp: Path, common: list[str]) -> None:
    peaks = {}
    for n in (10, 100):
        res = fedvid_run(
            tmp / f"mem{n}",
            [
                *common,
                f"partition.num_clients={n}",
                "federation.clients_per_round=5",
                "federation.rounds=2",
                "federation.local_steps=1",
            ],
        )
        peaks[n] = res["result"]["systems"]["peak_memory_bytes"]
    print("== memory: 5 clients sampled per round, 2 rounds of 1 local step")
    for n, peak in peaks.items():
        print(f"{n:>4} clients: peak {peak / 2**20:8.1f} MiB")
    print(f"ratio peak(100) / peak(10): {peaks[100] / peaks[10]:.3f} (target <= 1.2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray instance = CPUs of the one client actor")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-") as tmp:
        common = [
            f"data_root={args.data_root}",
            f"engine.ray_num_cpus={args.cpus}",
            f"engine.client_resources.num_cpus={args.cpus}",
            f"client.num_threads={args.cpus}",
        ]
        if not args.skip_overhead:
            overhead(Path(tmp), common, args.rounds, args.cpus)
        if not args.skip_memory:
            memory(Path(tmp), common)


if __name__ == "__main__":
    main()
