"""Per-round checkpoints of the global model, written atomically and loaded weights-only.

Layout inside a run directory::

    checkpoints/round_0003.pt     torch.save of a plain dict (tensors, numbers, strings)
    checkpoints/latest.json       {"round": 3, "file": "round_0003.pt", "sha256": "..."}

``latest.json`` is replaced only after its ``.pt`` file is complete, so after a crash it
always names a complete checkpoint. Loading uses ``torch.load(weights_only=True)``: a
checkpoint can never execute code when it is read.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.io import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file
from benchmark.rundir import LATEST, checkpoint_dir

CHECKPOINT_FORMAT = "fedvid-checkpoint/1"


@dataclass
class Checkpoint:
    """The server's state after ``round`` complete rounds.

    global_state: the global model's exchanged tensors (name -> tensor).
    aggregator_state: whatever the aggregator's ``state_dict()`` returned (tensors/numbers), or {}.
    history: small JSON-able per-round facts needed to continue (e.g. cumulative bytes).
    """

    round: int
    global_state: dict[str, torch.Tensor]
    aggregator_state: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``checkpoints/round_XXXX.pt`` then point ``latest.json`` at it (both atomic)."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "round": int(ckpt.round),
            "global_state": {k: v.detach().cpu().contiguous() for k, v in ckpt.global_state.items()},
            "aggregator_state": ckpt.aggregator_state,
            "history": ckpt.history,
        },
        buf,
    )
    data = buf.getbuffer()  # the written bytes themselves: no 133 MB copy per R3D-18 round
    name = f"round_{ckpt.round:04d}.pt"
    path = atomic_write_bytes(checkpoint_dir(run_dir) / name, data)
    atomic_write_json(
        checkpoint_dir(run_dir) / LATEST,
        {"format": CHECKPOINT_FORMAT, "round": int(ckpt.round), "file": name, "sha256": sha256_bytes(data)},
    )
    return path


class RoundWrites:
    """The end-of-round writes (checkpoint, retention, round log, status) of one round after
    the other, in a background thread, while the next round's clients train.

    The guarantees of writing them inline stay: each round's writes run in the order its
    function does them (``latest.json`` and the round log only after the checkpoint is
    fsynced), round r+1's writes start only after round r's have finished, and an exception
    in a round's writes is raised by the next :meth:`submit` or by :meth:`join`, which the
    run's end and every failure path call. A process killed at any moment leaves what the
    inline writes would have left after their last completed round (every file atomic).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Wait for the previous round's writes (re-raising their failure), then start ``write``."""
        self.join()
        self._thread = threading.Thread(target=self._run, args=(write,), name="fedvid-round-writes")
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that joins
            self._error = e

    def join(self) -> None:
        """Wait for the pending writes; raise their exception, if any (once)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint_file(path: str | Path) -> Checkpoint:
    """Load one ``round_XXXX.pt`` (weights-only: tensors, numbers, strings, containers)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file named
        raise ValueError(f"{path}: not a readable FedVid-Bench checkpoint ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: expected a {CHECKPOINT_FORMAT} checkpoint")
    return Checkpoint(
        round=int(obj["round"]),
        global_state=dict(obj["global_state"]),
        aggregator_state=dict(obj.get("aggregator_state") or {}),
        history=dict(obj.get("history") or {}),
    )


def load_latest(run_dir: str | Path) -> Checkpoint | None:
    """The last complete checkpoint of a run, or None when the run has none yet.

    The file's sha256 is checked against ``latest.json``.
    """
    pointer = checkpoint_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    meta = read_json(pointer)
    path = checkpoint_dir(run_dir) / meta["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which does not exist")
    actual = sha256_file(path)
    if actual != meta["sha256"]:
        raise ValueError(f"{path}: sha256 {actual} does not match {pointer} ({meta['sha256']})")
    return load_checkpoint_file(path)


def final_global_state(run_dir: str | Path) -> dict[str, torch.Tensor]:
    ckpt = load_latest(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{checkpoint_dir(run_dir)}: the run wrote no checkpoint")
    return ckpt.global_state


def extract_backbone_state(obj, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's state dict out of a loaded checkpoint object (see :func:`load_backbone_state`)."""
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
        state = {k[len("module.") :]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def resolve_checkpoint_path(path: Path) -> Path:
    """``checkpoint=`` may name a file, a run directory or its ``checkpoints/`` folder (then
    the checkpoint ``latest.json`` names). A missing ``round_XXXX.pt`` in a folder pruned by
    ``checkpoint.keep_last`` / ``keep_every`` is an error that lists the rounds still kept."""
    from benchmark.rundir import CHECKPOINTS

    if path.is_dir():
        folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        pointer = folder / LATEST
        if not pointer.is_file():
            raise FileNotFoundError(
                f"checkpoint={path}: a directory without {CHECKPOINTS}/{LATEST}; "
                "name a checkpoint file or a run directory of `fedvid run`"
            )
        return folder / str(read_json(pointer)["file"])
    if not path.is_file() and (path.parent / LATEST).is_file():
        kept = sorted(p.name for p in path.parent.glob("round_*.pt"))
        raise FileNotFoundError(
            f"checkpoint={path}: no such file (pruned by checkpoint.keep_last/keep_every?); "
            f"kept: {', '.join(kept) or 'none'}; or pass the run directory for the latest"
        )
    return path


def load_backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """The backbone weights of a checkpoint file, loaded weights-only and checked finite.

    Accepted: a ``fedvid-checkpoint/1`` file written by ``fedvid run``
    (``checkpoints/round_XXXX.pt``; the ``backbone.*`` entries of its ``global_state``), or a
    plain state dict of the backbone, e.g. torchvision's ``r3d_18`` / ``r2plus1d_18`` weights
    (``fc.*`` classifier keys are ignored), optionally wrapped as ``{"state_dict": ...}`` or
    ``{"model": ...}`` and/or with ``module.`` prefixes. Errors name ``checkpoint=PATH``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file named
        raise ValueError(f"checkpoint={path}: not loadable with torch.load(weights_only=True) ({e})") from e
    state = extract_backbone_state(obj, path)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(
            f"checkpoint={path}: non-finite weights in {len(bad)} tensors (e.g. {bad[:3]}); the model "
            "diverged. Evaluate an earlier checkpoint (checkpoints/round_XXXX.pt)"
        )
    return state
