"""CtP: patch/trajectory sampling, pasting, targets, loss, overfitting, exchange, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from baselines.ctp import (
    CtP,
    PastedPatch,
    base_alpha_mask,
    ctp_loss,
    ctp_targets,
    hsv_to_rgb,
    interpolate_key_frames,
    paste,
    rgb_to_hsv,
    sample_initial_boxes,
    sample_key_frames,
    sample_trajectories,
    shift_hue_saturation,
)
from benchmark import CONF_DIR
from benchmark.models.backbones import TinyR3D
from benchmark.registry import build_backbone, build_method

SCALES = (16, 24, 28, 32, 48, 64)
RATIOS = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)


@pytest.fixture
def one_thread():
    # Small convolutions are slower with threads on a loaded 2-core machine.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_ctp(**params) -> CtP:
    params.setdefault("hidden_channels", 32)
    return CtP(TinyR3D(width=4), **params)


def clip_of(frames=16, size=112, seed=0) -> torch.Tensor:
    return torch.rand(3, frames, size, size, generator=torch.Generator().manual_seed(seed))


# --- sampling ---------------------------------------------------------------------------
def test_key_frame_counts_follow_probs_and_accelerate_matches_ctp_docstring():
    rng = np.random.default_rng(0)
    counts = np.bincount([len(sample_key_frames(16, (0.5, 0.3, 0.2), rng)) - 2 for _ in range(4000)], minlength=3)
    assert np.allclose(counts / 4000, [0.5, 0.3, 0.2], atol=0.03)
    keys = sample_key_frames(16, (0.0, 0.0, 1.0), rng)
    assert keys[0] == 0 and keys[-1] == 15 and len(keys) == 4 and np.all(np.diff(keys) > 0)
    # Example from dynamic_utils.extend_key_frame_to_all's docstring in microsoft/CtP.
    values, inds = np.array([[0.0], [5.0]]), np.array([0, 10])
    acc = interpolate_key_frames(values, inds, ["accelerate"])[:, 0]
    assert np.allclose(acc, [0, 0.05, 0.2, 0.45, 0.8, 1.25, 1.8, 2.45, 3.2, 4.05, 5])
    assert np.allclose(interpolate_key_frames(values, inds, ["linear"])[:, 0], np.arange(11) * 0.5)
    assert np.allclose(interpolate_key_frames(values, inds, ["decelerate"])[:, 0], 5 - acc[::-1])


def test_trajectories_respect_speed_and_size_limits():
    rng = np.random.default_rng(1)
    for _ in range(200):
        boxes = sample_initial_boxes(3, 112, 112, SCALES, RATIOS, 0.18, rng)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # Each box is one anchor (s sqrt(r), s / sqrt(r)) with each side jittered by <= exp(0.18).
        ok = [
            any(
                abs(math.log(wi / (s * math.sqrt(r)))) <= 0.18 + 1e-9
                and abs(math.log(hi / (s / math.sqrt(r)))) <= 0.18 + 1e-9
                for s in SCALES
                for r in RATIOS
            )
            for wi, hi in zip(w, h)
        ]
        assert all(ok)
        assert boxes.min() >= 0 and boxes[:, 2].max() <= 112 and boxes[:, 3].max() <= 112
        traj, info = sample_trajectories(boxes, 112, 112, 16, 3.0, 0.025, (0.5, 0.3, 0.2), (0.7, 0.15, 0.15), rng)
        assert traj.shape == (3, 16, 4) and np.array_equal(traj, np.round(traj))
        assert traj.min() >= 0 and traj[..., 0::2].max() <= 112 and traj[..., 1::2].max() <= 112
        centres, keys = info["centres"], info["loc_key_frames"]  # (T, N, 2) before rounding
        assert np.allclose(centres[0], (boxes[:, :2] + boxes[:, 2:]) / 2)
        for a, b in zip(keys[:-1], keys[1:]):
            assert np.abs(centres[b] - centres[a]).max() <= 3.0 * (b - a) + 1e-9
        # Between key frames the per-frame step is < 2 x 3 px (accelerating motion peaks at 2v).
        assert np.abs(np.diff(centres, axis=0)).max() < 6.0
        # Frame 0 of the returned trajectory is the sampled box, rounded.
        assert np.abs(traj[:, 0] - boxes).max() <= 0.5 + 1e-9


def test_alpha_mask_shapes_hand_computed():
    ellipse = base_alpha_mask(5, 5, "ellipse", None)
    # centre pixel (2, 2); d = sqrt(dx^2 + dy^2) with dx = |x - 2| / 5: corner 0.566 -> 0, (0, 1) 0.447 -> 1.
    assert ellipse[0, 0] == 0 and ellipse[1, 0] == 1 and ellipse[2, 2] == 1
    rhombus = base_alpha_mask(5, 5, "rhombus", None)
    assert rhombus[2, 0] == 1 and rhombus[1, 0] == 0 and rhombus[1, 1] == 1
    soft = base_alpha_mask(5, 5, "rectangle", 0.3)
    # mul = clip((0.5 - d) / 0.2, 0, 1): d = 0.4 at x = 0 -> 0.5, d = 0.2 at x = 1 -> 1.
    assert np.allclose(soft[2], [0.5, 1, 1, 1, 0.5])
    assert np.array_equal(base_alpha_mask(7, 3, "rectangle", None), np.ones((3, 7)))


def test_opaque_static_patch_is_pasted_pixel_exactly():
    ctp = make_ctp(
        num_patches=1,
        patch_scales=(8,),
        patch_ratios=(1.0,),
        scale_jitter=0.0,
        loc_velocity=0.0,
        size_velocity=0.0,
        mask_shape_probs=(1.0, 0.0, 0.0),
        smooth_edge_prob=0.0,
        opacity_range=(0.75, 0.75),
        visible_prob=1.0,
        hue_saturation_prob=0.0,
        brightness_prob=0.0,
        contrast_prob=0.0,
        reference_size=None,
    )
    clip = clip_of(size=40)
    out = ctp.sample_transform([clip], torch.Generator().manual_seed(3))
    boxes = out["ctp_boxes"][0]
    assert torch.equal(boxes, boxes[:1].expand(16, 4))  # static 8x8 box
    x1, y1, x2, y2 = (int(v) for v in boxes[0])
    assert (x2 - x1, y2 - y1) == (8, 8)
    assert out["ctp_visible"].all()
    inside = (slice(None), slice(None), slice(y1, y2), slice(x1, x2))
    # out = 0.25 clip + 0.75 patch, and the patch is the same box on one source frame.
    patch = (out["video"][inside] - 0.25 * clip[inside]) / 0.75
    sources = [
        s for s in range(16) if torch.allclose(patch, clip[:, s : s + 1, y1:y2, x1:x2].expand_as(patch), atol=1e-5)
    ]
    assert len(sources) == 1
    outside = torch.ones(40, 40, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(out["video"][:, :, outside], clip[:, :, outside])


def paste_per_frame(clip: torch.Tensor, patches: list[PastedPatch]) -> torch.Tensor:
    """The previous pasting (baselines/ctp.py at ca4cd01): for every frame, for every patch
    (largest first), resize patch and alpha to the box and blend, from scratch."""

    def resize(image, h, w):
        if image.shape[-2:] == (h, w):
            return image
        return F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]

    out = clip.clone()
    sizes = np.stack([p.boxes[:, 2:4] - p.boxes[:, 0:2] for p in patches])
    order = np.argsort(np.prod(sizes.mean(axis=1), axis=1), kind="stable")[::-1]
    crops = []
    for p in patches:
        x1, y1, x2, y2 = (int(v) for v in p.boxes[p.source_frame])
        crops.append(clip[:, p.source_frame, y1:y2, x1:x2])
    for t in range(clip.shape[1]):
        for n in order:
            p = patches[n]
            x1, y1, x2, y2 = (int(v) for v in p.boxes[t])
            h, w = y2 - y1, x2 - x1
            if not p.visible[t] or h <= 0 or w <= 0 or crops[n].numel() == 0:
                continue
            alpha = resize(torch.from_numpy(p.alpha).to(clip.dtype)[None], h, w)[0] * float(p.opacity[t])
            patch = resize(crops[n], h, w)
            region = out[:, t, y1:y2, x1:x2]
            out[:, t, y1:y2, x1:x2] = region * (1 - alpha) + patch * alpha
    return out


def test_pasting_equals_the_per_frame_blend_on_hand_built_and_drawn_patches():
    clip = clip_of(frames=6, size=24)[:, :, :20]  # (3, 6, 20, 24)
    # overlapping, moving, resizing; soft and hard alphas, opacity < 1, hidden frames, a zero-width box
    moving = np.array([[2, 3, 10, 9], [3, 3, 11, 9], [3, 4, 11, 10], [4, 4, 13, 12], [4, 4, 13, 12], [5, 5, 5, 12]])
    hand = [
        PastedPatch(
            2,
            moving,
            base_alpha_mask(8, 6, "ellipse", 0.35),
            np.array([0.8, 0.9, 1.0, 1.0, 0.85, 0.8]),
            np.array([True, True, False, True, True, True]),
        ),
        PastedPatch(
            0, np.array([[0, 0, 12, 10]] * 3 + [[1, 1, 13, 11]] * 3), np.ones((10, 12)), np.ones(6), np.ones(6, bool)
        ),
        PastedPatch(
            5,
            np.array([[8, 2, 14, 7]] * 6) + np.arange(6)[:, None],
            base_alpha_mask(6, 5, "rhombus", None),
            np.ones(6),
            np.ones(6, bool),
        ),
    ]
    expected = paste_per_frame(clip, hand)
    assert torch.equal(paste(clip, hand), expected)
    assert not torch.equal(expected[:, 2], clip[:, 2])  # pasting happened
    for params in ({}, {"visible_prob": 1.0, "opacity_range": (1.0, 1.0), "smooth_edge_prob": 0.0}):  # ctp, ctp_cpu
        for frames, size in ((8, 64), (16, 40)):
            ctp = make_ctp(num_frames=frames, **params)
            for seed in range(6):
                clip = clip_of(frames=frames, size=size, seed=seed)
                traj, patches = ctp.draw_patches(frames, size, size, np.random.default_rng(seed))
                sample = ctp.paste_patches(clip, np.random.default_rng(seed))
                assert torch.equal(sample["video"], paste_per_frame(clip, patches))
                assert torch.equal(sample["ctp_boxes"], torch.from_numpy(traj).float())
                assert torch.equal(sample["ctp_boxes"], torch.from_numpy(np.stack([p.boxes for p in patches])).float())


def test_patch_positions_are_drawn_as_before():
    # The draws did not move: 50 seeds of 16 x 112^2 boxes and visibility as baselines/ctp.py at
    # ca4cd01 drew them (sums of the integer-valued boxes, plain and frame-weighted).
    ctp = make_ctp()
    draws = [ctp.draw_patches(16, 112, 112, np.random.default_rng(seed)) for seed in range(50)]
    boxes = torch.from_numpy(np.stack([traj for traj, _ in draws]))
    assert boxes.shape == (50, 3, 16, 4)
    assert float(boxes.sum()) == 544487.0
    assert float((boxes * torch.arange(16)[None, None, :, None]).sum()) == 4075022.0
    assert sum(int(p.visible.sum()) for _, patches in draws for p in patches) == 1998


def test_patch_sizes_and_speeds_scale_with_the_crop():
    # patch_scales/loc_velocity are pixels of a reference_size crop: on a 112-px crop with
    # reference 224 a 32-px patch is 16 px and 3 px/frame is 1.5; None keeps absolute pixels.
    params = dict(
        num_patches=1,
        patch_scales=(32,),
        patch_ratios=(1.0,),
        scale_jitter=0.0,
        loc_velocity=3.0,
        size_velocity=0.0,
        key_frame_probs=(1.0, 0.0, 0.0),
        interpolation_probs=(1.0, 0.0, 0.0),
    )
    for reference_size, side, speed in ((224, 16, 1.5), (112, 32, 3.0), (None, 32, 3.0)):
        ctp = make_ctp(reference_size=reference_size, **params)
        steps = []
        for seed in range(40):
            boxes = ctp.paste_patches(clip_of(size=112, seed=seed), np.random.default_rng(seed))["ctp_boxes"][0]
            assert torch.equal(boxes[:, 2] - boxes[:, 0], torch.full((16,), float(side)))
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            steps.append(((centres[-1] - centres[0]).abs() / 15).max().item())
        # end-to-end move of a linear 0-inner-key-frame trajectory: U(-15 v, 15 v) per axis, clipped
        assert max(steps) <= speed + 1 / 15 and max(steps) > 0.6 * speed
    with pytest.raises(ValueError, match="reference_size"):
        make_ctp(reference_size=0)


def test_sample_transform_outputs_visibility_and_determinism(one_thread):
    ctp = make_ctp()
    clip = clip_of()
    a = ctp.sample_transform([clip], torch.Generator().manual_seed(7))
    b = ctp.sample_transform([clip], torch.Generator().manual_seed(7))
    c = ctp.sample_transform([clip], torch.Generator().manual_seed(8))
    assert set(a) == {"video", "ctp_boxes", "ctp_visible"}
    assert a["video"].shape == clip.shape and a["ctp_boxes"].shape == (3, 16, 4) and a["ctp_visible"].shape == (3, 16)
    assert a["ctp_boxes"].dtype == torch.float32 and a["ctp_visible"].dtype == torch.bool
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["ctp_boxes"], c["ctp_boxes"])
    assert not torch.equal(a["video"], clip) and a["video"].min() >= 0 and a["video"].max() <= 1
    with pytest.raises(ValueError, match="num_frames"):
        ctp.sample_transform([clip[:, :8]], torch.Generator())

    # Visible on frame 0 always; elsewhere P = 1/16 (source frame) + 15/16 * 0.8 = 0.8125.
    small = clip_of(size=24)
    gen = torch.Generator().manual_seed(0)
    vis = torch.stack([ctp.sample_transform([small], gen)["ctp_visible"] for _ in range(200)])
    assert vis[..., 0].all()
    assert abs(vis[..., 1:].float().mean().item() - 0.8125) < 0.02


def test_color_jitter_hand_computed():
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1)
    assert torch.allclose(
        shift_hue_saturation(red, 1 / 3, 1.0), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1), atol=1e-6
    )
    assert torch.allclose(
        shift_hue_saturation(red, 0.0, 0.5), torch.tensor([1.0, 0.5, 0.5]).view(3, 1, 1, 1), atol=1e-6
    )
    rgb = clip_of(frames=2, size=8)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)
    # Brightness only: every frame of a flat grey clip moves by one offset within +-30/255.
    ctp = make_ctp(hue_saturation_prob=0.0, brightness_prob=1.0, contrast_prob=0.0)
    grey = torch.full((3, 16, 4, 4), 0.5)
    out = ctp.color_jitter(grey, np.random.default_rng(0))
    offsets = (out - 0.5).flatten(2)
    assert torch.allclose(offsets, offsets[:, :, :1].expand_as(offsets))
    assert offsets.abs().max() <= 30 / 255 + 1e-6 and offsets.abs().max() > 0
    # Contrast only: pixels times a per-frame factor in exp(+-0.12).
    ctp = make_ctp(hue_saturation_prob=0.0, brightness_prob=0.0, contrast_prob=1.0)
    factors = (ctp.color_jitter(grey, np.random.default_rng(1)) / 0.5)[0, :, 0, 0]
    assert factors.log().abs().max() <= 0.12 + 1e-6 and not torch.allclose(factors, torch.ones(16))


# --- head and loss ----------------------------------------------------------------------
def test_targets_on_hand_computed_patch():
    boxes = torch.tensor([[[10.0, 20.0, 30.0, 60.0], [14.0, 18.0, 54.0, 58.0]]])  # (N=1, T=2, 4)
    stds = torch.tensor([0.8, 0.8, 0.04, 0.04])
    targets = ctp_targets(boxes, stds)
    # frame 1: centre (34, 38) vs (20, 40); size (40, 40) vs (20, 40).
    expected = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [14 / 0.8, -2 / 0.8, math.log(2) / 0.04, 0.0]]])
    assert torch.allclose(targets, expected)


def test_smooth_l1_on_hand_computed_example():
    preds = torch.zeros(2, 4)
    targets = torch.tensor([[0.5, -2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss_ctr, loss_size = ctp_loss(preds, targets)
    # 0.5 * 0.5^2 = 0.125, |-2| - 0.5 = 1.5, |1| - 0.5 = 0.5; averaged over 2 boxes.
    assert loss_ctr.item() == pytest.approx((0.125 + 1.5) / 2)
    assert loss_size.item() == pytest.approx(0.5 / 2)


def test_training_loss_counts_every_frame_and_trajectory():
    ctp = make_ctp()
    torch.nn.init.zeros_(ctp.head.pred_head.weight)
    torch.nn.init.zeros_(ctp.head.pred_head.bias)
    gen = torch.Generator().manual_seed(2)
    samples = [ctp.sample_transform([clip_of(size=48, seed=s)], gen) for s in range(2)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    loss, logs = ctp.training_loss(batch)
    # Predictions are 0, so the loss is sum_k smoothL1(target_k) / (B * N * T), by hand in numpy.
    b = batch["ctp_boxes"].double().numpy()
    ctr, size = (b[..., :2] + b[..., 2:]) / 2, np.maximum(b[..., 2:] - b[..., :2], 1)
    t = np.concatenate([(ctr - ctr[:, :, :1]) / 0.8, np.log(size / size[:, :, :1]) / 0.04], axis=-1)
    sl1 = np.where(np.abs(t) < 1, 0.5 * t**2, np.abs(t) - 0.5)
    assert loss.item() == pytest.approx(sl1.sum() / (2 * 3 * 16), rel=1e-5)
    assert logs["loss"] == pytest.approx(logs["loss_ctr"] + logs["loss_size"], rel=1e-6)
    assert logs["loss_ctr"] == pytest.approx(sl1[..., :2].sum() / 96, rel=1e-5)


def test_head_pools_frame0_box_with_roi_align_at_stride_8(one_thread):
    ctp = make_ctp()
    assert ctp.head.spatial_scale == 1 / 8 and ctp.head.roi_size == 5
    assert ctp.head.temporal_conv.kernel_size == (2, 1, 1)  # 16 frames -> 2 feature frames
    video = torch.randn(1, 3, 16, 64, 64)
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]] * 16]).expand(1, 1, 16, 4).clone()
    moved = boxes.clone()
    moved[:, :, 1:] += 30  # later frames do not enter the prediction, only frame 0's box
    ctp.eval()
    with torch.no_grad():
        assert torch.equal(ctp.predict(video, boxes), ctp.predict(video, moved))
        other = boxes.clone()
        other[:, :, 0] += 30
        assert not torch.equal(ctp.predict(video, boxes), ctp.predict(video, other))


def test_loss_decreases_when_overfitting_a_tiny_batch(one_thread):
    torch.manual_seed(0)
    ctp = make_ctp()
    gen = torch.Generator().manual_seed(0)
    samples = [ctp.sample_transform([clip_of(size=32, seed=s)], gen) for s in range(2)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    # CtP's optimiser (momentum 0.9, wd 1e-4, clip 40) with a larger lr: the head starts at
    # std 0.001 (CtP's init), so with lr 0.01 the first 50 steps barely move the loss.
    opt = torch.optim.SGD(ctp.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(50):
        loss, _ = ctp.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ctp.parameters(), 40.0)
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.75 * losses[0] and losses[-1] < 0.8 * losses[0], losses


# --- federation and config --------------------------------------------------------------
def test_exchange_only_backbone_by_default():
    ctp = make_ctp()
    assert ctp.exchange == "backbone" and CtP.pretext == "ctp" and CtP.num_views == 1
    sent = ctp.exchanged_state()
    assert sent and all(k.startswith("backbone.") for k in sent)
    kept = ctp.local_state()
    assert kept and all(k.startswith("head.") for k in kept)
    assert any(k.startswith("head.") for k in make_ctp(exchange="full").exchanged_state())


def test_config_group_builds_ctp_with_the_code_defaults():
    cfg = OmegaConf.merge({"clip": {"frames": 16}}, {"method": OmegaConf.load(CONF_DIR / "method" / "ctp.yaml")})
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    assert method_cfg["name"] == "ctp" and method_cfg["exchange"] == "backbone"
    backbone = build_backbone("tiny_r3d", width=4)
    ctp = build_method(method_cfg["name"], backbone, exchange=method_cfg["exchange"], **method_cfg["params"])
    default = CtP(TinyR3D(width=4))
    for key, _value in method_cfg["params"].items():
        if key == "target_stds":
            assert torch.allclose(ctp.target_stds, default.target_stds)
        elif key not in ("hidden_channels", "roi_size"):
            assert getattr(ctp, key) == pytest.approx(getattr(default, key)), key
    # null hidden_channels follows the backbone: 512 for the paper's R3D-18, 32 here
    assert ctp.head.fc1.out_features == backbone.out_channels == 4 * 8
    assert CtP(TinyR3D(width=4), hidden_channels=24).head.fc1.out_features == 24
    with pytest.raises(TypeError, match="unknown parameters"):
        build_method("ctp", backbone, nonsense=1)
    with pytest.raises(ValueError, match="key_frame_probs"):
        build_method("ctp", backbone, key_frame_probs=[0.5, 0.4])
