"""Decoding speed of the backends on plain files, and frame-exactness per fixture.

Part 1 (speed): 320x240, 90-frame videos like bench_loader.py's, once as MPEG-4 Part 2 in
AVI (UCF101's format) and once as H.264 in MP4 (Kinetics'); training clips of 16 frames
at stride 2 decoded to short side 128 (what the loaders ask for), open + get_frames per
clip, one process, one decode thread pool each. Measured side by side, alternating the
order every repetition:
  ``before``  ``open_video(.., "decord")`` of git revision ``--before`` (default b44d4b4,
              the decord default before frame-exact decoding), loaded from ``git show``;
  ``auto``    today's default; ``decord`` and ``pyav`` today's backends.
Part 2 (exactness): for each fixture in tests/fixtures/videos, whether each backend and
decord used directly return the sequential decode's frames (``fedvid data check``'s test).

    .venv/bin/python perf/bench_decoding.py [--clips 96] [--repeats 5] [--before REV]

Target: auto / before >= 0.95 on both plain formats.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from benchmark import PROJECT_ROOT
from benchmark.data.check import check_video
from benchmark.data.clips import train_clip_indices

FRAMES, STRIDE, SHORT_SIDE = 16, 2, 128
WIDTH, HEIGHT, NUM_FRAMES, NUM_VIDEOS, FPS = 320, 240, 90, 8, 25
TARGET = 0.95
FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "videos"


def encode_video(path: Path, codec: str, seed: int, b_frames: bool = False) -> None:
    """A moving, slightly noisy block texture (so the codec has real work), in ``codec``."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    texture = np.tile(np.kron(blocks, np.ones((8, 8, 1), np.uint8)), (2, 2, 1)).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}  # B-frames on, like downloads
        else:
            stream.bit_rate = 1_000_000
            if b_frames:  # B-VOPs in AVI: index-based seeking is not exact, auto decodes sequentially
                stream.codec_context.max_b_frames = 2
        for k in range(NUM_FRAMES):
            y, x = (3 * k) % HEIGHT, (5 * k) % WIDTH
            noise = rng.integers(-10, 11, size=(HEIGHT, WIDTH, 3))
            image = np.clip(texture[y : y + HEIGHT, x : x + WIDTH] + noise, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def load_before(revision: str):
    """benchmark/data/decoding.py as of ``revision``, imported as a separate module."""
    source = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "show", f"{revision}:benchmark/data/decoding.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    source = source.replace("from .transforms import", "from benchmark.data.transforms import")
    path = Path(tempfile.mkdtemp(prefix="fedvid-before-")) / "decoding_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("decoding_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clips_per_second(open_video, backend: str, jobs: list[tuple[str, list[int]]]) -> tuple[float, float]:
    """-> (clips/s of wall time, clips/s of this process's CPU time: less sensitive to the
    other processes on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    for path, indices in jobs:
        with open_video(path, backend, short_side=SHORT_SIDE) as video:
            video.get_frames(indices)
    return len(jobs) / (time.perf_counter() - start), len(jobs) / (time.process_time() - cpu)


def speed(args) -> None:
    from benchmark.data.decoding import open_video

    before = load_before(args.before)
    variants = {
        "before": (before.open_video, "decord"),
        "auto": (open_video, "auto"),
        "decord": (open_video, "decord"),
        "pyav": (open_video, "pyav"),
    }
    formats = (
        ("MPEG-4 Part 2 / AVI", "mpeg4", "avi", False),
        ("H.264 / MP4", "libx264", "mp4", False),
        ("MPEG-4 Part 2 with B-frames / AVI (a hazard: exact path)", "mpeg4", "avi", True),
    )
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-decoding-") as tmp:
        for label, codec, suffix, b_frames in formats:
            paths = [str(Path(tmp) / f"video_{k}{'_b' if b_frames else ''}.{suffix}") for k in range(NUM_VIDEOS)]
            for k, path in enumerate(paths):
                encode_video(Path(path), codec, seed=k, b_frames=b_frames)
            generator = torch.Generator().manual_seed(0)
            jobs = [
                (paths[i % NUM_VIDEOS], train_clip_indices(NUM_FRAMES, FRAMES, STRIDE, generator))
                for i in range(args.clips)
            ]
            if b_frames:  # "before" returns wrong frames here; today's decord refuses the file
                variants = {"before": (before.open_video, "decord"), "auto": (open_video, "auto")}
            rates: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for repetition in range(args.repeats + 1):
                order = list(variants) if repetition % 2 == 0 else list(reversed(variants))
                measured = {name: clips_per_second(*variants[name], jobs) for name in order}
                if repetition:  # the first is a warm-up
                    for name, rate in measured.items():
                        rates[name].append(rate)
            print(
                f"{label}: {WIDTH}x{HEIGHT}, {NUM_FRAMES} frames; {args.clips} clips of {FRAMES} frames, stride "
                f"{STRIDE}, short side {SHORT_SIDE}; median of {args.repeats} repetitions, clips/s (wall | CPU):"
            )
            median = {name: [statistics.median(r[k] for r in runs) for k in (0, 1)] for name, runs in rates.items()}
            print("  " + "   ".join(f"{name} {wall:6.1f} | {cpu:6.1f}" for name, (wall, cpu) in median.items()))
            for k, what in ((0, "wall"), (1, "CPU")):
                ratios = [a[k] / b[k] for a, b in zip(rates["auto"], rates["before"])]
                print(
                    f"  auto / before ({what}): {median['auto'][k] / median['before'][k]:.3f} (per repetition "
                    f"{', '.join(f'{r:.3f}' for r in ratios)}"
                    f"{'; before decodes wrong frames here' if b_frames else f'; target >= {TARGET}'})"
                )


def exactness() -> None:
    print("\nfixture            auto  (uses)   pyav    decord alone        frames  status")
    for path in sorted(FIXTURES.glob("*.*")):
        if path.suffix not in (".avi", ".mp4"):
            continue
        result = check_video(path)
        ra = result.get("random_access", {})
        print(
            f"{path.name:<18} {ra.get('auto', '-'):<5} ({result.get('auto_decoder', '-'):<6}) "
            f"{ra.get('pyav', '-'):<7} {ra.get('decord', '-')[:18]:<19} {result.get('frames', '-'):>6}  "
            f"{result['status']}{' (' + result['problems'][0][:40] + ')' if result['problems'] else ''}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96, help="clips per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (after one warm-up)")
    parser.add_argument("--before", default="b44d4b4", help="git revision of the 'before' decoder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    speed(args)
    exactness()
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
