"""Rot3D: 3D rotation prediction (Jing et al., "Self-Supervised Spatiotemporal Feature Learning
via Video Rotation Prediction", 2018), as in microsoft/CtP @ 847b8fc
(pyvrl/models/pretraining/rot3d/{rot3d_dataset,rot3d_model,rot3d_transforms}.py;
configs/rot3d/r3d_18_kinetics/pretraining.py, configs/rot3d/pretraining_runtime_ucf.py).

Data: one clip from CtP's ``RandomFrameSampler`` (stride U{1..5}, per-frame temporal jitter);
after the crop, every frame is rotated by flag * 90 degrees counter-clockwise, flag U{0..3}
(``GroupRectRotate``), the target. Model: TSN head with 4 classes, cross-entropy.
See docs/methods/rot3d.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.data.clips import ctp_train_clip_indices
from benchmark.methods import SSLMethod
from benchmark.registry import register_method

from .pyvrl_heads import TSNClsHead, classification_loss, pretraining_backbone


def rotate_clip(clip: torch.Tensor, flag: int) -> torch.Tensor:
    """(C, T, H, W) square frames rotated flag * 90 degrees counter-clockwise (any dtype)."""
    if clip.shape[-1] != clip.shape[-2]:
        raise ValueError(f"Rot3D needs square frames, got {tuple(clip.shape[-2:])}")
    return torch.rot90(clip, flag, dims=(-2, -1)) if flag else clip


@register_method("rot3d")
class Rot3D(SSLMethod):
    """Rotation classification. Batch: ``video`` (B, C, T, H, W), ``rotation`` (B,) flags 0..3."""

    pretext = "rot3d"
    num_views = 1
    default_exchange = "full"

    def __init__(
        self,
        backbone: nn.Module,
        num_frames: int = 16,
        strides: Sequence[int] = (1, 2, 3, 4, 5),
        temporal_jitter: bool = True,
        dropout_ratio: float = 0.5,
        init_std: float = 0.001,
        backbone_layout: str = "downstream",
        **kwargs,
    ) -> None:
        super().__init__(pretraining_backbone(backbone, backbone_layout), **kwargs)
        self.clip_len, self.strides, self.temporal_jitter = (
            int(num_frames),
            [int(s) for s in strides],
            bool(temporal_jitter),
        )
        self.cls_head = TSNClsHead(self.backbone.out_channels, 4, dropout_ratio, init_std)

    def sample_frames(self, num_frames: int, generator: torch.Generator):
        return [ctp_train_clip_indices(num_frames, self.clip_len, self.strides, self.temporal_jitter, generator)], {}

    def sample_transform(self, views: list[torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        flag = int(torch.randint(0, 4, (1,), generator=generator))
        return {"video": rotate_clip(views[0], flag), "rotation": torch.tensor(flag, dtype=torch.int64)}

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.cls_head(self.backbone(batch["video"]))  # (B, 4)
        return classification_loss(logits, batch["rotation"], "rotation")
