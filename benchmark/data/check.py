"""The dataset doctor behind ``fedvid data check``: is every listed video usable, and exact?

:func:`check_video` looks at one file: size, container, codec, fps, display rotation, the
frame count of a full sequential decode (the frame-index definition of
:mod:`benchmark.data.decoding`), decode errors and truncation, and whether random access
is exact: frames at a few seeded positions through ``auto`` (the default backend), ``pyav``
and plain decord are compared with the sequential decode. A file is *unusable* when it is
missing, empty, cannot be decoded, is truncated, or ``auto`` would return other frames.

Results are cached per file in ``<data_root>/.fedvid-check/files.json`` keyed by (absolute
path, size, mtime, inode; :func:`benchmark.data.decoding.file_identity`), so checking a
dataset again only decodes what changed. :func:`unusable_in_cache` is how
:func:`benchmark.data.resolve.resolve_videos` (and so ``fedvid run``/``evaluate``) refuses,
or skips with ``allow_missing_videos=true``, a file the check found unusable.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.io import atomic_write_json, atomic_write_text, read_json

CHECK_VERSION = 1
CACHE_DIR = ".fedvid-check"
CACHE_FILE = "files.json"
#: Random-access frames compared with the sequential decode per file (plus first and last).
SAMPLED_FRAMES = 6
#: Mean absolute difference (grey levels) under which two decoders returned the same frame;
#: decord and PyAV bundle different ffmpeg builds (a few levels), a wrong frame differs by far more.
SAME_FRAME_TOLERANCE = 3.0
#: AVI headers carry the frame count; fewer frames than this share of it means a cut file.
_AVI_MIN_FRAME_SHARE = 0.9


def _sample_indices(num_frames: int, key: str) -> list[int]:
    """First, last and SAMPLED_FRAMES positions drawn with a seed from ``key`` (reproducible)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    drawn = np.random.default_rng(seed).integers(0, num_frames, size=SAMPLED_FRAMES).tolist()
    return sorted({0, num_frames - 1, *map(int, drawn)})


def _full_decode(path: str, logs: list) -> tuple[int, list[str], str]:
    """(frames, ffmpeg error messages, exception text) of a full sequential decode; ``logs``
    is the list an active ``av.logging.Capture`` fills."""
    import av.logging

    from benchmark.data.decoding import sequential_frames

    frames, failure, before = 0, "", len(logs)
    try:
        for _ in sequential_frames(path, frame_threads=False):
            frames += 1
    except Exception as e:  # noqa: BLE001 - any decoder or demuxer error is this file's finding
        failure = f"{type(e).__name__}: {e}"
    errors = [f"{name}: {message.strip()}" for level, name, message in logs[before:] if level <= av.logging.ERROR]
    return frames, errors, failure


def _random_access(path: str, backend: str, indices: list[int], truth: _Truth, num_frames: int) -> str:
    """``exact``, ``wrong frames``, ``frame count N`` or ``refused: ...`` for one backend."""
    from benchmark.data.decoding import VideoDecodeError, open_video

    try:
        with open_video(path, backend) as video:
            if video.num_frames != num_frames:
                return f"frame count {video.num_frames}"
            frames = video.get_frames(indices)
    except VideoDecodeError as e:
        return f"refused: {e.reason}"
    return "exact" if truth.matches(frames) else "wrong frames"


def _raw_decord(path: str, indices: list[int], truth: _Truth, num_frames: int) -> str:
    """The same for decord used directly (for information: what the hazard rules avoid)."""
    try:
        import decord

        reader = decord.VideoReader(path)
        if len(reader) != num_frames:
            return f"frame count {len(reader)}"
        batch = reader.get_batch(indices)
        frames = batch if not hasattr(batch, "asnumpy") else batch.asnumpy()
    except Exception as e:  # noqa: BLE001 - decord raises its own error types; each is a finding
        return f"fails: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    import torch

    return "exact" if truth.matches(torch.as_tensor(np.asarray(frames))) else "wrong frames"


@dataclass(frozen=True)
class _Truth:
    """The sequential decode at the sampled indices, and at each one's neighbours (i - 1,
    i + 1): a frame off by one in a slow scene can be within SAME_FRAME_TOLERANCE of the
    right one, but not closer to a neighbour than to it."""

    frames: object  # uint8 (T, H, W, 3) tensor
    neighbours: list  # per sampled index: the neighbouring frames' tensors

    def matches(self, decoded) -> bool:
        if tuple(decoded.shape) != tuple(self.frames.shape):
            return False
        for got, want, around in zip(decoded, self.frames, self.neighbours):
            error = _difference(got, want)
            if error >= SAME_FRAME_TOLERANCE or any(_difference(got, other) < error - 0.25 for other in around):
                return False
        return True


def _difference(a, b) -> float:
    return float((a.float() - b.float()).abs().mean())


