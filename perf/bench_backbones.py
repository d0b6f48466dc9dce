"""Parameters, FLOPs and CPU step time of the registered backbones at 16x112x112.

    OMP_NUM_THREADS=1 .venv/bin/python perf/bench_backbones.py [--threads 1] [--batch 8] [--repeats 3]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, 1 multiply-add = 2 FLOPs; BatchNorm/ReLU not counted) for one 1x3x16x112x112 clip.
The step time is one forward + backward of a batch through the tiny R3D (and, with --all, the
big ones) in CPU seconds of this process (robust to other jobs on a shared machine; with one
thread it is the compute time), best of --repeats after one warm-up; the ratio to the 1 s
target is printed.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmark.registry import build_backbone

BACKBONES = {"r3d18": {}, "r2plus1d18": {}, "tiny_r3d": {"width": 16}}


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def step_seconds(model: torch.nn.Module, batch: int, repeats: int) -> float:
    x = torch.randn(batch, 3, 16, 112, 112)
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.process_time()
        model(x).sum().backward()
        if i:  # first run is warm-up
            times.append(time.process_time() - t0)
    return min(times)  # best of: the machine is shared, the minimum is the least disturbed run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--all", action="store_true", help="also time R3D-18 and R(2+1)D-18")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}x3x16x112x112")
    print(
        f"{'backbone':<12} {'params (M)':>10} {'GFLOPs/clip':>12} {'GMACs/clip':>11} {'out shape':>18} {'step (s)':>9}"
    )
    for name, params in BACKBONES.items():
        model = build_backbone(name, **params)
        n_params = sum(p.numel() for p in model.parameters())
        x = torch.randn(1, 3, 16, 112, 112)
        flops = count_flops(model.eval(), x)
        shape = tuple(model(x).shape[1:]) if name == "tiny_r3d" else "(C, 2, 14, 14)"
        step = float("nan")
        if name == "tiny_r3d" or args.all:
            step = step_seconds(model.train(), args.batch, args.repeats)
        print(
            f"{name:<12} {n_params / 1e6:>10.2f} {flops / 1e9:>12.2f} {flops / 2e9:>11.2f} {str(shape):>18} {step:>9.3f}"
        )
        if name == "tiny_r3d":
            print(f"tiny_r3d fwd+bwd / 1 s target = {step / 1.0:.2f}x")
    ctp_costs(args)


def ctp_costs(args) -> None:
    """CtP around the tiny R3D: one loss+backward step of a batch, and sample_transform per clip."""
    from baselines.ctp import CtP

    method = CtP(build_backbone("tiny_r3d", width=16))
    gen = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 16, 112, 112, generator=gen)
    t0 = time.process_time()
    samples = [method.sample_transform([clip], gen) for _ in range(args.batch)]
    per_clip = (time.process_time() - t0) / args.batch
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("video", "ctp_boxes")}
    times = []
    for i in range(args.repeats + 1):
        method.zero_grad(set_to_none=True)
        t0 = time.process_time()
        loss, _ = method.training_loss(batch)
        loss.backward()
        if i:
            times.append(time.process_time() - t0)
    step = min(times)
    head = sum(p.numel() for p in method.head.parameters())
    print(
        f"ctp(tiny_r3d): sample_transform {per_clip * 1e3:.1f} ms/clip; loss+backward {step:.3f} s/batch "
        f"(head {head / 1e6:.2f}M params)"
    )


if __name__ == "__main__":
    main()
