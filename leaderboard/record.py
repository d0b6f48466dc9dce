"""The result record of a run (``fedvid-result/1``): its one owner, beside its schema.

:class:`ResultRecord` is the typed record (``from_json`` / ``to_json``); every reader —
``fedvid run``'s summary, ``fedvid compare``, ``fedvid reproduce``, ``fedvid leaderboard
build`` — goes through it, and :meth:`Evaluations.metrics` is the one place that names a
metric (``retrieval.<dataset>.top1``, ``linear_probe.<dataset>.video_top1``, ...).
:func:`build_result_record` assembles the record of a run from its specs (``RunSpec``), the
config hash and claimed protocol, the split manifest, the per-round log, the evaluation block and the run's timings;
``benchmark.io.atomic_write_json`` writes it. Section and key names are part of the
leaderboard contract (``leaderboard/schema/result.schema.json``); validation lives in
:mod:`leaderboard.records`.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark import PROJECT_ROOT, __version__
from benchmark.io import canonical_json_bytes, sha256_bytes

if TYPE_CHECKING:
    from benchmark.specs import RunSpec

RESULT_FORMAT = "fedvid-result/1"
#: ``degraded`` when more than this fraction of the sampled client updates failed (a
#: client error, a timeout or an update rejected by the guard) over the whole run.
MAX_FAILED_UPDATE_FRACTION = 0.10
#: Packages whose versions every record lists (what produced the numbers).
RECORDED_PACKAGES = (
    "torch",
    "torchvision",
    "flwr",
    "ray",
    "hydra-core",
    "numpy",
    "decord",
    "av",
    "pytorchvideo",
    "torchmetrics",
    "fedvid-bench",
)


#: Keys of an evaluation entry that describe how a metric was produced, not a metric.
_NOT_METRICS = frozenset({"protocol", "curve", "split", "random_init"})


@dataclass(frozen=True)
class Evaluations:
    """The ``evaluations`` section: ``{kind: {dataset: entry}}`` (kind: retrieval,
    linear_probe, finetune, robustness, representation) plus ``random_init``, the same
    block measured on the untrained backbone."""

    sections: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Evaluations:
        return cls(dict(data or {}))

    def to_json(self) -> dict[str, Any]:
        return dict(self.sections)

    def datasets(self, kind: str = "retrieval") -> list[str]:
        """The datasets measured by ``kind``, in the record's order."""
        return list(self.sections.get(kind) or {})

    @property
    def random_init(self) -> Evaluations:
        return Evaluations.from_json(self.sections.get("random_init"))

    def metrics(self) -> dict[str, float]:
        """Every metric by its flat name: ``{"retrieval": {"ucf101": {"topk": {"1": .3}}}}``
        -> ``{"retrieval.ucf101.top1": .3}``. Numeric leaves only; protocol settings,
        curves and the random-init reference are not metrics. Records of the first
        evaluation format (``retrieval.<ds>.top1``) give the same names."""
        out: dict[str, float] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, bool):
                return
            if isinstance(node, (int, float)):
                out[prefix] = float(node)
            elif isinstance(node, Mapping):
                for key, value in node.items():
                    if key in _NOT_METRICS:
                        continue
                    if key == "topk" and isinstance(value, Mapping):
                        for k, v in value.items():
                            walk(f"{prefix}.top{k}", v)
                    else:
                        walk(f"{prefix}.{key}" if prefix else key, value)

        walk("", self.sections)
        return out

    def metric(self, kind: str, dataset: str, name: str) -> float | None:
        """One metric (``metric("retrieval", "ucf101", "top1")``); None when not measured
        (or, for ``robustness``'s ``k_half``, never reached)."""
        return self.metrics().get(f"{kind}.{dataset}.{name}")

    def entry(self, kind: str, dataset: str) -> Mapping[str, Any]:
        """The whole entry of ``kind`` on ``dataset`` (its protocol, curve, ...); {} when absent."""
        return (self.sections.get(kind) or {}).get(dataset) or {}


#: Top-level sections in the order the record is written; any other key (``source``,
#: ``submitter``, ``notes`` of reported entries) follows them unchanged.
_SECTIONS = (
    "format",
    "status",
    "status_reasons",
    "track",
    "method",
    "evaluations",
    "participation",
    "videos",
    "systems",
    "provenance",
    "failure",
    "protocol",
    "nonstandard",
    "record_id",
)


