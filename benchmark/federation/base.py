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
        Per element: acc = 0; acc += float64(w_k) * weights[k] for k in order; cast. It runs
        chunk by chunk (guard.CHUNK elements, float64 temporaries that stay in cache), which
        gives every element the same operations in the same order as whole-tensor float64
        copies — the same bits (tests/test_server_costs.py) — without a fresh float64 copy
        of each 33 M-parameter update (perf/bench_server_round.py).
        """
        from benchmark.federation.guard import CHUNK

        scale = [float(w) for w in weights]
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            ref = updates[0].arrays[key]
            n = ref.numel()
            result = torch.empty(ref.shape, dtype=ref.dtype)
            flat_out = result.view(-1)
            sources = [u.arrays[key].detach().reshape(-1) for u in updates]
            acc = torch.empty(min(n, CHUNK), dtype=torch.float64)
            term = torch.empty_like(acc)
            for start in range(0, n, CHUNK):
                end = min(start + CHUNK, n)
                part, tmp = acc[: end - start], term[: end - start]
                part.zero_()
                for src, w in zip(sources, scale):
                    tmp.copy_(src[start:end])
                    part += tmp.mul_(w)
                if not ref.is_floating_point():
                    part.round_()
                flat_out[start:end].copy_(part)
            out[key] = result
        return out
