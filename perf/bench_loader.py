"""Training loader throughput against raw decord decoding of the same frames, old vs new.

Encodes its own 320x240 test videos (MPEG-4 Part 2 in AVI, like UCF101/HMDB51), then in
one run, rotating the order repetition by repetition, measures clips/s of
  (a) raw ``decord.VideoReader(path).get_batch(indices)`` in this process (open + decode,
      nothing else; decord's own decode threads);
  (b) ``TrainClipDataset`` through ``make_train_loader`` with 1 worker process (decode, 16
      frames at stride 2, short side 128, random 112x112 crop, flip; uint8 batches of 8)
      and each batch normalised here, in the consuming process, with
      ``dataset.normalize_video`` as ``run_local_training`` does. "loader": one loader
      whose worker persists from pass to pass (as in a fine-tuning's epochs); "loader,
      worker per pass": a new loader each pass (as one client's round: its worker starts
      with the pass and is counted);
  (c) the same with the loader of commit ``--old`` (default 1b90bb1: a new worker per
      pass, a new shared-memory file per batch) loaded from a temporary worktree
      (perf/sides.py), as the training loop of that commit used it ("old loader");
  with ``--ctp``, also (d) (b) and (c) with CtP's ``sample_transform`` in the worker (the
      paper's CtP settings, 16 frames: patch draws, pasting, colour),
on exactly the same frame indices: (a) takes them from the dataset's per-item generator
the way the dataset draws them. This process runs 1 torch thread (the demo trainer's
setting), so the layout is raw: 1 process; loader: 1 worker + this consumer, 2 cores.
The first repetition is a warm-up (it also starts the persistent worker) and is not
counted. "steady" excludes each pass's first batch (clips/s from the first batch on).

    .venv/bin/python perf/bench_loader.py [--items 384] [--repeats 5] [--ctp]   (about 3 minutes; 5 with --ctp)

Target: loader / raw >= 0.95.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import decord
import torch
from sides import old_tree  # perf/ is on sys.path when run as a script

from benchmark.data.clips import train_clip_indices
from benchmark.data.loaders import EpochBatchSampler, TrainClipDataset, make_train_loader

FRAMES, STRIDE, SHORT_SIDE, CROP = 16, 2, 128, 112
WIDTH, HEIGHT, NUM_FRAMES, NUM_VIDEOS, FPS = 320, 240, 90, 16, 25
TARGET = 0.95
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def encode_video(path: Path, seed: int) -> None:
    """A moving, slightly noisy block texture (so the codec has real work), MPEG-4 in AVI."""
    from bench_decoding import encode_video as encode

    encode(path, "mpeg4", seed)


def old_loaders(tree: Path):
    """``benchmark.data.loaders`` of the old tree, imported as ``fedvid_old.data.loaders``
    (its siblings decoding/clips/transforms come from the old tree too)."""
    for name, folder in (("fedvid_old", tree / "benchmark"), ("fedvid_old.data", tree / "benchmark" / "data")):
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return importlib.import_module("fedvid_old.data.loaders")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds of this process, its finished children and the live processes ``pids``."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


def worker_pids(loader) -> list[int]:
    iterator = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(iterator, "_workers", [])]


class Pass:
    """One timed pass: clips/s whole and steady (from the first batch on), CPU ms per clip."""

    def __init__(self, clips: int, elapsed: float, first: float, first_clips: int, cpu: float):
        self.rate = clips / elapsed
        self.steady = (clips - first_clips) / (elapsed - first)
        self.first_ms = first * 1000
        self.cpu_ms = cpu / clips * 1000


def raw_decode(jobs: list[tuple[str, list[int]]], batch_size: int) -> Pass:
    cpu, start = cpu_s([]), time.perf_counter()
    first = None
    for k, (path, indices) in enumerate(jobs):
        decord.VideoReader(path).get_batch(indices)
        if k == batch_size - 1:
            first = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    return Pass(len(jobs), elapsed, first, batch_size, cpu_s([]) - cpu)


def run_loader(dataset, make_loader, persistent_loader=None) -> Pass:
    """A pass of ``persistent_loader`` or of a new ``make_loader()``; uint8 batches are
    normalised here, in the consuming process, as the training loop does."""
    pids = worker_pids(persistent_loader)
    cpu, start = cpu_s(pids), time.perf_counter()
    loader = persistent_loader or make_loader()
    clips, first, first_clips = 0, None, 0
    for batch in loader:
        video = dataset.normalize_video(batch.pop("video"))
        assert video.dtype == torch.float32
        clips += video.shape[0]
        if first is None:
            first, first_clips = time.perf_counter() - start, clips
        pids = pids or worker_pids(loader)
    elapsed = time.perf_counter() - start
    if persistent_loader is None and hasattr(loader, "close"):
        loader.close()
    del loader
    assert clips == len(dataset), (clips, len(dataset))
    return Pass(clips, elapsed, first, first_clips, cpu_s(pids) - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=384, help="training items per epoch (videos reused)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ctp", action="store_true", help="also the loaders with CtP's sample_transform")
    parser.add_argument("--old", default="1b90bb1", help="commit whose loader is the 'old' one")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="fedvid-bench-loader-") as tmp, old_tree(args.old) as tree:
        old = old_loaders(tree)
        paths = [Path(tmp) / f"video_{k:02d}.avi" for k in range(NUM_VIDEOS)]
        for k, path in enumerate(paths):
            encode_video(path, seed=k)
        num_frames = {str(p): len(decord.VideoReader(str(p))) for p in paths}
        videos = [(str(paths[i % NUM_VIDEOS]), i % 7) for i in range(args.items)]
        settings = dict(frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=0)
        transforms = {"": None}
        if args.ctp:
            from baselines.ctp import CtP
            from benchmark.models.backbones import TinyR3D

            transforms[" + CtP"] = CtP(TinyR3D(width=4), num_frames=FRAMES, hidden_channels=8).sample_transform
        # name -> (dataset, make a loader, the persistent loader or None)
        variants = {}
        for suffix, transform in transforms.items():
            new_set = TrainClipDataset(videos, sample_transform=transform, **settings)
            old_set = old.TrainClipDataset(videos, sample_transform=transform, **settings)
            new_make = lambda d=new_set: make_train_loader(d, batch_size=args.batch_size, num_workers=1, seed=0)  # noqa: E731
            old_make = lambda d=old_set: old.make_train_loader(d, batch_size=args.batch_size, num_workers=1, seed=0)  # noqa: E731
            variants["loader" + suffix] = (new_set, new_make, new_make())
            variants["loader, worker per pass" + suffix] = (new_set, new_make, None)
            variants["old loader" + suffix] = (old_set, old_make, None)
        dataset = variants["loader"][0]
        print(
            f"{NUM_VIDEOS} videos {WIDTH}x{HEIGHT}, {NUM_FRAMES} frames (mpeg4/avi); {args.items} clips per pass "
            f"of {FRAMES} frames, stride {STRIDE}, short side {SHORT_SIDE}, crop {CROP}; batch {args.batch_size}, "
            f"1 worker, old = {args.old}; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        runs_of: dict[str, list[Pass]] = {name: [] for name in ["raw", *variants]}
        for repetition in range(args.repeats + 1):
            for d, _, _ in variants.values():
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
                got[name] = raw_decode(jobs, args.batch_size) if name == "raw" else run_loader(*variants[name])
            label = "warm-up" if repetition == 0 else f"rep {repetition}"
            print(
                f"{label:>8}: "
                + "; ".join(
                    f"{n} {p.rate:5.1f} clips/s ({p.cpu_ms:5.2f} CPU ms/clip, first batch {p.first_ms:4.0f} ms)"
                    + ("" if n == "raw" else f" ratio {p.rate / got['raw'].rate:.3f}")
                    for n, p in got.items()
                ),
                flush=True,
            )
            if repetition > 0:
                for name, value in got.items():
                    runs_of[name].append(value)
        for _, _, loader in variants.values():
            if loader is not None:
                loader.close()

    raw = runs_of["raw"]
    raw_rate, raw_steady = statistics.median(p.rate for p in raw), statistics.median(p.steady for p in raw)
    print(
        f"median raw decord: {raw_rate:.1f} clips/s (steady {raw_steady:.1f}), "
        f"{statistics.median(p.cpu_ms for p in raw):.2f} CPU ms/clip"
    )
    for name in variants:
        runs = runs_of[name]
        per_pass = [p.rate / r.rate for p, r in zip(runs, raw)]
        steady = [p.steady / r.steady for p, r in zip(runs, raw)]
        print(
            f"{name:>31}: {statistics.median(p.rate for p in runs):5.1f} clips/s, "
            f"{statistics.median(p.cpu_ms for p in runs):5.2f} CPU ms/clip (worker + main), "
            f"first batch {statistics.median(p.first_ms for p in runs):4.0f} ms; ratio to raw "
            f"{statistics.median(per_pass):.3f} (per pass {', '.join(f'{r:.3f}' for r in per_pass)}), "
            f"steady {statistics.median(steady):.3f}"
        )
    ratio = statistics.median(p.rate / r.rate for p, r in zip(runs_of["loader"], raw))
    old_ratio = statistics.median(p.rate / r.rate for p, r in zip(runs_of["old loader"], raw))
    print(f"new/old loader clips/s: {ratio / old_ratio:.3f}")
    print(
        f"ratio loader/raw clips/s (median of per-pass ratios): {ratio:.3f} (target >= {TARGET}) -> "
        f"{'PASS' if ratio >= TARGET else 'BELOW TARGET'}"
    )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
