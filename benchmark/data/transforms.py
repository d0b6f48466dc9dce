"""Spatial video transforms on channel-first clips (C, T, H, W).

Every transform is called as ``transform(video, generator)``; random ones draw only from
the explicit ``torch.Generator`` (so a sample is reproducible from its seed), the others
ignore it. They accept float clips in [0, 1] and also uint8 clips: the loaders crop
while the frames are still uint8 and convert only the crop to float; :class:`Normalize`
needs floats. The loaders decode frames already at the short-side size
(``open_video(..., short_side=...)``, swscale's bilinear), so their
:class:`ShortSideResize` finds nothing to do; used on its own it resizes with torch
(on uint8 frames in their decoded channels-last layout the fast uint8 kernel applies).

:class:`ShortSideResize` is bilinear *without* antialiasing, as in pytorchvideo's
``ShortSideScale`` and mmcv's ``imresize`` (cv2 INTER_LINEAR). The loaders' decode-time
resize is swscale's bilinear instead, which widens its kernel when downscaling (it
antialiases, like ``antialias=True``): a deliberate difference, taken for speed (the
scaling is done in the YUV to RGB conversion; perf/RESULTS.md).

``train_transform`` / ``eval_transform`` are the *spatial* part (resize, crop, flip);
normalisation is applied separately by the loaders, after the method's
``sample_transform``, which sees clips in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

#: Kinetics-400 RGB mean/std used by the torchvision / pytorchvideo video models.
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)


def _check_video(video: torch.Tensor, name: str) -> None:
    if video.ndim != 4:
        raise ValueError(f"{name}: expected a clip of shape (C, T, H, W), got shape {tuple(video.shape)}")


def _require_generator(generator: torch.Generator | None, name: str) -> torch.Generator:
    if generator is None:
        raise ValueError(f"{name} is random: pass an explicit torch.Generator so the result is reproducible")
    return generator


class ShortSideResize:
    """Resize so that the shorter side equals ``size``, keeping the aspect ratio.

    The longer side becomes ``floor(long * size / short)`` (pytorchvideo's rule).
    (C, T, H, W) -> (C, T, H', W').
    """

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"ShortSideResize size={size}: expected a positive number of pixels")
        self.size = size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if height <= width:
            return self.size, int(math.floor(width * self.size / height))
        return int(math.floor(height * self.size / width)), self.size

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_video(video, "ShortSideResize")
        out_h, out_w = self.output_size(video.shape[-2], video.shape[-1])
        if (out_h, out_w) == tuple(video.shape[-2:]):
            return video
        # Resize frames as a batch of (T, C, H, W) images: for decoded uint8 frames this
        # is the channels-last layout torch's fast uint8 kernel wants.
        frames = video.transpose(0, 1)
        resized = TF.resize(frames, [out_h, out_w], interpolation=InterpolationMode.BILINEAR, antialias=False)
        return resized.transpose(0, 1)


def _crop(video: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return video[..., top : top + size, left : left + size]


def _check_crop(video: torch.Tensor, size: int, name: str) -> tuple[int, int]:
    _check_video(video, name)
    height, width = video.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"{name}({size}): the clip is only {height}x{width} (H x W); resize it first")
    return height, width


class RandomCrop:
    """Square ``size`` x ``size`` crop at a uniformly random position (same for all frames).

    (C, T, H, W) -> (C, T, size, size); two draws from the generator (top, left).
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        height, width = _check_crop(video, self.size, "RandomCrop")
        generator = _require_generator(generator, "RandomCrop")
        top = int(torch.randint(0, height - self.size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - self.size + 1, (1,), generator=generator))
        return _crop(video, top, left, self.size)


class CenterCrop:
    """Square ``size`` x ``size`` crop at the centre. (C, T, H, W) -> (C, T, size, size)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        height, width = _check_crop(video, self.size, "CenterCrop")
        top = int(round((height - self.size) / 2.0))
        left = int(round((width - self.size) / 2.0))
        return _crop(video, top, left, self.size)


class RandomHorizontalFlip:
    """Mirror all frames left-right with probability ``p`` (one draw). Shape unchanged."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p={p}: expected a probability in [0, 1]")
        self.p = p

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_video(video, "RandomHorizontalFlip")
        generator = _require_generator(generator, "RandomHorizontalFlip")
        if float(torch.rand((), generator=generator)) < self.p:
            return TF.horizontal_flip(video)
        return video


class Normalize:
    """``(video - mean) / std`` per channel; the channel axis is dim -4.

    Works on one clip (C, T, H, W) and on stacked views (V, C, T, H, W); needs floats.
    """

    def __init__(self, mean: Sequence[float] = VIDEO_MEAN, std: Sequence[float] = VIDEO_STD):
        if len(mean) != len(std):
            raise ValueError(f"Normalize: mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize std={tuple(std)}: every std must be positive")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)

    def __call__(
        self, video: torch.Tensor, generator: torch.Generator | None = None, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``out``: optional tensor of ``video``'s shape and dtype to write the result into."""
        if not video.is_floating_point():
            raise TypeError(f"Normalize: expected a float clip in [0, 1], got dtype {video.dtype}")
        if video.ndim < 4 or video.shape[-4] != self.mean.shape[0]:
            raise ValueError(
                f"Normalize: expected (..., C={self.mean.shape[0]}, T, H, W), got shape {tuple(video.shape)}"
            )
        mean, std = self.mean.to(video.dtype), self.std.to(video.dtype)
        if out is None:
            return (video - mean).div_(std)
        return torch.sub(video, mean, out=out).div_(std)


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for transform in self.transforms:
            video = transform(video, generator)
        return video


def train_transform(short_side: int, crop_size: int) -> Compose:
    """Spatial training augmentation: short-side resize, random crop, horizontal flip (p=0.5).

    (C, T, H, W) -> (C, T, crop_size, crop_size); three generator draws per clip.
    """
    return Compose([ShortSideResize(short_side), RandomCrop(crop_size), RandomHorizontalFlip(0.5)])


def eval_transform(short_side: int, crop_size: int) -> Compose:
    """Deterministic evaluation view: short-side resize, centre crop.

    (C, T, H, W) -> (C, T, crop_size, crop_size).
    """
    return Compose([ShortSideResize(short_side), CenterCrop(crop_size)])
