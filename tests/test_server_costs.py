"""Server-side per-round costs at R3D-18 scale (perf/bench_scale.py): the message size is
counted without serializing the tensors, norms are chunked float64 sums — same numbers."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from benchmark.federation.guard import float_norm, squared_distance
from benchmark.federation.payloads import exchange_size, pack
from benchmark.federation.strategy import l2_distance


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(64, 3, 3, 7, 7, generator=g),
        "a.bias": torch.randn(64, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "fc.weight": torch.randn(512, 300, generator=g),
    }


def test_exchange_size_is_the_wire_size_within_10_bytes_per_tensor_for_both_payload_forms(tmp_path):
    for i, state in enumerate((_state(0), {"x": torch.ones(1)}, {})):
        others = {"metrics": MetricRecord({"loss": 1.25, "n": 3}), "config": ConfigRecord({"server-round": 4})}
        rd = RecordDict({"arrays": ArrayRecord(state), **others})
        exact = recorddict_to_proto(rd).ByteSize()
        counted = exchange_size(rd)
        assert exact - 10 * len(state) <= counted <= exact, (exact, counted)
        data = sum(v.numel() * v.element_size() for v in state.values())
        assert counted >= data
        # the same tensors in a shared-memory payload file count as the ArrayRecord they replace
        in_file = RecordDict({**pack(state, files=tmp_path, server_round=i, what="global"), **others})
        assert set(in_file) == {"arrays-file", "metrics", "config"}
        assert exchange_size(in_file) == counted


def test_norms_match_the_float64_definition():
    a, b = _state(1), _state(2)
    ref = math.sqrt(sum(float(torch.sum((a[k].double() - b[k].double()) ** 2)) for k in a if a[k].is_floating_point()))
    assert float_norm(a, b) == pytest.approx(ref, rel=1e-12)
    assert l2_distance(a, b, list(a)) == pytest.approx(ref, rel=1e-12)
    ref0 = math.sqrt(sum(float(torch.sum(a[k].double() ** 2)) for k in a if a[k].is_floating_point()))
    assert float_norm(a) == pytest.approx(ref0, rel=1e-12)
    assert squared_distance(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])) == 25.0
    assert float_norm(a, a) == 0.0
    # inputs untouched
    assert torch.equal(a["a.bias"], _state(1)["a.bias"])


def test_weighted_sum_is_bit_identical_to_the_float64_formula_and_leaves_inputs():
    from benchmark.federation.base import Aggregator, ClientUpdate

    states = [_state(s) for s in range(3)]
    states[1]["a.bias"] = states[1]["a.bias"].double()  # a float64 input must not be modified in place
    before = states[1]["a.bias"].clone()
    weights = [0.2, 0.3, 0.5]
    updates = [ClientUpdate(arrays=s, num_examples=1, metrics={}, client_id=i) for i, s in enumerate(states)]
    out = Aggregator.weighted_sum(updates, weights, list(states[0]))
    for key in states[0]:
        acc = torch.zeros(states[0][key].shape, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += float(w) * s[key].to(torch.float64)
        ref = (
            acc.round().to(states[0][key].dtype)
            if not states[0][key].is_floating_point()
            else acc.to(states[0][key].dtype)
        )
        assert out[key].dtype == ref.dtype and torch.equal(out[key], ref), key
    assert torch.equal(states[1]["a.bias"], before)
