"""Tiny test videos whose frames say which frame they are.

Frame ``k`` is a uniform grey of level ``frame_level(k)`` with a white square in the
left half (so a horizontal flip is visible); decoding a frame and reading its grey level
back (``frame_number``) identifies which frame a decoder returned.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

LEVEL_STEP, LEVEL_OFFSET = 5, 20


def frame_level(k: int) -> int:
    return LEVEL_OFFSET + LEVEL_STEP * k


def frame_image(k: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: grey level ``frame_level(k)``, white square top-left."""
    image = np.full((height, width, 3), frame_level(k), dtype=np.uint8)
    image[: height // 4, : width // 4] = 255
    return image


def encode_numbered_video(
    path: Path, num_frames: int = 40, width: int = 64, height: int = 48, codec: str = "mpeg4", fps: int = 25
) -> Path:
    """Encode ``num_frames`` numbered frames (levels 20, 25, ... must stay <= 235)."""
    assert frame_level(num_frames - 1) <= 235, "too many frames for distinct grey levels"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 2_000_000
            stream.codec_context.gop_size = 8  # several keyframes, so decoders must seek
        for k in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(k, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_number(frame_hwc: torch.Tensor) -> int:
    """Which numbered frame a decoded (H, W, 3) frame is, from its grey background."""
    height, width = frame_hwc.shape[:2]
    background = frame_hwc[height // 2 :, width // 2 :].float().mean()
    return round((float(background) - LEVEL_OFFSET) / LEVEL_STEP)
