"""``fedvid evaluate checkpoint=PATH [backbone=NAME] [eval=default|paper] [key=value ...]``.

Loads a saved global model weights-only and runs :func:`benchmark.evaluation.evaluate_backbone`
on it; writes ``evaluation.json`` (and the plots) into the Hydra run directory
(``outputs/evaluate/<date>/<time>`` unless ``hydra.run.dir=...``).

Accepted checkpoint files (``torch.load(weights_only=True)``):
- a ``fedvid-checkpoint/1`` file written by ``fedvid run`` (``checkpoints/round_XXXX.pt``):
  the backbone is taken from the ``backbone.*`` entries of its ``global_state``; a run
  directory (or its ``checkpoints/``) stands for the checkpoint its ``latest.json`` names;
- a plain state dict of the backbone, e.g. torchvision's ``r3d_18`` / ``r2plus1d_18``
  weights (``fc.*`` classifier keys are ignored), optionally wrapped as
  ``{"state_dict": ...}`` or ``{"model": ...}`` and/or with ``module.`` prefixes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from benchmark.config import hydra_entry, to_container
from benchmark.io import atomic_write_json, read_json, sha256_file
from benchmark.federation.training import config_params

CHECKPOINT_FORMAT = "fedvid-checkpoint/1"


def extract_backbone_state(obj, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's state dict out of a loaded checkpoint object (see module doc)."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj.get("global_state")
    elif isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = [k for k in ("state_dict", "model", "backbone") if isinstance(obj.get(k), dict)]
        if not wrapped:
            raise ValueError(
                f"checkpoint={path}: expected a {CHECKPOINT_FORMAT} checkpoint or a state dict of tensors; "
                f"got a dict with keys {sorted(map(str, obj))[:8]}"
            )
        state = obj[wrapped[0]]
    else:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint={path}: no tensors found (expected name -> tensor entries)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def resolve_checkpoint_path(path: Path) -> Path:
    """``checkpoint=`` may name a file, a run directory or its ``checkpoints/`` folder (then
    the checkpoint ``latest.json`` names). A missing ``round_XXXX.pt`` in a folder pruned by
    ``checkpoint.keep_last`` / ``keep_every`` is an error that lists the rounds still kept."""
    from benchmark.rundir import CHECKPOINTS, LATEST

    if path.is_dir():
        folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        pointer = folder / LATEST
        if not pointer.is_file():
            raise FileNotFoundError(f"checkpoint={path}: a directory without {CHECKPOINTS}/{LATEST}; "
                                    "name a checkpoint file or a run directory of `fedvid run`")
        return folder / str(read_json(pointer)["file"])
    if not path.is_file() and (path.parent / LATEST).is_file():
        kept = sorted(p.name for p in path.parent.glob("round_*.pt"))
        raise FileNotFoundError(f"checkpoint={path}: no such file (pruned by checkpoint.keep_last/keep_every?); "
                                f"kept: {', '.join(kept) or 'none'}; or pass the run directory for the latest")
    return path


def load_backbone(cfg: DictConfig, path: Path) -> torch.nn.Module:
    """Build ``cfg.backbone`` and load the checkpoint's backbone weights into it."""
    from benchmark.models.backbones import CtPResNet3D, load_pretrained_backbone
    from benchmark.registry import build_backbone

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"checkpoint={path}: not loadable with torch.load(weights_only=True) ({e})") from e
    state = extract_backbone_state(obj, path)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"checkpoint={path}: non-finite weights in {len(bad)} tensors (e.g. {bad[:3]}); the model "
                         "diverged. Evaluate an earlier checkpoint (checkpoints/round_XXXX.pt)")
    params = config_params(cfg.backbone)
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


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path, progress: bool = True) -> dict:
    """Load ``cfg.checkpoint``, evaluate it, write ``run_dir/evaluation.json``; returns the record."""
    from benchmark.evaluation import evaluate_backbone_report

    from benchmark.config_check import check_eval_config

    check_eval_config({"eval": to_container(cfg.eval)})
    path = resolve_checkpoint_path(Path(str(cfg.checkpoint)).expanduser())
    backbone = load_backbone(cfg, path)
    checkpoint_sha = sha256_file(path)
    report = evaluate_backbone_report(backbone, cfg, run_dir, checkpoint_sha256=checkpoint_sha, progress=progress)
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
