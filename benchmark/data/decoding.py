"""Frame-exact video decoding by frame index: decord where it is exact, PyAV otherwise.

**Frame index semantics** (every backend): frame ``i`` of a video is the ``i``-th frame that a
full sequential decode of its first video stream produces, in presentation order, upright
(the container's display rotation applied); ``num_frames`` is the number of frames that
decode produces. A backend returns exactly those frames, or raises
:class:`VideoDecodeError` naming the file and why. Random access is an optimisation that
must not change the answer, so it is used only where the container gives it exactly:

- :func:`inspect_video` reads the header and the first packets (no decoding) and names a
  *hazard* when index-based seeking is known to return other frames: MPEG-4 Part 2 with
  B-frames in AVI (packed or not: AVI stores no presentation times; decord returned frame
  13 for frame 37 of tests/fixtures/videos/packed_xvid.avi), H.264/HEVC in AVI, and an MP4
  edit list that hides decoded frames (decord counted 100 frames where 70 decode).
- ``decord`` (fast random access) refuses a hazardous file with a clear error. It applies
  the display rotation itself, but after its own resize (a rotated video came out
  squashed), so a rotated file is decoded at full size and resized in torch.
- ``pyav`` is exact on every file ffmpeg decodes: it seeks by presentation timestamp
  (the packets' sorted timestamps index the frames; an edit list's hidden packets, which
  the demuxer flags, are left out), except in an AVI with a hazard, which has no
  presentation times: that it decodes sequentially from the first frame (MPEG-4 Part 2
  through the ``mpeg4_unpack_bframes`` bitstream filter), counting the frames once per
  process and file (:func:`count_frames`).
- ``auto`` (the default ``clip.backend``): decord when the file has no hazard and decord
  can read it, PyAV otherwise (AV1, which decord 0.6 cannot open; hazardous files).

``fedvid data check`` (:mod:`benchmark.data.check`) verifies these rules per file by
comparing random-access frames with the sequential decode.

With ``short_side`` the frames come out already resized so that their shorter side is
``short_side`` (aspect kept, both sides ``round(side * short_side / short)`` like
:class:`benchmark.data.transforms.ShortSideResize`): ffmpeg's swscale scales while it
converts YUV to RGB, which costs less than converting at full size. Both backends use
swscale's bilinear filter; they agree to a few grey levels, not bit for bit (decord
bundles an older ffmpeg). Rotated videos are rotated at full size and resized after.

A client's round reads each of its videos once per local epoch: inside
:func:`cached_videos` (``run_local_training``) a process decodes a video whole on its first
read, when that costs no more than the clips it saves, and serves later reads from memory —
the same frames, since frame *i* is the same frame whatever the request.

Why not pytorchvideo's time-based ``EncodedVideo.get_clip``: clip samplers here work in
frame indices; ``get_clip(start_sec, end_sec)`` maps seconds to frames with ``ceil(fps * t)``
(off by one at float boundaries) and decodes every frame of the time range. We read by
index through decord's ``get_batch`` and open PyAV containers directly.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .transforms import ShortSideResize

BACKENDS = ("decord", "pyav", "auto")


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded.

    ``VideoDecodeError(path, reason)``; ``str(err)`` names the file. The single-argument
    form ``VideoDecodeError(message)`` exists because PyTorch's DataLoader re-raises a
    worker's exception as ``type(exc)(message)``: ``path`` is then recovered from the
    message, so the runner can still read ``err.path`` after a worker failure.
    """

    _PATH_IN_MESSAGE = re.compile(r"cannot decode video ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:  # re-raised from a DataLoader worker: the argument is a message
            message = str(path)
            found = self._PATH_IN_MESSAGE.findall(message)
            self.path = ast.literal_eval(found[-1]) if found else None
            self.reason = message
        else:
            self.path = str(path)
            self.reason = reason
            message = f"cannot decode video {self.path!r}: {reason}"
        super().__init__(message)


class VideoReader:
    """Index-based access to one opened video file.

    Attributes: ``path`` (str), ``num_frames`` (int), ``fps`` (float), ``backend`` (str),
    ``height`` and ``width`` (int) of the frames ``get_frames`` returns.
    Use as a context manager or call :meth:`close`.
    """

    path: str
    num_frames: int
    fps: float
    backend: str
    height: int
    width: int

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Decode the frames at ``indices`` (any order, repeats allowed).

        Returns a uint8 tensor of shape (T, H, W, C=3), RGB, with T = len(indices),
        frame ``t`` being video frame ``indices[t]``.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f"{self.path}: get_frames needs at least one frame index")
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise ValueError(
                f"{self.path}: frame indices {bad[:5]} are outside [0, {self.num_frames}) "
                f"(the video has {self.num_frames} frames)"
            )
        return indices


