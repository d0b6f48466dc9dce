"""Making a ``fedvid-split/1`` manifest: a registered partitioner divides an annotation split's
train videos among clients (:func:`make_manifest`); the header, statistics and properties
the format (:mod:`benchmark.splits.format`) requires come from here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.registry import PARTITIONERS, build_partitioner
from benchmark.splits.format import FORMAT, client_statistics, content_sha256, split_properties
from benchmark.splits.partition import PartitionError, format_value
from benchmark.splits.standard import standard_split_hashes

#: Keys of a ``partition`` config that are not partitioner parameters.
_NOT_PARAMS = ("name", "num_clients")


def _split_tag(dataset: str, split: str) -> str:
    return f"{dataset}-s{split}" if str(split).isdigit() else f"{dataset}-{split}"


def manifest_id_for(
    dataset: str, split: str, partitioner: str, params: Mapping[str, Any], num_clients: int, seed: int
) -> str:
    """``<dataset>-s<split>-<partitioner[param]>-c<clients>-seed<seed>``: the partitioner's
    declared id parameters name it (:meth:`Partitioner.manifest_id`)."""
    return build_partitioner(partitioner).manifest_id(_split_tag(dataset, split), params, num_clients, seed)


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, Mapping):
        return {str(k): (_plain(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    from omegaconf import OmegaConf  # DictConfig

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def _make_command(
    dataset_choice: str, split: str, partition: Mapping[str, Any], seed: int, inputs: Sequence[str] = ()
) -> str:
    parts = [
        "fedvid splits make",
        f"dataset={dataset_choice}",
        f"dataset.split={split}",
        *inputs,
        f"partition={partition['name']}",
    ]
    parts += [f"partition.{k}={format_value(v)}" for k, v in sorted(partition.items()) if k != "name" and v is not None]
    parts.append(f"seed={seed}")
    return " ".join(parts)


def input_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that shaped a manifest's input lists (``dataset.*`` keys but the split
    and the video root, ``data_root``), to record in its ``make_command``; a data root inside the current
    folder is recorded relative to it."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "data_root":
            path = Path(value).resolve()
            if path.is_relative_to(Path.cwd()):
                value = path.relative_to(Path.cwd()).as_posix() or "."
            out.append(f"data_root={value}")
        elif key.startswith("dataset.") and key not in ("dataset.split", "dataset.root"):  # root: where, not which
            out.append(o)
    if any(" " in o for o in out):
        raise PartitionError(
            f"overrides with spaces cannot be recorded in make_command: {[o for o in out if ' ' in o]}"
        )
    return out


def _check_disjoint_lists(annotations: Any) -> None:
    shared = sorted({r.path for r in annotations.train} & {r.path for r in annotations.test})
    if shared:
        raise PartitionError(
            f"the train and test lists of {annotations.dataset} share {len(shared)} videos (e.g. {shared[:3]}; lists: "
            f"{', '.join(sorted(annotations.source_sha256))}): train/test leakage. Use disjoint lists."
        )


def make_manifest(
    annotations: Any, partition_cfg: Any, seed: int, *, dataset_choice: str | None = None, inputs: Sequence[str] = ()
) -> dict[str, Any]:
    """Partition ``annotations.train`` as ``partition_cfg`` says and return the manifest dict.

    annotations: ``benchmark.data.records.AnnotationSplit``. partition_cfg: the
    ``partition`` config (``name``, ``num_clients`` and the partitioner's params).
    dataset_choice: the ``conf/dataset`` option the annotations came from (default: the
    dataset name); recorded in ``make_command``. inputs: the overrides that changed the
    dataset's lists (:func:`input_overrides`), also recorded there; a manifest made from
    changed lists never takes the id of a committed split (its id gets ``-custom-<hash>``).
    The train and test lists must be disjoint.
    """
    partition = _plain(partition_cfg)
    name = partition.get("name")
    if name not in PARTITIONERS:
        raise PartitionError(f"partition.name={name!r} is not one of {PARTITIONERS.names()}")
    partitioner = build_partitioner(name)
    num_clients = partition.get("num_clients")
    params = {k: v for k, v in sorted(partition.items()) if k not in _NOT_PARAMS}
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PartitionError(f"seed must be an integer, got {seed!r}")
    _check_disjoint_lists(annotations)
    prepared = partitioner.prepare(params)
    header_params = prepared.recorded
    groups = partitioner.split(annotations.train, num_clients, prepared.for_split, seed)
    clients = [
        {"client_id": c, "videos": [{"video": v, "label": lab} for v, lab in videos]} for c, videos in enumerate(groups)
    ]
    props = split_properties(clients, len(annotations.classes))
    overlap = props["total_entries"] != props["unique_videos"]
    if overlap and not partitioner.allows_overlap:
        raise PartitionError(f"partitioner {name!r} gave a video to two clients (a bug: partitions must be disjoint)")
    split = str(annotations.split)
    partition_for_command = {**partition, **header_params}
    manifest_id = manifest_id_for(annotations.dataset, split, name, header_params, num_clients, seed)
    content = content_sha256(clients)
    if inputs and manifest_id in standard_split_hashes().values() and content not in standard_split_hashes():
        manifest_id = f"{manifest_id}-custom-{content[:8]}"
    return {
        "format": FORMAT,
        "manifest_id": manifest_id,
        "dataset": annotations.dataset,
        "annotation_split": split,
        "num_classes": len(annotations.classes),
        "source_sha256": dict(sorted(annotations.source_sha256.items())),
        "partitioner": name,
        "params": header_params,
        "seed": seed,
        "num_clients": num_clients,
        "overlap": overlap,
        "make_command": _make_command(
            dataset_choice or annotations.dataset, split, partition_for_command, seed, inputs
        ),
        "clients": clients,
        "statistics": client_statistics(clients),
        "properties": props,
        "content_sha256": content,
        **prepared.header,
    }


def dataset_choice(overrides: Sequence[str]) -> str | None:
    """The ``dataset=`` option of a list of Hydra overrides, or None."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")), None)
