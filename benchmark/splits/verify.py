"""``fedvid splits verify``: a manifest against its annotation lists and its ``make_command``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmark.io import canonical_json_bytes
from benchmark.registry import PARTITIONERS, build_partitioner
from benchmark.splits.format import ManifestError, load_manifest, manifest_bytes, read_manifest_bytes
from benchmark.splits.make import dataset_choice, input_overrides, make_manifest


def command_overrides(make_command: str) -> list[str]:
    """The Hydra overrides of a manifest's ``make_command`` (``fedvid splits make A=B ...``)."""
    prefix = "fedvid splits make"
    if not make_command.startswith(prefix):
        raise ManifestError(f"make_command {make_command!r} does not start with {prefix!r}")
    return make_command[len(prefix) :].split()


def annotations_for(cfg: Any, cache: dict | None = None) -> Any:
    """``load_annotations(cfg.dataset)``, memoised in ``cache`` by the resolved dataset config."""
    from omegaconf import OmegaConf

    from benchmark.data.annotations import load_annotations

    key = canonical_json_bytes(OmegaConf.to_container(cfg.dataset, resolve=True))
    if cache is None:
        return load_annotations(cfg.dataset)
    if key not in cache:
        cache[key] = load_annotations(cfg.dataset)
    return cache[key]


def verify_manifest(
    path: str | os.PathLike,
    compose: Callable[[Sequence[str]], Any],
    annotations: Any = None,
    *,
    regenerate: bool = True,
    cache: dict | None = None,
) -> list[str]:
    """Problems with one manifest (empty list = good); every message starts with the file.

    Checks: format, keys, content_sha256, statistics (``load_manifest``); clients disjoint
    unless the manifest declares ``overlap``; every video in the train split with its
    label; no test video; ``source_sha256`` equal to the annotation lists' hashes; and,
    with ``regenerate``, the inputs the partitioner recorded (``recorded_input_problems``; an
    imported split's published files) and that ``make_command`` reproduces the file byte for
    byte (only when those inputs are on this machine).
    compose: Hydra overrides -> the composed ``fedvid splits make`` config (``dataset``, ``partition``,
    ``seed``); the command layer's ``compose_splits_config``.
    annotations: the ``AnnotationSplit`` to check against (default: read the lists that
    ``make_command``'s dataset config names). cache: dict shared across calls so each
    dataset's lists are read once.
    """
    path = Path(path)
    try:
        manifest = load_manifest(path)
    except ManifestError as e:
        return [str(e)]
    data = manifest.data
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(f"{path}: {text}")

    try:
        overrides = command_overrides(data["make_command"])
        cfg = compose(overrides)
        if annotations is None:
            annotations = annotations_for(cfg, cache)
    except Exception as e:  # noqa: BLE001 - reported against this file; the other files are still verified
        problem(f"cannot read the config/annotation lists named by make_command ({type(e).__name__}: {e})")
        return problems
    if (annotations.dataset, str(annotations.split)) != (data["dataset"], data["annotation_split"]):
        problem(
            f"manifest is for {data['dataset']} split {data['annotation_split']} but the annotations are "
            f"{annotations.dataset} split {annotations.split}"
        )
        return problems
    if data["source_sha256"] != dict(annotations.source_sha256):
        changed = sorted(
            k
            for k in set(data["source_sha256"]) | set(annotations.source_sha256)
            if data["source_sha256"].get(k) != annotations.source_sha256.get(k)
        )
        problem(
            f"source_sha256 differs from the annotation lists for {changed[:5]} (lists changed since the split was made)"
        )
    if data["num_classes"] != len(annotations.classes):
        problem(f"num_classes is {data['num_classes']} but the dataset has {len(annotations.classes)} classes")

    train = {r.path: r.label for r in annotations.train}
    test = {r.path for r in annotations.test}
    owner: dict[str, int] = {}
    reported = 0
    for c in data["clients"]:
        for v in c["videos"]:
            video, label = v["video"], v["label"]
            if reported < 20:
                if video in test:
                    problem(f"client {c['client_id']}: {video!r} is a test video")
                    reported += 1
                elif video not in train:
                    problem(f"client {c['client_id']}: {video!r} is not in the train split")
                    reported += 1
                elif train[video] != label:
                    problem(f"client {c['client_id']}: {video!r} has label {label}, the train list says {train[video]}")
                    reported += 1
                elif not data["overlap"] and video in owner:
                    problem(f"{video!r} is in clients {owner[video]} and {c['client_id']} but 'overlap' is false")
                    reported += 1
            owner.setdefault(video, c["client_id"])

    if regenerate and not problems:
        if data["partitioner"] in PARTITIONERS:  # an unknown one is reported by make_manifest below
            recorded_problems = build_partitioner(data["partitioner"]).recorded_input_problems(data)
            if recorded_problems is None:
                return problems  # inputs the manifest records are not on this machine
            for text in recorded_problems:
                problem(text)
        try:
            fresh = make_manifest(
                annotations,
                cfg.partition,
                int(cfg.seed),
                dataset_choice=dataset_choice(overrides),
                inputs=input_overrides(overrides),
            )
        except Exception as e:  # noqa: BLE001 - reported against this file; the other files are still verified
            problem(f"cannot regenerate with {data['make_command']!r} ({type(e).__name__}: {e})")
            return problems
        if manifest_bytes(fresh) != read_manifest_bytes(path):
            same = fresh["content_sha256"] == data["content_sha256"]
            problem(
                f"`{data['make_command']}` does not reproduce this file byte for byte "
                f"({'same clients, different header' if same else 'different clients'}); "
                "regenerate it with `fedvid splits make-standard`"
            )
    return problems
