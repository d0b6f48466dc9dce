"""Robustness of the learned representation to random weight perturbations.

For a factor k and a seed s, every floating-point parameter p of a copy of the backbone
becomes p + k * d, where d is drawn from N(0, 1) with ``torch.Generator().manual_seed(s)``
(parameters visited in ``named_parameters()`` order, noise drawn on the CPU so results do
not depend on the device). Buffers (BatchNorm running statistics) are left untouched.

``direction="filter_normalized"`` rescales d per filter as in Li et al. (NeurIPS 2018,
"Visualizing the Loss Landscape of Neural Nets"): for a parameter with >= 2 dims, each
slice d[i] along the output dimension is scaled to ||p[i]|| / ||d[i]||; 1-D parameters
(biases, BatchNorm affine) get a zero direction, as in the paper's recommended
``ignore='biasbn'`` setting. This makes k comparable across layers of different scale.

Summary numbers of the Top-1 curve t(k) over the grid k_0 < ... < k_m (clean Top-1 t_c):
- area = trapz(t, k) / (t_c * (k_m - k_0)): 1 when nothing degrades, smaller is less robust;
- k_half = the first k where t(k) falls to t_c / 2, linearly interpolated between the
  grid points that bracket the crossing; None ("> k_m") when it never does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

DIRECTIONS = ("gaussian", "filter_normalized")


def random_direction(module: nn.Module, seed: int, direction: str = "gaussian") -> dict[str, torch.Tensor]:
    """One random direction per floating-point parameter, keyed by parameter name (CPU tensors)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"eval.robustness.direction={direction!r}: expected one of {DIRECTIONS}")
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if not p.is_floating_point():
            continue
        d = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if direction == "filter_normalized":
            if p.ndim <= 1:
                d.zero_()
            else:
                w = p.detach().float().cpu().reshape(p.shape[0], -1)
                dn = d.reshape(d.shape[0], -1)
                scale = w.norm(dim=1) / dn.norm(dim=1).clamp_min(1e-12)
                d = (dn * scale[:, None]).reshape(p.shape)
        out[name] = d
    return out


@torch.no_grad()
def perturbed_copy(module: nn.Module, k: float, seed: int, direction: str = "gaussian") -> nn.Module:
    """A deep copy of ``module`` with p <- p + k * d for every floating-point parameter."""
    model = copy.deepcopy(module)
    if k == 0:
        return model
    directions = random_direction(module, seed, direction)
    for name, p in model.named_parameters():
        if name in directions:
            p.add_(directions[name].to(device=p.device, dtype=p.dtype), alpha=float(k))
    return model


def normalized_area(ks: Sequence[float], top1: Sequence[float], clean_top1: float) -> float | None:
    """Trapezoidal area under t(k) divided by clean_top1 * (max k - min k); None if undefined."""
    ks = [float(k) for k in ks]
    if len(ks) < 2 or clean_top1 <= 0 or ks[-1] == ks[0]:
        return None
    area = sum((ks[i + 1] - ks[i]) * (top1[i] + top1[i + 1]) / 2 for i in range(len(ks) - 1))
    return area / (clean_top1 * (ks[-1] - ks[0]))


def k_half(ks: Sequence[float], top1: Sequence[float], clean_top1: float) -> float | None:
    """First k with t(k) <= clean_top1 / 2 (linear interpolation), None if never reached."""
    if clean_top1 <= 0:
        return None
    half = clean_top1 / 2
    for i, (k, t) in enumerate(zip(ks, top1)):
        if t <= half:
            if i == 0:
                return float(k)
            k0, t0 = float(ks[i - 1]), float(top1[i - 1])
            if t0 == t:
                return float(k)
            return k0 + (t0 - half) * (float(k) - k0) / (t0 - t)
    return None


def summarize_curve(ks: Sequence[float], by_seed: dict[str, list[list[float]]], clean_top1: float) -> dict:
    """Mean/std over seeds and the summary numbers.

    by_seed: {"top1": [[t(k_0), ...] per seed], "top5": ...}; lists of fractions.
    """
    out: dict = {"ks": [float(k) for k in ks]}
    for key, rows in by_seed.items():
        values = torch.tensor(rows, dtype=torch.float64)  # (S, K)
        out[f"{key}_mean"] = values.mean(dim=0).tolist()
        out[f"{key}_std"] = values.std(dim=0, correction=0).tolist()
        out[f"{key}_by_seed"] = [list(r) for r in rows]
    mean_top1 = out["top1_mean"]
    kh = k_half(ks, mean_top1, clean_top1)
    out["clean_top1"] = clean_top1
    out["area_top1_normalized"] = normalized_area(ks, mean_top1, clean_top1)
    out["k_half"] = kh
    if clean_top1 <= 0:
        out["k_half_text"] = "n/a (clean Top-1 is 0)"
    else:
        out["k_half_text"] = f"{kh:.3g}" if kh is not None else f"> {max(ks):g}"
    return out


def check_grid(ks: Sequence[float], seeds: Sequence[int]) -> None:
    ks = [float(k) for k in ks]
    if not ks or any(not math.isfinite(k) or k < 0 for k in ks) or sorted(ks) != ks or len(set(ks)) != len(ks):
        raise ValueError(f"eval.robustness.ks={ks}: expected a strictly increasing list of finite factors >= 0")
    if not list(seeds):
        raise ValueError("eval.robustness.seeds: expected at least one seed")