@dataclass(frozen=True)
class ResultRecord:
    """A ``fedvid-result/1`` record. Sections the readers share are typed; ``track``,
    ``method``, ``systems`` and ``provenance`` stay the schema's objects (documented there).
    A section the record does not have is None (reported entries carry no ``systems``)."""

    format: str = RESULT_FORMAT
    status: str | None = None
    status_reasons: list[str] | None = None
    track: Mapping[str, Any] | None = None
    method: Mapping[str, Any] | None = None
    evaluations: Evaluations = field(default_factory=Evaluations)
    participation: Mapping[str, Any] | None = None
    videos: Mapping[str, Any] | None = None
    systems: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] | None = None
    failure: Mapping[str, str] | None = None
    protocol: Mapping[str, Any] | None = None
    nonstandard: bool | None = None
    record_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultRecord:
        known = {k: data[k] for k in _SECTIONS if k in data}
        known["evaluations"] = Evaluations.from_json(data.get("evaluations"))
        return cls(**known, extra={k: v for k, v in data.items() if k not in _SECTIONS})

    def to_json(self) -> dict[str, Any]:
        """The record as written; optional sections that are None are left out."""
        out: dict[str, Any] = {}
        for key in _SECTIONS:
            value = getattr(self, key)
            if key == "evaluations":
                value = value.to_json()
            if value is not None:
                out[key] = value
        return {**out, **self.extra}

    @property
    def name(self) -> str:
        """The method's display name (``CtP + FedAvg``)."""
        return (self.method or {})["name"]

    @property
    def seed(self) -> int | None:
        seed = ((self.provenance or {}).get("seeds") or {}).get("seed")
        return None if seed is None else int(seed)

    @property
    def wall_time_s(self) -> float | None:
        wall = (self.systems or {}).get("wall_time_s")
        return None if wall is None else float(wall)


