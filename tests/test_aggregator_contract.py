"""The aggregator contract works without Flower, as documented (issue: section 2)."""

import pytest
import torch

from benchmark.federation import ClientUpdate
from benchmark.registry import build_aggregator


def test_fedavg_through_the_registry_on_hand_computed_tensors():
    agg = build_aggregator("fedavg")
    updates = [
        ClientUpdate({"backbone.w": torch.tensor([1.0, 2.0]), "bn.n": torch.tensor(4)}, 1, {"loss": 0.5}, client_id=0),
        ClientUpdate({"backbone.w": torch.tensor([4.0, -1.0]), "bn.n": torch.tensor(8)}, 3, {"loss": 0.1}, client_id=2),
    ]
    out = agg.aggregate(updates, previous=None, server_round=1)
    # weights 1/4 and 3/4: [0.25*1 + 0.75*4, 0.25*2 + 0.75*(-1)] = [3.25, -0.25]; 0.25*4 + 0.75*8 = 7
    assert torch.equal(out["backbone.w"], torch.tensor([3.25, -0.25]))
    assert out["bn.n"].dtype == torch.int64 and int(out["bn.n"]) == 7
    assert updates[0].metrics["loss"] == 0.5


def test_fedavg_rejects_mismatched_updates_and_zero_examples():
    agg = build_aggregator("fedavg")
    a = ClientUpdate({"w": torch.zeros(2)}, 1, client_id=0)
    b = ClientUpdate({"w": torch.zeros(3)}, 1, client_id=1)
    with pytest.raises(ValueError, match="client 1 sent w with shape"):
        agg.aggregate([a, b], None, 1)
    with pytest.raises(ValueError, match="0 training examples"):
        agg.aggregate([ClientUpdate({"w": torch.zeros(2)}, 0, client_id=0)], None, 1)


def test_unknown_aggregator_names_the_registered_ones():
    with pytest.raises(KeyError, match="Registered aggregators: .*fedavg"):
        build_aggregator("fedavgg")
