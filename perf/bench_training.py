"""One client's local training of the embedded default: old code/config vs new, side by side.

    .venv/bin/python perf/bench_training.py [--old-ref 294c33e] [--steps 40] [--repeats 3] [--variants old,new]
                                            [--data-root PATH]

Each variant runs ``run_local_training`` (the ClientApp's own call: model build, loader
with its decode worker, ``--steps`` optimizer steps of CtP on the tiny R3D, 8 x 64^2 clips,
batch 8) for client 0, round 1, of the default config, in a fresh process. Variants:

  old        the code at ``--old-ref`` (``git archive`` into a temporary directory, so
             nothing in the work tree changes) with its own config (client.num_threads=2)
  old-1t     the same old code with client.num_threads=1 (separates the thread effect)
  new        this work tree with its config (client.num_threads=1, uint8 batches)

Repetitions alternate variant by variant (old, old-1t, new, old, ...), so a noisy, shared
machine affects all alike. Prints per variant the median wall seconds per step, the
ratio new / old, the CPU seconds per step of the training process, and the round's loss
(the same in ``old-1t`` and ``new``: the values are bit-identical; ``old``'s 2 threads
sum in another order).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time, torch
import benchmark.config  # noqa: F401
from hydra import compose, initialize_config_dir
from benchmark import CONF_DIR
from benchmark.data.synthetic import ensure_synthetic
from benchmark.federation import training as T
data_root, steps, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ensure_synthetic(data_root, size="default", seed=0, progress=False)
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose("config", overrides=[f"data_root={data_root}", f"federation.local_steps={steps}", *overrides])
from pathlib import Path
videos = sorted(str(p) for p in (Path(data_root) / "synthetic" / "kinetics" / "train").rglob("*.mp4"))[:60]
videos = [(v, 0) for v in videos]
try:  # typed specs (after issue 15); the old commits take the config
    from benchmark.specs import LocalTrainingSpec
except ImportError:
    LocalTrainingSpec = None
if LocalTrainingSpec is not None:
    spec = LocalTrainingSpec.from_config(cfg)
    state = T.initial_global_state(spec.model, spec.seed)
    start = time.perf_counter()
    result = T.run_local_training(spec, 0, 1, state, None, videos, spec.optimizer.lr)
else:
    state = T.initial_global_state(cfg)
    start = time.perf_counter()
    result = T.run_local_training(cfg, 0, 1, state, None, videos, float(cfg.client.optimizer.lr))
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "cpu_s": result.metrics["cpu_s"], "steps": result.metrics["steps"],
                  "loss": result.metrics["loss"], "threads": int(cfg.client.num_threads)}))
"""


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_variant(code_dir: Path, data_root: str, steps: int, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    cpu = children_cpu_s()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, data_root, str(steps), *overrides],
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"variant in {code_dir} {overrides} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the whole child with its decode worker (reaped by the child, so counted here); includes
    # the interpreter's start and imports, the same for every variant
    result["tree_cpu_s"] = children_cpu_s() - cpu
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-ref", default="294c33e", help="git commit of the old code (default: before issue 16)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("FEDVID_DATA_ROOT", str(ROOT / "data")))
    parser.add_argument("--variants", default="old,old-1t,new", help="comma-separated subset of old,old-1t,new")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-old-") as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "archive", args.old_ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        variants = {"old": (old, []), "old-1t": (old, ["client.num_threads=1"]), "new": (ROOT, [])}
        variants = {name: variants[name] for name in args.variants.split(",")}
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for rep in range(args.repeats):
            for name, (code, overrides) in variants.items():
                r = run_variant(code, args.data_root, args.steps, overrides)
                results[name].append(r)
                print(
                    f"rep {rep + 1}/{args.repeats} {name:7s} {r['wall_s'] / r['steps']:.3f} s/step "
                    f"(cpu {r['cpu_s'] / r['steps']:.3f}, with the decode worker and start-up "
                    f"{r['tree_cpu_s']:.1f} s) loss {r['loss']:.6f} threads {r['threads']}",
                    flush=True,
                )
    per_step = {n: statistics.median(r["wall_s"] / r["steps"] for r in rs) for n, rs in results.items()}
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (shared machine: compare only within this run)")
    tree = {n: statistics.median(r["tree_cpu_s"] for r in rs) for n, rs in results.items()}
    first = next(iter(per_step))
    for name, value in per_step.items():
        print(
            f"{name:7s} median {value:.3f} s/step  ratio to {first} {value / per_step[first]:.2f}; "
            f"CPU with the worker {tree[name]:.1f} s, ratio {tree[name] / tree[first]:.2f}"
        )


if __name__ == "__main__":
    main()
