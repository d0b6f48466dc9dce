"""The training loader on videos only PyAV decodes exactly: decoder threads old vs new, one run.

UCF101 and HMDB51 are MPEG-4 Part 2 in AVI, many with B-frames (XviD/DivX): decord returns
wrong frames there, so ``clip.backend=auto`` decodes them with PyAV, sequentially from the
first frame (benchmark/data/decoding.py). Encodes 320x240, 90-frame MPEG-4 AVI videos with
B-frames (that path: ``inspect_video`` names the hazard), then, alternating old/new pass by
pass on the same items, measures clips/s and CPU ms per clip (workers + this consumer) of
``make_train_loader`` with 1 and with 2 persistent decode workers, uint8 batches (16 frames
at stride 2, short side 128, crop 112, batch 8): "old" is the loader of ``--old`` (a
temporary worktree, perf/sides.py), "new" this tree. Also, in this process, raw PyAV
decoding of the same clips (``open_video(.., "pyav")``) on ffmpeg's default threads and on 1.
The batches of old and new are compared bit for bit first (that pass also starts the
persistent workers and is not timed); raw PyAV is warmed up once.

    .venv/bin/python perf/bench_pyav_threads.py [--old 262e9f8] [--items 96] [--repeats 4]   (about 3 minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_decoding import encode_video  # perf/ is on sys.path when run as a script
from bench_loader import cpu_s, old_loaders, run_loader
from sides import old_tree

import benchmark.data.loaders as new_loaders
from benchmark.data.clips import train_clip_indices
from benchmark.data.decoding import inspect_video, open_video, set_decode_threads
from benchmark.data.loaders import EpochBatchSampler

FRAMES, STRIDE, SHORT_SIDE, CROP, NUM_VIDEOS = 16, 2, 128, 112, 8


def raw_pyav(jobs: list[tuple[str, list[int]]], threads: int) -> tuple[float, float]:
    """clips/s and CPU ms per clip of PyAV's exact reader in this process on ``threads``."""
    set_decode_threads(threads)
    try:
        cpu, start = cpu_s([]), time.perf_counter()
        for path, indices in jobs:
            with open_video(path, "pyav", short_side=SHORT_SIDE) as video:
                video.get_frames(indices)
        elapsed = time.perf_counter() - start
        return len(jobs) / elapsed, (cpu_s([]) - cpu) / len(jobs) * 1000
    finally:
        set_decode_threads(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="262e9f8", help="commit whose loader is the 'old' one")
    parser.add_argument("--items", type=int, default=96, help="clips per pass (videos reused)")
    parser.add_argument("--repeats", type=int, default=4, help="timed repetitions (after the equality pass)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-pyav-") as tmp, old_tree(args.old) as tree:
        old = old_loaders(tree)
        paths = [Path(tmp) / f"video_{k:02d}.avi" for k in range(NUM_VIDEOS)]
        for k, path in enumerate(paths):
            encode_video(path, "mpeg4", seed=k, b_frames=True)
        hazard = inspect_video(str(paths[0])).hazard
        assert hazard, "the videos must take PyAV's exact path"
        with open_video(paths[0], "auto", short_side=SHORT_SIDE) as video:
            assert video.decoded_by == "pyav", video.decoded_by
            num_frames = video.num_frames
        videos = [(str(paths[i % NUM_VIDEOS]), i % 7) for i in range(args.items)]
        settings = dict(frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=0)
        sets = {
            "old": old.TrainClipDataset(videos, **settings),
            "new": new_loaders.TrainClipDataset(videos, **settings),
        }
        modules = {"old": old, "new": new_loaders}
        loaders = {
            (side, workers): modules[side].make_train_loader(sets[side], batch_size=8, num_workers=workers, seed=0)
            for side in ("old", "new")
            for workers in (1, 2)
        }
        print(
            f"{NUM_VIDEOS} videos 320x240, {num_frames} frames, MPEG-4 with B-frames in AVI ({hazard}); "
            f"{args.items} clips per pass; old = {args.old}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        # the same batches, old and new (the decoder threads change no pixel)
        for workers in (1, 2):
            for side in ("old", "new"):
                sets[side].set_epoch(0)
            a = [b["video"].clone() for b in loaders["old", workers]]
            b = [b["video"].clone() for b in loaders["new", workers]]
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), workers
        print("old and new batches: equal bit for bit (1 and 2 workers)", flush=True)
        # raw PyAV's warm-up: its first pass also counts each video's frames (memoised)
        raw_pyav([(path, list(range(FRAMES))) for path, _ in videos[:NUM_VIDEOS]], 0)

        names = [*loaders, "raw pyav, default threads", "raw pyav, 1 thread"]
        got: dict = {name: [] for name in names}
        for repetition in range(1, args.repeats + 1):
            for d in sets.values():
                d.set_epoch(repetition)
            order = [i for batch in EpochBatchSampler(args.items, 1, 0, [repetition]) for _, i in batch]
            jobs = [
                (videos[i][0], train_clip_indices(num_frames, FRAMES, STRIDE, sets["new"].generator_for(i, repetition)))
                for i in order
            ]
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                if isinstance(name, tuple):
                    p = run_loader(sets[name[0]], None, loaders[name], normalise=False)
                    got[name].append((p.rate, p.cpu_ms))
                else:
                    got[name].append(raw_pyav(jobs, 0 if "default" in name else 1))
            print(
                f"rep {repetition} (load {os.getloadavg()[0]:.1f}): "
                + ", ".join(f"{n if isinstance(n, str) else f'{n[0]} {n[1]}w'} {got[n][-1][0]:.1f}/s" for n in names),
                flush=True,
            )
        for loader in loaders.values():
            loader.close()

    print("\nmedians (clips/s, CPU ms per clip: worker(s) + this process)")
    for name in names:
        label = name if isinstance(name, str) else f"loader {name[0]}, {name[1]} worker(s)"
        rates, cpus = [r for r, _ in got[name]], [c for _, c in got[name]]
        print(f"  {label:>30}: {statistics.median(rates):6.1f} clips/s, {statistics.median(cpus):6.2f} CPU ms/clip")
    for workers in (1, 2):
        per_pass = [n[0] / o[0] for n, o in zip(got["new", workers], got["old", workers])]
        cpu = [n[1] / o[1] for n, o in zip(got["new", workers], got["old", workers])]
        print(
            f"new/old, {workers} worker(s): clips/s {statistics.median(per_pass):.3f} "
            f"(per pass {', '.join(f'{r:.2f}' for r in per_pass)}), CPU per clip {statistics.median(cpu):.3f}"
        )


if __name__ == "__main__":
    main()
