"""CtP: Catch-the-Patch (Wang et al., "Unsupervised Visual Representation Learning by
Tracking Patches in Video", CVPR 2021), following microsoft/CtP (commit eeaf2e6).

Data side (``sample_transform``, = ``PatchMask`` in pyvrl/models/pretraining/ctp/ctp_transforms.py):
patches cropped from the clip itself are pasted along synthetic trajectories (random key
frames, bounded speed, linear/accelerating/decelerating motion, small size changes) with
shaped, semi-transparent alpha masks. Model side (``training_loss``, = ``CtPHead``):
from the backbone's feature map and each patch's frame-0 box, regress the patch's box on
every frame (centre offsets and log size ratios w.r.t. frame 0, divided by fixed stds).
See docs/methods/ctp.md for the sources line by line and the deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from benchmark.data.transforms import to_unit_float
from benchmark.methods import SSLMethod
from benchmark.models.backbones import feature_frames
from benchmark.registry import register_method

INTERPOLATIONS = ("linear", "accelerate", "decelerate")
MASK_SHAPES = ("rectangle", "ellipse", "rhombus")


# --------------------------------------------------------------------------------------
# Trajectory sampling (numpy, in loader workers)
# --------------------------------------------------------------------------------------
def sample_key_frames(num_frames: int, num_inner_probs: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Sorted key-frame indices: 0, T-1 and k inner ones, k ~ Categorical(num_inner_probs).

    Inner key frames sit at int(T / (k+1) * i) jittered by randint(-j, j), j = int(T / (k+1) / 3),
    as ``sample_key_frames`` in pyvrl/datasets/transforms/dynamic_utils.py (duplicates merged).
    """
    k = int(rng.choice(len(num_inner_probs), p=np.asarray(num_inner_probs, dtype=np.float64)))
    if k == 0:
        return np.array([0, num_frames - 1])
    avg = num_frames / (k + 1)
    ticks = np.array([int(avg * i) for i in range(1, k + 1)])
    jitter = int(avg / 3)
    if jitter > 0:
        ticks = ticks + rng.integers(-jitter, jitter, size=len(ticks))
    return np.unique(np.concatenate([ticks, [0, num_frames - 1]]))


