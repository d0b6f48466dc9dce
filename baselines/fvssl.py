"""FVSSL aggregation (Rehman et al., "Federated Self-Supervised Learning for Video
Understanding", ECCV 2022), following the original FedVSSL code.

Per round r with the sampled clients k = 1..K (weights w_k, n_k examples, mean local
training loss L_k):

    w_avg  = Σ_k (n_k / N) · w_k                              (FedAvg, N = Σ_k n_k)
    w_loss = Σ_k softmax(−L)_k · w_k = Σ_k e^{−L_k} / Σ_j e^{−L_j} · w_k
    w      = alpha · w_loss + (1 − alpha) · w_avg
    beta = 1 and r ≥ 2:  w_global(r) = ½ · w + ½ · w_global(r − 1)   (SWA-style smoothing)
    otherwise:           w_global(r) = w

Used with CtP and ``method.exchange=backbone``: only the backbone reaches the server, the
clients keep their own CtP heads. See docs/methods/fvssl.md for the official code this
follows and for the bug of Flower's port (which sends 0.9 × FedAvg to the clients).
"""

from __future__ import annotations

import math

import torch

from benchmark.federation.base import Aggregator, ClientUpdate
from benchmark.registry import register_aggregator


def loss_weights(losses: list[float]) -> list[float]:
    """softmax(−L): e^{−L_k} / Σ_j e^{−L_j}, computed stably (shifted by min L).

    Equal losses give equal weights, whatever the clients' numbers of examples.
    """
    low = min(losses)
    expd = [math.exp(-(loss - low)) for loss in losses]
    total = sum(expd)
    return [e / total for e in expd]


@register_aggregator("fvssl")
class FVSSL(Aggregator):
    """Loss-weighted + FedAvg mixture with optional SWA-style smoothing.

    alpha: weight of the loss-based average (0 = FedAvg, 1 = loss only). The paper's best
        setting is alpha = 0.9.
    beta: 1 = from round 2 on average the new weights with the previous global weights
        (½/½); 0 = no smoothing.
    """

    def __init__(self, alpha: float = 0.9, beta: int = 1):
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"aggregator.params.alpha={alpha}: expected a number in [0, 1]")
        if beta not in (0, 1):
            raise ValueError(f"aggregator.params.beta={beta!r}: expected 0 (no smoothing) or 1 (smoothing)")
        self.alpha = alpha
        self.beta = int(beta)

    def client_weights(self, updates: list[ClientUpdate]) -> list[float]:
        """The per-client coefficients c_k with w = Σ_k c_k · w_k (before smoothing).

        c_k = alpha · softmax(−L)_k + (1 − alpha) · n_k / N; since both averages are linear
        in the w_k, this is exactly alpha · w_loss + (1 − alpha) · w_avg.
        """
        total = sum(u.num_examples for u in updates)
        if total <= 0:
            raise ValueError("FVSSL: the clients reported 0 training examples in total")
        by_examples = [u.num_examples / total for u in updates]
        if self.alpha == 0.0:
            return by_examples
        losses = []
        for u in updates:
            loss = u.metrics.get("loss")
            if loss is None or not math.isfinite(float(loss)):
                raise ValueError(
                    f"FVSSL (alpha={self.alpha}): client {u.client_id} sent metrics['loss']={loss!r}; "
                    "expected its finite mean local training loss"
                )
            losses.append(float(loss))
        by_loss = loss_weights(losses)
        return [self.alpha * bl + (1.0 - self.alpha) * be for bl, be in zip(by_loss, by_examples)]

    def aggregate(
        self,
        updates: list[ClientUpdate],
        previous: dict[str, torch.Tensor] | None,
        server_round: int,
    ) -> dict[str, torch.Tensor]:
        keys = self.check_updates(updates)
        mixed = self.weighted_sum(updates, self.client_weights(updates), keys)
        # The original code smooths from round 2 on (round 1 has no saved global model).
        if self.beta == 0 or server_round < 2:
            return mixed
        if previous is None:
            raise ValueError(
                f"FVSSL (beta=1): round {server_round} needs the previous global weights to smooth with, got None"
            )
        missing = [k for k in keys if k not in previous]
        if missing:
            raise ValueError(f"FVSSL (beta=1): the previous global weights lack {missing[:5]}")
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            ref = mixed[key]
            if previous[key].shape != ref.shape:
                raise ValueError(
                    f"FVSSL (beta=1): previous global {key} has shape {tuple(previous[key].shape)}, "
                    f"clients sent {tuple(ref.shape)}"
                )
            acc = 0.5 * mixed[key].to(torch.float64) + 0.5 * previous[key].detach().to(torch.float64)
            out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.round().to(ref.dtype)
        return out
