"""Nearest-neighbour video retrieval (the standard protocol of VCOP, CtP and FedVSSL).

Queries are the test videos, the gallery is the train videos, similarity is cosine. A
query is a hit at k when any of its k nearest gallery videos has the query's class.

Instead of a top-k over the whole gallery we compute, for every query, the rank of its
best same-class gallery video under the order (similarity descending, gallery index
ascending). A query is a hit at k exactly when that rank is < k, so one pass gives every k,
and ties are broken by gallery order as documented. Queries are processed in chunks so the
(chunk, G) similarity block stays within ``max_block_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_KS = (1, 5, 10, 20, 50)


def _check_inputs(qf: torch.Tensor, ql: torch.Tensor, gf: torch.Tensor, gl: torch.Tensor, ks: Sequence[int]) -> None:
    if qf.ndim != 2 or gf.ndim != 2:
        raise ValueError(
            f"retrieval_topk: features must be 2-D (N, D); got query {tuple(qf.shape)}, gallery {tuple(gf.shape)}"
        )
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"retrieval_topk: feature dims differ: query D={qf.shape[1]}, gallery D={gf.shape[1]}")
    if ql.shape != (qf.shape[0],) or gl.shape != (gf.shape[0],):
        raise ValueError(
            f"retrieval_topk: labels must be 1-D with one entry per row; got query labels {tuple(ql.shape)} "
            f"for {qf.shape[0]} queries, gallery labels {tuple(gl.shape)} for {gf.shape[0]} gallery videos"
        )
    if gf.shape[0] == 0 or qf.shape[0] == 0:
        raise ValueError("retrieval_topk: query and gallery must each hold at least one video")
    bad = [k for k in ks if not isinstance(k, int) or k < 1]
    if bad or not ks:
        raise ValueError(f"retrieval_topk: ks must be positive integers, got {list(ks)}")


def first_positive_rank(
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_features: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    max_block_bytes: int = 256 << 20,
) -> torch.Tensor:
    """0-based rank of each query's best same-class gallery video.

    query_features: (Q, D), gallery_features: (G, D) float; labels (Q,), (G,) int.
    Order: cosine similarity descending, then gallery index ascending (ties). Returns (Q,)
    int64; queries whose class is absent from the gallery get G (never a hit).
    """
    q = query_features.float()
    g = gallery_features.float()  # no copy for float32 input: the gallery is never duplicated
    inv_gallery_norm = 1.0 / g.norm(dim=1).clamp_min(1e-12)  # (G,)
    ql = query_labels.to(q.device, torch.long)
    gl = gallery_labels.to(q.device, torch.long)
    num_gallery = g.shape[0]
    # Per (query, gallery) element: float32 similarity and its masked copy (8 B) plus a few
    # one-byte masks alive at the same time -> budget 16 B.
    rows = max(1, int(max_block_bytes // (num_gallery * 16)))
    gallery_index = torch.arange(num_gallery, device=q.device)
    ranks = torch.empty(q.shape[0], dtype=torch.long, device=q.device)
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        # cosine similarity (c, G): normalised query rows times gallery columns scaled by 1/||g||
        sim = (F.normalize(q[start:stop], dim=1) @ g.t()).mul_(inv_gallery_norm)
        positive = ql[start:stop, None] == gl[None, :]  # (c, G)
        best = sim.masked_fill(~positive, -math.inf).amax(dim=1)  # (c,)
        # First gallery index attaining the best positive similarity.
        at_best = positive & (sim == best[:, None])
        best_index = at_best.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum
        before = (sim > best[:, None]).sum(dim=1)
        before += ((sim == best[:, None]) & (gallery_index[None, :] < best_index[:, None])).sum(dim=1)
        has_positive = positive.any(dim=1)
        ranks[start:stop] = torch.where(has_positive, before, torch.full_like(before, num_gallery))
    return ranks


def retrieval_topk(
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_features: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    max_block_bytes: int = 256 << 20,
) -> dict[int, float]:
    """Fraction of queries with a same-class video among their k nearest gallery videos.

    query_features: (Q, D), query_labels: (Q,), gallery_features: (G, D), gallery_labels: (G,).
    Cosine similarity; ties broken by gallery order. Returns {k: fraction in [0, 1]}.
    Memory is bounded by ``max_block_bytes`` for the (chunk, G) work arrays, so the full
    UCF101 setting (3,783 x 9,537, 9,216-d) needs ~256 MiB beyond the inputs.
    """
    ks = tuple(ks)
    _check_inputs(query_features, query_labels, gallery_features, gallery_labels, ks)
    ranks = first_positive_rank(
        query_features, query_labels, gallery_features, gallery_labels, max_block_bytes=max_block_bytes
    )
    n = ranks.numel()
    return {k: float((ranks < k).sum().item()) / n for k in ks}


def chance_topk(
    query_labels: torch.Tensor, gallery_labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[int, float]:
    """Expected hit rate at k of a uniformly random gallery ranking (the chance level).

    For a query whose class has m of the G gallery videos, P(hit at k) = 1 - C(G-m, k) / C(G, k)
    (hypergeometric: none of the k drawn videos is positive). Averaged over queries.
    """
    g = gallery_labels.long()
    counts = torch.bincount(g, minlength=int(max(g.max().item(), query_labels.max().item())) + 1)
    m = counts[query_labels.long()].double()  # (Q,)
    num_gallery = g.numel()
    out: dict[int, float] = {}
    for k in ks:
        kk = min(k, num_gallery)
        # log C(G-m, k) - log C(G, k), zero probability of a miss when G - m < k.
        miss = torch.zeros_like(m)
        ok = (num_gallery - m) >= kk
        gm = num_gallery - m[ok]
        log_miss = (
            torch.lgamma(gm + 1)
            - torch.lgamma(gm - kk + 1)
            - (math.lgamma(num_gallery + 1) - math.lgamma(num_gallery - kk + 1))
        )
        miss[ok] = torch.exp(log_miss)
        out[k] = float((1 - miss).mean().item())
    return out


def topk_key(k: int) -> str:
    """JSON key of a retrieval cut-off: 1 -> "top1"."""
    return f"top{k}"
