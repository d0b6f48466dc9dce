"""``fedvid evaluate checkpoint=PATH [backbone=NAME] [eval=default|paper] [key=value ...]``.

Loads a saved global model weights-only and runs :func:`benchmark.evaluation.evaluate_backbone`
on it; writes ``evaluation.json`` (and the plots) into the Hydra run directory
(``outputs/evaluate/<date>/<time>`` unless ``hydra.run.dir=...``).

Accepted checkpoint files (``torch.load(weights_only=True)``):
what :func:`benchmark.federation.checkpoint.load_backbone_state` reads — a
``fedvid-checkpoint/1`` file written by ``fedvid run`` or a plain state dict of the
backbone (e.g. torchvision's ``r3d_18`` / ``r2plus1d_18`` weights). A run directory (or its
``checkpoints/``) stands for the checkpoint its ``latest.json`` names
(:func:`benchmark.federation.checkpoint.resolve_checkpoint_path`). A checkpoint of an image-track
run is evaluated with that run's image protocol (its dataset, backbone and ``eval.image``:
SSD's linear probe and semi-supervised fine-tuning), whatever the command line's video settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import CONF_DIR
from benchmark.config import hydra_entry, to_container
from benchmark.evaluation.spec import DownstreamDatasetSpec, EvaluationSpec
from benchmark.federation.checkpoint import resolve_checkpoint_path
from benchmark.io import atomic_write_json, sha256_file


def compose_eval_dataset(name: str, data_root: str, overrides: Mapping | None = None) -> DownstreamDatasetSpec:
    """conf/dataset/<name>.yaml with ``overrides`` (``eval.dataset_overrides.<name>``: e.g. ``root``,
    ``annotations``) merged on top, resolved against ``data_root``."""
    path = CONF_DIR / "dataset" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
        raise FileNotFoundError(
            f"eval.datasets: no dataset config {name!r} ({path} does not exist); available: {', '.join(available)}"
        )
    merged = OmegaConf.merge(
        {"data_root": str(data_root)}, {"dataset": OmegaConf.load(path)}, {"dataset": overrides or {}}
    )
    return DownstreamDatasetSpec(id=name, config=OmegaConf.to_container(merged.dataset, resolve=True))


def evaluation_spec(cfg: DictConfig) -> EvaluationSpec:
    """The :class:`EvaluationSpec` of a ``fedvid run`` / ``fedvid evaluate`` config: its ``eval`` block,
    the evaluation datasets composed here, and the protocol the entries claim."""
    from benchmark.protocols import protocol_id

    overrides = cfg.eval.get("dataset_overrides") or {}
    datasets = tuple(
        compose_eval_dataset(str(name), str(cfg.data_root), overrides.get(name)) for name in cfg.eval.datasets
    )
    claimed = protocol_id(cfg) or {"name": "unnamed", "version": 0, "variant": None}
    plain = {
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "clip": OmegaConf.to_container(cfg.get("clip") or {}, resolve=True),
        "data_root": str(cfg.data_root),
        "synthetic_size": cfg.get("synthetic_size"),
        "allow_missing_videos": cfg.get("allow_missing_videos", False),
    }
    return EvaluationSpec.from_config(plain, datasets, claimed)


def load_backbone(cfg: DictConfig, path: Path) -> torch.nn.Module:
    """Build ``cfg.backbone`` and load the checkpoint's backbone weights into it."""
    from benchmark.federation.checkpoint import load_backbone_state
    from benchmark.models.backbones import CtPResNet3D, load_pretrained_backbone
    from benchmark.registry import build_backbone

    state = load_backbone_state(path)
    params = cfg.backbone.get("params")  # an empty `params: {}` is a falsy DictConfig: convert, don't `or {}`
    params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
    backbone = build_backbone(str(cfg.backbone.name), **params)
    try:
        if isinstance(backbone, CtPResNet3D):
            load_pretrained_backbone(backbone, state)
        else:
            backbone.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as e:
        raise ValueError(
            f"checkpoint={path} does not fit backbone={cfg.backbone.name} ({e}); choose the matching backbone=..."
        ) from e
    return backbone


def run_config_of(path: Path) -> dict | None:
    """The resolved config (``config.json``) of the ``fedvid run`` whose ``checkpoints/`` holds
    the checkpoint file ``path``; None for a file outside a run directory."""
    from benchmark import rundir
    from benchmark.io import read_json

    config = path.parent.parent / rundir.CONFIG_JSON
    return read_json(config) if path.parent.name == rundir.CHECKPOINTS and config.is_file() else None


def evaluate_image_checkpoint(run_cfg: DictConfig, path: Path, run_dir: Path, progress: bool = True) -> dict:
    """An image-track run's checkpoint, evaluated as its run evaluates (SSD's ``linear_eval.py`` /
    ``semi_eval.py``): the run's own ``dataset``, ``backbone``, ``eval.image`` and protocol."""
    from benchmark.commands.run import evaluate_global_model
    from benchmark.data.images import ensure_standin

    if run_cfg.dataset.get("synthetic", False):
        ensure_standin(run_cfg.dataset)  # the generated stand-in, as `fedvid run` makes it
    backbone = load_backbone(run_cfg, path)
    from rich.console import Console

    report = evaluate_global_model(backbone, run_cfg, run_dir, console=Console() if progress else None)
    record = {"checkpoint": str(path.resolve()), "backbone": to_container(run_cfg.backbone), **report}
    atomic_write_json(run_dir / "evaluation.json", record)
    return record


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path, progress: bool = True) -> dict:
    """Load ``cfg.checkpoint``, evaluate it, write ``run_dir/evaluation.json``; returns the record.

    A checkpoint of an image-track run (its run directory's config says ``dataset.modality:
    image``) is evaluated with that run's image protocol (:func:`evaluate_image_checkpoint`);
    the command line's video evaluation settings do not apply to it."""
    from benchmark.config_check import check_eval_config
    from benchmark.data.images import is_image_dataset
    from benchmark.evaluation import evaluate_backbone_report

    check_eval_config({"eval": to_container(cfg.eval)})
    path = resolve_checkpoint_path(Path(str(cfg.checkpoint)).expanduser())
    run_cfg = run_config_of(path)
    if run_cfg is not None and is_image_dataset(run_cfg.get("dataset") or {}):
        return evaluate_image_checkpoint(OmegaConf.create(run_cfg), path, run_dir, progress)
    backbone = load_backbone(cfg, path)
    checkpoint_sha = sha256_file(path)
    spec = evaluation_spec(cfg)
    report = evaluate_backbone_report(backbone, spec, run_dir, checkpoint_sha256=checkpoint_sha, progress=progress)
    record = {"checkpoint": str(path.resolve()), "backbone": to_container(cfg.backbone), **report}
    atomic_write_json(run_dir / "evaluation.json", record)
    return record


def main(argv: list[str]) -> int:
    def task(cfg: DictConfig) -> int:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        evaluate_checkpoint(cfg, run_dir)
        print(f"wrote {run_dir / 'evaluation.json'}")
        return 0

    return hydra_entry("fedvid evaluate", "evaluate", task, argv)
