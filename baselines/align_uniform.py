"""Alignment + uniformity (Wang & Isola, ICML 2020) on video clips, federated with FedAvg.

This is SSD's base objective ("FedAlignUniform" in hc-fang/ssd) and its own baseline row,
since SSD's gain is measured against it. Two independently augmented clips of the same
video go through the backbone (global average pooling → z_enc of dim d) and a projector
d → 2048 → BN → ReLU → d; on the l2-normalised projector outputs z1, z2 (B, d):

    L_align = mean_i ||z1_i − z2_i||²
    L_unif  = ½ · (log mean_{i<j} exp(−2 ||z1_i − z1_j||²) + same for z2)
    L       = L_align + uniform_coeff · L_unif

Encoder and projector are both exchanged (``default_exchange = "full"``).

Views: SimCLR's augmentation as hc-fang/ssd builds it (mains/train_fedalignuniform.py:
RandomResizedCrop, ColorJitter(0.8, 0.8, 0.8, 0.2) with p = 0.8, grayscale p = 0.2, flip),
applied to each clip with one draw for all its frames (:class:`SimCLRVideoAugment`): the
frames of one view share crop and colour, the two views are drawn independently. Without
colour jitter alignment + uniformity can match views by their colour statistics alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.transforms import SimCLRVideoAugment
from benchmark.methods import SSLMethod
from benchmark.registry import register_method


def align_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """mean_i ||z1_i − z2_i||² for z1, z2 of shape (B, d) (l2-normalised rows)."""
    return (z1 - z2).pow(2).sum(dim=1).mean()


def uniform_loss(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log mean_{i<j} exp(−t ||z_i − z_j||²) over the B·(B−1)/2 pairs of z (B, d), B ≥ 2."""
    if z.shape[0] < 2:
        raise ValueError(
            f"the uniformity loss needs at least 2 videos per batch, got {z.shape[0]}; "
            "set client.batch_size >= 2 (a last batch of 1 video must be dropped)"
        )
    sq = torch.pdist(z, p=2).pow(2)
    # log of the mean of exp, written as logsumexp − log(#pairs) for numerical safety
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


class Projector(nn.Sequential):
    """d → hidden → BatchNorm1d → ReLU → d, as in hc-fang/ssd (mains/train_fedalignuniform.py)."""

    def __init__(self, dim: int, hidden_dim: int = 2048):
        super().__init__(
            nn.Linear(dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )


@register_method("align_uniform")
class AlignUniform(SSLMethod):
    """Alignment + uniformity; params: ``hidden_dim`` (projector), ``uniform_coeff``,
    ``view_augment`` (:class:`SimCLRVideoAugment` arguments; None: SSD's official values)."""

    pretext = "align_uniform"
    num_views = 2
    default_exchange = "full"
    #: inputs it trains on: clips (B, 2, C, T, H, W) and images (B, 2, C, H, W) (``fedvid check-method`` runs both)
    modalities = ("video", "image")

    def __init__(
        self,
        backbone: nn.Module,
        exchange: str | None = None,
        hidden_dim: int = 2048,
        uniform_coeff: float = 1.0,
        view_augment: dict | None = None,
        **params,
    ):
        super().__init__(backbone, exchange=exchange, **params)
        self.view_augment = SimCLRVideoAugment(**dict(view_augment or {}))
        dim = getattr(backbone, "out_channels", None)
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(
                f"{type(self).__name__}: the backbone must expose a positive int `out_channels`, got {dim!r}"
            )
        self.dim = dim
        self.uniform_coeff = float(uniform_coeff)
        self.projector = Projector(dim, int(hidden_dim))

    def sample_transform(self, views: list[torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Two loader views (C, T, H, W) or images (C, H, W) -> ``{"video": (2, C, [T,] H, W)}`` floats in
        [0, 1], each SimCLR-augmented (uint8 views are divided by 255 first, as ToTensor)."""
        return {"video": torch.stack([self.view_augment(v, generator) for v in views])}

    def embed(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clip (B, C, T, H, W) or image (B, C, H, W) → (z_enc (B, d): the backbone's map averaged over
        every axis after the channel, z_proj (B, d) raw projector output)."""
        fmap = self.backbone(clip)  # (B, d, T', H', W') or (B, d, H', W')
        z_enc = fmap.flatten(2).mean(dim=2)
        return z_enc, self.projector(z_enc)

    def _views(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        video = batch["video"]
        if video.dim() not in (5, 6) or video.shape[1] != 2:
            raise ValueError(
                f"{type(self).__name__} expects batch['video'] of shape (B, 2, C, T, H, W) (clips) or "
                f"(B, 2, C, H, W) (images), got {tuple(video.shape)}"
            )
        return video[:, 0], video[:, 1]

    def base_losses(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_align, L_unif) on the normalised projector outputs z1, z2 (B, d)."""
        return align_loss(z1, z2), 0.5 * (uniform_loss(z1) + uniform_loss(z2))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = self._views(batch)
        # Each view is its own forward pass, as in the official code (BatchNorm statistics per view).
        _, p1 = self.embed(x1)
        _, p2 = self.embed(x2)
        z1, z2 = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
        align, unif = self.base_losses(z1, z2)
        loss = align + self.uniform_coeff * unif
        return loss, {"align": float(align.detach()), "uniform": float(unif.detach())}
