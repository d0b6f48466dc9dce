"""Frame-accurate video decoding by frame index (decord by default, PyAV as fallback).

``open_video(path, backend, short_side=None)`` returns a small :class:`VideoReader`:
``num_frames``, ``fps``, ``height``/``width`` (of the returned frames) and
``get_frames(indices) -> uint8 (T, H, W, C)``. Only the requested frames are returned
(and, for PyAV, only those are converted to RGB); a whole video is never held decoded in
memory.

With ``short_side`` the frames come out already resized so that their shorter side is
``short_side`` (aspect kept, longer side ``floor(long * short_side / short)`` like
:class:`benchmark.data.transforms.ShortSideResize`): ffmpeg's swscale scales while it
converts YUV to RGB, which costs less than converting at full size (the loaders' resize
step then has nothing left to do; perf/RESULTS.md). Both backends use swscale's bilinear
filter (ffmpeg's ``scale`` filter default, which widens its kernel when downscaling, so
it antialiases); they agree to a few grey levels, not bit for bit (decord bundles an
older ffmpeg). The source size comes from a header probe with PyAV. Display-rotation
metadata is not applied by the PyAV reader, so rotated (phone) videos are not supported
with ``short_side``; the benchmark's datasets carry none.

Frame index ``i`` is the ``i``-th frame in presentation order, as decord defines it
(decord sorts the video packets' timestamps when it opens a file). The PyAV reader builds
the same index from the demuxed packets, so both backends return the same frames for
the same indices.

Why not pytorchvideo's time-based ``EncodedVideo.get_clip``: clip samplers here work in
frame indices (16 frames, stride 2, ...). ``get_clip(start_sec, end_sec)`` maps seconds to
frames with ``ceil(fps * t)`` (off by one at float boundaries) and decodes *every* frame of
the time range, so a stride-2 clip costs twice the RGB conversion. We therefore open the
file with ``EncodedVideo.from_path(..., decoder="decord")`` and read by index through its
underlying ``decord.VideoReader.get_batch``. For PyAV we open the container directly:
``EncodedVideoPyAV`` decodes the *entire* video at open time when the header carries no
duration (e.g. some WebM files), which would break the "never the whole video" rule.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
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


def probe_frame_size(path: str) -> tuple[int, int]:
    """(height, width) of the first video stream, from the container header (PyAV, no RGB
    conversion; ~0.2 ms for a UCF101-sized AVI). Raises :class:`VideoDecodeError`."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "the file has no video stream")
            context = container.streams.video[0].codec_context
            height, width = int(context.height), int(context.width)
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"could not read its frame size ({type(e).__name__}: {e})") from e
    if height <= 0 or width <= 0:
        raise VideoDecodeError(path, f"the header gives a frame size of {width}x{height}")
    return height, width


def _check_short_side(short_side: int | None) -> int | None:
    if short_side is not None and int(short_side) <= 0:
        raise ValueError(f"short_side={short_side}: expected a positive number of pixels (or None)")
    return None if short_side is None else int(short_side)


