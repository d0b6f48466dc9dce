"""Typed, frozen inputs of the evaluation pipeline, built once by the command (``fedvid run``,
``fedvid evaluate``) from its config: :class:`EvaluationSpec` and the
:class:`DownstreamDatasetSpec` of each evaluation dataset (composed by the command, so their keys
can be overridden there; the pipeline never reads a config file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmark.evaluation.features import ClipSettings


@dataclass(frozen=True)
class DownstreamDatasetSpec:
    """One evaluation dataset: its id (``eval.datasets`` entry) and its resolved dataset config
    (``name`` = annotation reader, ``root``, ``annotations``, ``split``, ``synthetic``...)."""

    id: str
    config: Mapping[str, Any]

    @property
    def root(self) -> str:
        return str(self.config["root"])

    @property
    def synthetic(self) -> bool:
        return bool(self.config.get("synthetic"))


@dataclass(frozen=True)
class LinearProbeSpec:
    """``eval.linear_probe``."""

    enabled: bool
    weight_decays: tuple[float, ...]
    val_fraction: float
    seed: int
    max_iter: int

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`benchmark.evaluation.linear_probe.linear_probe`."""
        return dict(
            weight_decays=list(self.weight_decays),
            val_fraction=self.val_fraction,
            seed=self.seed,
            max_iter=self.max_iter,
        )


@dataclass(frozen=True)
class FinetuneSpec:
    """``eval.finetune`` (CtP's fine-tuning recipe)."""

    enabled: bool
    epochs: int
    batch_size: int
    num_workers: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    gamma: float
    dropout: float
    seed: int
    grad_clip_norm: float | None
    train_short_sides: tuple[int, ...] | None
    flip_prob: float
    color: Mapping[str, float] | None
    head_init_std: float


@dataclass(frozen=True)
class RobustnessSpec:
    """``eval.robustness``: the perturbation grid (values as configured; checked by ``check_grid``)."""

    enabled: bool
    direction: str
    ks: tuple[Any, ...]
    seeds: tuple[Any, ...]