def _sequential_truth(path: str, indices: list[int], info, num_frames: int) -> _Truth:
    import torch

    from benchmark.data.decoding import decode_sequentially

    wanted = sorted({j for i in indices for j in (i - 1, i, i + 1) if 0 <= j < num_frames})
    decoded = {
        k: torch.from_numpy(v)
        for k, v in decode_sequentially(path, wanted, info.rotation, info.height, info.width).items()
    }
    return _Truth(
        torch.stack([decoded[i] for i in indices]),
        [[decoded[j] for j in (i - 1, i + 1) if j in decoded] for i in indices],
    )


def check_video(path: str | os.PathLike, random_access: bool = True) -> dict:
    """Check one file (see the module docstring). Returns a JSON-able dict whose ``status``
    is ``ok`` or ``unusable`` (``missing``/``empty`` when so) and ``problems`` says why.
    ffmpeg's messages are captured (counted as decode errors), not printed.
    ``random_access=False`` skips the random-access comparison (a full decode only)."""
    import av.logging
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its own ffmpeg; its errors show as wrong/refused frames
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            return _check_video(str(path), logs, random_access)
    finally:
        av.logging.set_level(previous)


def _check_video(path: str, logs: list, random_access: bool) -> dict:
    from benchmark.data.decoding import VideoDecodeError, inspect_video, open_video

    result: dict = {"file": path, "version": CHECK_VERSION, "problems": []}
    problems: list[str] = result["problems"]
    if not os.path.isfile(path):
        return {**result, "status": "missing", "problems": ["no such file"]}
    result["size"] = os.path.getsize(path)
    if result["size"] == 0:
        return {**result, "status": "empty", "problems": ["zero bytes"]}
    try:
        info = inspect_video(path)
    except VideoDecodeError as e:
        return {**result, "status": "unusable", "problems": [e.reason]}
    result.update(
        container=info.container,
        codec=info.codec,
        width=info.width,
        height=info.height,
        fps=round(info.fps, 3),
        rotation=info.rotation,
        header_frames=info.header_frames,
        hazard=info.hazard,
    )
    frames, errors, failure = _full_decode(path, logs)
    result.update(frames=frames, decode_errors=len(errors), first_error=(errors or [failure or ""])[0])
    cut = info.container == "avi" and info.header_frames > 0 and frames < _AVI_MIN_FRAME_SHARE * info.header_frames
    result["truncated"] = bool(errors or failure or cut)
    if frames == 0:
        problems.append(f"no frame decodes ({failure or 'empty stream'})")
    elif result["truncated"]:
        why = failure or (errors[0] if errors else f"{frames} of the header's {info.header_frames} frames decode")
        problems.append(f"truncated or corrupt: decoding stops or fails before the end ({why})")
    if frames and random_access:
        indices = _sample_indices(frames, path)
        truth = _sequential_truth(path, indices, info, frames)
        result["random_access"] = {
            "auto": _random_access(path, "auto", indices, truth, frames),
            "pyav": _random_access(path, "pyav", indices, truth, frames),
            "decord": _raw_decord(path, indices, truth, frames),
        }
        with open_video(path, "auto") as video:
            result["auto_decoder"] = getattr(video, "decoded_by", "auto")
        if result["random_access"]["auto"] != "exact":
            problems.append(f"the default backend (auto) is not frame-exact here: {result['random_access']['auto']}")
    result["status"] = "unusable" if problems else "ok"
    return result


# --- the per-file cache --------------------------------------------------------------------


def cache_path(data_root: str | os.PathLike) -> Path:
    return Path(data_root) / CACHE_DIR / CACHE_FILE


def load_cache(data_root: str | os.PathLike) -> dict[str, dict]:
    """absolute path -> {"identity": [size, mtime_ns, inode], "result": check_video(...)}."""
    path = cache_path(data_root)
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError):  # a damaged cache is rebuilt, never trusted
        return {}
    if not isinstance(data, dict) or data.get("version") != CHECK_VERSION:
        return {}
    return data.get("files") or {}


def _identity(path: str) -> list[int] | None:
    from benchmark.data.decoding import file_identity

    try:
        return list(file_identity(path))
    except OSError:
        return None


def cached_result(cache: dict[str, dict], path: str) -> dict | None:
    """The cached check of ``path`` if the file is unchanged since (same size, mtime, inode)."""
    entry = cache.get(path)
    if entry is None or entry.get("identity") != _identity(path):
        return None
    return entry.get("result")


