"""L-DAWA (Rehman et al., "L-DAWA: Layer-wise Divergence Aware Weight Aggregation in
Federated Self-Supervised Visual Representation Learning", ICCV 2023).

For every exchanged tensor with at least one dimension (weights, biases and BatchNorm
running statistics alike, as in the official code, which iterates over the state dict):

    δ_k = min(cos(w_k, w_global(r − 1)), 1)          (angular divergence, per tensor)
    w   = (1 / K) · Σ_k δ_k · w_k                    (uniform over the K clients)

There is no renormalisation by Σ δ_k: the resulting shrink is part of the method.

Cases the paper leaves open (decided from yasar-rehman/L-DAWA, L-DAWA-Agg.py; see
docs/methods/ldawa.md):
- 0-dim tensors pass through unscaled and are averaged uniformly (official behaviour).
- Integer tensors (e.g. BatchNorm ``num_batches_tracked``) are never scaled by δ: uniform
  mean, rounded back to the integer dtype.
- A client tensor of norm 0 passes through (official); a previous global tensor of norm 0
  makes the cosine undefined (the official code divides by 0 and gets NaN); here δ = 1.
- ``previous is None`` (round 1 without an initial global model): plain uniform average.
- ``warmup_rounds``: rounds 1..warmup_rounds use FedAvg by examples, as the official
  FL_Pretraining/main_CIFAR10_LDAWA.py does before ``GLB_RND > 2`` (3 rounds). The class
  default is 0 (the rule from round 1, as the paper text; the 3-round CPU comparison uses it);
  the configured default, ``conf/aggregator/ldawa.yaml``, is 3, as the official script.
"""

from __future__ import annotations

import torch

from benchmark.federation.base import Aggregator, ClientUpdate
from benchmark.registry import register_aggregator


def layer_divergence(client: torch.Tensor, global_: torch.Tensor) -> float:
    """δ = min(cos(client, global_), 1) over the flattened tensors (any equal shapes), in float64.

    Returns 1.0 (no scaling) when either tensor has norm 0, where the cosine is undefined.
    """
    x = client.detach().to(torch.float64).flatten()
    g = global_.detach().to(torch.float64).flatten()
    nx, ng = torch.linalg.vector_norm(x), torch.linalg.vector_norm(g)
    if nx == 0 or ng == 0:
        return 1.0
    return min(float(torch.dot(x, g) / (nx * ng)), 1.0)


@register_aggregator("ldawa")
class LDAWA(Aggregator):
    """Layer-wise divergence-aware aggregation.

    warmup_rounds: number of first rounds aggregated with FedAvg (by examples) before the
        divergence rule starts; 0 (this constructor's default) applies L-DAWA from round 1.
        ``aggregator=ldawa`` configures 3 (conf/aggregator/ldawa.yaml), the official script's.

    After :meth:`aggregate`, ``last_divergence[key]`` holds the δ_k of each client for that
    tensor (in the order of ``updates``), for logging.
    """

    def __init__(self, warmup_rounds: int = 0) -> None:
        if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, int) or warmup_rounds < 0:
            raise ValueError(f"aggregator.params.warmup_rounds={warmup_rounds!r}: expected an integer >= 0")
        self.warmup_rounds = warmup_rounds
        self.last_divergence: dict[str, list[float]] = {}

    def aggregate(
        self,
        updates: list[ClientUpdate],
        previous: dict[str, torch.Tensor] | None,
        server_round: int,
    ) -> dict[str, torch.Tensor]:
        keys = self.check_updates(updates)
        num = len(updates)
        self.last_divergence = {}
        if server_round <= self.warmup_rounds:
            total = sum(u.num_examples for u in updates)
            if total <= 0:
                raise ValueError("L-DAWA warm-up (FedAvg): the clients reported 0 training examples in total")
            return self.weighted_sum(updates, [u.num_examples / total for u in updates], keys)
        if previous is None:
            return self.weighted_sum(updates, [1.0 / num] * num, keys)
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            ref = updates[0].arrays[key]
            if ref.dim() == 0 or not ref.is_floating_point():
                out[key] = self.weighted_sum(updates, [1.0 / num] * num, [key])[key]
                continue
            if key not in previous:
                raise ValueError(f"L-DAWA: the previous global weights lack {key!r}, which the clients sent")
            global_ = previous[key]
            if global_.shape != ref.shape:
                raise ValueError(
                    f"L-DAWA: previous global {key} has shape {tuple(global_.shape)}, clients sent {tuple(ref.shape)}"
                )
            deltas = [layer_divergence(u.arrays[key], global_) for u in updates]
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for u, d in zip(updates, deltas):
                acc += d * u.arrays[key].detach().to(torch.float64)
            out[key] = (acc / num).to(ref.dtype)
            self.last_divergence[key] = deltas
        return out