def interpolate_key_frames(values: np.ndarray, key_frames: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Fill all frames between key frames: (K, ...) values at ``key_frames`` -> (T, ...).

    ``modes[i]`` interpolates segment i: "linear"; "accelerate" (constant acceleration from
    rest, s(t) = d t^2 / n^2); "decelerate" (the time-reverse). As ``extend_key_frame_to_all``.
    """
    out = np.zeros((int(key_frames[-1]) + 1,) + values.shape[1:], dtype=np.float64)
    for i, mode in enumerate(modes):
        start, end = int(key_frames[i]), int(key_frames[i + 1])
        n = end - start
        a, b = values[i], values[i + 1]
        steps = np.arange(n + 1, dtype=np.float64).reshape((-1,) + (1,) * (values.ndim - 1))
        if mode == "linear":
            seg = a + (b - a) * steps / n
        elif mode == "accelerate":
            seg = a + (b - a) * steps**2 / n**2
        elif mode == "decelerate":
            seg = b - (b - a) * (n - steps) ** 2 / n**2
        else:
            raise ValueError(f"interpolation {mode!r}: expected one of {INTERPOLATIONS}")
        out[start : end + 1] = seg
    return out


def sample_initial_boxes(
    num_boxes: int,
    width: int,
    height: int,
    scales: Sequence[float],
    ratios: Sequence[float],
    scale_jitter: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(N, 4) float boxes (x1, y1, x2, y2) inside the frame (``RandomRegionSampler.sample``).

    Shape: a random anchor (scale s, ratio r: w = s sqrt(r), h = s / sqrt(r)), each side
    multiplied by exp(U(-scale_jitter, scale_jitter)) and clipped to [1, W-1] / [1, H-1].
    """
    scales_a = np.asarray(scales, dtype=np.float64)
    ratios_a = np.asarray(ratios, dtype=np.float64)
    anchors = np.stack(
        [
            (scales_a[None, :] * np.sqrt(ratios_a)[:, None]).ravel(),
            (scales_a[None, :] / np.sqrt(ratios_a)[:, None]).ravel(),
        ],
        axis=1,
    )  # (R*S, 2) in CtP's order (ratio-major)
    shapes = anchors[rng.integers(0, len(anchors), size=num_boxes)].copy()
    if scale_jitter:
        shapes = shapes * np.exp(rng.uniform(-scale_jitter, scale_jitter, size=(num_boxes, 2)))
    shapes[:, 0] = np.clip(shapes[:, 0], 1, width - 1)
    shapes[:, 1] = np.clip(shapes[:, 1], 1, height - 1)
    x1 = rng.uniform(0, width - shapes[:, 0])
    y1 = rng.uniform(0, height - shapes[:, 1])
    return np.stack([x1, y1, x1 + shapes[:, 0], y1 + shapes[:, 1]], axis=1)


def sample_trajectories(
    boxes: np.ndarray,
    width: int,
    height: int,
    num_frames: int,
    loc_velocity: float,
    size_velocity: float,
    key_frame_probs: Sequence[float],
    interpolation_probs: Sequence[float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Move (N, 4) boxes through T frames (``PatchMask.rectangle_movement``).

    Centres: key frames shared by all boxes; between key frames i and j each centre
    coordinate moves by U(-v (j-i), v (j-i)) (clipped so the initial box stays inside),
    interpolated with a mode drawn per segment. Sizes: own key frames, factor
    exp(U(-sv (j-i), sv (j-i))) per side. Boxes are clipped to the frame, rounded to
    integers and clipped again.

    Returns ((N, T, 4) float integer-valued boxes, {"loc_key_frames", "size_key_frames",
    "centres": (T, N, 2) unrounded centres}).
    """
    interp_p = np.asarray(interpolation_probs, dtype=np.float64)

    def modes(n_segments: int) -> list[str]:
        return [INTERPOLATIONS[int(rng.choice(3, p=interp_p))] for _ in range(n_segments)]

    wh = np.array([width, height], dtype=np.float64)
    loc_keys = sample_key_frames(num_frames, key_frame_probs, rng)
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) * 0.5
    sizes = boxes[:, 2:4] - boxes[:, 0:2]
    lo, hi = sizes * 0.5, wh[None, :] - sizes * 0.5
    key_centres = [centres]
    for i in range(len(loc_keys) - 1):
        if loc_velocity > 0:
            span = loc_velocity * (loc_keys[i + 1] - loc_keys[i])
            centres = np.clip(centres + rng.uniform(-span, span, size=centres.shape), lo, hi)
        key_centres.append(centres)
    all_centres = interpolate_key_frames(np.stack(key_centres), loc_keys, modes(len(loc_keys) - 1))

    size_keys = sample_key_frames(num_frames, key_frame_probs, rng)
    key_sizes = [sizes]
    for i in range(len(size_keys) - 1):
        if size_velocity > 0:
            span = size_velocity * (size_keys[i + 1] - size_keys[i])
            sizes = sizes * np.exp(rng.uniform(-span, span, size=sizes.shape))
        key_sizes.append(sizes)
    all_sizes = interpolate_key_frames(np.stack(key_sizes), size_keys, modes(len(size_keys) - 1))

    traj = np.concatenate([all_centres - all_sizes * 0.5, all_centres + all_sizes * 0.5], axis=2)  # (T, N, 4)
    traj = traj.transpose(1, 0, 2)
    traj[..., 0::2] = np.clip(traj[..., 0::2], 0, width)
    traj[..., 1::2] = np.clip(traj[..., 1::2], 0, height)
    traj = np.round(traj)
    traj[..., 0::2] = np.clip(traj[..., 0::2], 0, width)
    traj[..., 1::2] = np.clip(traj[..., 1::2], 0, height)
    return traj, {"loc_key_frames": loc_keys, "size_key_frames": size_keys, "centres": all_centres}


def base_alpha_mask(width: int, height: int, shape: str, smooth_turning_point: float | None) -> np.ndarray:
    """(h, w) alpha in [0, 1] of a rectangle/ellipse/rhombus filling the box (``pick_alphas``).

    Normalised distance to the centre pixel ((w-1)//2, (h-1)//2): rectangle max(dx, dy),
    ellipse sqrt(dx^2 + dy^2), rhombus dx + dy; ellipse/rhombus are 1 where it is < 0.5.
    A soft edge multiplies by clip((0.5 - d) / (0.5 - turning_point), 0, 1).
    """
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    dx = np.abs(xs - (width - 1) // 2) / width
    dy = np.abs(ys - (height - 1) // 2) / height
    if shape == "rectangle":
        dist = np.maximum(dx, dy)
        alpha = np.ones((height, width))
    elif shape == "ellipse":
        dist = np.sqrt(dx**2 + dy**2)
        alpha = (dist < 0.5).astype(np.float64)
    elif shape == "rhombus":
        dist = dx + dy
        alpha = (dist < 0.5).astype(np.float64)
    else:
        raise ValueError(f"mask shape {shape!r}: expected one of {MASK_SHAPES}")
    if smooth_turning_point is not None:
        alpha = alpha * np.clip((0.5 - dist) / (0.5 - smooth_turning_point), 0.0, 1.0)
    return alpha


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, h, w) -> (C, height, width), bilinear with half-pixel centres (cv2.INTER_LINEAR)."""
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]


@dataclass(frozen=True)
class PastedPatch:
    """One patch of ``PatchMask``: cut from its own box on ``source_frame`` and pasted on
    every frame where ``visible``. ``boxes``: (T, 4) int (x1, y1, x2, y2) per frame; ``alpha``:
    (h, w) base mask of the source box (:func:`base_alpha_mask`); ``opacity``: (T,) factors;
    ``visible``: (T,) bool."""

    source_frame: int
    boxes: np.ndarray
    alpha: np.ndarray
    opacity: np.ndarray
    visible: np.ndarray


def paste(clip: torch.Tensor, patches: Sequence[PastedPatch]) -> torch.Tensor:
    """``PatchMask._apply_image``: (C, T, H, W) float clip -> a pasted copy.

    Per frame, patches go on largest first (mean box area over frames), so small ones are not
    hidden under large ones; each is resized (bilinear) to the frame's box and blended as
    ``region (1 - a) + patch a`` with ``a = resized alpha x opacity[t]``, in place. Resized
    patch, ``1 - a`` and ``patch a`` are computed once per distinct (patch, box size, opacity)
    — sizes and opacities repeat over frames — and a fully opaque patch is copied: the same
    values as blending every frame from scratch (bit-identical on finite pixels, tests/test_ctp.py).
    """
    out = clip.clone()
    if not patches:
        return out
    sizes = np.stack([p.boxes[:, 2:4] - p.boxes[:, 0:2] for p in patches])  # (N, T, 2) = (w, h)
    order = np.argsort(np.prod(sizes.mean(axis=1), axis=1), kind="stable")[::-1]
    crops, bases = [], []
    for p in patches:
        x1, y1, x2, y2 = (int(v) for v in p.boxes[p.source_frame])
        crops.append(clip[:, p.source_frame, y1:y2, x1:x2])
        bases.append(torch.from_numpy(p.alpha).to(clip.dtype)[None])
    resized: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    blends: dict[tuple[int, int, int, float], tuple[torch.Tensor, torch.Tensor, bool]] = {}
    boxes = np.stack([p.boxes for p in patches]).tolist()  # python ints: cheaper to index
    visible = np.stack([p.visible for p in patches]).tolist()
    opacity = np.stack([p.opacity for p in patches]).tolist()
    for t in range(out.shape[1]):
        frame = out[:, t]
        for n in order:
            if not visible[n][t]:
                continue
            x1, y1, x2, y2 = boxes[n][t]
            h, w = y2 - y1, x2 - x1
            if h <= 0 or w <= 0 or crops[n].numel() == 0:
                continue
            # Box sizes and opacities repeat over frames: resize and weigh once per distinct pair.
            key = (n, h, w, opacity[n][t])
            if key not in blends:
                if key[:3] not in resized:
                    resized[key[:3]] = (_resize(bases[n], h, w)[0], _resize(crops[n], h, w))
                base, patch = resized[key[:3]]
                alpha = base * key[3]
                blends[key] = (1 - alpha, patch * alpha, bool((alpha == 1).all()))
            keep, add, opaque = blends[key]
            region = frame[:, y1:y2, x1:x2]
            if opaque:  # region * 0 + patch is the patch (finite pixels)
                region.copy_(add)
            else:  # region (1 - a) + patch a, the same float operations, in place
                region.mul_(keep).add_(add)
    return out


# --------------------------------------------------------------------------------------
# Colour augmentation applied after pasting (CtP's pipeline order), on (C, T, H, W) RGB in [0, 1]
# --------------------------------------------------------------------------------------
def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, ...) RGB in [0, 1] -> (3, ...) HSV, hue as a fraction of the circle in [0, 1)."""
    r, g, b = rgb.unbind(0)
    # elementwise, not a reduction over the strided channel axis (same values, several times faster)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: (3, ...) HSV -> (3, ...) RGB in [0, 1]."""
    h, s, v = hsv.unbind(0)
    k = (torch.stack([torch.full_like(h, 5.0), torch.full_like(h, 3.0), torch.full_like(h, 1.0)]) + h * 6) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def shift_hue_saturation(clip: torch.Tensor, hue_shift: float, saturation_factor: float) -> torch.Tensor:
    """Rotate hue by ``hue_shift`` (fraction of the circle) and scale saturation (``RandomHueSaturation``)."""
    h, s, v = rgb_to_hsv(clip).unbind(0)
    return hsv_to_rgb(torch.stack([(h + hue_shift) % 1.0, (s * saturation_factor).clamp(0, 1), v]))


def dynamic_values(
    num_frames: int,
    low: float,
    high: float,
    key_frame_probs: Sequence[float],
    interpolation_probs: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """(T,) values drawn U(low, high) on random key frames, interpolated in between
    (``DynamicBrightness`` / ``DynamicContrast`` with 'random' interpolation)."""
    keys = sample_key_frames(num_frames, key_frame_probs, rng)
    values = rng.uniform(low, high, size=(len(keys), 1))
    interp_p = np.asarray(interpolation_probs, dtype=np.float64)
    modes = [INTERPOLATIONS[int(rng.choice(3, p=interp_p))] for _ in range(len(keys) - 1)]
    return interpolate_key_frames(values, keys, modes)[:, 0]


# --------------------------------------------------------------------------------------
# Head and loss
# --------------------------------------------------------------------------------------
class CtPHead(nn.Module):
    """Conv3d collapsing time -> ReLU -> RoIAlign of the frame-0 box -> fc -> ReLU -> fc.

    ``forward(features (B, C, T', H', W'), rois (K, 5) = (batch index, x1, y1, x2, y2) in
    input pixels) -> (K, num_frames, 4)`` normalised (dx, dy, log dw, log dh) per frame.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        in_temporal_size: int,
        num_frames: int,
        roi_size: int = 5,
        spatial_stride: int = 8,
    ) -> None:
        super().__init__()
        self.in_temporal_size = in_temporal_size
        self.num_frames = num_frames
        self.roi_size = roi_size
        self.spatial_scale = 1.0 / spatial_stride
        self.temporal_conv = nn.Conv3d(in_channels, hidden_channels, kernel_size=(in_temporal_size, 1, 1), bias=True)
        self.fc1 = nn.Linear(hidden_channels * roi_size**2, hidden_channels)
        self.pred_head = nn.Linear(hidden_channels, num_frames * 4)
        # CtPHead.init_weights: kaiming_init(temporal_conv), normal_init(fc, std=0.001).
        nn.init.kaiming_normal_(self.temporal_conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.temporal_conv.bias)
        for fc in (self.fc1, self.pred_head):
            nn.init.normal_(fc.weight, 0.0, 0.001)
            nn.init.zeros_(fc.bias)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if features.shape[2] != self.in_temporal_size:
            raise ValueError(
                f"CtP head expects {self.in_temporal_size} feature frames (method.params.num_frames), "
                f"the backbone gave {features.shape[2]} (features {tuple(features.shape)})"
            )
        x = F.relu(self.temporal_conv(features).squeeze(2))  # (B, hidden, H', W')
        x = roi_align(
            x, rois, output_size=self.roi_size, spatial_scale=self.spatial_scale, sampling_ratio=2, aligned=True
        )
        x = F.relu(self.fc1(x.flatten(1)))
        return self.pred_head(x).view(rois.shape[0], self.num_frames, 4)


def ctp_targets(boxes: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """(..., T, 4) boxes (x1, y1, x2, y2) -> (..., T, 4) regression targets.

    ((cx_t - cx_0) / s0, (cy_t - cy_0) / s1, (log w_t - log w_0) / s2, (log h_t - log h_0) / s3),
    sizes clamped to >= 1 px (``CtPHead.loss``).
    """
    centres = (boxes[..., 0:2] + boxes[..., 2:4]) * 0.5
    sizes = (boxes[..., 2:4] - boxes[..., 0:2]).clamp(min=1)
    deltas = torch.cat([centres - centres[..., :1, :], sizes.log() - sizes[..., :1, :].log()], dim=-1)
    return deltas / stds


def ctp_loss(preds: torch.Tensor, targets: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-L1 (beta 1) summed over (dx, dy) and over (dw, dh), averaged over the
    (batch x patches x frames) boxes: (..., 4) preds/targets -> (loss_ctr, loss_size)."""
    diff = (preds - targets).abs()
    per = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    count = max(1, per[..., 0].numel())
    return per[..., 0:2].sum() / count, per[..., 2:4].sum() / count


# --------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------
@register_method("ctp")
class CtP(SSLMethod):
    """Catch-the-Patch pretext. Batch: ``video`` (B, 3, T, H, W), ``ctp_boxes`` (B, N, T, 4)."""

    pretext = "ctp"
    num_views = 1
    default_exchange = "backbone"

    def __init__(
        self,
        backbone: nn.Module,
        num_frames: int = 16,
        num_patches: int = 3,
        patch_scales: Sequence[float] = (16, 24, 28, 32, 48, 64),
        patch_ratios: Sequence[float] = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0),
        scale_jitter: float = 0.18,
        key_frame_probs: Sequence[float] = (0.5, 0.3, 0.2),
        loc_velocity: float = 3.0,
        size_velocity: float = 0.025,
        interpolation_probs: Sequence[float] = (0.7, 0.15, 0.15),
        mask_shape_probs: Sequence[float] = (0.5, 0.35, 0.15),
        smooth_edge_prob: float = 0.5,
        smooth_turning_range: Sequence[float] = (0.30, 0.45),
        opacity_range: Sequence[float] = (0.8, 1.0),
        visible_prob: float = 0.8,
        hue_saturation_prob: float = 0.25,
        hue_delta: float = 12 / 180,
        saturation_delta: float = 0.1,
        brightness_prob: float = 0.5,
        brightness_delta: float = 30 / 255,
        contrast_prob: float = 0.5,
        contrast_delta: float = 0.12,
        color_key_frame_probs: Sequence[float] = (0.7, 0.3),
        target_stds: Sequence[float] = (0.8, 0.8, 0.04, 0.04),
        hidden_channels: int | None = None,
        roi_size: int = 5,
        reference_size: int | None = 112,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        for key, probs, n in (
            ("key_frame_probs", key_frame_probs, None),
            ("interpolation_probs", interpolation_probs, 3),
            ("mask_shape_probs", mask_shape_probs, 3),
            ("color_key_frame_probs", color_key_frame_probs, None),
        ):
            if (n is not None and len(probs) != n) or abs(sum(probs) - 1.0) > 1e-6 or min(probs) < 0:
                raise ValueError(f"method.params.{key}={list(probs)}: expected {n or 'k'} probabilities summing to 1")
        if len(target_stds) != 4:
            raise ValueError(f"method.params.target_stds={list(target_stds)}: expected 4 values (dx, dy, dw, dh)")
        if reference_size is not None and reference_size <= 0:
            raise ValueError(f"method.params.reference_size={reference_size}: expected a positive crop size or null")
        if num_frames < 2:
            raise ValueError(f"method.params.num_frames={num_frames}: CtP needs at least 2 frames")
        out_channels = getattr(backbone, "out_channels", None)
        if out_channels is None:
            raise ValueError(f"backbone {type(backbone).__name__} has no `out_channels` attribute")
        self.num_frames = int(num_frames)
        self.num_patches = int(num_patches)
        self.patch_scales = tuple(float(s) for s in patch_scales)
        self.patch_ratios = tuple(float(r) for r in patch_ratios)
        self.reference_size = None if reference_size is None else int(reference_size)
        self.scale_jitter = float(scale_jitter)
        self.key_frame_probs = tuple(float(p) for p in key_frame_probs)
        self.loc_velocity = float(loc_velocity)
        self.size_velocity = float(size_velocity)
        self.interpolation_probs = tuple(float(p) for p in interpolation_probs)
        self.mask_shape_probs = tuple(float(p) for p in mask_shape_probs)
        self.smooth_edge_prob = float(smooth_edge_prob)
        self.smooth_turning_range = (float(smooth_turning_range[0]), float(smooth_turning_range[1]))
        self.opacity_range = (float(opacity_range[0]), float(opacity_range[1]))
        self.visible_prob = float(visible_prob)
        self.hue_saturation_prob = float(hue_saturation_prob)
        self.hue_delta = float(hue_delta)
        self.saturation_delta = float(saturation_delta)
        self.brightness_prob = float(brightness_prob)
        self.brightness_delta = float(brightness_delta)
        self.contrast_prob = float(contrast_prob)
        self.contrast_delta = float(contrast_delta)
        self.color_key_frame_probs = tuple(float(p) for p in color_key_frame_probs)
        self.register_buffer("target_stds", torch.tensor([float(s) for s in target_stds]), persistent=False)
        self.head = CtPHead(
            out_channels,
            # the paper's 512 is its backbones' width; a narrow CPU backbone under a 512-wide
            # head learns several times slower (docs/methods/ctp.md)
            out_channels if hidden_channels is None else int(hidden_channels),
            feature_frames(self.num_frames),
            self.num_frames,
            roi_size=roi_size,
            spatial_stride=getattr(backbone, "spatial_stride", 8),
        )

    # --- data side -------------------------------------------------------------------
    def sample_transform(self, views: list[torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One clip (C, T, H, W), uint8 (from the loader) or float in [0, 1] -> {"video": float
        (C, T, H, W) in [0, 1] with patches pasted, "ctp_boxes": (N, T, 4) float pixel boxes
        (x1, y1, x2, y2), "ctp_visible": (N, T) bool}. The colour steps need floats, so a uint8
        clip is converted first (``to_unit_float``, the loader's own conversion)."""
        if len(views) != 1:
            raise ValueError(f"CtP takes one clip per sample, got {len(views)} views")
        clip = to_unit_float(views[0])
        if clip.dim() != 4 or clip.shape[1] != self.num_frames:
            raise ValueError(
                f"CtP expects a (C, {self.num_frames}, H, W) clip (method.params.num_frames), got {tuple(clip.shape)}"
            )
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        sample = self.paste_patches(clip, rng)
        sample["video"] = self.color_jitter(sample["video"], rng)
        return sample

    def color_jitter(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """CtP's colour steps after ``PatchMask``: hue/saturation (whole clip), then brightness
        and contrast varying smoothly over frames; (C, T, H, W) in [0, 1] -> same, clipped."""
        num_frames = clip.shape[1]
        if rng.uniform() < self.hue_saturation_prob:
            hue = rng.uniform(-self.hue_delta, self.hue_delta)
            saturation = math.exp(rng.uniform(-self.saturation_delta, self.saturation_delta))
            clip = shift_hue_saturation(clip, hue, saturation)
        if rng.uniform() < self.brightness_prob:
            delta = dynamic_values(
                num_frames,
                -self.brightness_delta,
                self.brightness_delta,
                self.color_key_frame_probs,
                self.interpolation_probs,
                rng,
            )
            clip = (clip + torch.from_numpy(delta).to(clip.dtype).view(1, -1, 1, 1)).clamp(0, 1)
        if rng.uniform() < self.contrast_prob:
            factor = np.exp(
                dynamic_values(
                    num_frames,
                    -self.contrast_delta,
                    self.contrast_delta,
                    self.color_key_frame_probs,
                    self.interpolation_probs,
                    rng,
                )
            )
            clip = (clip * torch.from_numpy(factor).to(clip.dtype).view(1, -1, 1, 1)).clamp(0, 1)
        return clip

    def paste_patches(self, clip: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``PatchMask.get_transform_param`` + ``_apply_image`` on a (C, T, H, W) clip."""
        traj, patches = self.draw_patches(*clip.shape[1:], rng)
        return {
            "video": paste(clip, patches),
            "ctp_boxes": torch.from_numpy(traj).to(torch.float32),
            "ctp_visible": torch.from_numpy(np.stack([p.visible for p in patches])),
        }

    def draw_patches(
        self, num_frames: int, height: int, width: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[PastedPatch]]:
        """``PatchMask.get_transform_param``: (N, T, 4) float pixel boxes (integer-valued) and
        the N patches to :func:`paste`, drawn from ``rng`` alone."""
        # Patch sizes and speeds are CtP's pixels on 112-px crops: keep them relative to the crop.
        zoom = 1.0 if self.reference_size is None else min(height, width) / self.reference_size
        boxes0 = sample_initial_boxes(
            self.num_patches,
            width,
            height,
            [s * zoom for s in self.patch_scales],
            self.patch_ratios,
            self.scale_jitter,
            rng,
        )
        traj, _ = sample_trajectories(
            boxes0,
            width,
            height,
            num_frames,
            self.loc_velocity * zoom,
            self.size_velocity,
            self.key_frame_probs,
            self.interpolation_probs,
            rng,
        )
        traj_i = traj.astype(np.int64)
        sizes = traj_i[..., 2:4] - traj_i[..., 0:2]  # (N, T, 2) = (w, h)

        patches = []
        for n in range(self.num_patches):
            # Source: the patch's own box on a random frame of the clip (pick_patches).
            src = int(rng.integers(0, num_frames))
            # Alpha (pick_alphas): shape, optional soft edge, per-frame opacity from key frames.
            shape = MASK_SHAPES[int(rng.choice(3, p=np.asarray(self.mask_shape_probs)))]
            turning = rng.uniform(*self.smooth_turning_range) if rng.uniform() < self.smooth_edge_prob else None
            base = base_alpha_mask(max(int(sizes[n, src, 0]), 1), max(int(sizes[n, src, 1]), 1), shape, turning)
            keys = sample_key_frames(num_frames, self.key_frame_probs, rng)
            opacity = interpolate_key_frames(
                rng.uniform(*self.opacity_range, size=(len(keys), 1)), keys, ["linear"] * (len(keys) - 1)
            )[:, 0]
            # Visible on frame 0 and the source frame, elsewhere with visible_prob.
            u = rng.uniform(0, 1, size=num_frames)
            u[src] = 0.0
            u[0] = 0.0
            patches.append(PastedPatch(src, traj_i[n], base, opacity, u <= self.visible_prob))
        return traj, patches

    # --- model side ------------------------------------------------------------------
    def predict(self, video: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clips and (B, N, T, 4) boxes -> (B, N, T, 4) normalised predictions
        from the frame-0 boxes."""
        batch, num_patches = boxes.shape[:2]
        features = self.backbone(video)
        index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(num_patches)
        rois = torch.cat([index[:, None], boxes[:, :, 0, :].reshape(-1, 4)], dim=1)
        return self.head(features, rois).view(batch, num_patches, -1, 4)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Smooth-L1 over all trajectories x frames (visible or not, as in CtP)."""
        for key in ("video", "ctp_boxes"):
            if key not in batch:
                raise KeyError(f"CtP batch lacks {key!r} (got {sorted(batch)}); use CtP.sample_transform in the loader")
        video, boxes = batch["video"], batch["ctp_boxes"]
        if boxes.dim() != 4 or boxes.shape[2] != self.num_frames or boxes.shape[3] != 4:
            raise ValueError(f"ctp_boxes must be (B, N, {self.num_frames}, 4), got {tuple(boxes.shape)}")
        boxes = boxes.to(video.dtype)
        preds = self.predict(video, boxes)
        targets = ctp_targets(boxes, self.target_stds.to(boxes.dtype))
        loss_ctr, loss_size = ctp_loss(preds, targets)
        loss = loss_ctr + loss_size
        return loss, {
            "loss": float(loss.detach()),
            "loss_ctr": float(loss_ctr.detach()),
            "loss_size": float(loss_size.detach()),
        }