def scaled_frame_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) of frames resized to ``short_side`` (``None``: unchanged)."""
    if short_side is None:
        return height, width
    return ShortSideResize(short_side).output_size(height, width)


def _check_short_side(short_side: int | None) -> int | None:
    if short_side is not None and int(short_side) <= 0:
        raise ValueError(f"short_side={short_side}: expected a positive number of pixels (or None)")
    return None if short_side is None else int(short_side)


# --- header inspection ------------------------------------------------------------------

#: Packets scanned for B-frames (MPEG-4 Part 2 in AVI: an encoder with B-frames on writes
#: one by the third picture) and for an edit list's hidden lead-in (MP4: it starts with
#: the first packet). Kept small: the scan runs at every open (perf/RESULTS.md).
_SCANNED_PACKETS = {"avi": 16, "mov": 2}


EDIT_LIST_HAZARD = "an MP4 edit list hides decoded frames"


@dataclass(frozen=True)
class StreamInfo:
    """What the header and first packets of a video's first video stream say (no decoding).

    height, width: of upright frames (rotation applied). rotation: counter-clockwise degrees
    (0, 90, 180, 270) that make the stored frames upright. header_frames: the container's
    frame count (0 when it has none; not trusted as the frame count). hazard: why index-based
    random access would return other frames than the sequential decode ("" when none).
    """

    path: str
    container: str
    codec: str
    height: int
    width: int
    rotation: int
    fps: float
    header_frames: int
    hazard: str

    @property
    def timestamp_seek_exact(self) -> bool:
        """Whether the packets' sorted presentation timestamps index the decoded frames
        (PyAV's seeking reader): yes unless AVI (no presentation times) is the hazard; an
        edit list's hidden packets are flagged, and left out of the index."""
        return not self.hazard or self.hazard == EDIT_LIST_HAZARD


def _mp4_rotation(path: str) -> int:
    """Counter-clockwise display rotation of the first video track of an MP4/MOV, from its
    ``tkhd`` matrix (PyAV 18 exposes it only on decoded frames). 0 when absent."""

    def boxes(f, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        pos = start
        while pos + 8 <= end:
            f.seek(pos)
            header = f.read(16)
            if len(header) < 8:
                return
            size, kind = struct.unpack(">I4s", header[:8])
            body = pos + 8
            if size == 1 and len(header) == 16:
                size, body = struct.unpack(">Q", header[8:16])[0], pos + 16
            elif size == 0:
                size = end - pos
            if size < 8:
                return
            yield kind, body, min(pos + size, end)
            pos += size

    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        for kind, body, end in boxes(f, 0, f.tell()):
            if kind != b"moov":
                continue
            for trak_kind, trak_body, trak_end in boxes(f, body, end):
                if trak_kind != b"trak":
                    continue
                for sub, sub_body, _ in boxes(f, trak_body, trak_end):
                    if sub != b"tkhd":
                        continue
                    # full box: version, flags, times (4 or 8 bytes each), ..., matrix, width, height
                    f.seek(sub_body)
                    version = f.read(1)[0]
                    f.seek(sub_body + (52 if version == 1 else 40))
                    a, b, _u, c, d, _v, _x, _y, _w = struct.unpack(">9i", f.read(36))
                    width, height = struct.unpack(">2I", f.read(8))
                    if width == 0 or height == 0:  # not a video track (audio has 0 x 0)
                        break
                    # as ffmpeg's av_display_rotation_get (PyAV's VideoFrame.rotation, mod 360)
                    degrees = -np.degrees(np.arctan2(b, a)) if (a, b, c, d) != (0, 0, 0, 0) else 0.0
                    return int(round(degrees / 90.0)) % 4 * 90
    return 0


def _mpeg4_b_frames(packets: list) -> str:
    """ "" or why: an MPEG-4 Part 2 packet holding two pictures (packed B-frames) or a B-VOP."""
    for packet in packets:
        data = bytes(packet)
        starts = [m.start() for m in re.finditer(b"\x00\x00\x01\xb6", data)]
        if len(starts) > 1:
            return "packed B-frames (MPEG-4 Part 2 in AVI)"
        if starts and len(data) > starts[0] + 4 and data[starts[0] + 4] >> 6 == 2:
            return "B-frames in AVI (MPEG-4 Part 2; AVI stores no presentation times)"
    return ""


def _hazard(container: str, codec: str, packets: list) -> str:
    if container == "avi":
        if codec == "mpeg4":
            return _mpeg4_b_frames(packets)
        if codec in ("h264", "hevc"):
            return f"{codec.upper()} in AVI (frames are reordered; AVI stores no presentation times)"
    if container == "mov" and any(p.is_discard for p in packets):
        return EDIT_LIST_HAZARD
    return ""


def inspect_video(path: str | Path) -> StreamInfo:
    """Read the header and the first packets of ``path`` (PyAV, no decoding; under a ms for
    a UCF101-sized file). Raises :class:`VideoDecodeError` naming the file.

    Memoised per process by (path, :func:`file_identity`): a loader opens each video once
    per epoch, and a stat is cheaper than reopening the container; a changed file is read again.
    """
    path = str(path)
    if not Path(path).is_file():
        raise VideoDecodeError(path, "no such file")
    return _inspect(path, file_identity(path))


@functools.lru_cache(maxsize=8192)
def _inspect(path: str, identity: tuple[int, int, int]) -> StreamInfo:  # identity: only the cache key
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "the file has no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            height, width = int(context.height), int(context.width)
            name = container.format.name.split(",")[0]  # "mov,mp4,m4a,..." -> "mov"
            codec, header_frames = context.name, int(stream.frames or 0)
            scanned = _SCANNED_PACKETS.get(name, 0)
            packets = []
            for packet in container.demux(stream) if scanned else ():
                if packet.size:
                    packets.append(packet)
                if len(packets) >= scanned:
                    break
            rate = stream.average_rate or stream.guessed_rate
            hazard = _hazard(name, codec, packets)
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"could not read its header ({type(e).__name__}: {e})") from e
    if height <= 0 or width <= 0:
        raise VideoDecodeError(path, f"the header gives a frame size of {width}x{height}")
    rotation = _mp4_rotation(path) if name == "mov" else 0
    if rotation in (90, 270):
        height, width = width, height
    return StreamInfo(path, name, codec, height, width, rotation, float(rate) if rate else 0.0, header_frames, hazard)


def probe_frame_size(path: str) -> tuple[int, int]:
    """(height, width) of the upright frames of the first video stream (header only)."""
    info = inspect_video(path)
    return info.height, info.width


def file_identity(path: str | Path) -> tuple[int, int, int]:
    """(size, mtime in ns, inode): changes whenever the file is replaced or rewritten."""
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)


