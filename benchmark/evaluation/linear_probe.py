"""Linear probe: multinomial logistic regression on frozen clip features.

Protocol:
1. Standardise features with the mean/std of the training clips.
2. Hold out ``val_fraction`` of the training *videos* (per class, seeded), train one
   classifier per weight decay of ``weight_decays`` on the clips of the rest (full-batch
   L-BFGS, cross-entropy + wd/2 * ||W||^2, bias unregularised) and keep the weight decay with
   the best held-out video-level top-1 (ties -> the larger weight decay, the simpler model).
3. Refit with that weight decay on all training clips and evaluate on the test split:
   clip-level metrics (each clip alone) and video-level metrics (softmax averaged over the
   N clips), via torchmetrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.evaluation.features import SplitFeatures
from benchmark.evaluation.metrics import classification_metrics, clip_and_video_metrics, confusion_matrix


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held_out) of a per-class seeded split; classes with one video stay in train."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval.linear_probe.val_fraction={fraction}: expected a number in (0, 1)")
    rng = np.random.default_rng(seed)
    labels_np = labels.cpu().numpy()
    train, held = [], []
    for c in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == c)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx))) if len(idx) >= 2 else 0
        n_held = min(max(n_held, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        held.extend(idx[:n_held].tolist())
        train.extend(idx[n_held:].tolist())
    return torch.tensor(sorted(train), dtype=torch.long), torch.tensor(sorted(held), dtype=torch.long)


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch L-BFGS on mean cross-entropy + weight_decay/2 * ||W||^2.

    x: (M, D) float, y: (M,) int. Returns (W (num_classes, D), b (num_classes,)), float64.
    Deterministic: zero init, no sampling.
    """
    x = x.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.t() + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    # Small problems run faster on one thread (less synchronisation, much less on a busy
    # machine); the result does not depend on the thread count beyond rounding.
    threads = torch.get_num_threads()
    if x.numel() < 2_000_000:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return w.detach(), b.detach()


def _clips(features: SplitFeatures, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    f, y = features.features, features.labels
    if index is not None:
        f, y = f[index], y[index]
    v, n, d = f.shape
    return f.reshape(v * n, d), y.repeat_interleave(n)


def linear_probe(
    train: SplitFeatures,
    test: SplitFeatures,
    num_classes: int,
    *,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> dict:
    """Run the protocol above. Features (V, N, D); labels in [0, num_classes).

    Returns clip_/video_ top1, top5, mean_class_accuracy (fractions), the chosen
    ``weight_decay``, ``val_top1_by_weight_decay`` and ``confusion_matrix`` (video level,
    rows = true class) as nested lists.
    """
    if not weight_decays:
        raise ValueError("eval.linear_probe.weight_decays: expected at least one value")
    x_all, _ = _clips(train)
    mean = x_all.double().mean(dim=0)
    std = x_all.double().std(dim=0, correction=0).clamp_min(1e-6)

    def standardise(x: torch.Tensor) -> torch.Tensor:
        return (x.double() - mean) / std

    def video_scores(w, b, feats: SplitFeatures, index=None) -> torch.Tensor:
        f = feats.features if index is None else feats.features[index]
        return standardise(f) @ w.t() + b  # (V, N, C)

    fit_idx, val_idx = stratified_holdout(train.labels, val_fraction, seed)
    val_top1: dict[str, float] = {}
    best_wd, best_acc = None, -1.0
    for wd in sorted(float(v) for v in weight_decays):
        if len(val_idx) == 0:
            break
        xf, yf = _clips(train, fit_idx)
        w, b = fit_logistic_regression(standardise(xf), yf, num_classes, wd, max_iter)
        scores = video_scores(w, b, train, val_idx).softmax(-1).mean(1)
        acc = classification_metrics(scores, train.labels[val_idx], num_classes)["top1"]
        val_top1[f"{wd:g}"] = acc
        if acc >= best_acc:
            best_wd, best_acc = wd, acc
    if best_wd is None:  # too few videos to hold any out
        best_wd = float(sorted(weight_decays)[len(weight_decays) // 2])
    xa, ya = _clips(train)
    w, b = fit_logistic_regression(standardise(xa), ya, num_classes, best_wd, max_iter)
    clip_scores = video_scores(w, b, test)
    result = clip_and_video_metrics(clip_scores, test.labels, num_classes)
    predictions = clip_scores.softmax(-1).mean(1).argmax(-1)
    result.update(
        weight_decay=best_wd,
        val_top1_by_weight_decay=val_top1,
        confusion_matrix=confusion_matrix(predictions, test.labels, num_classes).tolist(),
    )
    return result
