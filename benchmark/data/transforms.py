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
normalisation is applied separately, after the method's ``sample_transform``: for
training clips in the training process (``TrainClipDataset.normalize_video``; the loader
workers ship uint8 clips, or the [0, 1] floats a method's colour steps made), for
evaluation clips in the loader workers. :func:`to_unit_float` is the one uint8 -> [0, 1]
conversion, so a clip normalised on either side has the same values.
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
#: ImageNet RGB mean/std: CtP's ``GroupToTensor`` for pretraining and downstream
#: (microsoft/CtP configs/ctp/pretraining_runtime_ucf.py, configs/recognizers/_base_/runtime_ucf101.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``normalization`` config values -> (mean, std). ``none``: [0, 1] pixels as they are
#: (VCOP's retrieve_clips.py ``ToTensor()`` and SSD's ``ToTensor()``).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "kinetics": (VIDEO_MEAN, VIDEO_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _check_video(video: torch.Tensor, name: str) -> None:
    if video.ndim != 4:
        raise ValueError(f"{name}: expected a clip of shape (C, T, H, W), got shape {tuple(video.shape)}")


def _require_generator(generator: torch.Generator | None, name: str) -> torch.Generator:
    if generator is None:
        raise ValueError(f"{name} is random: pass an explicit torch.Generator so the result is reproducible")
    return generator


class ShortSideResize:
    """Resize so that the shorter side equals ``size``, keeping the aspect ratio.

    Both sides are multiplied by ``size / short`` and rounded with Python's ``round``, as
    CtP's ``GroupScale`` with an int scale (microsoft/CtP @ 847b8fc,
    ``pyvrl/datasets/transforms/scale.py``:33-37): 320 x 240 at 128 gives 171 x 128, the
    size CtP's recognizer configs and VCOP's retrieval script stretch 4:3 frames to.
    (C, T, H, W) -> (C, T, H', W').
    """

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"ShortSideResize size={size}: expected a positive number of pixels")
        self.size = size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        scale = float(self.size) / min(height, width)  # CtP's expression, operation for operation
        return int(round(height * scale)), int(round(width * scale))

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
    """Square ``size`` x ``size`` crop at the centre. (C, T, H, W) -> (C, T, size, size).

    The offset ``(side - size) / 2`` is rounded as torchvision's ``CenterCrop`` does (VCOP's
    retrieval script), or with ``round_down`` rounded down as CtP's ``GroupCenterCrop``
    (microsoft/CtP @ 847b8fc, ``pyvrl/datasets/transforms/crop.py``:105-107): 171 wide to 112
    starts at 30 or at 29.
    """

    def __init__(self, size: int, round_down: bool = False):
        self.size = size
        self.round_down = round_down

    def _offset(self, side: int) -> int:
        return (side - self.size) // 2 if self.round_down else int(round((side - self.size) / 2.0))

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        height, width = _check_crop(video, self.size, "CenterCrop")
        return _crop(video, self._offset(height), self._offset(width), self.size)


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


