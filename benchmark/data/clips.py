"""Which frames make a clip: random training clips and uniformly spaced evaluation clips.

A clip of ``frames`` frames with temporal ``stride`` spans ``(frames - 1) * stride + 1``
video frames: indices ``start, start + stride, ..., start + (frames - 1) * stride``.

Videos shorter than that span are looped: the clip starts at frame 0 and index ``k``
is ``(k * stride) % num_frames`` (the video is played again from its start). This is
deterministic (no random draw) for training and evaluation alike, so a short video
always gives the same clip.
"""

from __future__ import annotations

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
