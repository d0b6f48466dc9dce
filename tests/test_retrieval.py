"""retrieval_topk against a brute-force reference (stable sort over the full gallery)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.evaluation.retrieval import chance_topk, first_positive_rank, retrieval_topk

KS = (1, 5, 10, 20, 50)


def brute_force_topk(qf, ql, gf, gl, ks):
    """For each query: sort the gallery by cosine similarity (desc), ties by gallery index
    (stable sort), and check whether any of the first k has the query's class."""
    q = qf.double().numpy()
    g = gf.double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sim = q @ g.T
    hits = {k: 0 for k in ks}
    for i in range(q.shape[0]):
        order = np.argsort(-sim[i], kind="stable")
        same = gl.numpy()[order] == ql.numpy()[i]
        for k in ks:
            hits[k] += bool(same[:k].any())
    return {k: hits[k] / q.shape[0] for k in ks}


def make_data(seed, q=60, g=150, d=16, classes=12, sizes=None):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=gen)
    if sizes is None:
        gl = torch.randint(0, classes, (g,), generator=gen)
    else:  # explicit per-class gallery counts (some classes smaller than k)
        gl = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        gl = gl[torch.randperm(gl.numel(), generator=gen)]
    ql = torch.randint(0, classes, (q,), generator=gen)
    gf = centers[gl] + 1.5 * torch.randn(gl.numel(), d, generator=gen)
    qf = centers[ql] + 1.5 * torch.randn(q, d, generator=gen)
    return qf, ql, gf, gl


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_data(seed):
    qf, ql, gf, gl = make_data(seed)
    got = retrieval_topk(qf, ql, gf, gl, KS)
    want = brute_force_topk(qf, ql, gf, gl, KS)
    assert got == pytest.approx(want, abs=0)
    # not a degenerate case: some but not all queries hit at 1
    assert 0 < got[1] < 1


def test_k_larger_than_some_classes_and_tiny_chunks():
    # classes with 1, 2 and 3 gallery videos (< k for k >= 5) next to larger ones, and a
    # query class that is absent from the gallery (never a hit).
    sizes = [1, 2, 3, 30, 40, 50, 0, 24]
    qf, ql, gf, gl = make_data(3, q=80, classes=len(sizes), sizes=sizes)
    ql[:5] = 6  # class 6 has no gallery video
    want = brute_force_topk(qf, ql, gf, gl, KS)
    for block in (1 << 30, 64 * gf.shape[0] * 16, 16 * gf.shape[0]):  # whole, 64 rows, 1 row per chunk
        assert retrieval_topk(qf, ql, gf, gl, KS, max_block_bytes=block) == pytest.approx(want, abs=0)
    assert want[50] < 1  # the 5 queries of the absent class never hit
    ranks = first_positive_rank(qf, ql, gf, gl)
    assert (ranks[:5] == gf.shape[0]).all()


def test_ties_broken_by_gallery_order():
    # Integer features: the dot products are exact, so the duplicates tie exactly.
    qf = torch.tensor([[1.0, 0.0]])
    ql = torch.tensor([0])
    gf = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # gallery 0, 1, 2 all have similarity 1; the positive is at index 2 -> rank 2
    gl = torch.tensor([1, 1, 0, 0])
    assert retrieval_topk(qf, ql, gf, gl, (1, 2, 3)) == {1: 0.0, 2: 0.0, 3: 1.0}
    assert first_positive_rank(qf, ql, gf, gl).tolist() == [2]
    gl = torch.tensor([1, 0, 1, 0])  # the positive is now the second of the tied videos
    assert retrieval_topk(qf, ql, gf, gl, (1, 2)) == {1: 0.0, 2: 1.0}
    assert brute_force_topk(qf, ql, gf, gl, (1, 2)) == {1: 0.0, 2: 1.0}


def test_one_clip_vs_ten_clip_averaging():
    """Video features are the mean of clip features; retrieval on 1 clip vs 10 averaged clips
    both match the reference, and averaging helps on noisy clips."""
    gen = torch.Generator().manual_seed(7)
    classes, d = 10, 32
    centers = torch.randn(classes, d, generator=gen)
    gl = torch.arange(200) % classes
    ql = torch.arange(80) % classes
    g_clips = centers[gl][:, None] + 3.0 * torch.randn(200, 10, d, generator=gen)  # (V, N, D)
    q_clips = centers[ql][:, None] + 3.0 * torch.randn(80, 10, d, generator=gen)
    one = retrieval_topk(q_clips[:, 0], ql, g_clips[:, 0], gl, KS)
    ten = retrieval_topk(q_clips.mean(1), ql, g_clips.mean(1), gl, KS)
    assert one == pytest.approx(brute_force_topk(q_clips[:, 0], ql, g_clips[:, 0], gl, KS), abs=0)
    assert ten == pytest.approx(brute_force_topk(q_clips.mean(1), ql, g_clips.mean(1), gl, KS), abs=0)
    assert ten[1] > one[1] + 0.2


def test_chance_level_matches_hypergeometric_and_simulation():
    gl = torch.tensor([0] * 3 + [1] * 7)
    ql = torch.tensor([0, 1])
    chance = chance_topk(ql, gl, (1, 2, 8))
    # k=1: mean(3/10, 7/10); k=2: 1 - C(7,2)/C(10,2) and 1 - C(3,2)/C(10,2)
    assert chance[1] == pytest.approx(0.5)
    assert chance[2] == pytest.approx(((1 - 21 / 45) + (1 - 3 / 45)) / 2)
    assert chance[8] == pytest.approx(1.0)  # 8 > 10 - 3: a positive is always drawn
    rng = np.random.default_rng(0)
    sims = [np.isin(rng.permutation(10)[:2], np.flatnonzero(gl.numpy() == 0)).any() for _ in range(20000)]
    assert chance[2] == pytest.approx((np.mean(sims) + 1 - 3 / 45) / 2, abs=0.01)


def test_bad_input_is_rejected_with_a_clear_message():
    qf, ql, gf, gl = make_data(0)
    with pytest.raises(ValueError, match="feature dims differ"):
        retrieval_topk(qf, ql, gf[:, :8], gl)
    with pytest.raises(ValueError, match="one entry per row"):
        retrieval_topk(qf, ql[:3], gf, gl)
    with pytest.raises(ValueError, match="positive integers"):
        retrieval_topk(qf, ql, gf, gl, (0, 5))
    assert math.isclose(sum(retrieval_topk(qf, ql, gf, gl, (len(gl),)).values()), 1.0)
