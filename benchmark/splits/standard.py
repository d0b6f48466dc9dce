"""The committed standard splits: every manifest under ``datasets/<name>/splits/``, their
content hashes (for the leaderboard) and the list ``fedvid splits make-standard`` regenerates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmark import DATASETS_DIR
from benchmark.splits.format import load_manifest, read_manifest_bytes


def committed_manifests() -> list[Path]:
    """Every manifest committed under ``datasets/<name>/splits/``, sorted."""
    found = [*DATASETS_DIR.glob("*/splits/*.json"), *DATASETS_DIR.glob("*/splits/*.json.gz")]
    return sorted(found)


def _top_level_string(raw: bytes, key: str) -> str | None:
    """The value of a top-level string key in a ``dumps_json`` file (indent 2), or None.

    Only top-level keys are indented by exactly two spaces, so a plain search suffices.
    """
    marker = b'\n  "' + key.encode() + b'": "'
    start = raw.find(marker)
    if start < 0 or raw.find(marker, start + 1) >= 0:
        return None
    start += len(marker)
    return raw[start : raw.index(b'"', start)].decode("utf-8")


@lru_cache(maxsize=1)
def _standard_split_hashes(paths: tuple[Path, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in paths:
        raw = read_manifest_bytes(path)
        sha, manifest_id = _top_level_string(raw, "content_sha256"), _top_level_string(raw, "manifest_id")
        if sha is None or manifest_id is None:  # not written by write_manifest: parse it fully
            m = load_manifest(path)
            sha, manifest_id = m.content_sha256, m.manifest_id
        out[sha] = manifest_id
    return out


def standard_split_hashes() -> dict[str, str]:
    """``content_sha256 -> manifest_id`` of every committed standard manifest (for the leaderboard).

    Reads the header fields only; ``fedvid splits verify`` is what checks the hashes.
    """
    return dict(_standard_split_hashes(tuple(committed_manifests())))


def standard_manifest_path(manifest: Mapping[str, Any], compress: bool) -> Path:
    return (
        DATASETS_DIR
        / manifest["dataset"]
        / "splits"
        / (manifest["manifest_id"] + (".json.gz" if compress else ".json"))
    )


# ----------------------------------------------------------------------------- standard set


@dataclass(frozen=True)
class StandardSplit:
    """One committed manifest: the ``fedvid splits make`` overrides and whether to gzip it."""

    overrides: tuple[str, ...]
    compress: bool = False


def _standard_splits() -> list[StandardSplit]:
    out: list[StandardSplit] = []
    for dataset, classes_per_client in (("ucf101", 11), ("hmdb51", 6)):
        base = (f"dataset={dataset}", "dataset.split=1")
        out += [StandardSplit((*base, "partition=iid", f"partition.num_clients={n}", "seed=0")) for n in (5, 10)]
        out += [
            StandardSplit((*base, "partition=dirichlet", f"partition.alpha={a}", "partition.num_clients=10", "seed=0"))
            for a in (0.1, 0.5, 1.0)
        ]
        out.append(
            StandardSplit(
                (
                    *base,
                    "partition=pathological",
                    f"partition.classes_per_client={classes_per_client}",
                    "partition.num_clients=10",
                    "seed=0",
                )
            )
        )
    k400 = ("dataset=kinetics400",)
    out.append(StandardSplit((*k400, "partition=iid", "partition.num_clients=100", "seed=0"), compress=True))
    out += [
        StandardSplit(
            (*k400, "partition=dirichlet", f"partition.alpha={a}", "partition.num_clients=100", "seed=0"), compress=True
        )
        for a in (0.1, 0.5)
    ]
    out.append(
        StandardSplit(
            (*k400, "partition=pathological", "partition.classes_per_client=8", "partition.num_clients=100", "seed=0"),
            compress=True,
        )
    )
    for dataset in ("cifar10", "cifar100"):  # hc-fang/ssd's published splits (datasets/<name>/ssd_splits/)
        out += [
            StandardSplit(
                (
                    f"dataset={dataset}",
                    "partition=imported",
                    f"partition.path=datasets/{dataset}/ssd_splits/{dataset}_dir_client{n}_alpha0.1.json.gz",
                    "partition.tag=ssd-dir0.1",
                    f"partition.num_clients={n}",
                ),
                compress=True,
            )
            for n in (10, 50)
        ]
    fedvssl = "../shared/annotations/kinetics400/fedvssl_splits"
    out += [
        StandardSplit(
            (
                *k400,
                "partition=imported",
                f"partition.path={fedvssl}/{kind}",
                f"partition.tag=fedvssl-{kind}",
                "partition.num_clients=100",
            ),
            compress=True,
        )
        for kind in ("iid", "noniid")
    ]
    return out


#: The manifests committed in ``datasets/<name>/splits/`` (``fedvid splits make-standard``).
STANDARD_SPLITS: list[StandardSplit] = _standard_splits()
