"""Which frames make a clip: random training clips and uniformly spaced evaluation clips.

A clip of ``frames`` frames with temporal ``stride`` spans ``(frames - 1) * stride + 1``
video frames: indices ``start, start + stride, ..., start + (frames - 1) * stride``.

Videos shorter than that span are looped: the clip starts at frame 0 and index ``k``
is ``(k * stride) % num_frames`` (the video is played again from its start). This is
deterministic (no random draw) for training and evaluation alike, so a short video
always gives the same clip.
"""

from __future__ import annotations

import numpy
import torch


def clip_span(frames: int, stride: int) -> int:
    """Number of video frames covered by a clip: ``(frames - 1) * stride + 1``."""
    return (frames - 1) * stride + 1


def _check(num_frames: int, frames: int, stride: int) -> None:
    if num_frames <= 0:
        raise ValueError(f"num_frames={num_frames}: the video must have at least one frame")
    if frames <= 0:
        raise ValueError(f"frames={frames}: a clip needs at least one frame")
    if stride <= 0:
        raise ValueError(f"stride={stride}: expected a positive temporal stride")


def _looped(num_frames: int, frames: int, stride: int) -> list[int]:
    return [(k * stride) % num_frames for k in range(frames)]


def train_clip_indices(num_frames: int, frames: int, stride: int, generator: torch.Generator) -> list[int]:
    """Frame indices of one training clip with a uniformly random start.

    The start is drawn from ``[0, num_frames - span]`` with ``generator`` (one draw);
    short videos are looped from frame 0 without a draw (see the module docstring).
    Returns ``frames`` indices.
    """
    _check(num_frames, frames, stride)
    span = clip_span(frames, stride)
    if num_frames < span:
        return _looped(num_frames, frames, stride)
    start = int(torch.randint(0, num_frames - span + 1, (1,), generator=generator))
    return [start + k * stride for k in range(frames)]


def uniform_clip_indices(num_frames: int, num_clips: int, frames: int, stride: int) -> list[list[int]]:
    """Frame indices of ``num_clips`` evaluation clips spread uniformly over the video.

    The possible starts ``[0, num_frames - span]`` are cut into ``num_clips`` equal
    segments and each clip starts at the centre of its segment (one clip: the centre of
    the video). Deterministic. Short videos give ``num_clips`` copies of the looped clip.
    Returns ``num_clips`` lists of ``frames`` indices.
    """
    _check(num_frames, frames, stride)
    if num_clips <= 0:
        raise ValueError(f"num_clips={num_clips}: expected at least one clip per video")
    span = clip_span(frames, stride)
    if num_frames < span:
        return [_looped(num_frames, frames, stride) for _ in range(num_clips)]
    num_starts = num_frames - span + 1
    starts = [((2 * i + 1) * num_starts) // (2 * num_clips) for i in range(num_clips)]
    return [[s + k * stride for k in range(frames)] for s in starts]


def ctp_train_clip_indices(
    num_frames: int, frames: int, strides: list[int], temporal_jitter: bool, generator: torch.Generator
) -> list[int]:
    """One training clip as CtP's ``RandomFrameSampler.sample_single`` draws it.

    The stride is drawn from ``strides``; with ``temporal_jitter`` and stride > 1 every frame
    is shifted by its own draw from ``[0, stride - 1]``; the start is uniform in
    ``[0, num_frames - span]`` and indices past the end are clamped to the last frame
    (microsoft/CtP pyvrl/datasets/frame_samplers/random_sampler.py). Draw order: stride,
    jitters, start. Returns ``frames`` indices.
    """
    if not strides:
        raise ValueError("strides=[]: expected at least one temporal stride (e.g. [1, 2, 3, 4, 5])")
    for s in strides:
        _check(num_frames, frames, int(s))
    stride = int(strides[int(torch.randint(0, len(strides), (1,), generator=generator))])
    if stride > 1 and temporal_jitter:
        jitter = torch.randint(0, stride, (frames,), generator=generator).tolist()
    else:
        jitter = [0] * frames
    span = clip_span(frames, stride)
    start = 0 if span >= num_frames else int(torch.randint(0, num_frames - span + 1, (1,), generator=generator))
    return [min(start + k * stride + jitter[k], num_frames - 1) for k in range(frames)]


class CtPRandomClip:
    """A loader ``frame_sampler`` (``TrainClipDataset``): one training clip as CtP's
    ``RandomFrameSampler(num_clips=1, clip_len=frames, strides=stride, temporal_jitter=False)``
    draws it (:func:`ctp_train_clip_indices`): a video shorter than the clip's span starts at
    frame 0 and repeats its last frame, where :func:`train_clip_indices` loops it. CtP's
    fine-tuning clips (configs/recognizers/_base_/runtime_ucf101.py:26-32). A class, so
    loader workers can pickle it. ``(num_frames, generator) -> ([indices], {})``."""

    def __init__(self, frames: int, stride: int):
        self.frames, self.stride = int(frames), int(stride)

    def __call__(self, num_frames: int, generator: torch.Generator) -> tuple[list[list[int]], dict]:
        return [ctp_train_clip_indices(num_frames, self.frames, [self.stride], False, generator)], {}


def ctp_uniform_clip_indices(num_frames: int, num_clips: int, frames: int, stride: int) -> list[list[int]]:
    """Test clips as CtP's ``UniformFrameSampler`` (no jitter): ``num_clips`` offsets
    ``int(tick / 2 + tick * i)`` with ``tick = (num_frames - frames * stride + 1) / num_clips``
    (all 0 when that is not positive), indices clamped to the last frame."""
    _check(num_frames, frames, stride)
    delta = num_frames - frames * stride + 1
    tick = delta / num_clips
    offsets = [int(tick / 2.0 + tick * i) if delta > 0 else 0 for i in range(num_clips)]
    return [[min(o + k * stride, num_frames - 1) for k in range(frames)] for o in offsets]


def vcop_clip_indices(num_frames: int, num_clips: int, frames: int, stride: int) -> list[list[int]]:
    """Retrieval clips as VCOP's ``retrieve_clips.py`` (``UCF101ClipRetrievalDataset``): clip
    centres ``numpy.linspace(span / 2, num_frames - span / 2, num_clips)``, start
    ``int(centre - span / 2)`` (VCOP: 16 consecutive frames, span 16). Videos shorter than
    the span are looped (VCOP has no rule for them)."""
    _check(num_frames, frames, stride)
    span = clip_span(frames, stride) if stride > 1 else frames
    if num_frames < span:
        return [_looped(num_frames, frames, stride) for _ in range(num_clips)]
    half = span / 2
    centres = numpy.linspace(half, num_frames - half, num_clips).tolist()
    return [[int(c - half) + k * stride for k in range(frames)] for c in centres]


#: eval.clip.sampling values -> index functions (num_frames, num_clips, frames, stride).
EVAL_SAMPLINGS = {"uniform": uniform_clip_indices, "ctp": ctp_uniform_clip_indices, "vcop": vcop_clip_indices}


def eval_clip_indices(sampling: str, num_frames: int, num_clips: int, frames: int, stride: int) -> list[list[int]]:
    """Evaluation clip indices under ``sampling`` (``uniform`` | ``ctp`` | ``vcop``)."""
    if sampling not in EVAL_SAMPLINGS:
        raise ValueError(f"eval.clip.sampling={sampling!r}: expected one of {sorted(EVAL_SAMPLINGS)}")
    if num_clips <= 0:
        raise ValueError(f"num_clips={num_clips}: expected at least one clip per video")
    return EVAL_SAMPLINGS[sampling](num_frames, num_clips, frames, stride)
