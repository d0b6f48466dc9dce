"""Choosing the decoding library by measurement (issue 13, item 7): exactness per fixture and
clips/s of candidate decoders, side by side with today's ``auto`` and ``pyav`` backends.

Candidates (each optional; a missing one is reported as "not installed"):
  ``auto``, ``pyav``        this project's backends (benchmark.data.decoding.open_video);
  ``decord``                decord 0.6 used directly (``VideoReader(path).get_batch``): the
                            speed reference of every ratio;
  ``torchcodec-exact``      torchcodec ``VideoDecoder(path, seek_mode="exact").get_frames_at``;
  ``torchcodec-approx``     the same with ``seek_mode="approximate"``;
  ``video-reader-rs``       ``video_reader.PyVideoReader(path).get_batch`` (its default: it
                            picks seeking or sequential decoding by cost);
  ``pyav-unpack``           plain PyAV with the ``mpeg4_unpack_bframes`` bitstream filter on
                            every packet: frames indexed by the filtered packets' sorted
                            timestamps, seek to the keyframe before, decode forward;
  ``decord2``               the decord fork; it installs as the module ``decord`` and crashes
                            (SIGSEGV) when loaded next to decord 0.6: install it with
                            ``pip install --target $DECORD2_PATH`` (default /tmp/decord2pkg).

Every group of GROUPS runs in its own child process (candidates interleaved inside it);
ratios to decord across processes are bridged through torchcodec approximate where a group
can hold it; decord2's and PyAV's groups cannot (a segfault, deadlocks), so their ratios are
across processes, not interleaved.

Exactness: for every fixture in tests/fixtures/videos, the frame count, and frames at a spread
of indices (first, last, around 37 and 49, a seeded sample) compared with the sequential decode
(benchmark.data.decoding.sequential_frames, the definition of frame i) by ``fedvid data
check``'s criterion (:class:`benchmark.data.check._Truth`: within SAME_FRAME_TOLERANCE grey
levels and not closer to a neighbouring frame). Wrong frames are named by the number each
fixture frame carries (make_fixtures.read_frame_number), e.g. ``49->48``.

Speed: random training clips (16 frames, stride 2, full stored size: not every candidate can
resize while converting) on plain_h264.mp4, plain_mpeg4.avi (160x120, 100 frames) and a 320x240,
10 s H.264 MP4 written with PyAV into a temp dir; open + decode per clip as the loaders do;
candidates interleaved (order reversed every repetition) on the same clips in one process per group; each
library with its default threads; medians of clips/s by wall and by this process's CPU time.

    .venv-with-candidates/bin/python perf/bench_decoders.py [--clips 48] [--repeats 5]
    ... perf/bench_decoders.py --only auto,decord,torchcodec-exact --json --files '{"label": "path"}'

Caveat (2026-12-01): with every candidate in one process the run deadlocked (all threads in
futex waits, no CPU) after a few repetitions, twice, in a ``pyav`` measurement; a process
with only pyav, pyav-unpack and torchcodec deadlocked too on the 320x240 file, and decord2
next to torchcodec segfaulted. perf/RESULTS.md's figures therefore come from ``--only``
groups (one process per group, interleaved inside it); both processes have a watchdog
(``--child-timeout``) that dumps the Python stack and exits instead of hanging.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import glob
import json
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
from benchmark.data.check import _sequential_truth, _Truth
from benchmark.data.clips import train_clip_indices
from benchmark.data.decoding import count_frames, inspect_video

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "videos"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import read_frame_number  # noqa: E402

FRAMES, STRIDE = 16, 2
#: where decord2 is installed (``pip install --target``), as it shadows decord 0.6's module name
DECORD2_PATH = os.environ.get("DECORD2_PATH", "/tmp/decord2pkg")


# --- candidates: name -> function(path, indices) -> (num_frames, uint8 (T, H, W, 3) tensor) ------


def _ours(backend):
    def read(path, indices):
        from benchmark.data.decoding import open_video

        with open_video(path, backend) as video:
            return video.num_frames, video.get_frames(indices)

    return read


def _decord_module():
    import decord

    return decord


def _decord(path, indices):
    decord = _decord_module()
    reader = decord.VideoReader(path)
    batch = reader.get_batch(indices)
    batch = batch.asnumpy() if hasattr(batch, "asnumpy") else batch
    return len(reader), torch.as_tensor(np.asarray(batch))


def _torchcodec(mode):
    def read(path, indices):
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(path, seek_mode=mode, dimension_order="NHWC")
        return len(decoder), decoder.get_frames_at(indices).data

    return read


def _video_reader_module():
    # the wheel's libwebp misses its bundled libsharpyuv (no rpath): load it first
    import importlib.util

    spec = importlib.util.find_spec("video_reader")
    if spec is None:
        raise ImportError("video_reader")
    libs = glob.glob(str(Path(spec.origin).parent.parent / "video_reader_rs.libs" / "libsharpyuv-*.so*"))
    for lib in libs:
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    import video_reader

    return video_reader


def _video_reader(path, indices):
    reader = _video_reader_module().PyVideoReader(path)
    return int(reader.get_shape()[0]), torch.as_tensor(np.asarray(reader.get_batch(indices)))


def _pyav_unpack(path, indices):
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        mpeg4 = stream.codec_context.name == "mpeg4"

        def packets():
            unpack = av.BitStreamFilterContext("mpeg4_unpack_bframes", stream) if mpeg4 else None
            for packet in container.demux(stream):
                if packet.size:
                    yield from (unpack.filter(packet) if unpack else (packet,))
            if unpack:
                yield from unpack.filter(None)

        stamps = sorted(p.pts if p.pts is not None else p.dts for p in packets() if not p.is_discard)
        wanted = {stamps[i]: i for i in set(indices)}
        container.seek(min(wanted), stream=stream, backward=True, any_frame=False)
        frames = {}
        for packet in packets():
            for frame in stream.decode(packet):
                if frame.pts in wanted:
                    frames[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
            if len(frames) == len(wanted):
                break
        else:
            for frame in stream.decode(None):  # the decoder's delayed frames
                if frame.pts in wanted:
                    frames[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
        missing = sorted(set(indices) - set(frames))
        if missing:
            raise RuntimeError(f"frames {missing[:4]} not returned")
        return len(stamps), torch.from_numpy(np.stack([frames[i] for i in indices]))


def _decord2_module():
    sys.path.insert(0, DECORD2_PATH)
    try:
        import decord

        if not decord.__version__.startswith(("1", "2", "3", "4")):
            raise ImportError(f"decord {decord.__version__} is not decord2")
        return decord
    finally:
        sys.path.remove(DECORD2_PATH)


CANDIDATES = {
    "auto": (_ours("auto"), lambda: None),
    "pyav": (_ours("pyav"), lambda: None),
    "decord": (_decord, _decord_module),
    "torchcodec-exact": (_torchcodec("exact"), lambda: __import__("torchcodec.decoders")),
    "torchcodec-approx": (_torchcodec("approximate"), lambda: __import__("torchcodec.decoders")),
    "video-reader-rs": (_video_reader, _video_reader_module),
    "pyav-unpack": (_pyav_unpack, lambda: None),
    "decord2": (_decord, _decord2_module),  # in a child process: _decord then finds decord2
}
#: candidates measured together in one process each; the first group holds the reference
#: (decord), and BRIDGE, in every group, carries the ratio to decord across processes
BRIDGE = "torchcodec-approx"
GROUPS = (
    ("auto", "decord", "torchcodec-exact", BRIDGE, "video-reader-rs"),
    ("pyav", "pyav-unpack"),  # PyAV decoding next to torchcodec (or decord) deadlocked here
    ("decord2",),
)  # decord2 segfaulted next to torchcodec and deadlocked next to pyav


def available(names) -> dict[str, object]:
    """name -> read function, or name -> "not installed (...)" text."""
    out = {}
    for name in names:
        read, load = CANDIDATES[name]
        try:
            load()
            out[name] = read
        except Exception as e:
            out[name] = f"not installed ({type(e).__name__}: {str(e)[:60]})"
    return out


# --- exactness -----------------------------------------------------------------------------


def spread(num_frames: int) -> list[int]:
    seeded = np.random.default_rng(13).integers(0, num_frames, size=6).tolist()
    picks = {0, 1, 7, 8, 37, 48, 49, 50, num_frames // 2, 2 * num_frames // 3, num_frames - 2, num_frames - 1, *seeded}
    return sorted(i for i in picks if 0 <= i < num_frames)


def exactness_of(read, path: str, reference: dict) -> str:
    num_frames, indices, truth, numbers, info = (
        reference[k] for k in ("frames", "indices", "truth", "numbers", "info")
    )
    try:
        count, frames = read(path, indices)
    except Exception as e:
        lines = [line for line in str(e).splitlines() if line.strip() and "Stack trace" not in line]
        text = lines[0].split("ERROR ")[-1] if lines else ""  # decord: "[time] file.cc:line: ... ERROR message"
        failure = f"fails: {type(e).__name__}: {text[:60]}"
        if len(indices) > 4 and indices[-1] == num_frames - 1:  # what it returns short of the last frames
            subset = dict(
                reference,
                indices=indices[:-2],
                numbers=numbers[:-2],
                truth=_Truth(truth.frames[:-2], truth.neighbours[:-2]),
            )
            return f"{failure}; without the last 2: {exactness_of(read, path, subset)}"
        return failure
    if count != num_frames:
        note = f"count {count}"
        try:  # still say whether the frames returned are right
            return note + (", frames exact" if truth.matches(frames) else ", wrong frames")
        except Exception:
            return note
    if tuple(frames.shape[1:3]) == (info.width, info.height) and info.rotation:
        return "not upright"
    if truth.matches(frames):
        return "exact"
    got = [read_frame_number(f) for f in frames]
    wrong = [(want, have) for want, have in zip(numbers, got) if want != have]
    if not wrong:
        return "near (pixels differ)"
    return f"wrong {len(wrong)}/{len(numbers)} ({', '.join(f'{w}->{h}' for w, h in wrong[:2])})"


def references() -> dict[str, dict]:
    out = {}
    for path in sorted(FIXTURES.glob("*.*")):
        if path.suffix not in (".avi", ".mp4"):
            continue
        try:
            info = inspect_video(path)
            frames = count_frames(str(path))
        except Exception as e:
            out[path.name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        indices = spread(frames)
        truth = _sequential_truth(str(path), indices, info, frames)
        out[path.name] = {
            "frames": frames,
            "indices": indices,
            "truth": truth,
            "info": info,
            "numbers": [read_frame_number(f) for f in truth.frames],
        }
    return out


def exactness(candidates: dict) -> dict[str, dict[str, str]]:
    table = {}
    for name, ref in references().items():
        path = str(FIXTURES / name)
        if "error" in ref:
            table[name] = {c: "-" for c in candidates} | {"_note": ref["error"][:80]}
            continue
        table[name] = {
            c: (exactness_of(read, path, ref) if callable(read) else "not installed") for c, read in candidates.items()
        }
        table[name]["_note"] = f"{ref['frames']} frames"
    return table


# --- speed ----------------------------------------------------------------------------------


def write_large(path: Path) -> None:
    """320x240, 10 s at 25 fps, H.264 (libx264 veryfast, B-frames on), a moving noisy texture."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    texture = np.tile(np.kron(blocks, np.ones((8, 8, 1), np.uint8)), (2, 2, 1)).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for k in range(250):
            y, x = (3 * k) % 240, (5 * k) % 320
            image = np.clip(texture[y : y + 240, x : x + 320] + rng.integers(-10, 11, (240, 320, 3)), 0, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_jobs(path: str, clips: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    n = count_frames(path)
    return [train_clip_indices(n, FRAMES, STRIDE, generator) for _ in range(clips)]


def rate(read, path: str, jobs) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for indices in jobs:
        read(path, indices)
    return len(jobs) / (time.perf_counter() - start), len(jobs) / (time.process_time() - cpu)


def speed(candidates: dict, files: dict[str, str], clips: int, repeats: int) -> dict[str, dict[str, list]]:
    """file label -> candidate -> [median wall clips/s, median CPU clips/s] (None: failed)."""
    out = {}
    for label, path in files.items():
        jobs = clip_jobs(path, clips)
        runnable = {}
        for name, read in candidates.items():
            if callable(read):
                try:
                    read(path, jobs[0])
                    runnable[name] = read
                except Exception:
                    pass
        rates = {name: [] for name in runnable}
        for repetition in range(repeats + 1):
            order = list(runnable) if repetition % 2 == 0 else list(reversed(runnable))
            for name in order:
                print(f"[progress] {label} repetition {repetition} {name}", file=sys.stderr, flush=True)
                measured = rate(runnable[name], path, jobs)
                if repetition:  # the first is a warm-up
                    rates[name].append(measured)
        out[label] = {name: [statistics.median(r[k] for r in runs) for k in (0, 1)] for name, runs in rates.items()}
        out[label] |= {name: None for name in candidates if name not in runnable}
    return out


def run_child(names, files, args) -> dict:
    """One group of candidates in a child process: exactness, and speed on ``files``."""
    command = [
        sys.executable,
        __file__,
        "--only",
        ",".join(names),
        "--clips",
        str(args.clips),
        "--child-timeout",
        str(args.child_timeout),
        "--repeats",
        str(args.repeats),
        "--json",
        "--files",
        json.dumps(files),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        # a hang: the child's watchdog dumped its Python stack (faulthandler) and exited
        stack = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("File ")]
        where = f"; hung or crashed at {stack[0]}" if stack else ""
        return {"error": f"child exited {done.returncode}{where}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="clips per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (after one warm-up)")
    parser.add_argument("--only", default="", help="comma-separated candidates (internal: the child process)")
    parser.add_argument("--files", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-speed", action="store_true", help="exactness only")
    parser.add_argument("--child-timeout", type=int, default=420, help="seconds before the child process is stopped")
    args = parser.parse_args()
    torch.set_num_threads(1)
    av.logging.set_level(av.logging.PANIC)

    if args.only:  # child
        # decord2 deadlocked once here (threads in futex waits, no CPU for minutes): a watchdog
        faulthandler.dump_traceback_later(args.child_timeout, exit=True)
        names = args.only.split(",")
        candidates = available(names)
        result = {"exactness": exactness(candidates)}
        if args.files:
            result["speed"] = speed(candidates, json.loads(args.files), args.clips, args.repeats)
        print(json.dumps(result))
        return

    faulthandler.dump_traceback_later(args.child_timeout * 3, exit=True)  # see the child's watchdog
    print(f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    shown = list(CANDIDATES)
    with tempfile.TemporaryDirectory(prefix="fedvid-bench-decoders-") as tmp:
        files = {
            "plain_h264.mp4": str(FIXTURES / "plain_h264.mp4"),
            "plain_mpeg4.avi": str(FIXTURES / "plain_mpeg4.avi"),
        }
        if not args.no_speed:
            large = Path(tmp) / "large_h264_320x240_10s.mp4"
            write_large(large)
            files["large_h264_320x240_10s.mp4"] = str(large)
        # one process per group (see the caveat in the docstring); BRIDGE in every group but
        # the reference's carries the ratio to decord across processes
        results = [run_child(group, files if not args.no_speed else {}, args) for group in GROUPS]
        table: dict[str, dict] = {}
        for group, result in zip(GROUPS, results):
            if "error" in result:
                print(f"\n{', '.join(group)}: {result['error']}")
            for fixture, row in result.get("exactness", {}).items():
                table.setdefault(fixture, {}).update({c: v for c, v in row.items() if c in group or c == "_note"})
        print("\nexactness (frame count and frames at a spread of indices vs the sequential decode):")
        print("| fixture | " + " | ".join(shown) + " |")
        print("|---" * (len(shown) + 1) + "|")
        for fixture, row in table.items():
            print(f"| {fixture} ({row.get('_note', '')}) | " + " | ".join(row.get(c, "-") for c in shown) + " |")
        if args.no_speed:
            return
        print(
            f"\nspeed: {args.clips} random clips of {FRAMES} frames at stride {STRIDE}, full size, open + decode "
            f"per clip; median of {args.repeats} repetitions; clips/s wall | CPU, and ratio to decord (wall | CPU)"
        )
        reference = results[0].get("speed", {})
        for label in files:
            base, bridge = reference.get(label, {}).get("decord"), reference.get(label, {}).get(BRIDGE)
            print(f"\n{label}:")
            for group, result in zip(GROUPS, results):
                per = result.get("speed", {}).get(label, {})
                for name in group:
                    if name == BRIDGE and group is not GROUPS[0]:
                        continue
                    r = per.get(name)
                    if r is None:
                        why = (
                            "not installed"
                            if table.get("plain_h264.mp4", {}).get(name) == "not installed"
                            else result.get("error", "fails on this file")
                        )
                        print(f"  {name:<18} {why[:100]}")
                        continue
                    ratio = "-"
                    if base and group is GROUPS[0]:
                        ratio = f"x{r[0] / base[0]:.2f} | x{r[1] / base[1]:.2f}"
                    elif base and bridge and per.get(BRIDGE):
                        ratio = " | ".join(f"x{r[k] / per[BRIDGE][k] * bridge[k] / base[k]:.2f}" for k in (0, 1))
                        ratio += f"  (bridged through {BRIDGE})"
                    elif base:
                        ratio = f"x{r[0] / base[0]:.2f} | x{r[1] / base[1]:.2f}  (separate process, not interleaved)"
                    print(f"  {name:<18} {r[0]:7.1f} | {r[1]:7.1f}   {ratio}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
