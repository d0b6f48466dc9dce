"""Where the training loader's CPU goes, piece by piece, against raw decord (issue 16 target 2).

On the videos of ``perf/bench_loader.py`` (encoded here), the same clips (16 frames, stride
2), CPU ms per clip of, in one process, in rotating order repetition by repetition:
  raw decord at 320x240 on ffmpeg's default threads / on 1 thread; raw decord on 1 thread at
  the loader's short side (171x128, decord's scaler); ``open_video`` + ``get_frames`` (our
  reader, 1 thread); ``TrainClipDataset.__getitems__`` (the item: seed, draws, crop, flip,
  batch slot) on 1 thread and on ffmpeg's default threads;
and of the persistent 1-worker loader delivering uint8 batches: the worker's CPU (from
/proc) and this consumer's. The differences between consecutive rows are the pieces
(perf/RESULTS.md, "Issue 16, fifth pass, L"). This process runs 1 torch thread.

    .venv/bin/python perf/loader_split.py [--items 96] [--repeats 4]   (about 1 minute)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import decord
import torch
from bench_loader import CROP, FRAMES, HEIGHT, NUM_VIDEOS, SHORT_SIDE, STRIDE, WIDTH, encode_video

from benchmark.data.clips import train_clip_indices
from benchmark.data.decoding import open_video, scaled_frame_size, set_decode_threads
from benchmark.data.loaders import EpochBatchSampler, TrainClipDataset, make_train_loader

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=96, help="clips per pass (a multiple of 8)")
    parser.add_argument("--repeats", type=int, default=4, help="timed repetitions (after one warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    decord.bridge.set_bridge("torch")  # as our reader does, so raw and ours return the same type
    height, width = scaled_frame_size(HEIGHT, WIDTH, SHORT_SIDE)

    with tempfile.TemporaryDirectory(prefix="fedvid-loader-split-") as tmp:
        paths = [Path(tmp) / f"video_{k:02d}.avi" for k in range(NUM_VIDEOS)]
        for k, path in enumerate(paths):
            encode_video(path, seed=k)
        num_frames = {str(p): len(decord.VideoReader(str(p))) for p in paths}
        videos = [(str(paths[i % NUM_VIDEOS]), i % 7) for i in range(args.items)]
        dataset = TrainClipDataset(videos, frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=0)
        loader = make_train_loader(dataset, batch_size=8, num_workers=1, seed=0)
        worker_pid = None

        def jobs():
            return [
                (path, train_clip_indices(num_frames[path], FRAMES, STRIDE, dataset.generator_for(i)))
                for i, (path, _) in enumerate(dataset.videos)
            ]

        def raw(threads: int, size=(-1, -1)):
            def run():
                for path, indices in jobs():
                    decord.VideoReader(path, width=size[1], height=size[0], num_threads=threads).get_batch(indices)

            return run

        def reader():
            set_decode_threads(1)
            for path, indices in jobs():
                with open_video(path, short_side=SHORT_SIDE) as video:
                    video.get_frames(indices)
            set_decode_threads(0)

        def items(threads: int):
            def run():
                set_decode_threads(threads)
                for batch in EpochBatchSampler(len(dataset), 8, 0, [dataset.epoch]):
                    dataset.__getitems__([i for _, i in batch])
                set_decode_threads(0)

            return run

        pieces = {
            "raw decord 320x240, ffmpeg's threads": raw(0),
            "raw decord 320x240, 1 thread": raw(1),
            f"raw decord {width}x{height}, 1 thread": raw(1, (height, width)),
            "open_video + get_frames, 1 thread": reader,
            "__getitems__, 1 thread": items(1),
            "__getitems__, ffmpeg's threads": items(0),
        }
        cpu = {name: [] for name in [*pieces, "loader worker (uint8 batches)", "loader consumer"]}
        print(f"{args.items} clips per pass; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        for repetition in range(args.repeats + 1):
            dataset.set_epoch(repetition)
            names = [*pieces, "loader"]
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "loader":
                    worker = process_cpu_s(worker_pid) if worker_pid else 0.0
                    start = time.process_time()
                    for batch in loader:
                        worker_pid = worker_pid or loader._iterator._workers[0].pid
                        del batch
                    consumer = time.process_time() - start
                    worker = process_cpu_s(worker_pid) - worker
                    if repetition:
                        cpu["loader worker (uint8 batches)"].append(worker / args.items * 1000)
                        cpu["loader consumer"].append(consumer / args.items * 1000)
                    continue
                start = time.process_time()
                pieces[name]()
                if repetition:
                    cpu[name].append((time.process_time() - start) / args.items * 1000)
        loader.close()
    print(f"CPU ms per clip (median of {args.repeats}; each pass in brackets):")
    for name, values in cpu.items():
        print(f"  {name:>40}: {statistics.median(values):6.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
