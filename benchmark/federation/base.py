"""Aggregator contract shared by every server-side rule.

An aggregator turns the updates of the clients sampled in one round into the next global
weights. It sees plain ``torch.Tensor`` dicts, so tests and other tools call it directly,
without Flower. Aggregators may keep state across rounds (e.g. FVSSL's smoothing uses the
previous global model, which is passed in as ``previous``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ClientUpdate:
    """One client's result for one round.

    arrays: the exchanged parameters/buffers after local training (name -> tensor).
    num_examples: the client's training-set size (what FedAvg weights by; samples processed
        this round: ``metrics["samples_processed"]``).
    metrics: client metrics; ``metrics["loss"]`` is the client's mean local training loss.
    client_id: the client's partition id in the split manifest.
    """

    arrays: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    client_id: int = -1


class Aggregator:
    """Base class. Subclasses implement :meth:`aggregate`.

    Register a subclass with ``@benchmark.registry.register_aggregator("name")``; its
    constructor takes the aggregator's parameters as keyword arguments (from the Hydra
    ``aggregator`` group).
    """

    def aggregate(
        self,
        updates: list[ClientUpdate],
        previous: dict[str, torch.Tensor] | None,
        server_round: int,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- helpers shared by concrete rules -------------------------------------------
    @staticmethod
    def check_updates(updates: list[ClientUpdate]) -> list[str]:
        """Validate that all updates carry the same tensor names and shapes; return the names."""
        if not updates:
            raise ValueError("aggregate() needs at least one client update")
        keys = list(updates[0].arrays)
        for u in updates[1:]:
            if list(u.arrays) != keys and set(u.arrays) != set(keys):
                missing = set(keys) ^ set(u.arrays)
                raise ValueError(
                    f"client {u.client_id} sent different tensors than client {updates[0].client_id}: "
                    f"{sorted(missing)[:5]}"
                )
            for k in keys:
                if u.arrays[k].shape != updates[0].arrays[k].shape:
                    raise ValueError(
                        f"client {u.client_id} sent {k} with shape {tuple(u.arrays[k].shape)}, "
                        f"expected {tuple(updates[0].arrays[k].shape)}"
                    )
        return keys

    @staticmethod
    def weighted_sum(updates: list[ClientUpdate], weights: list[float], keys: list[str]) -> dict[str, torch.Tensor]:
        """Σ_k weights[k] · w_k per tensor, computed in float64 and cast back to each tensor's dtype.

        Integer tensors (e.g. BatchNorm ``num_batches_tracked``) are rounded back.
        """
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            ref = updates[0].arrays[key]
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for u, w in zip(updates, weights):
                # = acc += w * float64(w_k), bit for bit, with one temporary instead of two
                acc += u.arrays[key].detach().to(torch.float64, copy=True).mul_(float(w))
            out[key] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
        return out
