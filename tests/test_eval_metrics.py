"""Accuracy metrics against torchmetrics / hand-computed values, representation metrics,
and the linear probe on separable features."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from benchmark.evaluation.features import SplitFeatures, pool_feature_map
from benchmark.evaluation.linear_probe import linear_probe, stratified_holdout
from benchmark.evaluation.metrics import classification_metrics, clip_and_video_metrics
from benchmark.evaluation.representation import (
    alignment,
    effective_rank,
    mean_dim_std,
    representation_metrics,
    uniformity,
)


def test_classification_metrics_known_predictions():
    # 6 samples, 6 classes; hand-checked: argmax = [0, 1, 2, 0, 4, 0], labels [0, 1, 2, 3, 4, 5]
    scores = torch.tensor(
        [
            [9, 1, 0, 0, 0, 0],
            [0, 9, 1, 0, 0, 0],
            [0, 0, 9, 1, 0, 0],
            [9, 8, 7, 6, 5, 4],  # true class 3 ranked 4th -> top-5 hit, top-1 miss
            [0, 0, 0, 0, 9, 1],
            [9, 8, 7, 6, 5, 0],  # true class 5 ranked last -> miss at 5
        ],
        dtype=torch.float,
    )
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    m = classification_metrics(scores, labels, 6)
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] == pytest.approx(5 / 6)
    assert m["mean_class_accuracy"] == pytest.approx(4 / 6)  # one sample per class
    assert m["top1"] == pytest.approx(float(multiclass_accuracy(scores, labels, 6, average="micro")))


def test_mean_class_accuracy_differs_from_top1_on_imbalanced_classes():
    labels = torch.tensor([0, 0, 0, 0, 1])
    preds = torch.tensor([0, 0, 0, 0, 0])
    scores = torch.nn.functional.one_hot(preds, 3).float()
    m = classification_metrics(scores, labels, 3)
    assert m["top1"] == pytest.approx(0.8)
    # class 2 is absent from the labels and is not averaged: (1 + 0) / 2
    assert m["mean_class_accuracy"] == pytest.approx(0.5)


def test_clip_and_video_level():
    # 2 videos x 3 clips, 3 classes. Video 0 (label 0): clips vote 0, 0, 1 -> video 0.
    # Video 1 (label 2): clips vote 1, 1, 2 but clip 3 is very confident -> video 2.
    logits = torch.tensor(
        [
            [[2.0, 0, 0], [2.0, 0, 0], [0, 2.0, 0]],
            [[0, 1.0, 0.9], [0, 1.0, 0.9], [0, 0, 10.0]],
        ]
    )
    labels = torch.tensor([0, 2])
    m = clip_and_video_metrics(logits, labels, 3)
    assert m["clip_top1"] == pytest.approx(3 / 6)
    assert m["video_top1"] == pytest.approx(1.0)
    assert m["clip_top5"] == pytest.approx(1.0)  # top-min(5, 3)


def test_effective_rank_of_known_rank_matrices():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64, generator=gen))
    for r in (1, 3, 10):
        x = q[:, :r] @ torch.linalg.qr(torch.randn(20, r, dtype=torch.float64, generator=gen))[0].t() * 5
        # r equal singular values -> erank exactly r
        assert effective_rank(x) == pytest.approx(r, rel=1e-9)
    # unequal singular values: erank between 1 and the rank
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64) @ torch.diag(
        torch.tensor([10.0, 1, 1, 1, 1], dtype=torch.float64)
    )
    assert 1 < effective_rank(x) < 5
    # centring removes the shared mean direction: a constant-offset rank-1 set
    x = torch.ones(30, 8, dtype=torch.float64) * 3 + torch.randn(
        30, 1, generator=gen, dtype=torch.float64
    ) @ torch.randn(1, 8, generator=gen, dtype=torch.float64)
    assert effective_rank(x, center=True) == pytest.approx(1.0, abs=1e-9)
    assert effective_rank(x, center=False) > 1.0


def test_alignment_uniformity_and_dim_std():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 16, generator=gen)
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, -x) == pytest.approx(4.0)
    # uniformity of a collapsed set is 0 (all distances 0); spread-out sets are negative
    assert uniformity(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-12)
    u = uniformity(x)
    assert u < -1.0
    # brute-force reference
    z = torch.nn.functional.normalize(x.double(), dim=1)
    pd = torch.pdist(z).pow(2)
    assert u == pytest.approx(float(pd.mul(-2).exp().mean().log()), rel=1e-9)
    assert uniformity(x, block=7) == pytest.approx(u, rel=1e-9)
    # collapsed -> 0; isotropic Gaussian -> about 1/sqrt(d)
    assert mean_dim_std(torch.ones(50, 16)) == pytest.approx(0.0, abs=1e-12)
    assert mean_dim_std(torch.randn(5000, 16, generator=gen)) == pytest.approx(1 / math.sqrt(16), rel=0.05)
    rep = representation_metrics(torch.randn(30, 3, 16, generator=gen))
    assert rep["feature_dim"] == 16 and rep["num_videos"] == 30
    assert rep["healthy_dim_std_l2"] == pytest.approx(0.25)


def test_pooling_layouts():
    fmap = torch.arange(2 * 512 * 2 * 7 * 7, dtype=torch.float).reshape(2, 512, 2, 7, 7)
    assert pool_feature_map(fmap, "avg").shape == (2, 512)
    assert pool_feature_map(fmap, "vcop").shape == (2, 9216)  # the VCOP/CtP 512x2x3x3 layout
    assert torch.equal(pool_feature_map(fmap, "avg"), fmap.mean(dim=(2, 3, 4)))
    with pytest.raises(ValueError, match="eval.pooling"):
        pool_feature_map(fmap, "max")


def test_linear_probe_separable_features_and_holdout():
    gen = torch.Generator().manual_seed(0)
    classes, d = 5, 12
    centers = 4 * torch.randn(classes, d, generator=gen)
    ytr = torch.arange(60) % classes
    yte = torch.arange(25) % classes
    train = SplitFeatures(centers[ytr][:, None] + torch.randn(60, 3, d, generator=gen), ytr)
    test = SplitFeatures(centers[yte][:, None] + torch.randn(25, 3, d, generator=gen), yte)
    r = linear_probe(train, test, classes, weight_decays=[1e-3, 1e-1], seed=0)
    assert r["video_top1"] == 1.0 and r["clip_top1"] > 0.95
    assert set(r["val_top1_by_weight_decay"]) == {"0.001", "0.1"}
    assert sum(map(sum, r["confusion_matrix"])) == 25
    # random labels -> near chance
    noise = SplitFeatures(torch.randn(60, 3, d, generator=gen), ytr)
    noise_test = SplitFeatures(torch.randn(25, 3, d, generator=gen), yte)
    assert linear_probe(noise, noise_test, classes, weight_decays=[1e-2])["video_top1"] < 0.6
    # holdout: stratified, deterministic, disjoint
    tr, va = stratified_holdout(ytr, 0.2, seed=3)
    tr2, va2 = stratified_holdout(ytr, 0.2, seed=3)
    assert torch.equal(va, va2) and len(va) == 10 and not set(tr.tolist()) & set(va.tolist())
    assert torch.bincount(ytr[va]).tolist() == [2] * 5