def git_state(root: Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository the code runs from, or (None, None) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def package_versions() -> dict[str, str]:
    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def hardware() -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aggregator_label(spec: RunSpec) -> str:
    """engine=centralized trains no federation: "centralized", or "none" with 0 rounds (random init)."""
    if spec.engine.name == "centralized":
        return "centralized" if spec.federation.rounds > 0 else "none"
    return spec.federation.aggregator


def display_name(method: str, aggregator: dict) -> str:
    """``ctp`` + ``fvssl {alpha: 0.9, beta: 1}`` -> ``"ctp + fvssl (alpha=0.9, beta=1)"``."""
    params = aggregator.get("params") or {}
    args = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{method} + {aggregator['name']}" + (f" ({args})" if args else "")


def participation(rounds: list[dict]) -> dict[str, Any]:
    """Sampled / replied / failed client updates over the run, each failure with its round and
    reason, and the clients whose every sampled update failed (``excluded_clients``)."""
    sampled: dict[int, int] = {}
    failed: dict[int, int] = {}
    failures = []
    for r in rounds:
        for c in r["sampled_clients"]:
            sampled[c] = sampled.get(c, 0) + 1
        for f in r.get("failed_clients", []):
            failed[f["client_id"]] = failed.get(f["client_id"], 0) + 1
            failures.append({"round": r["round"], "client_id": f["client_id"], "reason": f.get("reason") or "error"})
    total_sampled, total_failed = sum(sampled.values()), sum(failed.values())
    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    return {
        "sampled": total_sampled,
        "replied": total_sampled - total_failed,
        "failed": total_failed,
        "failed_fraction": total_failed / total_sampled if total_sampled else 0.0,
        "failed_by_reason": reasons,
        "failures": failures,
        "excluded_clients": sorted(c for c, n in sampled.items() if failed.get(c, 0) >= n),
    }


def run_status(part: dict[str, Any], videos: dict[str, Any], failure: dict[str, str] | None) -> tuple[str, list[str]]:
    """``reproduced`` only when the run completed as configured; else ``degraded`` (with the
    reasons) or ``failed`` (a stage did not complete). Thresholds: docs/leaderboard.md."""
    if failure:
        return "failed", [f"{failure['stage']} failed: {failure['message'].splitlines()[0]}"]
    reasons = []
    if part["excluded_clients"]:
        reasons.append(f"clients {part['excluded_clients']} sent no usable update in any round they were sampled")
    if part["failed_fraction"] > MAX_FAILED_UPDATE_FRACTION:
        reasons.append(
            f"{part['failed']} of {part['sampled']} sampled client updates failed (> {MAX_FAILED_UPDATE_FRACTION:.0%})"
        )
    for where, counts in _video_counts(videos):
        if counts.get("skipped"):
            reasons.append(f"{counts['skipped']} of {counts['listed']} {where} videos skipped")
    return ("degraded" if reasons else "reproduced"), reasons


def _video_counts(videos: dict[str, Any]):
    if videos.get("pretraining"):
        yield "pretraining", videos["pretraining"]
    for ds, splits in sorted((videos.get("evaluation") or {}).items()):
        for split, counts in sorted(splits.items()):
            yield f"{ds} {split}", counts


def record_protocol(cfg: dict) -> dict[str, Any] | None:
    """``{"name", "version", "variant"}`` of the run's ``protocol`` block (conf/protocol/<name>.yaml),
    or None; ``variant: "modified"`` plus ``overridden`` when the run changed protocol-owned keys
    without naming a variant (:func:`benchmark.protocols.protocol_id`)."""
    from benchmark.protocols import protocol_id

    return protocol_id(cfg)


def build_result_record(
    spec: RunSpec,
    manifest,
    rounds: list[dict],
    evaluations: dict,
    *,
    dataset_id: str,
    method_display_name: str | None,
    config_sha256: str,
    protocol: dict[str, Any] | None,
    wall_time_s: float,
    peak_memory_bytes: int,
    started_at: str,
    finished_at: str,
    method_pretext: str,
    startup_s: float | None = None,
    flower: dict[str, Any] | None = None,
    videos: dict[str, Any] | None = None,
    failure: dict[str, str] | None = None,
) -> ResultRecord:
    """The ``fedvid-result/1`` record.

    spec: the run's specs. manifest: the run's ``SplitManifest``. dataset_id: the pretraining
    dataset's id. method_display_name: ``method.display_name`` (None: ``method + aggregator (params)``).
    config_sha256: of the resolved run config. protocol: the claimed protocol
    (:func:`record_protocol`) or None.
    rounds: the records of ``rounds.jsonl``. evaluations: ``evaluate_backbone``'s block
    (``{}`` when evaluation was switched off). videos: listed/present/skipped counts,
    ``{"pretraining": {...}, "evaluation": {dataset: {split: {...}}}}``. failure: the stage
    that did not complete (``{"stage": "evaluation", "message": ...}``), or None. flower: the
    SuperLink/Ray the federation ran on (``FederationOutcome.flower``; shared in a sweep), or None.
    """
    from benchmark.federation.training import clients_per_round

    fed, training, model = spec.federation, spec.training, spec.model
    commit, dirty = git_state()
    bytes_per_round = [{"round": r["round"], "up": int(r["bytes_up"]), "down": int(r["bytes_down"])} for r in rounds]
    track = {
        "dataset": dataset_id,
        "split_manifest_id": manifest.manifest_id,
        "split_content_sha256": manifest.content_sha256,
        "num_clients": fed.num_clients,
        # the number actually sampled each round (a fraction in the config is resolved here)
        "clients_per_round": clients_per_round(fed.clients_per_round, fed.num_clients),
        "rounds": fed.rounds,
        "local_epochs": training.local_epochs,
        "local_steps": training.local_steps,
        "backbone": model.backbone,
        "input_size": [training.clip.frames, training.clip.size, training.clip.size],
    }
    videos = videos or {}
    part = participation(rounds)
    status, reasons = run_status(part, videos, failure)
    record: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "status": status,
        "status_reasons": reasons,
        "track": track,
        "method": {
            "name": method_display_name
            or display_name(model.method, {"name": fed.aggregator, "params": dict(fed.aggregator_params)}),
            "pretext": method_pretext,
            "aggregator": _aggregator_label(spec),
            "params": {"method": dict(model.method_params), "aggregator": dict(fed.aggregator_params)},
            "exchange": model.exchange,
            "code": {"package": "fedvid-bench", "version": __version__, "commit": commit},
        },
        "evaluations": evaluations,
        "participation": part,
        "videos": videos,
        "systems": {
            "wall_time_s": round(float(wall_time_s), 3),
            "startup_s": None if startup_s is None else round(float(startup_s), 3),
            "client_compute_s": round(sum(float(r["client_compute_s"]) for r in rounds), 3),
            "bytes_up": sum(b["up"] for b in bytes_per_round),
            "bytes_down": sum(b["down"] for b in bytes_per_round),
            "bytes_per_round": bytes_per_round,
            "peak_memory_bytes": int(peak_memory_bytes),
            "hardware": hardware(),
            **({"flower": flower} if flower else {}),
        },
        "provenance": {
            "git_commit": commit,
            "git_dirty": dirty,
            "packages": package_versions(),
            "config_sha256": config_sha256,
            "seeds": {"seed": fed.seed},
            "started_at": started_at,
            "finished_at": finished_at,
        },
    }
    if failure:
        record["failure"] = failure
    if protocol is not None:
        record["protocol"] = protocol
    from benchmark.splits.standard import standard_split_hashes

    if manifest.content_sha256 not in standard_split_hashes():
        record["nonstandard"] = True  # a split made for this run, not a committed standard one
    # The id names the content: same track + method + config + evaluations => same id.
    record["record_id"] = sha256_bytes(
        canonical_json_bytes(
            {
                "track": track,
                "method": record["method"],
                "config": record["provenance"]["config_sha256"],
                "started_at": started_at,
            }
        )
    )[:16]
    return ResultRecord.from_json(record)
