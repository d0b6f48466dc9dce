"""The server's update guard and divergence stop (``federation.guard``), used by both engines.

Update guard (before aggregation): a client update with a non-finite tensor, or whose
distance to the current global model (its update norm) exceeds ``update_norm_factor`` ×
the reference norm, is rejected: logged, counted as that client's failure for the round
(reason ``non-finite update`` / ``update norm``), never aggregated. The reference is the
lower median of the previous round's accepted update norms (in round 1: of this round's
finite ones), so one wild client cannot raise its own bar.

Divergence stop (after aggregation): a non-finite round loss or global weight, a global
weight norm above ``max_weight_norm_ratio`` × the initial model's, or a round loss above
``max_loss`` stops the run with :class:`Diverged` before the round is checkpointed: the
last good checkpoint stays the latest one. A resume would only repeat the divergence, so
none is suggested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from benchmark.rundir import ClientFailure


class Diverged(RuntimeError):
    """The global model diverged; the run stops (not resumable: it would diverge again)."""

    resumable = False


@dataclass(frozen=True)
class GuardSpec:
    update_norm_factor: float | None = 10.0
    max_weight_norm_ratio: float | None = 100.0
    max_loss: float | None = None

    @classmethod
    def from_config(cls, guard: Mapping | None) -> GuardSpec:
        guard = dict(guard or {})
        default = cls()
        return cls(
            **{
                k: (None if guard.get(k, getattr(default, k)) is None else float(guard.get(k, getattr(default, k))))
                for k in ("update_norm_factor", "max_weight_norm_ratio", "max_loss")
            }
        )


def float_norm(state: Mapping[str, torch.Tensor], minus: Mapping[str, torch.Tensor] | None = None) -> float:
    """L2 norm over the floating-point tensors of ``state`` (of ``state - minus`` when given)."""
    total = 0.0
    for k, v in state.items():
        if v.is_floating_point():
            total += squared_distance(v, minus[k] if minus is not None and k in minus else None)
    return math.sqrt(total)


#: elements per chunk of the float64 passes (128 KiB of float64: stays in cache). Below
#: ATen's grain size (32768), so each chunk's op runs on one thread: with a thread barrier
#: per chunk, a loaded 2-core machine made the passes 5x slower than whole-tensor copies.
CHUNK = 1 << 14


def squared_distance(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    """Σ (a - b)² in float64 (Σ a² without ``b``), chunk by chunk: d = float64(a) - float64(b)
    for CHUNK elements in a cache-resident buffer, Σ d² of the chunk, the chunk sums added
    in order. One read of a and b and no float64 copy of the tensor: ~3.5x less CPU than a
    float64 copy and one BLAS dot (perf/bench_server_round.py), same value to ~1e-13
    relative (the summation order differs: logged norms change in their last digits)."""
    n = a.numel()
    src = a.detach().reshape(-1)
    sub = b.detach().reshape(-1) if b is not None else None
    buf = torch.empty(min(n, CHUNK), dtype=torch.float64)
    total = 0.0
    for start in range(0, n, CHUNK):
        end = min(start + CHUNK, n)
        part = buf[: end - start]
        part.copy_(src[start:end])
        if sub is not None:
            part.sub_(sub[start:end])
        total += float(part.mul_(part).sum())
    return total


def is_finite(state: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def update_norm(
    arrays: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
) -> tuple[float, list[str]]:
    """(||arrays - global_state||, sorted names of the non-finite tensors of ``arrays``) in one
    pass: ``float_norm(arrays, global_state)`` and ``is_finite``'s verdict per tensor.

    With a finite global model (``check_global`` stops the run otherwise), a tensor's Σ (a - g)²
    is finite unless the tensor holds a NaN/inf or (float64 only) its squares overflow; only
    such tensors get an explicit ``isfinite`` check — a separate isfinite pass over a 33 M
    update cost as much as its norm (perf/bench_scale.py --phases)."""
    total, bad = 0.0, []
    for k, v in arrays.items():
        if not v.is_floating_point():
            continue
        sq = squared_distance(v, global_state[k] if k in global_state else None)
        if not math.isfinite(sq) and not bool(torch.isfinite(v).all()):
            bad.append(k)
        total += sq
    return math.sqrt(total), sorted(bad)


def lower_median(values: list[float]) -> float | None:
    values = sorted(v for v in values if math.isfinite(v))
    return values[(len(values) - 1) // 2] if values else None


def screen_updates(
    updates: Mapping[int, Mapping[str, torch.Tensor]],
    global_state: Mapping[str, torch.Tensor],
    previous_norms: list[float],
    spec: GuardSpec,
    measured: Mapping[int, tuple[float, list[str]]] | None = None,
) -> tuple[dict[int, float], list[ClientFailure]]:
    """Update norms of the clients (client id -> norm) and the rejected clients' failures.

    measured: ``update_norm(updates[cid], global_state)`` of clients already measured (the
    strategy measures each update as it arrives, while the other clients still train)."""
    norms: dict[int, float] = {}
    failures: list[ClientFailure] = []
    for cid, arrays in updates.items():
        norm, bad = measured[cid] if measured and cid in measured else update_norm(arrays, global_state)
        if bad:
            failures.append(ClientFailure(cid, "non-finite update", f"non-finite values in {', '.join(bad[:5])}"))
            continue
        norms[cid] = norm
    if spec.update_norm_factor is not None:
        reference = lower_median(previous_norms) or lower_median(list(norms.values()))
        for cid, norm in list(norms.items()):
            if reference and norm > spec.update_norm_factor * reference:
                failures.append(
                    ClientFailure(
                        cid,
                        "update norm",
                        f"update norm {norm:.4g} > federation.guard.update_norm_factor={spec.update_norm_factor:g} x "
                        f"the reference {reference:.4g}",
                    )
                )
                del norms[cid]
    return norms, failures


def check_global(
    server_round: int, state: Mapping[str, torch.Tensor], loss: float, initial_norm: float, spec: GuardSpec
) -> float:
    """The new global weight norm; raises :class:`Diverged` when the model diverged."""
    norm = float_norm(state)
    why = None
    if not math.isfinite(loss) or not math.isfinite(norm):
        why = f"the round loss is {loss} and the global weight norm {norm}"
    elif (
        spec.max_weight_norm_ratio is not None and initial_norm > 0 and norm > spec.max_weight_norm_ratio * initial_norm
    ):
        why = (
            f"the global weight norm is {norm:.4g}, {norm / initial_norm:.3g} x the initial {initial_norm:.4g} "
            f"(federation.guard.max_weight_norm_ratio={spec.max_weight_norm_ratio:g})"
        )
    elif spec.max_loss is not None and loss > spec.max_loss:
        why = f"the round loss is {loss:.4g} > federation.guard.max_loss={spec.max_loss:g}"
    if why:
        kept = (
            f"the last good checkpoint (round {server_round - 1}) is kept"
            if server_round > 1
            else "no round completed, so nothing was checkpointed"
        )
        raise Diverged(
            f"round {server_round}: the global model diverged: {why}. The run stops; {kept}. Lower "
            "client.optimizer.lr or clip gradients (client.grad_clip_norm) and start a new run."
        )
    return norm
