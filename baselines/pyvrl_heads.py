"""Pieces shared by the pretexts ported from microsoft/CtP's ``pyvrl`` (VCOP, Speed, Rot3D, MoCo).

Source: microsoft/CtP @ 847b8fc1710d21438352de0f291b841b36ed3d2b.
- :func:`pretraining_backbone`: the backbone in the pretexts' pretraining layout. Their
  configs (configs/{vcop,speednet,rot3d,moco}/r3d_18_kinetics/pretraining.py) use
  ``down_sampling=[False, True, True, True]`` (last stage spatial stride 2), which is this
  repository's ``downstream`` layout (:func:`benchmark.models.backbones.with_layout`); CtP's
  own pretraining uses ``[F, T, T, F]``. Strides carry no weights: the state dict is the same.
- :class:`TSNClsHead`: ``SimpleSTModule`` (avg pool over the whole (2, 7, 7) map of a
  16x112x112 clip) + ``SimpleClsHead(with_avg_pool=False, dropout, fc_cls)``
  (pyvrl/models/classifiers/tsn/tsn_modules.py L9-L104), init normal(0, init_std), bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.models.backbones import with_layout

LAYOUTS = ("downstream", "pretraining")


def pretraining_backbone(backbone: nn.Module, layout: str) -> nn.Module:
    """``backbone`` in ``layout`` (``downstream``: CtP's down_sampling=[F, T, T, T])."""
    if layout not in LAYOUTS:
        raise ValueError(f"method.params.backbone_layout={layout!r}: expected one of {LAYOUTS}")
    return with_layout(backbone, layout)


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) feature map -> (N, C) mean over T, H, W."""
    return features.flatten(2).mean(dim=2)


class TSNClsHead(nn.Module):
    """TSN classification head of CtP's recognizers: (N, C, T, H, W) -> (N, num_classes).

    Average pool over the whole map (= ``SimpleSTModule(avg, temporal_size=2,
    spatial_size=7)`` at the paper's 16x112x112 input), dropout, linear.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout_ratio: float, init_std: float):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout_ratio) if dropout_ratio else None
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, 0, init_std)
        nn.init.constant_(self.fc_cls.bias, 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = global_pool(features)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, name: str) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy and accuracy: (N, K) logits, (N,) int64 labels."""
    labels = labels.view(-1)
    loss = nn.functional.cross_entropy(logits, labels)
    with torch.no_grad():
        acc = (logits.argmax(dim=1) == labels).float().mean()
    return loss, {f"{name}_acc": float(acc)}
