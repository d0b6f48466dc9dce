"""FedAvg, the default aggregator (``aggregator=fedavg``)."""

from __future__ import annotations

import torch

from benchmark.federation.base import Aggregator, ClientUpdate
from benchmark.registry import register_aggregator


@register_aggregator("fedavg")
class FedAvg(Aggregator):
    """FedAvg (McMahan et al., 2017): w = Σ_k (n_k / N) · w_k, N = Σ_k n_k."""

    def aggregate(
        self,
        updates: list[ClientUpdate],
        previous: dict[str, torch.Tensor] | None,
        server_round: int,
    ) -> dict[str, torch.Tensor]:
        keys = self.check_updates(updates)
        total = sum(u.num_examples for u in updates)
        if total <= 0:
            raise ValueError("FedAvg: the clients reported 0 training examples in total")
        return self.weighted_sum(updates, [u.num_examples / total for u in updates], keys)
