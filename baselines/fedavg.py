"""FedAvg, the default aggregator (``aggregator=fedavg``)."""

from __future__ import annotations

import torch

from benchmark.federation.base import Aggregator, ClientUpdate
from benchmark.registry import register_aggregator

#: what FedAvg weights a client by: its training-set size (Flower's and FedVSSL's
#: ``num_examples``) or the batches its loader holds per epoch (hc-fang/ssd's server:
#: ``len(client.aug_train_loader)``, methods/fedalignuniform/server.py:132-134)
WEIGHTS = ("examples", "batches")


@register_aggregator("fedavg")
class FedAvg(Aggregator):
    """FedAvg (McMahan et al., 2017): w = Σ_k (n_k / N) · w_k, N = Σ_k n_k.

    weight: ``examples`` (default), n_k = the client's ``num_examples``; ``batches``, n_k = the
    ``loader_batches`` metric the client reports (:func:`benchmark.federation.training.loader_batches`).
    """

    def __init__(self, weight: str = "examples") -> None:
        if weight not in WEIGHTS:
            raise ValueError(f"aggregator.params.weight={weight!r}: expected one of {', '.join(WEIGHTS)}")
        self.weight = weight

    def client_weight(self, update: ClientUpdate) -> float:
        if self.weight == "examples":
            return float(update.num_examples)
        if "loader_batches" not in update.metrics:
            raise ValueError(f"FedAvg(weight=batches): client {update.client_id} reported no loader_batches metric")
        return float(update.metrics["loader_batches"])

    def aggregate(
        self,
        updates: list[ClientUpdate],
        previous: dict[str, torch.Tensor] | None,
        server_round: int,
    ) -> dict[str, torch.Tensor]:
        keys = self.check_updates(updates)
        weights = [self.client_weight(u) for u in updates]
        total = sum(weights)
        if total <= 0:
            raise ValueError(f"FedAvg: the clients reported 0 training {self.weight} in total")
        return self.weighted_sum(updates, [w / total for w in weights], keys)