@dataclass(frozen=True)
class EvaluationSpec:
    """Everything :func:`benchmark.evaluation.evaluate_backbone` needs.

    settings: the ``eval`` block as configured (plain, resolved), recorded in the report.
    feature_clip: clips of the feature protocols; finetune_clip: the fine-tuning test clips.
    protocol_id: ``{"name", "version", "variant"}`` the entries claim.
    """

    datasets: tuple[DownstreamDatasetSpec, ...]
    settings: Mapping[str, Any]
    feature_clip: ClipSettings
    finetune_clip: ClipSettings
    protocol_id: Mapping[str, Any]
    device: str
    num_threads: int | None
    batch_size: int
    num_workers: int
    pooling: str
    backbone_layout: str
    retrieval_ks: tuple[int, ...]
    feature_cache_dir: Path | None
    clip_cache_max_mib: int
    linear_probe: LinearProbeSpec
    finetune: FinetuneSpec
    robustness: RobustnessSpec
    random_init_seed: int | None
    plots: bool
    data_root: Path
    synthetic_size: str
    allow_missing_videos: bool

    @classmethod
    def from_config(
        cls, cfg: Mapping, datasets: tuple[DownstreamDatasetSpec, ...], protocol_id: Mapping[str, Any]
    ) -> EvaluationSpec:
        """From a resolved config (plain dicts): ``eval``, ``clip``, ``data_root``, ``synthetic_size``,
        ``allow_missing_videos``; ``datasets`` composed by the command."""
        ev = cfg["eval"]
        ft = ev["finetune"]
        lp = ev["linear_probe"]
        rb = ev["robustness"]
        finetune_clip = clip_settings(ev.get("clip") or {}, cfg.get("clip") or {})
        sides = ft.get("train_short_sides")
        clip_norm = ft.get("grad_clip_norm")
        return cls(
            datasets=tuple(datasets),
            settings=ev,
            feature_clip=feature_clip_settings(finetune_clip, (ev.get("retrieval") or {}).get("clip") or {}),
            finetune_clip=finetune_clip,
            protocol_id=dict(protocol_id),
            device=str(ev.get("device", "auto")),
            num_threads=int(ev["num_threads"]) if ev.get("num_threads") else None,
            batch_size=int(ev["batch_size"]),
            num_workers=int(ev["num_workers"]),
            pooling=str(ev["pooling"]),
            backbone_layout=str(ev.get("backbone_layout") or "pretraining"),
            retrieval_ks=tuple(int(k) for k in ev["retrieval"]["ks"]),
            feature_cache_dir=(
                Path(ev["feature_cache_dir"])
                if ev.get("feature_cache_dir")
                else Path(str(cfg["data_root"])) / ".feature_cache"
            )
            if ev["feature_cache"]
            else None,
            clip_cache_max_mib=int(ev["clip_cache_max_mib"]),
            linear_probe=LinearProbeSpec(
                enabled=bool(lp["enabled"]),
                weight_decays=tuple(float(x) for x in lp["weight_decays"]),
                val_fraction=float(lp["val_fraction"]),
                seed=int(lp["seed"]),
                max_iter=int(lp["max_iter"]),
            ),
            finetune=FinetuneSpec(
                enabled=bool(ft["enabled"]),
                epochs=int(ft["epochs"]),
                batch_size=int(ft["batch_size"]),
                num_workers=int(ft["num_workers"]),
                lr=float(ft["lr"]),
                momentum=float(ft["momentum"]),
                weight_decay=float(ft["weight_decay"]),
                milestones=tuple(int(m) for m in ft["milestones"]),
                gamma=float(ft["gamma"]),
                dropout=float(ft["dropout"]),
                seed=int(ft["seed"]),
                grad_clip_norm=float(clip_norm) if clip_norm else None,
                train_short_sides=tuple(int(x) for x in sides) if sides else None,
                flip_prob=float(ft["flip_prob"]),
                color=ft.get("color") or None,
                head_init_std=float(ft["head_init_std"]),
            ),
            robustness=RobustnessSpec(
                enabled=bool(rb["enabled"]),
                direction=str(rb["direction"]),
                ks=tuple(rb["ks"]),
                seeds=tuple(rb["seeds"]),
            ),
            random_init_seed=int(ev["random_init_seed"]) if ev["random_init_baseline"] else None,
            plots=bool(ev["plots"]),
            data_root=Path(str(cfg["data_root"])),
            synthetic_size=str(cfg.get("synthetic_size") or "default"),
            allow_missing_videos=bool(cfg.get("allow_missing_videos", False)),
        )


def clip_settings(eval_clip: Mapping, run_clip: Mapping) -> ClipSettings:
    """``eval.clip`` entries, each null entry inherited from the run's ``clip`` block."""

    def pick(key: str, run_key: str):
        value = eval_clip.get(key)
        if value is None:
            value = run_clip.get(run_key)
        if value is None:
            raise ValueError(f"eval.clip.{key} is null and the run config has no clip.{run_key} to inherit")
        return value

    return ClipSettings(
        num_clips=int(pick("num_clips", "num_clips")),
        frames=int(pick("frames", "frames")),
        stride=int(pick("stride", "stride")),
        short_side=int(pick("short_side", "short_side")),
        crop_size=int(pick("crop_size", "size")),
        backend=str(eval_clip.get("backend") or run_clip.get("backend") or "auto"),
        sampling=str(eval_clip.get("sampling") or "uniform"),
        normalization=str(eval_clip.get("normalization") or run_clip.get("normalization") or "kinetics"),
    )


def feature_clip_settings(base: ClipSettings, retrieval_clip: Mapping) -> ClipSettings:
    """Clips of the feature protocols (retrieval, linear probe, representation, robustness): ``base``
    (:func:`clip_settings`) with the non-null entries of ``eval.retrieval.clip`` on top (the paper
    protocol's VCOP retrieval clips differ from CtP's fine-tuning test clips)."""
    overrides = {k: v for k, v in retrieval_clip.items() if v is not None}
    unknown = sorted(set(overrides) - set(asdict(base)))
    if unknown:
        raise ValueError(f"eval.retrieval.clip has unknown keys {unknown}; expected some of {sorted(asdict(base))}")
    return replace(base, **overrides)