def to_unit_float(clip_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 clip -> contiguous float32 in [0, 1] (``x.to(float32).div_(255)``); floats are
    returned as they are.

    Contiguous on purpose: the loaders' clips arrive with channels-last strides, on which
    the broadcast in :class:`Normalize` is ~4x slower (measured, see perf/RESULTS.md).
    """
    if clip_uint8.is_floating_point():
        return clip_uint8
    if clip_uint8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 clip or a float clip in [0, 1], got dtype {clip_uint8.dtype}")
    return clip_uint8.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


class Normalize:
    """``(video - mean) / std`` per channel; the channel axis is dim -4.

    Works on one clip (C, T, H, W), on stacked views (V, C, T, H, W) and on batches of
    either. Floats are taken as [0, 1] pixels; uint8 clips are converted first with
    :func:`to_unit_float` (the same values as converting, then normalising, separately).
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
        fresh = video.dtype == torch.uint8
        if fresh:
            video = to_unit_float(video)
        elif not video.is_floating_point():
            raise TypeError(f"Normalize: expected a uint8 clip or a float clip in [0, 1], got dtype {video.dtype}")
        if video.ndim < 4 or video.shape[-4] != self.mean.shape[0]:
            raise ValueError(
                f"Normalize: expected (..., C={self.mean.shape[0]}, T, H, W), got shape {tuple(video.shape)}"
            )
        mean, std = self.mean.to(video.device, video.dtype), self.std.to(video.device, video.dtype)
        if out is None:
            # a converted uint8 clip is ours to overwrite: same values, one allocation less
            return video.sub_(mean).div_(std) if fresh else (video - mean).div_(std)
        return torch.sub(video, mean, out=out).div_(std)


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for transform in self.transforms:
            video = transform(video, generator)
        return video


def normalization(name: str) -> Normalize:
    """:class:`Normalize` for a ``normalization`` config value (``kinetics`` | ``imagenet`` | ``none``)."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization={name!r}: expected one of {sorted(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[name]
    return Normalize(mean, std)


#: Horizontal-flip probability of pretraining clips (CtP's ``GroupFlip(flip_prob=0.50)``).
TRAIN_FLIP_PROB = 0.5


def train_transform(short_side: int, crop_size: int, flip_prob: float = TRAIN_FLIP_PROB) -> Compose:
    """Spatial training augmentation: short-side resize, random crop, horizontal flip (p=``flip_prob``).

    (C, T, H, W) -> (C, T, crop_size, crop_size); three generator draws per clip.
    """
    return Compose([ShortSideResize(short_side), RandomCrop(crop_size), RandomHorizontalFlip(flip_prob)])


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class CtPColorAugment:
    """CtP's fine-tuning colour steps, one draw per clip (the same for all its frames):
    ``RandomBrightness`` (add U(-b, b)), ``RandomContrast`` (times exp(U(-c, c))),
    ``RandomHueSaturation`` (hue + U(-h, h) of the circle, saturation times exp(U(-s, s))),
    each applied with its probability and clipped to [0, 1]
    (microsoft/CtP pyvrl/datasets/transforms/color.py; deltas given here in [0, 1] units:
    brightness 32/255, hue 12/180 of the circle). Draws per step: flag, then its deltas.
    Works on a (C, T, H, W) clip, uint8 or float in [0, 1]; returns floats in [0, 1].
    """

    def __init__(
        self, prob: float, brightness_delta: float, contrast_delta: float, hue_delta: float, saturation_delta: float
    ):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"CtPColorAugment prob={prob}: expected a probability in [0, 1]")
        self.prob = prob
        self.brightness_delta, self.contrast_delta = brightness_delta, contrast_delta
        self.hue_delta, self.saturation_delta = hue_delta, saturation_delta

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from baselines.ctp import shift_hue_saturation  # CtP's HSV step, shared with its pretraining

        _check_video(clip, "CtPColorAugment")
        clip = to_unit_float(clip)  # uint8 from the loader -> [0, 1] (torchvision's ToTensor): colour steps need floats
        flag = float(torch.rand((), generator=generator)) < self.prob
        shift = _uniform(generator, -self.brightness_delta, self.brightness_delta)
        if flag:
            clip = (clip + shift).clamp_(0.0, 1.0)
        flag = float(torch.rand((), generator=generator)) < self.prob
        factor = math.exp(_uniform(generator, -self.contrast_delta, self.contrast_delta))
        if flag:
            clip = (clip * factor).clamp_(0.0, 1.0)
        flag = float(torch.rand((), generator=generator)) < self.prob
        hue = _uniform(generator, -self.hue_delta, self.hue_delta)
        saturation = math.exp(_uniform(generator, -self.saturation_delta, self.saturation_delta))
        if flag:
            clip = shift_hue_saturation(clip, hue, saturation)
        return clip


class SimCLRVideoAugment:
    """SimCLR's view augmentation (hc-fang/ssd mains/train_fedalignuniform.py):
    ``RandomResizedCrop`` (scale ``crop_scale``, ratio 3/4..4/3, back to the clip's size),
    ``RandomApply([ColorJitter(b, c, s, h)], p=jitter_prob)``, ``RandomGrayscale(gray_prob)``.

    On a video clip every random parameter is drawn once per call and applied to all frames,
    so the frames of one view share crop and colour; two calls (two views) draw anew. The
    horizontal flip is the loader's (p = 0.5, also once per clip). (C, T, H, W) uint8 or float in
    [0, 1] -> float in [0, 1]; an image (C, H, W) is treated as a one-frame clip.
    """

    def __init__(
        self,
        crop_scale: Sequence[float] = (0.08, 1.0),
        jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
    ):
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.brightness, self.contrast, self.saturation, self.hue = (float(x) for x in jitter)
        self.jitter_prob, self.gray_prob = float(jitter_prob), float(gray_prob)

    def crop_box(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w) as torchvision's ``RandomResizedCrop.get_params`` (10 tries, then centre)."""
        area = height * width
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            target = area * _uniform(generator, *self.crop_scale)
            ratio = math.exp(_uniform(generator, *log_ratio))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        ratio = width / height
        if ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if clip.ndim == 3:  # an image (C, H, W): a one-frame clip, same draws
            return self(clip.unsqueeze(1), generator).squeeze(1)
        _check_video(clip, "SimCLRVideoAugment")
        clip = to_unit_float(clip)  # uint8 from the loader -> [0, 1] (torchvision's ToTensor): colour steps need floats
        height, width = clip.shape[-2:]
        top, left, h, w = self.crop_box(height, width, generator)
        frames = clip[..., top : top + h, left : left + w].transpose(0, 1)  # (T, C, h, w)
        frames = TF.resize(frames, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
        if float(torch.rand((), generator=generator)) < self.jitter_prob:
            frames = self._jitter(frames, generator)
        if float(torch.rand((), generator=generator)) < self.gray_prob:
            frames = TF.rgb_to_grayscale(frames, num_output_channels=3)
        return frames.clamp(0.0, 1.0).transpose(0, 1).contiguous()

    def _jitter(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # torchvision ColorJitter: the four adjustments in a random order, factors from U[max(0, 1-x), 1+x]
        b = _uniform(generator, max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = _uniform(generator, max(0.0, 1 - self.contrast), 1 + self.contrast)
        s = _uniform(generator, max(0.0, 1 - self.saturation), 1 + self.saturation)
        h = _uniform(generator, -self.hue, self.hue)
        steps = {
            0: lambda x: TF.adjust_brightness(x, b),
            1: lambda x: TF.adjust_contrast(x, c),
            2: lambda x: TF.adjust_saturation(x, s),
            3: lambda x: TF.adjust_hue(x, h),
        }
        for k in torch.randperm(4, generator=generator).tolist():
            frames = steps[k](frames)
        return frames


def eval_transform(short_side: int, crop_size: int, sampling: str = "uniform") -> Compose:
    """Deterministic evaluation view: short-side resize, centre crop.

    ``sampling`` names the evaluation pipeline the clips copy (``benchmark.data.clips``):
    ``ctp`` centres the crop as CtP's recognizer test pipeline (offset rounded down), the
    others as torchvision's ``CenterCrop`` (:class:`CenterCrop`).
    (C, T, H, W) -> (C, T, crop_size, crop_size).
    """
    return Compose([ShortSideResize(short_side), CenterCrop(crop_size, round_down=sampling == "ctp")])
