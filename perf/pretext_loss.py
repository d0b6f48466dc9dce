"""Pretext loss (and accuracy) of a method over up to N CPU steps on the embedded default.

    .venv/bin/python perf/pretext_loss.py RUN_DIR speed rot3d vcop moco ctp --steps 1000

RUN_DIR: a finished or running `fedvid run` directory of the embedded default (its
config.json and split_manifest.json). For each method (`ctp` = the run's own method config,
the others `conf/method/<name>.yaml` with MoCo's queue at 256 keys as in
`conf/compare_row/moco_fedavg.yaml`): client 0's videos, the run's clips, optimiser and batch,
ONE `run_local_training` call of `--steps` steps (one optimiser, one loader pass, as one
client round; `client.num_threads` = `--threads`). Every step's loss and the method's logged
accuracy (`<pretext>_acc`, MoCo `moco_top1`) are recorded through a wrapper of the method's
`training_loss` (the method itself is unchanged); printed per `--chunk` steps:

    chunk  steps  mean loss  chance loss  loss/chance  acc  chance acc  acc z  learned

Learned (first chunk where either holds): mean loss below chance by more than 5 % of chance,
or accuracy above chance by more than 3 standard errors (binomial, n = clips in the chunk) in
this chunk and the one before (one chunk alone: a false positive over ~30 chunks).
MoCo's "chance" is ln(1 + queue) / 1/(1 + queue); CtP has no chance level (regression).
`--stop-after K`: stop a method K chunks after its first learned chunk (saves time).
`--max-s`: stop a method after that many seconds (said so in the output).
`--save DIR`: save the backbone of each method (`DIR/<name>.pt`, the exchanged state).
`--jsonl FILE`: append one line per chunk and one summary line per method.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_protocols import compose  # noqa: E402

from benchmark.federation import training as T  # noqa: E402

QUEUE = 256
CLASSES = {"vcop": 6, "speed": 7, "rot3d": 4, "moco": QUEUE + 1}  # vcop: 3! orders of a 3-clip tuple
ACC_KEY = {"vcop": "order_acc", "speed": "speed_acc", "rot3d": "rotation_acc", "moco": "moco_top1"}


class Stop(Exception):
    pass


def chunk_row(
    name: str, idx: int, losses: list[float], accs: list[float], batch: int, prev_z: float | None = None
) -> dict:
    k = CLASSES.get(name)
    row = {
        "method": name,
        "chunk": idx,
        "steps": f"{idx * len(losses) + 1}-{(idx + 1) * len(losses)}",
        "loss": round(sum(losses) / len(losses), 4),
    }
    learned = False
    if k:
        chance = math.log(k)
        row.update(chance=round(chance, 4), loss_ratio=round(row["loss"] / chance, 4))
        learned = row["loss"] < 0.95 * chance
        if accs:
            p, n = 1.0 / k, batch * len(accs)
            acc = sum(accs) / len(accs)
            z = (acc - p) / math.sqrt(p * (1 - p) / n)
            row.update(acc=round(acc, 4), chance_acc=round(p, 4), acc_z=round(z, 2))
            # one chunk above z = 3 happens by chance over 30 chunks (seen: Speed steps 501-550,
            # back at chance in the next chunk), so accuracy counts only for 2 chunks in a row
            learned = learned or (z > 3 and prev_z is not None and prev_z > 3)
    row["learned"] = learned
    return row


def run_method(base: dict, run_dir: Path, name: str, args) -> dict:
    if name == "ctp":
        method = base["method"]
    else:
        ov = [f"method={name}"] + ([f"method.params.queue_size={QUEUE}"] if name == "moco" else [])
        method = OmegaConf.to_container(compose(ov).method, resolve=False)
    cfg = OmegaConf.create({**base, "method": method})
    cfg.federation.local_steps = args.steps
    cfg.client.num_threads = args.threads
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    batch = int(cfg.client.batch_size)
    videos = T.client_videos(str(run_dir / "split_manifest.json"), str(cfg.dataset.root), 0)

    built, losses, accs, rows = [], [], [], []
    first, first_idx = None, None
    t0 = time.time()
    build = T.build_model

    def build_wrapped(*a, **kw):
        m = build(*a, **kw)
        inner = m.training_loss

        def training_loss(b):
            nonlocal first, first_idx
            loss, logs = inner(b)
            losses.append(float(loss.detach()))
            if ACC_KEY.get(name) in logs:
                accs.append(float(logs[ACC_KEY[name]]))
            if len(losses) % args.chunk == 0:
                c = len(losses) // args.chunk - 1
                row = chunk_row(
                    name, c, losses[-args.chunk :], accs[-args.chunk :], batch, rows[-1].get("acc_z") if rows else None
                )
                row["s"] = round(time.time() - t0)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if row["learned"] and first is None:
                    first, first_idx = row["steps"], c
                if first is not None and args.stop_after is not None and c >= first_idx + args.stop_after:
                    raise Stop("stop-after")
                if args.max_s and time.time() - t0 > args.max_s:
                    raise Stop("max-s")
            return loss, logs

        m.training_loss = training_loss
        built.append(m)
        return m

    from benchmark.specs import LocalTrainingSpec

    spec = LocalTrainingSpec.from_config(cfg)
    init = T.initial_global_state(
        spec.model, spec.seed
    )  # builds a model too: before the wrapper, so built[] holds the trained one only
    T.build_model = build_wrapped
    stopped = None
    try:
        T.run_local_training(spec, 0, 1, init, None, videos, T.round_learning_rate(spec.optimizer, 1))
    except Stop as e:
        stopped = str(e)
    finally:
        T.build_model = build
    if args.save:
        assert len(built) == 1, f"expected one model built by run_local_training, got {len(built)}"
        Path(args.save).mkdir(parents=True, exist_ok=True)
        torch.save(built[0].exchanged_state(), Path(args.save) / f"{name}.pt")
    summary = {
        "method": name,
        "summary": True,
        "steps_run": len(losses),
        "first_learned_chunk": first,
        "stopped": stopped,
        "s": round(time.time() - t0),
        "s_per_step": round((time.time() - t0) / max(1, len(losses)), 3),
        "videos": len(videos),
        "threads": args.threads,
    }
    print(json.dumps(summary), flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("methods", nargs="+")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--max-s", type=float, default=None)
    ap.add_argument("--save", default=None)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args()
    base = json.loads((args.run_dir / "config.json").read_text())
    summaries = [run_method(base, args.run_dir, n, args) for n in args.methods]
    print("\nmethod  steps run  first learned chunk  s/step  stopped")
    for s in summaries:
        print(
            f"{s['method']:7} {s['steps_run']:9} {str(s['first_learned_chunk']):>20} {s['s_per_step']:7} {s['stopped']}"
        )


if __name__ == "__main__":
    main()
