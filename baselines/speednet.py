"""Speed: playback-speed prediction (the ``SpeedNet`` model/dataset of microsoft/CtP @ 847b8fc:
pyvrl/models/pretraining/speednet/speednet_dataset.py, speednet_model.py;
configs/speednet/r3d_18_kinetics/pretraining.py, configs/speednet/pretraining_runtime_ucf.py).

Data: one clip of ``clip_len`` frames at a stride drawn uniformly from ``clip_strides``
(negative: the clip is played backwards; 0: one frame repeated); the target is the stride's
index (:meth:`Speed.sample_frames`). Model: TSN (backbone, average pool, dropout 0.5,
linear to ``len(clip_strides)`` classes, init std 0.001), cross-entropy. See docs/methods/speed.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.methods import SSLMethod
from benchmark.registry import register_method

from .pyvrl_heads import TSNClsHead, classification_loss, pretraining_backbone


def speed_clip_indices(
    num_frames: int, clip_len: int, clip_strides: Sequence[int], generator: torch.Generator
) -> tuple[list[int], int]:
    """``SpeedNetDataset._sample_frame_inds`` (L44-L60): (frame indices, stride index).

    Draw 1: stride index U{0, len-1}; span = |stride| (clip_len - 1) + 1; draw 2 (only when
    span < num_frames): start U{0, num_frames - span}; index i = min(start + i |stride|,
    num_frames - 1); reversed when the stride is negative.
    """
    idx = int(torch.randint(0, len(clip_strides), (1,), generator=generator))
    stride = int(clip_strides[idx])
    pos = abs(stride)
    total = pos * (clip_len - 1) + 1
    start = 0 if total >= num_frames else int(torch.randint(0, num_frames - total + 1, (1,), generator=generator))
    inds = [min(start + i * pos, num_frames - 1) for i in range(clip_len)]
    return (inds[::-1] if stride < 0 else inds), idx


@register_method("speed")
class Speed(SSLMethod):
    """Speed classification. Batch: ``video`` (B, C, T, H, W), ``speed`` (B,) stride indices."""

    pretext = "speed"
    num_views = 1
    default_exchange = "full"

    def __init__(
        self,
        backbone: nn.Module,
        num_frames: int = 16,
        clip_strides: Sequence[int] = (-4, -2, -1, 0, 1, 2, 4),
        dropout_ratio: float = 0.5,
        init_std: float = 0.001,
        backbone_layout: str = "downstream",
        **kwargs,
    ) -> None:
        super().__init__(pretraining_backbone(backbone, backbone_layout), **kwargs)
        if len(clip_strides) < 2:
            raise ValueError(f"method.params.clip_strides={list(clip_strides)}: expected at least 2 strides (classes)")
        self.clip_len = int(num_frames)
        self.clip_strides = [int(s) for s in clip_strides]
        self.cls_head = TSNClsHead(self.backbone.out_channels, len(self.clip_strides), dropout_ratio, init_std)

    def sample_frames(self, num_frames: int, generator: torch.Generator):
        inds, idx = speed_clip_indices(num_frames, self.clip_len, self.clip_strides, generator)
        return [inds], {"speed": torch.tensor(idx, dtype=torch.int64)}

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.cls_head(self.backbone(batch["video"]))  # (B, len(clip_strides))
        return classification_loss(logits, batch["speed"], "speed")
