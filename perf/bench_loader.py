"""Training loader throughput against raw decord decoding of the same frames.

Encodes its own 320x240 test videos (MPEG-4 Part 2 in AVI, like UCF101/HMDB51), then in
one run and alternating repetition by repetition measures clips/s of
  (a) raw ``decord.VideoReader(path).get_batch(indices)`` (open + decode, nothing else),
  (b) ``TrainClipDataset`` through ``make_train_loader`` with 1 worker (decode, 16
      frames at stride 2, short side 128, random 112x112 crop, flip, collate; the loader
      decodes straight to the 170x128 short-side size, raw decord at 320x240) shipping
      uint8 batches, each normalised in the consuming (training) process with
      ``dataset.normalize_video`` as ``run_local_training`` does ("loader");
  (c) the same loader normalising in the worker and shipping float32 batches, as before
      issue 16 ("old loader"),
  with ``--ctp``, also (d) the loader with CtP's ``sample_transform`` in the worker (the
      paper's CtP settings, 16 frames: patch draws, pasting, colour) and (e) the same with
      CtP as it was at ``--old-ref`` (its module loaded from git), for the pasting old vs new,
on exactly the same frame indices: (a) takes them from the dataset's per-item generator
the way the dataset draws them. Worker start-up counts (persistent_workers=False is how
training uses the loader). The first repetition is a warm-up and is not counted; the
order of the variants rotates per repetition.

    .venv/bin/python perf/bench_loader.py [--items 384] [--repeats 5] [--ctp]   (about 3 minutes; 5 with --ctp)

Target: loader / raw >= 0.95.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import decord
import torch

from benchmark.data.clips import train_clip_indices
from benchmark.data.loaders import EpochBatchSampler, TrainClipDataset, make_train_loader

ROOT = Path(__file__).resolve().parent.parent
FRAMES, STRIDE, SHORT_SIDE, CROP = 16, 2, 128, 112
WIDTH, HEIGHT, NUM_FRAMES, NUM_VIDEOS, FPS = 320, 240, 90, 16, 25
TARGET = 0.95


def encode_video(path: Path, seed: int) -> None:
    """A moving, slightly noisy block texture (so the codec has real work), MPEG-4 in AVI."""
    from bench_decoding import encode_video as encode  # perf/ is on sys.path when run as a script

    encode(path, "mpeg4", seed)


def children_cpu_s() -> float:
    """CPU seconds of finished child processes (the DataLoader worker, once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_decode(jobs: list[tuple[str, list[int]]]) -> tuple[float, float]:
    """-> (clips/s, CPU ms per clip)."""
    cpu, start = time.process_time(), time.perf_counter()
    for path, indices in jobs:
        decord.VideoReader(path).get_batch(indices)
    elapsed = time.perf_counter() - start
    return len(jobs) / elapsed, (time.process_time() - cpu) / len(jobs) * 1000


def ctp_at(ref: str) -> type:
    """The CtP class of baselines/ctp.py at git ``ref`` (not registered: the name is taken)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:baselines/ctp.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(f"ctp_at_{ref}")
    module.__file__ = f"{ref}:baselines/ctp.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source.replace('@register_method("ctp")\n', ""), module.__file__, "exec"), module.__dict__)
    return module.CtP


class WorkerNormalizedDataset(TrainClipDataset):
    """The pre-issue-16 loader: normalises into float32 batch slots inside the worker."""

    normalize_in_worker = True


def run_loader(dataset: TrainClipDataset, batch_size: int) -> tuple[float, float]:
    """-> (clips/s, CPU ms per clip of worker + main process). uint8 batches are normalised
    here, in the consuming process, as the training loop does."""
    cpu, worker_cpu, start = time.process_time(), children_cpu_s(), time.perf_counter()
    clips = 0
    for batch in make_train_loader(dataset, batch_size=batch_size, num_workers=1, seed=0):
        video = batch["video"]
        if video.dtype == torch.uint8:
            video = dataset.normalize_video(video)
        assert video.dtype == torch.float32
        clips += video.shape[0]
    elapsed = time.perf_counter() - start
    assert clips == len(dataset), (clips, len(dataset))
    used = (time.process_time() - cpu) + (children_cpu_s() - worker_cpu)
    return clips / elapsed, used / clips * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=384, help="training items per epoch (videos reused)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ctp", action="store_true", help="also the loader with CtP's sample_transform, old vs new")
    parser.add_argument("--old-ref", default="ca4cd01", help="commit whose CtP is the 'old' one (with --ctp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fedvid-bench-loader-") as tmp:
        paths = [Path(tmp) / f"video_{k:02d}.avi" for k in range(NUM_VIDEOS)]
        for k, path in enumerate(paths):
            encode_video(path, seed=k)
        num_frames = {str(p): len(decord.VideoReader(str(p))) for p in paths}
        videos = [(str(paths[i % NUM_VIDEOS]), i % 7) for i in range(args.items)]
        dataset = TrainClipDataset(videos, frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=0)
        old_dataset = WorkerNormalizedDataset(
            videos, frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=0
        )
        datasets = {"new": dataset, "old": old_dataset}
        if args.ctp:
            from baselines.ctp import CtP
            from benchmark.models.backbones import TinyR3D

            for name, method in (("ctp", CtP), (f"ctp@{args.old_ref}", ctp_at(args.old_ref))):
                transform = method(TinyR3D(width=4), num_frames=FRAMES, hidden_channels=8).sample_transform
                datasets[name] = TrainClipDataset(
                    videos,
                    frames=FRAMES,
                    stride=STRIDE,
                    short_side=SHORT_SIDE,
                    crop_size=CROP,
                    seed=0,
                    sample_transform=transform,
                )
        print(
            f"{NUM_VIDEOS} videos {WIDTH}x{HEIGHT}, {NUM_FRAMES} frames (mpeg4/avi); {args.items} clips per pass "
            f"of {FRAMES} frames, stride {STRIDE}, short side {SHORT_SIDE}, crop {CROP}; batch {args.batch_size}, "
            f"1 worker; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )
        runs_of: dict[str, list[tuple[float, float]]] = {name: [] for name in ["raw", *datasets]}
        for repetition in range(args.repeats + 1):
            for d in datasets.values():
                d.set_epoch(repetition)
            # The same items in the same order as the loader, with the clip indices drawn
            # from the dataset's own per-item generator (its first draws are the starts).
            order = [i for batch in EpochBatchSampler(len(dataset), 1, 0, [repetition]) for _, i in batch]
            jobs = []
            for i in order:
                path = dataset.videos[i][0]
                jobs.append((path, train_clip_indices(num_frames[path], FRAMES, STRIDE, dataset.generator_for(i))))
            # Rotate which one runs first so slow drifts in machine load hit all alike.
            names = list(runs_of)
            shift = repetition % len(names)
            got = {}
            for name in names[shift:] + names[:shift]:
                got[name] = raw_decode(jobs) if name == "raw" else run_loader(datasets[name], args.batch_size)
            raw, loader, old = got["raw"], got["new"], got["old"]
            label = "warm-up" if repetition == 0 else f"rep {repetition}"
            print(
                f"{label:>8}: raw decord {raw[0]:6.1f} clips/s ({raw[1]:5.2f} CPU ms/clip)   "
                f"loader {loader[0]:6.1f} clips/s ({loader[1]:5.2f} CPU ms/clip)   ratio {loader[0] / raw[0]:.3f}   "
                f"old loader {old[0]:6.1f} clips/s ({old[1]:5.2f}) ratio {old[0] / raw[0]:.3f}"
                + "".join(f"   {n} {got[n][0]:6.1f} clips/s ({got[n][1]:5.2f})" for n in names if n.startswith("ctp")),
                flush=True,
            )
            if repetition > 0:
                for name, value in got.items():
                    runs_of[name].append(value)
    raw_runs, loader_runs, old_runs = runs_of["raw"], runs_of["new"], runs_of["old"]

    raw_rate, raw_cpu = (statistics.median(r[k] for r in raw_runs) for k in (0, 1))
    loader_rate, loader_cpu = (statistics.median(r[k] for r in loader_runs) for k in (0, 1))
    ratio = loader_rate / raw_rate
    old_rate, old_cpu = (statistics.median(r[k] for r in old_runs) for k in (0, 1))
    per_pass = [loader[0] / raw[0] for raw, loader in zip(raw_runs, loader_runs)]
    print(f"median raw decord: {raw_rate:.1f} clips/s, {raw_cpu:.2f} CPU ms/clip")
    print(f"median loader:     {loader_rate:.1f} clips/s, {loader_cpu:.2f} CPU ms/clip (worker + main)")
    print(f"median old loader: {old_rate:.1f} clips/s, {old_cpu:.2f} CPU ms/clip (normalised in the worker, float32)")
    print(f"ratio old loader/raw clips/s: {old_rate / raw_rate:.3f}; new/old: {loader_rate / old_rate:.3f}")
    print(f"CPU-time ratio raw/loader: {raw_cpu / loader_cpu:.3f} (less sensitive to other processes' load)")
    print(
        f"per-pass ratios: {', '.join(f'{r:.3f}' for r in per_pass)} (min {min(per_pass):.3f}, max {max(per_pass):.3f})"
    )
    print(
        f"ratio loader/raw clips/s: {ratio:.3f} (target >= {TARGET}) -> {'PASS' if ratio >= TARGET else 'BELOW TARGET'}"
    )
    if args.ctp:
        new_ctp, old_ctp = (runs_of[n] for n in runs_of if n.startswith("ctp"))
        for name, runs in (("ctp", new_ctp), (f"ctp@{args.old_ref}", old_ctp)):
            rate, cpu = (statistics.median(r[k] for r in runs) for k in (0, 1))
            print(
                f"median loader + CtP ({name}): {rate:.1f} clips/s, {cpu:.2f} CPU ms/clip; ratio to raw {rate / raw_rate:.3f}"
            )
        new_rate, old_rate_ctp = (statistics.median(r[0] for r in runs) for runs in (new_ctp, old_ctp))
        new_cpu, old_cpu_ctp = (statistics.median(r[1] for r in runs) for runs in (new_ctp, old_ctp))
        print(
            f"CtP loader new/old: clips/s {new_rate / old_rate_ctp:.3f}, CPU ms/clip {new_cpu / old_cpu_ctp:.3f} "
            f"(same samples: the pasting is bit-identical)"
        )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
