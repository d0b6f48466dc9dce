"""L-DAWA aggregation against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.ldawa import layer_divergence
from benchmark.federation.base import ClientUpdate
from benchmark.registry import build_aggregator

# previous global: w = [1, 0], b = [0, 2, 0], plus a float scalar and an int counter.
PREVIOUS = {
    "w": torch.tensor([1.0, 0.0]),
    "b": torch.tensor([0.0, 2.0, 0.0]),
    "temp": torch.tensor(5.0),
    "num_batches_tracked": torch.tensor(100),
}
# client 0: w parallel to the global (cos 1), client 1: orthogonal (cos 0), client 2:
# [-1, -1] (cos −1/√2). b: cos = 2/√5, 1, 0 (below).
CLIENTS = [
    {"w": [2.0, 0.0], "b": [1.0, 2.0, 0.0], "temp": 1.0, "num_batches_tracked": 10},
    {"w": [0.0, 3.0], "b": [0.0, 4.0, 0.0], "temp": 2.0, "num_batches_tracked": 11},
    {"w": [-1.0, -1.0], "b": [3.0, 0.0, 0.0], "temp": 6.0, "num_batches_tracked": 13},
]
SIZES = [1, 10, 100]  # n_k must not matter: L-DAWA is uniform over clients


def updates() -> list[ClientUpdate]:
    return [
        ClientUpdate(arrays={k: torch.tensor(v) for k, v in c.items()}, num_examples=n, client_id=i)
        for i, (c, n) in enumerate(zip(CLIENTS, SIZES))
    ]


def test_ldawa_matches_hand_computation():
    agg = build_aggregator("ldawa")
    out = agg.aggregate(updates(), PREVIOUS, server_round=3)
    s = 1 / math.sqrt(2)
    # w: (1/3)·(1·[2, 0] + 0·[0, 3] + (−1/√2)·[−1, −1])
    torch.testing.assert_close(out["w"], torch.tensor([(2 + s) / 3, s / 3]))
    # b: δ = cos([1,2,0],[0,2,0]) = 2/√5; cos([0,4,0],[0,2,0]) = 1; cos([3,0,0],[0,2,0]) = 0
    d0 = 2 / math.sqrt(5)
    torch.testing.assert_close(out["b"], torch.tensor([d0 * 1 / 3, (d0 * 2 + 4) / 3, 0.0]))
    # 0-dim float: passes through unscaled, uniform mean (1 + 2 + 6) / 3
    torch.testing.assert_close(out["temp"], torch.tensor(3.0))
    # integer counter: uniform mean (10 + 11 + 13) / 3 = 11.33 → 11, never scaled
    assert out["num_batches_tracked"].dtype == torch.int64 and int(out["num_batches_tracked"]) == 11
    assert agg.last_divergence["w"] == pytest.approx([1.0, 0.0, -s])
    assert agg.last_divergence["b"] == pytest.approx([d0, 1.0, 0.0])


def test_no_renormalisation_shrinks_the_model():
    """Orthogonal and opposite clients shrink the average; weights do not sum to 1."""
    agg = build_aggregator("ldawa")
    g = {"w": torch.tensor([1.0, 0.0])}
    ups = [
        ClientUpdate(arrays={"w": torch.tensor([1.0, 0.0])}, num_examples=1, client_id=0),
        ClientUpdate(arrays={"w": torch.tensor([0.0, 1.0])}, num_examples=1, client_id=1),
    ]
    out = agg.aggregate(ups, g, 2)
    # (1·[1, 0] + 0·[0, 1]) / 2; FedAvg would give [0.5, 0.5]
    torch.testing.assert_close(out["w"], torch.tensor([0.5, 0.0]))


def test_cosine_above_one_from_rounding_is_clamped():
    g = torch.tensor([0.3, 0.2], dtype=torch.float64)
    x = 3 * g
    raw = float(torch.dot(x, g) / (torch.linalg.vector_norm(x) * torch.linalg.vector_norm(g)))
    assert raw > 1.0  # 1.0000000000000002 in float64
    assert layer_divergence(x, g) == 1.0
    # For exact parallel vectors the clamp changes nothing beyond rounding: the result is 3·g / 1.
    out = build_aggregator("ldawa").aggregate(
        [ClientUpdate(arrays={"w": x.float()}, num_examples=1)], {"w": g.float()}, 2
    )
    torch.testing.assert_close(out["w"], (3 * g).float())


def test_negative_cosine_flips_the_client():
    g = {"w": torch.tensor([1.0, 1.0])}
    ups = [ClientUpdate(arrays={"w": torch.tensor([-2.0, -2.0])}, num_examples=1)]
    out = build_aggregator("ldawa").aggregate(ups, g, 2)
    # δ = −1: (−1)·[−2, −2] / 1
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 2.0]))


def test_round_one_without_previous_is_uniform_average():
    out = build_aggregator("ldawa").aggregate(updates(), None, 1)
    torch.testing.assert_close(out["w"], torch.tensor([(2 + 0 - 1) / 3, (0 + 3 - 1) / 3]))
    torch.testing.assert_close(out["b"], torch.tensor([4 / 3, 2.0, 0.0]))
    torch.testing.assert_close(out["temp"], torch.tensor(3.0))
    assert int(out["num_batches_tracked"]) == 11


def test_zero_norm_tensors_pass_through():
    # A zero global tensor (e.g. a freshly initialised bias) leaves the cosine undefined: δ = 1.
    assert layer_divergence(torch.tensor([1.0, 2.0]), torch.zeros(2)) == 1.0
    assert layer_divergence(torch.zeros(2), torch.tensor([1.0, 2.0])) == 1.0
    ups = [
        ClientUpdate(arrays={"b": torch.tensor([1.0, 2.0])}, num_examples=1),
        ClientUpdate(arrays={"b": torch.tensor([3.0, 0.0])}, num_examples=1),
    ]
    out = build_aggregator("ldawa").aggregate(ups, {"b": torch.zeros(2)}, 2)
    torch.testing.assert_close(out["b"], torch.tensor([2.0, 1.0]))
    assert torch.isfinite(out["b"]).all()


def test_errors_name_the_tensor():
    with pytest.raises(ValueError, match="lack 'w'"):
        build_aggregator("ldawa").aggregate(updates(), {"b": PREVIOUS["b"]}, 2)
    bad = dict(PREVIOUS, w=torch.zeros(3))
    with pytest.raises(ValueError, match=r"previous global w has shape \(3,\)"):
        build_aggregator("ldawa").aggregate(updates(), bad, 2)


def test_warmup_rounds_use_fedavg():
    agg = build_aggregator("ldawa", warmup_rounds=3)
    for r in (1, 3):  # FedAvg by examples (1, 10, 100)
        out = agg.aggregate(updates(), PREVIOUS, r)
        torch.testing.assert_close(
            out["w"], torch.tensor([(1 * 2 + 10 * 0 + 100 * -1) / 111, (1 * 0 + 10 * 3 + 100 * -1) / 111])
        )
    out = agg.aggregate(updates(), PREVIOUS, 4)  # divergence rule from round 4
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(out["w"], torch.tensor([(2 + s) / 3, s / 3]))
    with pytest.raises(ValueError, match="warmup_rounds=-1"):
        build_aggregator("ldawa", warmup_rounds=-1)
