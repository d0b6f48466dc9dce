"""The run directory: every file name in it, the run lock, the status file, the round log
(one :class:`RoundRecord` per line, written by the Flower strategy and the centralized
engine alike), the checkpoint folder and the resume point and checks.

Layout (``outputs/<date>/<time>/`` or ``hydra.run.dir``)::

    run.lock                 held (flock) by the `fedvid run` that owns the directory
    config.json/.yaml        the resolved config the engines read
    run_inputs.json          what a resume must match (config, split, lists, code)
    split_manifest.json      the clients' videos
    federation_status.json   {"state": connecting | running | completed | failed, "round": ...}
    rounds.jsonl             one RoundRecord per completed round
    checkpoints/             round_XXXX.pt + latest.json (benchmark.federation.checkpoint)
    flower.log, logs/        Flower's streamed log, per-process logs
    result.json              the fedvid-result/1 record
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write_json, atomic_write_text, dumps_json, read_json

LOCK = "run.lock"
CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"
INPUTS = "run_inputs.json"
MANIFEST = "split_manifest.json"
STATUS = "federation_status.json"
ROUNDS_LOG = "rounds.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
FLOWER_LOG = "flower.log"
LOGS = "logs"
RESULT = "result.json"

#: Keys that may change between a run and its resume: they do not shape the training.
RESUME_MAY_CHANGE = ("resume", "evaluate", "eval", "engine.echo_log", "log")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (in use, or a resume that does not match)."""


# ------------------------------------------------------------------ lock


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/run.lock`` for the lifetime of a run.

    The kernel releases the lock when its holder dies, so a stale lock (a killed run) is
    taken over without a race. The file holds the holder's PID, host and start time, which
    a refused second run prints. (It is written in place, not atomically: replacing the
    file would replace the locked inode.)
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
                   if holder else "another process")
            raise RunDirError(
                f"{self.path.parent} is in use by another run ({who}); wait for it to finish or choose another "
                "hydra.run.dir"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, dumps_json(info).encode(), 0)
        self._fd = fd
        return self

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------ status


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The status file's fields, or {} when there is none (yet) or it is being replaced."""
    try:
        return read_json(Path(run_dir) / STATUS)
    except (FileNotFoundError, ValueError):
        return {}


def write_status(run_dir: str | os.PathLike, **fields: Any) -> None:
    """Merge ``fields`` into the status file (atomic)."""
    atomic_write_json(Path(run_dir) / STATUS, {**read_status(run_dir), **fields, "updated_at": time.time()})


def clear_status(run_dir: str | os.PathLike) -> None:
    """A status left by an earlier (killed or failed) attempt must not be read as this run's."""
    (Path(run_dir) / STATUS).unlink(missing_ok=True)


# ------------------------------------------------------------------ round record + log


@dataclass
class ClientFailure:
    """A sampled client whose update did not enter the aggregate.

    reason: one line (``error``, ``timeout``, ``non-finite update``, ``update norm``);
    error: the details (the client's traceback, the measured norm, ...).
    """

    client_id: int
    reason: str
    error: str


@dataclass
class RoundRecord:
    """One line of ``rounds.jsonl``: who was asked, who answered, what it cost.

    clients: per replied client (loss, num_examples, compute_s, bytes, ...).
    extra: engine-specific facts (the centralized engine's step budget, ...).
    """

    round: int
    sampled_clients: list[int]
    replied_clients: list[int]
    failed_clients: list[ClientFailure]
    lr: float
    loss: float
    num_examples: int
    clients: list[dict[str, Any]] = field(default_factory=list)
    aggregate_s: float = 0.0
    client_compute_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    l2_to_global: dict[str, Any] = field(default_factory=lambda: {"backbone": None, "heads": None})
    round_wall_s: float = 0.0
    global_weight_norm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["failed_clients"] = [
            ClientFailure(int(f["client_id"]), str(f.get("reason") or "error"), str(f.get("error", "")))
            for f in data.get("failed_clients", [])
        ]
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})


def read_round_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / ROUNDS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_round_log(run_dir: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(run_dir) / ROUNDS_LOG, "".join(dumps_json(r, indent=None) for r in records))


# ------------------------------------------------------------------ checkpoints + resume point


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (checkpoint_dir(run_dir) / LATEST).is_file()


def latest_round(run_dir: str | os.PathLike) -> int | None:
    """The round of the last complete checkpoint (from ``latest.json``), or None."""
    try:
        return int(read_json(checkpoint_dir(run_dir) / LATEST)["round"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def resume_point(run_dir: str | os.PathLike, resume: bool):
    """The last complete round's checkpoint and the round log up to it; ``(None, [])`` for a
    new run. Shared by every engine: a run dir that already holds checkpoints is an error
    unless the user asked to continue it."""
    from benchmark.federation.checkpoint import load_latest

    ckpt = load_latest(run_dir)
    if ckpt is None:
        return None, []
    if not resume:
        raise RunDirError(
            f"{run_dir} already holds checkpoints up to round {ckpt.round}; continue it with resume=true "
            "or start a new run directory"
        )
    return ckpt, [r for r in read_round_log(run_dir) if r["round"] <= ckpt.round]


# ------------------------------------------------------------------ resume checks


@dataclass(frozen=True)
class RunInputs:
    """What a resumed run must share with the run it continues.

    config: the resolved config without :data:`RESUME_MAY_CHANGE`; split_sha256: the
    manifest's content hash; lists_sha256: hashes of the dataset's train/test lists as
    read; code: package version and git commit.
    """

    config: dict[str, Any]
    split_sha256: str
    lists_sha256: dict[str, str]
    code: dict[str, Any]

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunInputs | None:
        path = Path(run_dir) / INPUTS
        if not path.is_file():
            return None
        data = read_json(path)
        return cls(data["config"], data["split_sha256"], data["lists_sha256"], data["code"])

    def write(self, run_dir: str | os.PathLike) -> None:
        atomic_write_json(Path(run_dir) / INPUTS, asdict(self))

    def differences(self, new: RunInputs) -> list[str]:
        """What differs from ``new``, one short phrase each ([] when a resume may go on)."""
        out = [f"config key {k}" for k in _changed_keys(self.config, new.config)]
        if self.split_sha256 != new.split_sha256:
            out.append(f"split manifest content ({self.split_sha256[:12]} -> {new.split_sha256[:12]})")
        out += [f"dataset {name} list ({self.lists_sha256.get(name, '-')[:12]} -> {new.lists_sha256.get(name, '-')[:12]})"
                for name in sorted(set(self.lists_sha256) | set(new.lists_sha256))
                if self.lists_sha256.get(name) != new.lists_sha256.get(name)]
        out += [f"code {k} ({self.code.get(k)} -> {new.code.get(k)})" for k in sorted(set(self.code) | set(new.code))
                if self.code.get(k) != new.code.get(k)]
        return out


def training_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without the keys a resume may change."""
    out = json.loads(json.dumps(resolved))
    for key in RESUME_MAY_CHANGE:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _changed_keys(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".") + f" ({_short(a)} -> {_short(b)})"]


_MISSING = "<absent>"


def _short(v: Any) -> str:
    text = json.dumps(v) if v is not _MISSING else v
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(run_dir: str | os.PathLike, new: RunInputs) -> None:
    """Refuse a resume whose inputs differ from the stored ones (nothing is written)."""
    old = RunInputs.read(run_dir)
    if old is None:
        return
    if diffs := old.differences(new):
        raise RunDirError(
            f"resume=true refused: {Path(run_dir) / INPUTS} differs in " + "; ".join(diffs)
            + ". Resume with the original overrides and files, or start a new run directory."
        )