# --- sequential decoding (the definition of frame i) -------------------------------------


def sequential_frames(path: str, frame_threads: bool = True) -> Iterator:
    """Every frame of a full sequential decode of the first video stream, in output
    (presentation) order, as ``av.VideoFrame``; MPEG-4 Part 2 goes through the
    ``mpeg4_unpack_bframes`` bitstream filter. Decode errors propagate.
    ``frame_threads=False`` keeps ffmpeg's log messages on the calling thread (for
    ``av.logging.Capture``)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        _set_threads(stream, frame_threads)
        unpack = (
            av.BitStreamFilterContext("mpeg4_unpack_bframes", stream) if stream.codec_context.name == "mpeg4" else None
        )
        for packet in container.demux(stream):
            if not packet.size:
                continue
            for unpacked in unpack.filter(packet) if unpack else (packet,):
                yield from stream.decode(unpacked)
        if unpack:
            for unpacked in unpack.filter(None):
                yield from stream.decode(unpacked)
        yield from stream.decode(None)


_FRAME_COUNTS: dict[tuple[str, tuple[int, int, int]], int] = {}


def count_frames(path: str) -> int:
    """Frames of a full sequential decode (no RGB conversion); memoised per process by
    (path, :func:`file_identity`), so a changed file is counted again."""
    key = (path, file_identity(path))
    if key not in _FRAME_COUNTS:
        try:
            _FRAME_COUNTS[key] = sum(1 for _ in sequential_frames(path))
        except Exception as e:
            raise VideoDecodeError(path, f"PyAV could not decode it to the end ({type(e).__name__}: {e})") from e
    return _FRAME_COUNTS[key]


def decode_sequentially(
    path: str, indices: Sequence[int], rotation: int, height: int, width: int
) -> dict[int, np.ndarray]:
    """frame number -> upright uint8 (height, width, 3) RGB for ``indices``, by decoding from
    the first frame up to the last wanted one (exact by definition; no seeking)."""
    wanted, last = set(indices), max(indices)
    frames = {}
    for number, frame in enumerate(sequential_frames(path)):
        if number in wanted:
            frames[number] = _to_rgb(frame, rotation, height, width)
        if number >= last:
            break
    return frames


def _to_rgb(frame, rotation: int, height: int, width: int) -> np.ndarray:
    """An ``av.VideoFrame`` as upright uint8 (height, width, 3) RGB: swscale's bilinear, and
    a rotated frame is rotated at its stored size before that resize."""
    if not rotation:
        return frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
    import av

    upright = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), rotation // 90))
    if upright.shape[:2] == (height, width):
        return upright
    resized = av.VideoFrame.from_ndarray(upright, format="rgb24")
    return resized.reformat(width=width, height=height, interpolation="BILINEAR").to_ndarray()


# --- readers ------------------------------------------------------------------------------

#: ffmpeg's decode threads (decord's and PyAV's) for the videos this process opens (0:
#: ffmpeg's default, one per core); a loader worker sets 1 (:func:`set_decode_threads`).
_decode_threads = 0


def set_decode_threads(threads: int) -> None:
    """Decode with ``threads`` ffmpeg threads in this process from now on, through decord and
    PyAV alike (0: ffmpeg's default, one per core). The frames are the same bit for bit
    whatever the count; only the cost differs. A loader worker is one decode pipeline beside
    others and the training process, so it uses 1: ffmpeg's frame threads, started anew for
    every opened clip, cost ~35 % more CPU per 16-frame clip on 2 cores through decord (11.0
    vs 15.1 ms) and ~15 % through PyAV's sequential decode of B-frames in AVI (a loader
    worker's 16.96 vs 19.73 ms), and gave no faster decode (perf/RESULTS.md, "Issue 16, fifth
    pass, L" and "seventh pass")."""
    global _decode_threads
    if int(threads) < 0:
        raise ValueError(f"threads={threads}: expected 0 (ffmpeg's default) or a positive count")
    _decode_threads = int(threads)


def _set_threads(stream, frame_threads: bool = True) -> None:
    """A PyAV stream's decoder threads, before its first decode: frame and slice threads
    (``frame_threads``; slice threads only keep ffmpeg's log messages on the calling thread),
    as many as :func:`set_decode_threads` says (0: one per core)."""
    stream.thread_type = "AUTO" if frame_threads else "SLICE"
    if _decode_threads:
        stream.codec_context.thread_count = _decode_threads


#: decord bundles FFmpeg 4.1, whose MPEG-4 decoder builds static tables on its first open
#: without a lock: two readers opened at once in a fresh process aborted the process
#: ("incorrect codes", libavcodec/bitstream.c:346) in about 1 % of processes (perf/RESULTS.md,
#: issue 16 tenth pass). A loader worker prepares items on two threads, so opens take turns;
#: decoding does not.
_DECORD_OPEN = threading.Lock()


def _new_decord_open_lock() -> None:
    # a process forked while another of its threads held the lock would never get it back
    global _DECORD_OPEN
    _DECORD_OPEN = threading.Lock()


os.register_at_fork(after_in_child=_new_decord_open_lock)


class _DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, path: str, short_side: int | None = None, info: StreamInfo | None = None):
        import decord

        decord.bridge.set_bridge("torch")  # frames as tensors without a copy (pytorchvideo sets it too)
        self.path = path
        self._short_side = short_side
        info = info or inspect_video(path)
        if info.hazard:
            raise VideoDecodeError(
                path,
                f"decord would return wrong frames ({info.hazard}); use clip.backend=auto or pyav, which are exact",
            )
        self.height, self.width = scaled_frame_size(info.height, info.width, short_side)
        # decord rotates after its own resize (a rotated video comes out squashed), so a
        # rotated video is decoded at full size and resized in torch
        self._resize_in_torch = short_side is not None and info.rotation != 0
        size = (-1, -1) if short_side is None or self._resize_in_torch else (self.height, self.width)
        # decord 0.6 fails now and then on VP9 with its default threads (seen under load in
        # perf/bench_decoding.py); one decode thread is reliable
        self._threads = 1 if info.codec == "vp9" else _decode_threads
        try:
            with _DECORD_OPEN:
                self._reader = decord.VideoReader(path, width=size[1], height=size[0], num_threads=self._threads)
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as e:
            raise VideoDecodeError(path, f"decord could not open it ({type(e).__name__}: {e})") from e
        if self.num_frames <= 0:
            raise VideoDecodeError(path, "decord found no video frames")

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        try:
            batch = self._reader.get_batch(indices)
        except Exception as e:
            if self._short_side is None or self._resize_in_torch:
                raise VideoDecodeError(
                    self.path, f"decord failed on frames {indices[:3]}...: {type(e).__name__}: {e}"
                ) from e
            # decord 0.6's scaler fails for some output sizes ("The size must exactly
            # match", e.g. 64x48 -> 48x36): decode at the stored size, resize in torch.
            self._reader = self._open_unscaled()
            self._resize_in_torch = True
            return self.get_frames(indices)
        batch = torch.from_numpy(batch.asnumpy()) if not isinstance(batch, torch.Tensor) else batch
        if self._resize_in_torch:
            # (T, H, W, C) -> (C, T, H, W) for the resize, and back
            batch = ShortSideResize(self._short_side)(batch.permute(3, 0, 1, 2)).permute(1, 2, 3, 0).contiguous()
        return batch

    def _open_unscaled(self):
        import decord

        try:
            with _DECORD_OPEN:
                return decord.VideoReader(self.path, num_threads=self._threads)
        except Exception as e:
            raise VideoDecodeError(self.path, f"decord could not open it ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        self._reader = None


class _PyAVReader(VideoReader):
    """Exact on every file PyAV's ffmpeg decodes: timestamp seeking where it is exact,
    sequential decoding from the first frame where it is not (:attr:`StreamInfo.timestamp_seek_exact`)."""

    backend = "pyav"

    def __init__(self, path: str, short_side: int | None = None, info: StreamInfo | None = None):
        import av

        self.path = path
        self._info = info = info or inspect_video(path)
        self.height, self.width = scaled_frame_size(info.height, info.width, short_side)
        self.fps = info.fps
        self.sequential = not info.timestamp_seek_exact
        self._container = None
        if self.sequential:
            self.num_frames = count_frames(path)
        else:
            try:
                self._container = av.open(path)
                self._stream = self._container.streams.video[0]
                _set_threads(self._stream)
                # Frame index -> presentation timestamp, from the packets (no decoding):
                # exact where the header names no hazard (the check verifies it per file).
                stamps = []
                for packet in self._container.demux(self._stream):
                    if packet.size == 0 or packet.is_discard:  # the final flush; edit-list-hidden frames
                        continue
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    if stamp is None:
                        raise VideoDecodeError(path, "video packets carry no timestamps")
                    stamps.append(int(stamp))
                self._stamps = sorted(stamps)
                self.num_frames = len(self._stamps)
            except VideoDecodeError:
                self.close()
                raise
            except Exception as e:
                self.close()
                raise VideoDecodeError(path, f"PyAV could not index it ({type(e).__name__}: {e})") from e
        if self.num_frames <= 0:
            self.close()
            raise VideoDecodeError(path, "PyAV found no video frames")

    def _convert(self, frame) -> np.ndarray:
        return _to_rgb(frame, self._info.rotation, self.height, self.width)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        try:
            frames = self._sequential(indices) if self.sequential else self._seeking(indices)
        except VideoDecodeError:
            raise
        except Exception as e:
            raise VideoDecodeError(self.path, f"PyAV failed on frames {indices[:3]}...: {type(e).__name__}: {e}") from e
        missing = sorted(set(indices) - set(frames))
        if missing:
            raise VideoDecodeError(self.path, f"PyAV did not return frames {missing[:5]} (corrupt or truncated?)")
        return torch.from_numpy(np.stack([frames[i] for i in indices]))

    def _sequential(self, indices: list[int]) -> dict[int, np.ndarray]:
        return decode_sequentially(self.path, indices, self._info.rotation, self.height, self.width)

    def _seeking(self, indices: list[int]) -> dict[int, np.ndarray]:
        wanted = {self._stamps[i]: i for i in set(indices)}
        last = max(wanted)
        frames: dict[int, np.ndarray] = {}
        # Seek to the keyframe at or before the first wanted frame, then decode forward;
        # frames that are not wanted are skipped without RGB conversion.
        self._container.seek(min(wanted), stream=self._stream, backward=True, any_frame=False)
        for frame in self._container.decode(self._stream):
            stamp = frame.pts
            if stamp in wanted:
                frames[wanted[stamp]] = self._convert(frame)
            if stamp is not None and stamp >= last:
                break
        return frames

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class _AutoReader(VideoReader):
    """decord when the file has no hazard and decord reads it; the exact PyAV reader otherwise."""

    backend = "auto"

    def __init__(self, path: str, short_side: int | None = None, info: StreamInfo | None = None):
        self.path = path
        self._short_side = short_side
        self._info = info = info or inspect_video(path)
        self._fallback: VideoReader | None = None
        self._primary: VideoReader | None = None
        if not info.hazard:
            try:
                self._primary = _DecordReader(path, short_side, info)
            except VideoDecodeError as decord_error:
                self._fallback = self._open_fallback(decord_error)
        else:
            self._fallback = _PyAVReader(path, short_side, info)
        active = self._primary or self._fallback
        self.num_frames, self.fps = active.num_frames, active.fps
        self.height, self.width = active.height, active.width

    def _open_fallback(self, decord_error: VideoDecodeError) -> VideoReader:
        try:
            return _PyAVReader(self.path, self._short_side, self._info)
        except VideoDecodeError as pyav_error:
            raise VideoDecodeError(
                self.path, f"both backends failed; decord: {decord_error.reason}; pyav: {pyav_error.reason}"
            ) from pyav_error

    @property
    def decoded_by(self) -> str:
        """The backend now in use: ``"decord"``, or ``"pyav"`` (hazard or fallback)."""
        return "decord" if self._primary is not None else "pyav"

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        if self._primary is not None:
            try:
                return self._primary.get_frames(indices)
            except VideoDecodeError as decord_error:
                self._primary.close()
                self._primary = None
                fallback = self._open_fallback(decord_error)
                if fallback.num_frames != self.num_frames:  # the indices were drawn from decord's count
                    fallback.close()
                    raise VideoDecodeError(
                        self.path,
                        f"decord failed ({decord_error.reason}) and PyAV decodes {fallback.num_frames} "
                        f"frames, not decord's {self.num_frames}",
                    ) from decord_error
                self._fallback = fallback
        return self._fallback.get_frames(indices)

    def close(self) -> None:
        for reader in (self._primary, self._fallback):
            if reader is not None:
                reader.close()


_READERS = {"decord": _DecordReader, "pyav": _PyAVReader, "auto": _AutoReader}


# --- decoded-video cache ------------------------------------------------------------------


class DecodedVideoCache:
    """Whole decoded videos of this process, least recently used out first, at most
    ``max_bytes`` of uint8 frames; ``visits``: how often each video will be read while the
    cache is active (e.g. a client's local epochs in one round).

    Keyed by (path, :func:`file_identity`, backend, short_side): a changed file, another
    backend or size is decoded again. A video is decoded whole only when that costs no more
    than the clips it saves, ``visits * span >= num_frames`` (span: the first request's
    last - first frame + 1), and fits ``max_bytes``; otherwise only the requested frames are.
    The frames are the reader's own for every index (frame *i* means the same frame whatever
    the request: the module docstring), so a cached clip equals a decoded one bit for bit.
    """

    def __init__(self, max_bytes: int, visits: int):
        self.max_bytes, self.visits = int(max_bytes), int(visits)
        self._videos: OrderedDict[tuple, tuple[torch.Tensor, float]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # a loader worker prepares items on several threads

    def get(self, key: tuple) -> tuple[torch.Tensor, float] | None:
        with self._lock:
            found = self._videos.get(key)
            if found is not None:
                self._videos.move_to_end(key)
                self.hits += 1
            return found

    def worth_decoding_whole(self, num_frames: int, frame_bytes: int, indices: list[int]) -> bool:
        span = max(indices) - min(indices) + 1
        return self.visits * span >= num_frames and num_frames * frame_bytes <= self.max_bytes

    def put(self, key: tuple, frames: torch.Tensor, fps: float) -> None:
        def nbytes(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        with self._lock:
            self.misses += 1
            if key in self._videos:  # two threads decoded it at once: the same frames, counted once
                self.bytes -= nbytes(self._videos.pop(key)[0])
            size = nbytes(frames)
            while self._videos and self.bytes + size > self.max_bytes:
                _, (old, _) = self._videos.popitem(last=False)
                self.bytes -= nbytes(old)
            self._videos[key] = (frames, fps)
            self.bytes += size


#: The cache ``open_video`` serves from in this process (None: none). A DataLoader worker
#: forked while one is active starts with its own (empty) copy.
_ACTIVE_CACHE: DecodedVideoCache | None = None


@contextlib.contextmanager
def cached_videos(max_bytes: int, visits: int) -> Iterator[DecodedVideoCache]:
    """Within the block, :func:`open_video` reads whole videos through a
    :class:`DecodedVideoCache` (this process and DataLoader workers forked in the block);
    the cache is dropped on exit."""
    global _ACTIVE_CACHE
    previous, _ACTIVE_CACHE = _ACTIVE_CACHE, DecodedVideoCache(max_bytes, visits)
    try:
        yield _ACTIVE_CACHE
    finally:
        _ACTIVE_CACHE = previous


class _CachedReader(VideoReader):
    """A cached video's frames without opening the file, or a reader whose first request
    may decode the whole video into the cache (:class:`DecodedVideoCache`)."""

    def __init__(self, path: str, backend: str, short_side: int | None, cache: DecodedVideoCache):
        self.path, self.backend, self._cache = path, backend, cache
        self._key = (path, file_identity(path), backend, short_side)
        found = cache.get(self._key)
        self._reader: VideoReader | None = None
        if found is None:
            self._reader = _READERS[backend](path, short_side)
            self._frames = None
            self.num_frames, self.fps = self._reader.num_frames, self._reader.fps
            self.height, self.width = self._reader.height, self._reader.width
        else:
            self._frames, self.fps = found
            self.num_frames, self.height, self.width = self._frames.shape[:3]

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        if self._frames is None:
            if not self._cache.worth_decoding_whole(self.num_frames, self.height * self.width * 3, indices):
                return self._reader.get_frames(indices)
            backend = getattr(self._reader, "decoded_by", None)
            frames = self._reader.get_frames(range(self.num_frames)).contiguous()
            if getattr(self._reader, "decoded_by", None) != backend:  # auto fell back to PyAV: not cached,
                return frames.index_select(0, torch.tensor(indices))  # a later open may get decord's again
            self._frames = frames
            self._cache.put(self._key, frames, self.fps)
        return self._frames.index_select(0, torch.tensor(indices))  # a copy: the cache stays intact

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def open_video(path: str | Path, backend: str = "auto", *, short_side: int | None = None) -> VideoReader:
    """Open ``path`` for index-based frame access (frame semantics: see the module docstring).

    backend: ``"auto"`` (default: decord where exact, else PyAV), ``"decord"`` (refuses
    files it would decode wrongly), ``"pyav"`` (exact on every file ffmpeg decodes).
    short_side: if given, frames are decoded already resized so that their shorter side
    is ``short_side`` pixels; ``None`` keeps the (upright) stored size.
    Inside :func:`cached_videos` the reader serves whole decoded videos from that cache
    (the same frames). Raises :class:`VideoDecodeError` naming the file when it cannot be opened.
    """
    if backend not in _READERS:
        raise ValueError(f"video backend {backend!r}: expected one of {BACKENDS}")
    short_side = _check_short_side(short_side)
    path = str(path)
    if not Path(path).is_file():
        raise VideoDecodeError(path, "no such file")
    if _ACTIVE_CACHE is not None:
        return _CachedReader(path, backend, short_side, _ACTIVE_CACHE)
    return _READERS[backend](path, short_side)