def _find_cache_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding a check cache (the data root)."""
    for directory in (start, *start.parents):
        if cache_path(directory).is_file():
            return directory
    return None


def unusable_in_cache(root: str | os.PathLike, files: Iterable[Path]) -> dict[Path, str]:
    """file -> why, for each of ``files`` that the nearest check cache at or above ``root``
    found unusable and that has not changed since. Unchecked files are not listed."""
    cache_root = _find_cache_root(Path(root).resolve())
    if cache_root is None:
        return {}
    unusable = {
        path: entry
        for path, entry in load_cache(cache_root).items()
        if (entry.get("result") or {}).get("status") == "unusable"
    }
    names = {os.path.basename(path) for path in unusable}  # only these files need a realpath and stat
    out = {}
    for file in files:
        if os.path.basename(file) not in names:
            continue
        result = cached_result(unusable, str(Path(file).resolve()))
        if result is not None:
            out[file] = "; ".join(result.get("problems") or ["unusable"])
    return out


# --- checking a list of files ----------------------------------------------------------------


@dataclass
class CheckReport:
    """Results of :func:`check_files`, in the order of the listed files."""

    dataset: str
    root: str
    results: list[dict] = field(default_factory=list)  # each with "path" (as listed) added
    from_cache: int = 0

    def by_status(self) -> Counter:
        return Counter(r["status"] for r in self.results)

    @property
    def unusable(self) -> list[dict]:
        """Every file not ``ok``: broken files first, then empty, then missing (list order within)."""
        order = {"unusable": 0, "empty": 1, "missing": 2}
        return sorted((r for r in self.results if r["status"] != "ok"), key=lambda r: order[r["status"]])

    def to_json(self) -> dict:
        return {
            "format": "fedvid-data-check/1",
            "dataset": self.dataset,
            "root": self.root,
            "counts": {
                "listed": len(self.results),
                **{s: self.by_status().get(s, 0) for s in ("ok", "unusable", "missing", "empty")},
                "from_cache": self.from_cache,
            },
            "codecs": dict(
                sorted(
                    Counter(
                        f"{r.get('container', '?')}/{r.get('codec', '?')}" for r in self.results if "codec" in r
                    ).items()
                )
            ),
            "problems": dict(sorted(Counter(_problem_kind(r) for r in self.unusable).items())),
            "files": self.results,
        }

    def summary_text(self, shown: int = 20) -> str:
        data = self.to_json()
        c = data["counts"]
        lines = [
            f"fedvid data check: {self.dataset} under {self.root}",
            f"{c['listed']} listed videos: {c['ok']} ok, {c['unusable']} unusable, {c['missing']} missing, "
            f"{c['empty']} empty ({c['from_cache']} results from the cache)",
            "codecs: " + (", ".join(f"{k} {v}" for k, v in data["codecs"].items()) or "-"),
        ]
        hazards = Counter(r["hazard"] for r in self.results if r.get("hazard"))
        if hazards:
            lines.append(
                "decoded exactly by PyAV (decord would be wrong): "
                + ", ".join(f"{k} {v}" for k, v in sorted(hazards.items()))
            )
        rotated = sum(1 for r in self.results if r.get("rotation"))
        if rotated:
            lines.append(f"rotated (display matrix, applied): {rotated}")
        if data["problems"]:
            lines.append("problems: " + ", ".join(f"{k} {v}" for k, v in data["problems"].items()))
            lines.append("unusable files:")
            for r in self.unusable[:shown]:
                lines.append(f"  - {r['path']} ({r['status']}): {'; '.join(r['problems'])}")
            if len(self.unusable) > shown:
                lines.append(f"  ... and {len(self.unusable) - shown} more (see the JSON report)")
        return "\n".join(lines)


def _problem_kind(result: dict) -> str:
    if result["status"] in ("missing", "empty"):
        return result["status"]
    text = " ".join(result["problems"])
    for kind in ("truncated", "not frame-exact", "no frame decodes", "header"):
        if kind in text:
            return kind.replace("not frame-exact", "inexact random access")
    return "undecodable"


def check_files(
    dataset: str,
    root: str | os.PathLike,
    entries: list[tuple[str, Path]],
    *,
    cache_root: str | os.PathLike,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check ``entries`` ((path as listed, file) pairs), reusing and updating the cache under
    ``cache_root``. ``progress(done, total)`` is called as files finish."""
    cache = load_cache(cache_root)
    report = CheckReport(dataset, str(root))
    files = [str(Path(file).resolve()) for _, file in entries]
    results: dict[str, dict] = {}
    todo: list[str] = []
    for file in dict.fromkeys(files):
        hit = cached_result(cache, file)
        if hit is not None:
            results[file] = hit
        else:
            todo.append(file)
    report.from_cache = len(files) - len(todo)
    done = report.from_cache
    if progress:
        progress(done, len(files))
    if todo:
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(todo) > 1 else None
        outcomes = pool.map(check_video, todo, chunksize=1) if pool else map(check_video, todo)
        try:
            for file, result in zip(todo, outcomes):
                results[file] = result
                identity = _identity(file)
                if identity is not None:
                    cache[file] = {"identity": identity, "result": result}
                done += 1
                if progress:
                    progress(done, len(files))
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        atomic_write_json(cache_path(cache_root), {"version": CHECK_VERSION, "files": cache})
    report.results = [{"path": listed, **results[file]} for (listed, _), file in zip(entries, files)]
    return report


def write_report(report: CheckReport, directory: str | os.PathLike) -> tuple[Path, Path]:
    """``fedvid-check-<dataset>.json`` and ``.txt`` (the summary) in ``directory``."""
    directory = Path(directory)
    json_path = directory / f"fedvid-check-{report.dataset}.json"
    text_path = directory / f"fedvid-check-{report.dataset}.txt"
    atomic_write_json(json_path, report.to_json())
    atomic_write_text(text_path, report.summary_text() + "\n")
    return json_path, text_path
