"""Representation quality and collapse diagnostics on evaluation features.

- alignment and uniformity (Wang & Isola, ICML 2020) on l2-normalised features;
- effective rank (Roy & Vetterli, 2007) of the feature matrix, centred and uncentred;
- mean per-dimension standard deviation of l2-normalised features (about 1/sqrt(d) for
  a healthy, spread-out representation, 0 for a collapsed one; cf. SimSiam).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs; x, y: (N, D), row i of x pairs with row i of y.

    Rows are l2-normalised first. 0 = perfectly aligned, 4 = opposite (alpha = 2).
    """
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"alignment: x and y must both be (N, D); got {tuple(x.shape)} and {tuple(y.shape)}")
    x = F.normalize(x.double(), dim=1)
    y = F.normalize(y.double(), dim=1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, block: int = 2048) -> float:
    """log E_{i<j} exp(-t ||f(x_i) - f(x_j)||^2) over distinct pairs; x: (N, D), N >= 2.

    Rows are l2-normalised. Lower is more uniform (the minimum on the sphere is about -4
    for t = 2 in high dimension). Computed in row blocks with a log-sum-exp.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"uniformity: need (N, D) with N >= 2; got {tuple(x.shape)}")
    x = F.normalize(x.double(), dim=1)
    n = x.shape[0]
    block_lse = []
    for start in range(0, n - 1, block):
        rows = x[start : start + block]
        # ||a - b||^2 = 2 - 2 a.b for unit vectors; only pairs j > i
        sq = (2 - 2 * rows @ x[start:].t()).clamp_min(0)
        upper = torch.ones_like(sq, dtype=torch.bool).triu(diagonal=1)
        block_lse.append(torch.logsumexp(-t * sq[upper], dim=0))
    num_pairs = n * (n - 1) // 2
    return float(torch.logsumexp(torch.stack(block_lse), dim=0) - math.log(num_pairs))


def effective_rank(x: torch.Tensor, center: bool = False) -> float:
    """exp(entropy of the normalised singular values) of x: (N, D) (Roy & Vetterli, 2007).

    p_i = s_i / sum(s); erank = exp(-sum p_i log p_i), with 0 log 0 = 0. Between 1 and
    min(N, D); equal to r for a matrix with r equal non-zero singular values.
    ``center=True`` subtracts the column means first (rank of the spread around the mean).
    """
    x = x.double()
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_dim_std(x: torch.Tensor) -> float:
    """Mean over dimensions of the std (over samples, population) of l2-normalised rows; x: (N, D)."""
    z = F.normalize(x.double(), dim=1)
    return float(z.std(dim=0, correction=0).mean())


def representation_metrics(clip_features: torch.Tensor) -> dict[str, float | int | None]:
    """All diagnostics for one dataset's clip features (V, N, D).

    Video features are the mean over the N clips. Alignment pairs clip 0 with clip N-1 of
    the same video (null when N == 1); the other metrics use the video features.
    """
    if clip_features.ndim != 3:
        raise ValueError(f"representation_metrics: expected (V, N, D) clip features; got {tuple(clip_features.shape)}")
    v, n, d = clip_features.shape
    video = clip_features.float().mean(dim=1)
    return {
        "alignment": alignment(clip_features[:, 0], clip_features[:, n - 1]) if n >= 2 else None,
        "uniformity": uniformity(video) if v >= 2 else None,
        "effective_rank": effective_rank(video, center=False),
        "effective_rank_centered": effective_rank(video, center=True),
        "mean_dim_std_l2": mean_dim_std(video),
        "healthy_dim_std_l2": 1.0 / math.sqrt(d),
        "feature_dim": d,
        "num_videos": v,
    }