class _DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, path: str, short_side: int | None = None):
        # Imported here so that PyAV-only use does not need decord; importing it also
        # sets decord's bridge to torch (pytorchvideo does that globally).
        from pytorchvideo.data.encoded_video_decord import EncodedVideoDecord

        self.path = path
        self._short_side = short_side
        if not Path(path).is_file():
            raise VideoDecodeError(path, "no such file")
        if short_side is None:
            size = (-1, -1)  # decord's "unchanged"
        else:
            size = scaled_frame_size(*probe_frame_size(path), short_side)
        try:
            # pytorchvideo's decord decoder, given the path itself: EncodedVideo.from_path
            # would first copy the whole file into a BytesIO, and it cannot pass the output
            # size on. We read its decord.VideoReader by frame index (get_batch) instead of
            # by time (see the module docstring).
            video = EncodedVideoDecord(
                file=path, video_name=Path(path).name, decode_audio=False, width=size[1], height=size[0]
            )
            self._reader = video._av_reader
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as e:
            raise VideoDecodeError(path, f"decord could not open it ({type(e).__name__}: {e})") from e
        if self.num_frames <= 0:
            raise VideoDecodeError(path, "decord found no video frames")
        if short_side is not None:
            self.height, self.width = size
        else:
            try:
                self.height, self.width = probe_frame_size(path)
            except VideoDecodeError:  # a header PyAV cannot read: ask decord (decodes frame 0)
                self.height, self.width = (int(n) for n in self._reader[0].shape[:2])

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        try:
            batch = self._reader.get_batch(indices)
        except Exception as e:
            if self._short_side is None:
                raise VideoDecodeError(
                    self.path, f"decord failed on frames {indices[:3]}...: {type(e).__name__}: {e}"
                ) from e
            # decord 0.6's scaler fails for some output sizes ("The size must exactly
            # match", e.g. 64x48 -> 48x36): decode at the stored size, resize in torch.
            return self._get_frames_unscaled(indices)
        if not isinstance(batch, torch.Tensor):  # decord's native bridge
            batch = torch.from_numpy(batch.asnumpy())
        return batch

    def _get_frames_unscaled(self, indices: list[int]) -> torch.Tensor:
        from benchmark.data.transforms import ShortSideResize

        try:
            import decord

            batch = decord.VideoReader(self.path).get_batch(indices)
        except Exception as e:
            raise VideoDecodeError(
                self.path, f"decord failed on frames {indices[:3]}...: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(batch.asnumpy())
        # (T, H, W, C) -> (C, T, H, W) for the resize, and back
        resized = ShortSideResize(self._short_side)(batch.permute(3, 0, 1, 2))
        return resized.permute(1, 2, 3, 0).contiguous()

    def close(self) -> None:
        self._reader = None


class _PyAVReader(VideoReader):
    backend = "pyav"

    def __init__(self, path: str, short_side: int | None = None):
        import av

        self.path = path
        if not Path(path).is_file():
            raise VideoDecodeError(path, "no such file")
        try:
            self._container = av.open(path)
        except Exception as e:
            raise VideoDecodeError(path, f"PyAV could not open it ({type(e).__name__}: {e})") from e
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(path, "the file has no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            context = self._stream.codec_context
            self.height, self.width = scaled_frame_size(int(context.height), int(context.width), short_side)
            # Frame index -> presentation timestamp, from the packets (no decoding),
            # sorted like decord's index so that both backends agree on frame numbers.
            stamps = []
            for packet in self._container.demux(self._stream):
                if packet.size == 0:  # the demuxer's final flush packet
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    raise VideoDecodeError(path, "video packets carry no timestamps")
                stamps.append(int(stamp))
            self._stamps = sorted(stamps)
            self.num_frames = len(self._stamps)
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
        except VideoDecodeError:
            self._container.close()
            raise
        except Exception as e:
            self._container.close()
            raise VideoDecodeError(path, f"PyAV could not index it ({type(e).__name__}: {e})") from e
        if self.num_frames <= 0:
            self._container.close()
            raise VideoDecodeError(path, "PyAV found no video frames")

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        wanted = {self._stamps[i]: i for i in set(indices)}
        last = max(wanted)
        frames: dict[int, np.ndarray] = {}
        try:
            # Seek to the keyframe at or before the first wanted frame, then decode
            # forward; frames that are not wanted are skipped without RGB conversion.
            self._container.seek(min(wanted), stream=self._stream, backward=True, any_frame=False)
            for frame in self._container.decode(self._stream):
                stamp = frame.pts
                if stamp in wanted:
                    # swscale's bilinear, like decord's scale filter (a no-op scale at full size).
                    frames[wanted[stamp]] = frame.to_ndarray(
                        width=self.width, height=self.height, format="rgb24", interpolation="BILINEAR"
                    )
                if stamp is not None and stamp >= last:
                    break
        except Exception as e:
            raise VideoDecodeError(
                self.path, f"PyAV failed on frames {indices[:3]}...: {type(e).__name__}: {e}"
            ) from e
        missing = sorted(set(indices) - set(frames))
        if missing:
            raise VideoDecodeError(self.path, f"PyAV did not return frames {missing[:5]} (corrupt or truncated?)")
        return torch.from_numpy(np.stack([frames[i] for i in indices]))

    def close(self) -> None:
        self._container.close()


class _AutoReader(VideoReader):
    """decord first; PyAV when decord cannot open the file or fails on a frame request."""

    backend = "auto"

    def __init__(self, path: str, short_side: int | None = None):
        self.path = path
        self._short_side = short_side
        self._fallback: VideoReader | None = None
        try:
            self._primary: VideoReader | None = _DecordReader(path, short_side)
        except VideoDecodeError as decord_error:
            self._primary = None
            self._fallback = self._open_fallback(decord_error)
        active = self._primary or self._fallback
        self.num_frames, self.fps = active.num_frames, active.fps
        self.height, self.width = active.height, active.width

    def _open_fallback(self, decord_error: VideoDecodeError) -> VideoReader:
        try:
            return _PyAVReader(self.path, self._short_side)
        except VideoDecodeError as pyav_error:
            raise VideoDecodeError(
                self.path, f"both backends failed; decord: {decord_error.reason}; pyav: {pyav_error.reason}"
            ) from pyav_error

    @property
    def decoded_by(self) -> str:
        """The backend now in use: ``"decord"``, or ``"pyav"`` after a fallback."""
        return "decord" if self._primary is not None else "pyav"

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = self._check_indices(indices)
        if self._primary is not None:
            try:
                return self._primary.get_frames(indices)
            except VideoDecodeError as decord_error:
                self._primary.close()
                self._primary = None
                self._fallback = self._open_fallback(decord_error)
        return self._fallback.get_frames(indices)

    def close(self) -> None:
        for reader in (self._primary, self._fallback):
            if reader is not None:
                reader.close()


_READERS = {"decord": _DecordReader, "pyav": _PyAVReader, "auto": _AutoReader}


def open_video(path: str | Path, backend: str = "decord", *, short_side: int | None = None) -> VideoReader:
    """Open ``path`` for index-based frame access.

    backend: ``"decord"`` (default, fastest for random clip access), ``"pyav"``, or
    ``"auto"`` (decord, falling back to PyAV when decord fails).
    short_side: if given, frames are decoded already resized so that their shorter side
    is ``short_side`` pixels (see the module docstring); ``None`` keeps the stored size.
    Raises :class:`VideoDecodeError` naming the file when it cannot be opened.
    """
    if backend not in _READERS:
        raise ValueError(f"video backend {backend!r}: expected one of {BACKENDS}")
    return _READERS[backend](str(path), _check_short_side(short_side))
