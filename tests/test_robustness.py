"""Weight perturbation: exact noise, filter normalisation, summary numbers, and k = 0
reproducing the clean retrieval Top-1 exactly on real decoded videos."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.commands.evaluate import compose_eval_dataset
from benchmark.evaluation.features import ClipSettings, ClipSource, compute_features
from benchmark.evaluation.pipeline import load_downstream, robustness_curve
from benchmark.evaluation.retrieval import retrieval_topk
from benchmark.evaluation.robustness import (
    check_grid,
    k_half,
    normalized_area,
    perturbed_copy,
    random_direction,
    summarize_curve,
)
from benchmark.evaluation.spec import RobustnessSpec


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 6, 1, bias=False))


def test_gaussian_perturbation_is_exact_seeded_and_leaves_buffers():
    net = small_net()
    net[1].running_mean.fill_(0.5)
    k = 0.03
    pert = perturbed_copy(net, k, seed=7)
    gen = torch.Generator().manual_seed(7)
    for (_name, p), (_, q) in zip(net.named_parameters(), pert.named_parameters()):
        eps = torch.randn(p.shape, generator=gen)  # same draw order: named_parameters()
        torch.testing.assert_close(q, p + k * eps, rtol=0, atol=1e-7)
    assert torch.equal(pert[1].running_mean, net[1].running_mean)
    assert torch.equal(pert[1].running_var, net[1].running_var)
    assert pert[1].num_batches_tracked == net[1].num_batches_tracked
    # the original is untouched, the same seed gives the same copy, another seed another one
    assert torch.equal(net[0].weight, small_net()[0].weight)
    assert torch.equal(perturbed_copy(net, k, 7)[0].weight, pert[0].weight)
    assert not torch.equal(perturbed_copy(net, k, 8)[0].weight, pert[0].weight)
    # k = 0: bit-identical weights
    zero = perturbed_copy(net, 0.0, 7)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), zero.state_dict().values()))


def test_filter_normalized_directions():
    net = small_net()
    d = random_direction(net, seed=3, direction="filter_normalized")
    for name, p in net.named_parameters():
        if p.ndim <= 1:  # biases and BN affine: ignored (Li et al.'s biasbn setting)
            assert torch.count_nonzero(d[name]) == 0
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="eval.robustness.direction"):
        random_direction(net, 0, "uniform")


def test_summary_numbers_on_hand_computed_curves():
    ks = [0.0, 0.01, 0.02, 0.03]
    # clean 0.8; falls to 0.4 (= half) between 0.01 (0.6) and 0.02 (0.2): 0.01 + 0.2/0.4 * 0.01
    assert k_half(ks, [0.8, 0.6, 0.2, 0.1], 0.8) == pytest.approx(0.015)
    assert k_half(ks, [0.8, 0.7, 0.6, 0.5], 0.8) is None
    assert k_half(ks, [0.8, 0.4, 0.3, 0.1], 0.8) == pytest.approx(0.01)  # exactly half at a grid point
    # area: trapezoids 0.01*(0.7 + 0.4 + 0.15) = 0.0125, / (0.8 * 0.03)
    assert normalized_area(ks, [0.8, 0.6, 0.2, 0.1], 0.8) == pytest.approx(0.0125 / 0.024)
    assert normalized_area(ks, [0.8] * 4, 0.8) == pytest.approx(1.0)
    s = summarize_curve(ks, {"top1": [[0.8, 0.6, 0.2, 0.1], [0.8, 0.8, 0.4, 0.1]], "top5": [[1.0] * 4] * 2}, 0.8)
    assert s["top1_mean"] == pytest.approx([0.8, 0.7, 0.3, 0.1])
    assert s["top1_std"] == pytest.approx([0.0, 0.1, 0.1, 0.0])
    assert s["k_half"] == pytest.approx(0.01 + (0.7 - 0.4) / (0.7 - 0.3) * 0.01)
    assert s["k_half_text"] == "0.0175"
    s = summarize_curve(ks, {"top1": [[0.8, 0.7, 0.6, 0.5]], "top5": [[1.0] * 4]}, 0.8)
    assert s["k_half"] is None and s["k_half_text"] == "> 0.03"
    with pytest.raises(ValueError, match="strictly increasing"):
        check_grid([0.0, 0.01, 0.01], [0])


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    from benchmark.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data")
    ensure_synthetic(root, size="tiny", progress=False, workers=1)
    return root


def test_k0_reproduces_clean_top1_exactly_on_decoded_videos(tiny_synthetic):
    from benchmark.registry import build_backbone

    ds = load_downstream(compose_eval_dataset("synthetic_hmdb51", str(tiny_synthetic)), data_root=tiny_synthetic)
    clip = ClipSettings(num_clips=2, frames=4, stride=2, short_side=40, crop_size=32)
    sources = {
        split: ClipSource(videos, clip, batch_size=4, num_workers=0, max_bytes=64 << 20, description=split)
        for split, videos in (("train", ds.train), ("test", ds.test))
    }
    torch.manual_seed(0)
    backbone = build_backbone("tiny_r3d", width=8)
    clean = {s: compute_features(backbone, src, "avg", torch.device("cpu")) for s, src in sources.items()}
    assert all(src.in_memory for src in sources.values())  # decoded once, reused below
    clean_top1 = retrieval_topk(
        clean["test"].video_features, clean["test"].labels, clean["train"].video_features, clean["train"].labels, (1,)
    )[1]
    rcfg = RobustnessSpec(enabled=True, ks=(0.0, 0.5), seeds=(0, 1), direction="gaussian")
    curve = robustness_curve(backbone, sources, clean, [1, 5], "avg", torch.device("cpu"), rcfg)
    assert curve["clean_top1"] == clean_top1
    assert [row[0] for row in curve["top1_by_seed"]] == [clean_top1, clean_top1]  # exact, every seed
    assert curve["top1_std"][0] == 0.0
    # and the k = 0 features themselves are bit-identical to the clean ones
    again = compute_features(perturbed_copy(backbone, 0.0, 5), sources["test"], "avg", torch.device("cpu"))
    assert torch.equal(again.features, clean["test"].features)
    # a large perturbation changes the features
    noisy = compute_features(perturbed_copy(backbone, 0.5, 0), sources["test"], "avg", torch.device("cpu"))
    assert not torch.allclose(noisy.features, clean["test"].features)


def test_parallel_features_and_the_reused_k0_row_give_the_previous_numbers(tiny_synthetic):
    """Batches on several threads give bit-identical features, and the curve (k = 0 taken from
    the clean features) equals the previous loop that recomputed every (k, seed)."""
    from benchmark.registry import build_backbone

    cpu = torch.device("cpu")
    ds = load_downstream(compose_eval_dataset("synthetic_hmdb51", str(tiny_synthetic)), data_root=tiny_synthetic)
    clip = ClipSettings(num_clips=2, frames=4, stride=2, short_side=40, crop_size=32)
    sources = {
        split: ClipSource(videos, clip, batch_size=2, num_workers=0, max_bytes=64 << 20, description=split)
        for split, videos in (("train", ds.train), ("test", ds.test))
    }
    torch.manual_seed(0)
    backbone = build_backbone("tiny_r3d", width=8)
    one = {s: compute_features(backbone, src, "avg", cpu) for s, src in sources.items()}
    three = {s: compute_features(backbone, src, "avg", cpu, parallel=3) for s, src in sources.items()}
    for s in sources:
        assert torch.equal(three[s].features, one[s].features) and torch.equal(three[s].labels, one[s].labels)

    rcfg = RobustnessSpec(enabled=True, ks=(0.0, 0.5), seeds=(3,), direction="gaussian")
    curve = robustness_curve(backbone, sources, three, [1, 5], "avg", cpu, rcfg, parallel=2)
    expected = {"top1": [], "top5": []}
    for seed in rcfg.seeds:  # the previous path: every (k, seed) decoded features, one batch at a time
        hits = []
        for k in rcfg.ks:
            f = {s: compute_features(perturbed_copy(backbone, k, seed), src, "avg", cpu) for s, src in sources.items()}
            hits.append(
                retrieval_topk(
                    f["test"].video_features, f["test"].labels, f["train"].video_features, f["train"].labels, (1, 5)
                )
            )
        expected["top1"].append([h[1] for h in hits])
        expected["top5"].append([h[5] for h in hits])
    assert curve["top1_by_seed"] == expected["top1"] and curve["top5_by_seed"] == expected["top5"]


def test_feature_threads_use_the_free_cores_on_cpu_only(monkeypatch):
    from benchmark.evaluation.features import MAX_FEATURE_THREADS, feature_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)))
    assert feature_threads(torch.device("cpu"), 1) == MAX_FEATURE_THREADS
    assert feature_threads(torch.device("cpu"), 2) == 3
    assert feature_threads(torch.device("cpu"), 8) == 1
    assert feature_threads(torch.device("cpu"), None) == 1  # the caller's threads: leave it alone
    assert feature_threads(torch.device("cuda"), 1) == 1
