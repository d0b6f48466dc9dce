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
    checkpoints/             round_XXXX.pt + latest.json (benchmark.federation.checkpoint);
                             pruned to ``checkpoint.keep_last`` + every ``keep_every``-th round
    client_state/            client_XXXX/round_XXXX.pt: a client's own tensors (heads of
                             exchange=backbone methods), pruned to what a resume reads
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
RESUME_MAY_CHANGE = ("resume", "evaluate", "eval", "engine.echo_log", "log", "checkpoint")
CLIENT_STATE = "client_state"


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
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
                if holder
                else "another process"
            )
            raise RunDirError(
                f"{self.path.parent} is in use by another run ({who}); wait for it to finish or choose another "
                "hydra.run.dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
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


# ------------------------------------------------------------------ retention


@dataclass(frozen=True)
class Retention:
    """Which checkpoints stay on disk (``checkpoint.keep_last`` / ``checkpoint.keep_every``).

    Global checkpoints: the newest ``keep_last`` (>= 1; the newest is what ``latest.json``
    names, what resume and ``fedvid evaluate`` read) plus every round divisible by
    ``keep_every`` (0: none). Client state, per client: the newest file of a round that is
    already checkpointed (what a resume of that checkpoint loads), every file of a later
    round (a round in progress), and rounds divisible by ``keep_every``; older files are
    never read again.
    """

    keep_last: int = 2
    keep_every: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int) or self.keep_last < 1:
            raise ValueError(
                f"checkpoint.keep_last={self.keep_last!r}: expected an integer >= 1 "
                "(the newest checkpoint is what resume and evaluation read)"
            )
        if isinstance(self.keep_every, bool) or not isinstance(self.keep_every, int) or self.keep_every < 0:
            raise ValueError(
                f"checkpoint.keep_every={self.keep_every!r}: expected an integer >= 0 (0: keep none extra)"
            )

    @classmethod
    def from_config(cls, cfg: Any) -> Retention:
        node = (cfg.get("checkpoint") if hasattr(cfg, "get") else None) or {}
        return cls(int(node.get("keep_last", cls.keep_last)), int(node.get("keep_every", cls.keep_every)))

    def milestone(self, server_round: int) -> bool:
        return self.keep_every > 0 and server_round > 0 and server_round % self.keep_every == 0

    def kept_rounds(self, rounds: list[int]) -> set[int]:
        """Of the checkpointed ``rounds``, those to keep."""
        newest = sorted(rounds)[-self.keep_last :]
        return set(newest) | {r for r in rounds if self.milestone(r)}

    def max_checkpoints(self, total_rounds: int, first_round: int = 0) -> int:
        """The most checkpoint files on disk at once over a run of ``total_rounds`` rounds
        (+1: a new file is written before an old one is pruned)."""
        rounds = range(first_round, total_rounds + 1)
        return min(len(rounds), self.keep_last + 1 + sum(self.milestone(r) for r in rounds))

    def max_client_files(self, num_clients: int, per_round: int, total_rounds: int) -> int:
        """The most client-state files on disk at once: one per client (its newest
        checkpointed round), the files of the round in progress (two rounds' worth while
        the server prunes after a checkpoint) and the milestone rounds' files."""
        milestones = sum(self.milestone(r) for r in range(1, total_rounds + 1))
        return min(num_clients * total_rounds, num_clients + 2 * per_round + milestones * per_round)


def _round_of(path: Path) -> int | None:
    stem = path.stem
    if not stem.startswith("round_"):
        return None
    try:
        return int(stem[len("round_") :])
    except ValueError:
        return None


def prune_checkpoints(run_dir: str | os.PathLike, retention: Retention) -> list[Path]:
    """Delete the global checkpoints ``retention`` does not keep; returns what was deleted.

    Runs only after ``latest.json`` names a complete checkpoint, and never deletes the file
    it names, whatever the settings."""
    folder = checkpoint_dir(run_dir)
    pointer = folder / LATEST
    if not pointer.is_file():
        return []
    current = str(read_json(pointer).get("file", ""))
    files = {r: p for p in folder.glob("round_*.pt") if (r := _round_of(p)) is not None}
    keep = retention.kept_rounds(list(files))
    removed = []
    for r, path in sorted(files.items()):
        if r not in keep and path.name != current:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def local_state_file(state_dir: str | os.PathLike, client_id: int, server_round: int) -> Path:
    """A client's own tensors (heads) after ``server_round``: ``<state_dir>/client_XXXX/round_XXXX.pt``."""
    return Path(state_dir) / f"client_{client_id:04d}" / f"round_{server_round:04d}.pt"


def prune_client_state(client_dir: str | os.PathLike, checkpointed_round: int, retention: Retention) -> list[Path]:
    """Delete one client's state files that no resume can read: of its files of rounds <=
    ``checkpointed_round`` only the newest (and milestone rounds) stay; files of later rounds
    (a round in progress) always stay. Returns what was deleted."""
    files = {r: p for p in Path(client_dir).glob("round_*.pt") if (r := _round_of(p)) is not None}
    done = sorted(r for r in files if r <= checkpointed_round)
    removed = []
    for r in done[:-1]:
        if not retention.milestone(r):
            files[r].unlink(missing_ok=True)
            removed.append(files[r])
    return removed


def prune_all_client_state(state_dir: str | os.PathLike, checkpointed_round: int, retention: Retention) -> int:
    """:func:`prune_client_state` for every ``client_XXXX`` folder under ``state_dir``
    (the server does it after each checkpoint when the state lives in the run directory)."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return 0
    return sum(len(prune_client_state(d, checkpointed_round, retention)) for d in sorted(state_dir.glob("client_*")))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


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
        out += [
            f"dataset {name} list ({self.lists_sha256.get(name, '-')[:12]} -> {new.lists_sha256.get(name, '-')[:12]})"
            for name in sorted(set(self.lists_sha256) | set(new.lists_sha256))
            if self.lists_sha256.get(name) != new.lists_sha256.get(name)
        ]
        out += [
            f"code {k} ({self.code.get(k)} -> {new.code.get(k)})"
            for k in sorted(set(self.code) | set(new.code))
            if self.code.get(k) != new.code.get(k)
        ]
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
        return [
            k
            for key in sorted(set(a) | set(b), key=str)
            for k in _changed_keys(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}{key}.")
        ]
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
            f"resume=true refused: {Path(run_dir) / INPUTS} differs in "
            + "; ".join(diffs)
            + ". Resume with the original overrides and files, or start a new run directory."
        )
