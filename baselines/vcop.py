"""VCOP: video clip order prediction (Xu et al., "Self-supervised Spatiotemporal Learning via
Video Clip Order Prediction", CVPR 2019), as in microsoft/CtP @ 847b8fc
(pyvrl/models/pretraining/vcop/vcop_dataset.py, vcop_model.py;
configs/vcop/r3d_18_kinetics/pretraining.py, configs/vcop/pretraining_runtime_ucf.py).

Data: ``tuple_len`` clips of ``clip_len`` consecutive frames, ``interval`` frames apart, in
temporal order (:meth:`VCOP.sample_frames`, = ``VCOPDataset._sample_indices``); the spatial
augmentation is one draw for the whole tuple (the official transform runs on all frames at
once); then the clips are shuffled by a uniformly drawn permutation, whose index is the
target (:meth:`VCOP.sample_transform`). Model: per-clip features pooled, every ordered pair
(i < j) concatenated -> fc1 (2C -> hidden) + ReLU, the pairs concatenated, dropout,
fc2 -> (tuple_len)! logits, cross-entropy. See docs/methods/vcop.md.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.methods import SSLMethod
from benchmark.registry import register_method

from .pyvrl_heads import classification_loss, global_pool, pretraining_backbone


def vcop_tuple_indices(
    num_frames: int, clip_len: int, tuple_len: int, min_interval: int, max_interval: int, generator: torch.Generator
) -> list[list[int]]:
    """Frame indices of the ``tuple_len`` clips, in temporal order (``VCOPDataset._sample_indices``, L90-L119).

    avg = (num_frames - tuple_len * clip_len) // (tuple_len - 1). If avg > 0: interval is
    U{min, max} when avg >= max, U{min, avg} when min <= avg < max, else avg (draw 1); the
    tuple start is U{0, num_frames - tuple_len * clip_len - (tuple_len - 1) * interval}
    (draw 2); clip i starts at start + (clip_len + interval) * i. Otherwise (short videos)
    TSN-style offsets int(tick / 2 + tick * i), tick = (num_frames - clip_len + 1) / tuple_len
    (0 when not positive), no draw. Indices are clipped to [0, num_frames - 1].
    """
    if tuple_len < 2:
        raise ValueError(f"tuple_len={tuple_len}: VCOP needs at least 2 clips")
    if min_interval > max_interval:
        raise ValueError(f"min_interval={min_interval} > max_interval={max_interval}")
    avg = (num_frames - tuple_len * clip_len) // (tuple_len - 1)
    if avg > 0:
        if avg >= max_interval:
            interval = int(torch.randint(min_interval, max_interval + 1, (1,), generator=generator))
        elif avg >= min_interval:
            interval = int(torch.randint(min_interval, avg + 1, (1,), generator=generator))
        else:
            interval = avg
        start_max = num_frames - tuple_len * clip_len - (tuple_len - 1) * interval
        start = int(torch.randint(0, start_max + 1, (1,), generator=generator))
        offsets = [start + (clip_len + interval) * i for i in range(tuple_len)]
    else:
        delta = num_frames - clip_len + 1
        tick = delta / tuple_len
        offsets = [int(tick / 2.0 + tick * x) for x in range(tuple_len)] if delta > 0 else [0] * tuple_len
    return [[min(max(o + k, 0), num_frames - 1) for k in range(clip_len)] for o in offsets]


@register_method("vcop")
class VCOP(SSLMethod):
    """Clip order prediction. Batch: ``video`` (B, N, C, T, H, W) shuffled tuples, ``order`` (B,)
    the permutation index into :attr:`permutations` ((N!, N), itertools order)."""

    pretext = "vcop"
    num_views = 1  # the tuple is decoded and augmented as one clip of N * T frames
    default_exchange = "full"
    train_flip_prob = 0.0  # VCOP's pipeline: GroupScale, GroupRandomCrop, GroupToTensor (no flip)

    def __init__(
        self,
        backbone: nn.Module,
        num_frames: int = 16,
        tuple_len: int = 3,
        min_interval: int = 8,
        max_interval: int = 8,
        hidden_channels: int = 512,
        dropout_ratio: float = 0.5,
        backbone_layout: str = "downstream",
        **kwargs,
    ) -> None:
        super().__init__(pretraining_backbone(backbone, backbone_layout), **kwargs)
        if min_interval > max_interval or min_interval < 0:
            raise ValueError(
                f"method.params: min_interval={min_interval}, max_interval={max_interval}: expected 0 <= min <= max"
            )
        if tuple_len < 2:
            raise ValueError(f"method.params.tuple_len={tuple_len}: VCOP needs at least 2 clips")
        self.clip_len, self.tuple_len = int(num_frames), int(tuple_len)
        self.min_interval, self.max_interval = int(min_interval), int(max_interval)
        self.register_buffer(
            "permutations", torch.tensor(list(itertools.permutations(range(tuple_len)))), persistent=False
        )
        channels = int(self.backbone.out_channels)
        self.num_pairs = tuple_len * (tuple_len - 1) // 2
        self.register_buffer(
            "pair_inds",
            torch.tensor([x for i in range(tuple_len) for j in range(i + 1, tuple_len) for x in (i, j)]),
            persistent=False,
        )
        self.fc1 = nn.Linear(2 * channels, hidden_channels)
        self.fc2 = nn.Linear(hidden_channels * self.num_pairs, math.factorial(tuple_len))
        self.dropout = nn.Dropout(dropout_ratio)
        # VCOPHead.init_weights: mmcv kaiming_init(fc1) (normal, fan_out, relu; bias 0), normal_init(fc2, 0.001)
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc1.bias)
        nn.init.normal_(self.fc2.weight, 0, 0.001)
        nn.init.zeros_(self.fc2.bias)

    def sample_frames(self, num_frames: int, generator: torch.Generator):
        """One clip of tuple_len * clip_len frames (the clips in temporal order, concatenated),
        so one crop applies to the whole tuple; no targets yet (the shuffle comes after the crop)."""
        clips = vcop_tuple_indices(
            num_frames, self.clip_len, self.tuple_len, self.min_interval, self.max_interval, generator
        )
        return [[i for clip in clips for i in clip]], {}

    def sample_transform(self, views: list[torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """views[0]: (C, N*T, H, W), any dtype -> ``video`` (N, C, T, H, W) in the order
        ``permutations[order]`` (clip k of the output is clip ``permutations[order][k]``), ``order``."""
        (clip,) = views
        c, nt, h, w = clip.shape
        tuple_ = clip.reshape(c, self.tuple_len, nt // self.tuple_len, h, w).transpose(0, 1)
        order = int(torch.randint(0, self.permutations.shape[0], (1,), generator=generator))
        return {"video": tuple_[self.permutations[order]].contiguous(), "order": torch.tensor(order, dtype=torch.int64)}

    def order_logits(self, video: torch.Tensor) -> torch.Tensor:
        """(B, N, C, T, H, W) -> (B, N!) logits (``VCOPHead.forward``, L73-L87)."""
        b, n = video.shape[:2]
        feats = global_pool(self.backbone(video.flatten(0, 1))).view(b, n, -1)  # (B, N, C)
        pairs = feats.index_select(1, self.pair_inds).reshape(b * self.num_pairs, -1)  # (B*P, 2C)
        hidden = F.relu(self.fc1(pairs)).view(b, -1)  # (B, P*hidden)
        return self.fc2(self.dropout(hidden))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return classification_loss(self.order_logits(batch["video"]), batch["order"], "order")
