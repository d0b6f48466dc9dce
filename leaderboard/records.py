"""Loading and validating result records (``fedvid-result/1``).

Validation = the JSON Schema (``leaderboard/schema/result.schema.json``, draft 2020-12)
plus semantic checks the schema cannot express: Top-k non-decreasing in k, top-1 <= top-5,
the split manifest being one of the committed standardized splits (or the record flagged
``nonstandard``), unique record ids, and no NaN/Infinity anywhere. Records are data only:
nothing in them is ever executed or unpickled.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from benchmark.io import read_json

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
RESULT_FORMAT = "fedvid-result/1"


@dataclass(frozen=True)
class Problem:
    file: str
    path: str  # JSON path, e.g. $.evaluations.retrieval.ucf101.topk.5
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = load_schema("result.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def standard_split_hashes() -> dict[str, str]:
    """content_sha256 -> manifest id of every committed standardized split."""
    from benchmark.splits.standard import standard_split_hashes as _hashes

    return _hashes()


def schema_problems(record: Any, file: str) -> list[Problem]:
    errors = sorted(_validator().iter_errors(record), key=lambda e: (list(e.absolute_path), e.message))
    return [Problem(file, _json_path(e.absolute_path), e.message) for e in errors]


def _pairs_non_decreasing(values: dict[str, float], base: str, file: str) -> list[Problem]:
    problems = []
    ks = sorted((int(k), v) for k, v in values.items())
    for (k1, v1), (k2, v2) in zip(ks, ks[1:]):
        if v2 < v1:
            problems.append(
                Problem(
                    file,
                    f"{base}.{k2}",
                    f"Top-{k2} ({v2}) is lower than Top-{k1} ({v1}); Top-k must be non-decreasing in k",
                )
            )
    return problems


def semantic_problems(record: dict, file: str, standard_hashes: dict[str, str] | None = None) -> list[Problem]:
    """Checks beyond the schema; assumes the record already passed the schema."""
    problems: list[Problem] = []
    ev = record.get("evaluations", {})
    for ds, r in ev.get("retrieval", {}).items():
        problems += _pairs_non_decreasing(r.get("topk", {}), f"$.evaluations.retrieval.{ds}.topk", file)
    for kind in ("linear_probe", "finetune"):
        for ds, acc in ev.get(kind, {}).items():
            for lo, hi in (("top1", "top5"), ("video_top1", "video_top5"), ("clip_top1", "clip_top5")):
                if lo in acc and hi in acc and acc[hi] < acc[lo]:
                    problems.append(
                        Problem(
                            file, f"$.evaluations.{kind}.{ds}.{hi}", f"{hi} ({acc[hi]}) is lower than {lo} ({acc[lo]})"
                        )
                    )
    track = record.get("track", {})
    sha = track.get("split_content_sha256")
    if not record.get("nonstandard", False):
        hashes = standard_split_hashes() if standard_hashes is None else standard_hashes
        if sha is None or sha not in hashes:
            problems.append(
                Problem(
                    file,
                    "$.track.split_content_sha256",
                    f"split hash {sha!r} is not one of the committed standardized splits "
                    '(see `fedvid splits verify`); set "nonstandard": true if the run used another split',
                )
            )
        elif track.get("split_manifest_id") not in (None, hashes[sha]):
            problems.append(
                Problem(
                    file,
                    "$.track.split_manifest_id",
                    f"{track.get('split_manifest_id')!r} does not match the manifest with this hash ({hashes[sha]!r})",
                )
            )
    return problems


def load_record_file(path: Path) -> tuple[Any, list[Problem]]:
    """Read one record; JSON errors (truncation, NaN/Infinity) become problems, not exceptions."""
    try:
        return read_json(path), []
    except (ValueError, FileNotFoundError) as e:
        return None, [Problem(str(path), "$", str(e).removeprefix(f"{path}: "))]


def validate_records(
    paths: Iterable[Path], standard_hashes: dict[str, str] | None = None
) -> tuple[list[tuple[Path, dict]], list[Problem]]:
    """Validate record files together (ids must be unique across them)."""
    hashes = standard_split_hashes() if standard_hashes is None else standard_hashes
    good: list[tuple[Path, dict]] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path in paths:
        record, errs = load_record_file(path)
        if errs:
            problems += errs
            continue
        errs = schema_problems(record, str(path))
        if not errs:
            errs = semantic_problems(record, str(path), hashes)
        rid = record.get("record_id") if isinstance(record, dict) else None
        if isinstance(rid, str):
            if rid in seen:
                errs.append(Problem(str(path), "$.record_id", f"duplicate record id {rid!r} (also in {seen[rid]})"))
            else:
                seen[rid] = str(path)
        problems += errs
        if not errs:
            good.append((path, record))
    return good, problems


def find_record_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus every ``*.json`` under given directories whose ``format``
    is a fedvid result (run directories also hold config/eval JSON, which are skipped)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                if _looks_like_record(f):
                    files.append(f)
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return files


# Other JSON files a run directory holds; everything else that fails to parse is reported.
_RUN_DIR_ARTIFACTS = {"config.json", "evaluation.json", "latest.json", "STAMP.json", "leaderboard.json"}


def _looks_like_record(path: Path) -> bool:
    if path.name in _RUN_DIR_ARTIFACTS:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: include it so that validation reports it
    return isinstance(data, dict) and str(data.get("format", "")).startswith("fedvid-result/")
