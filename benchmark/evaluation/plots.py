"""PNG plots of an evaluation (matplotlib, Agg backend) and the terminal summary table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmark.io import atomic_write_bytes


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_perturbation_curves(robustness: dict[str, dict], path: Path) -> Path:
    """Top-1 / Top-5 retrieval (%) vs perturbation factor k, mean ± std over seeds, one panel per dataset."""
    names = list(robustness)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = robustness[name]
        ks = r["ks"]
        for key, colour in (("top1", "tab:blue"), ("top5", "tab:orange")):
            mean = [100 * v for v in r[f"{key}_mean"]]
            std = [100 * v for v in r[f"{key}_std"]]
            ax.plot(ks, mean, marker="o", color=colour, label=key.replace("top", "Top-"))
            ax.fill_between(
                ks, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=colour, alpha=0.2
            )
        positive = [k for k in ks if k > 0]
        if positive and min(ks) == 0:
            ax.set_xscale("symlog", linthresh=min(positive))
        elif positive and len(positive) == len(ks):
            ax.set_xscale("log")
        ax.set_title(f"{name} ({r.get('direction', 'gaussian')}; k½ {r['k_half_text']})")
        ax.set_xlabel("perturbation factor k")
        ax.set_ylabel("retrieval accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_retrieval_bars(retrieval: dict[str, dict], path: Path, baseline: dict[str, dict] | None = None) -> Path:
    """Retrieval Top-k (%) bars per dataset; random-init bars beside them when given."""
    names = list(retrieval)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = retrieval[name]
        ks = r["ks"]
        xs = range(len(ks))
        series = [("model", [100 * r[f"top{k}"] for k in ks])]
        if baseline and name in baseline:
            series.append(("random init", [100 * baseline[name][f"top{k}"] for k in ks]))
        series.append(("chance", [100 * r["chance"][f"top{k}"] for k in ks]))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], values, width, label=label)
        ax.set_xticks(list(xs), [f"Top-{k}" for k in ks])
        ax.set_ylim(0, 100)
        ax.set_ylabel("retrieval accuracy (%)")
        ax.set_title(f"{name} retrieval")
        ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (rows = true class)."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = max(4.0, 0.18 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
