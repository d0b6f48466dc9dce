"""``fedvid-split/1`` manifests: which client trains on which videos, as a checkable file.

A manifest is one JSON object (``.json``, or reproducible gzip ``.json.gz`` for the big
Kinetics splits) written by ``benchmark.io.atomic_write_json`` (sorted keys, indent 2):

- ``format``: ``"fedvid-split/1"``; ``manifest_id`` (e.g. ``ucf101-s1-dirichlet0.1-c10-seed0``)
- ``dataset``, ``annotation_split``, ``num_classes``, ``source_sha256`` (relative path of
  each official list -> sha256 of its bytes, as the annotation reader reports them)
- ``partitioner``, ``params``, ``seed``, ``num_clients``, ``overlap`` (true only when a
  video may be in several clients: imported published splits that do so)
- ``make_command``: the ``fedvid splits make ...`` line that regenerates the file
- ``clients``: ``[{"client_id": int, "videos": [{"video": path as in the official list,
  "label": 0-based int}, ...]}, ...]``, client ids 0..N-1 in order, videos sorted by path
- ``statistics``: per client ``num_videos``, ``num_classes``, ``class_counts`` (``[[label,
  count], ...]``); ``properties``: totals (entries, unique videos, classes covered,
  clients per video, class sets shared by several clients) and ``notes`` in words
- ``content_sha256``: sha256 of ``canonical_json_bytes(clients)`` (sorted keys, no
  whitespace, UTF-8), i.e. of the content, never of the (compressed) file bytes
- imported splits also have ``imported_sha256`` (file name -> sha256 of the published files)

Same inputs give a byte-identical file: the partitioners sort their input and use one
seeded ``numpy.random.default_rng``; statistics hold integers only (no libm floats).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmark import DATASETS_DIR, PROJECT_ROOT
from benchmark.io import atomic_write_json, canonical_json_bytes, dumps_json, read_json, sha256_bytes, sha256_file
from benchmark.registry import PARTITIONERS, build_partitioner
from benchmark.splits.partition import Imported, PartitionError, fedvssl_class_index, fedvssl_client_files, format_value

FORMAT = "fedvid-split/1"

#: Top-level keys every manifest has, with their JSON types.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "manifest_id": str,
    "dataset": str,
    "annotation_split": str,
    "num_classes": int,
    "source_sha256": dict,
    "partitioner": str,
    "params": dict,
    "seed": int,
    "num_clients": int,
    "overlap": bool,
    "make_command": str,
    "clients": list,
    "statistics": dict,
    "properties": dict,
    "content_sha256": str,
}

#: Keys of a ``partition`` config that are not partitioner parameters.
_NOT_PARAMS = ("name", "num_clients")
#: Imported-split parameters that only name the split (kept in the header, not in the id).
_IMPORTED_ID_PARAM = Imported.id_param


class ManifestError(ValueError):
    """A manifest file is malformed or inconsistent; the message starts with the file."""


# ----------------------------------------------------------------------------- making


def _split_tag(dataset: str, split: str) -> str:
    return f"{dataset}-s{split}" if str(split).isdigit() else f"{dataset}-{split}"


def manifest_id_for(dataset: str, split: str, partitioner: str, params: Mapping[str, Any], num_clients: int, seed: int) -> str:
    """``<dataset>-s<split>-<partitioner[param]>-c<clients>-seed<seed>``: the partitioner's
    declared id parameters name it (:meth:`Partitioner.manifest_id`; imported: its tag, no seed)."""
    return build_partitioner(partitioner).manifest_id(_split_tag(dataset, split), params, num_clients, seed)


def _relative_to_project(path: str | os.PathLike) -> str:
    """A path as recorded in a manifest: relative to the repository, POSIX separators."""
    return Path(os.path.relpath(Path(path).resolve(), PROJECT_ROOT)).as_posix()


def _resolve_project_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, Mapping):
        return {str(k): (_plain(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    from omegaconf import OmegaConf  # DictConfig

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def client_statistics(clients: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-client sizes and class counts (integers only)."""
    rows = []
    for c in clients:
        counts = Counter(v["label"] for v in c["videos"])
        rows.append(
            {
                "client_id": c["client_id"],
                "num_videos": len(c["videos"]),
                "num_classes": len(counts),
                "class_counts": [[label, counts[label]] for label in sorted(counts)],
            }
        )
    return {"clients": rows}


def split_properties(clients: Sequence[Mapping[str, Any]], num_classes: int) -> dict[str, Any]:
    """Facts a user comparing against this split needs, computed from the clients."""
    per_video = Counter(v["video"] for c in clients for v in c["videos"])
    class_sets = [frozenset(v["label"] for v in c["videos"]) for c in clients]
    sizes = [len(c["videos"]) for c in clients]
    groups: dict[frozenset, list[int]] = {}
    for c, s in zip(clients, class_sets):
        groups.setdefault(s, []).append(c["client_id"])
    shared = sorted(ids for ids in groups.values() if len(ids) > 1)
    shared_disjoint = all(
        len({v["video"] for i in ids for v in clients[i]["videos"]}) == sum(sizes[i] for i in ids) for ids in shared
    )
    props: dict[str, Any] = {
        "total_entries": sum(sizes),
        "unique_videos": len(per_video),
        "classes_covered": len(set().union(*class_sets)) if class_sets else 0,
        "num_classes": num_classes,
        "videos_per_client": {"min": min(sizes), "max": max(sizes)},
        "classes_per_client": {"min": min(map(len, class_sets)), "max": max(map(len, class_sets))},
        # number of videos that are in exactly k clients, as {"k": count}
        "clients_per_video": {str(k): n for k, n in sorted(Counter(per_video.values()).items())},
        # |classes of client c  &  classes of client c+1| over c = 0..N-2
        "classes_shared_with_next_client": {
            "min": min((len(a & b) for a, b in zip(class_sets, class_sets[1:])), default=0),
            "max": max((len(a & b) for a, b in zip(class_sets, class_sets[1:])), default=0),
        },
        # clients whose class sets are identical (groups of client ids)
        "identical_class_set_groups": shared,
        "identical_class_set_groups_disjoint_videos": shared_disjoint,
    }
    props["notes"] = _notes(props, len(clients))
    return props


def _notes(p: Mapping[str, Any], num_clients: int) -> str:
    text = [
        f"{p['total_entries']:,} entries over {num_clients} clients: {p['unique_videos']:,} unique videos, "
        f"{p['classes_covered']} of {p['num_classes']} classes, "
        f"{p['classes_per_client']['min']}-{p['classes_per_client']['max']} classes and "
        f"{p['videos_per_client']['min']:,}-{p['videos_per_client']['max']:,} videos per client."
    ]
    shared_videos = sum(n for k, n in p["clients_per_video"].items() if int(k) > 1)
    if shared_videos:
        most = max(int(k) for k in p["clients_per_video"])
        nxt = p["classes_shared_with_next_client"]
        text.append(
            f"Not a partition: {shared_videos:,} videos are in more than one client (up to {most}); "
            f"consecutive clients c and c+1 share {nxt['min']}-{nxt['max']} classes (overlapping class windows), "
            f"and {p['num_classes'] - p['classes_covered']} of the {p['num_classes']} classes are never used."
        )
    groups = p["identical_class_set_groups"]
    if groups and all(len(g) == 2 for g in groups):
        offsets = {g[1] - g[0] for g in groups}
        pairing = f"clients c and c+{offsets.pop()}" if len(offsets) == 1 else f"{len(groups)} client pairs"
        disjoint = "disjoint" if p["identical_class_set_groups_disjoint_videos"] else "overlapping"
        text.append(f"{len(groups)} pairs ({pairing}) have the same classes and {disjoint} videos.")
    return " ".join(text)


def _make_command(dataset_choice: str, split: str, partition: Mapping[str, Any], seed: int,
                  inputs: Sequence[str] = ()) -> str:
    parts = ["fedvid splits make", f"dataset={dataset_choice}", f"dataset.split={split}", *inputs,
             f"partition={partition['name']}"]
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
        raise PartitionError(f"overrides with spaces cannot be recorded in make_command: {[o for o in out if ' ' in o]}")
    return out


def _check_disjoint_lists(annotations: Any) -> None:
    shared = sorted({r.path for r in annotations.train} & {r.path for r in annotations.test})
    if shared:
        raise PartitionError(
            f"the train and test lists of {annotations.dataset} share {len(shared)} videos (e.g. {shared[:3]}; lists: "
            f"{', '.join(sorted(annotations.source_sha256))}): train/test leakage. Use disjoint lists."
        )


def make_manifest(annotations: Any, partition_cfg: Any, seed: int, *, dataset_choice: str | None = None,
                  inputs: Sequence[str] = ()) -> dict[str, Any]:
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
    header_params = dict(params)
    extra: dict[str, Any] = {}
    if name == "imported":
        if not params.get("path"):
            raise PartitionError("partition.path is required for the imported partitioner (a FedVSSL split folder)")
        folder = _resolve_project_path(str(params["path"]))
        params["path"] = str(folder)
        header_params["path"] = _relative_to_project(folder)
        header_params[_IMPORTED_ID_PARAM] = params.get(_IMPORTED_ID_PARAM) or folder.name
        class_file, _ = fedvssl_class_index(folder)
        files = [*fedvssl_client_files(folder), class_file]
        extra["imported_sha256"] = {_relative_to_project(f): sha256_file(f) for f in files}
    groups = partitioner.split(annotations.train, num_clients, params, seed)
    clients = [
        {"client_id": c, "videos": [{"video": v, "label": lab} for v, lab in videos]} for c, videos in enumerate(groups)
    ]
    props = split_properties(clients, len(annotations.classes))
    overlap = props["total_entries"] != props["unique_videos"]
    if overlap and not partitioner.allows_overlap:
        raise PartitionError(f"partitioner {name!r} gave a video to two clients (a bug: partitions must be disjoint)")
    split = str(annotations.split)
    partition_for_command = {**partition, **({"path": header_params["path"]} if name == "imported" else {})}
    if name == "imported":
        partition_for_command[_IMPORTED_ID_PARAM] = header_params[_IMPORTED_ID_PARAM]
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
        "make_command": _make_command(dataset_choice or annotations.dataset, split, partition_for_command, seed,
                                      inputs),
        "clients": clients,
        "statistics": client_statistics(clients),
        "properties": props,
        "content_sha256": content,
        **extra,
    }


def content_sha256(clients: Any) -> str:
    """sha256 of ``benchmark.io.canonical_json_bytes(clients)`` (what the manifest's hash covers).

    Same bytes as ``canonical_json_bytes`` (sorted keys, no whitespace, UTF-8, NaN
    rejected by ``allow_nan=False``) without its per-value Python walk, which costs
    seconds on a 228k-entry Kinetics manifest; tests check the two agree.
    """
    data = json.dumps(clients, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return sha256_bytes(data.encode("utf-8"))


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The uncompressed bytes ``write_manifest`` writes (``.json.gz`` gzips exactly these)."""
    return dumps_json(manifest).encode("utf-8")


def write_manifest(manifest: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically; ``.json.gz`` is gzip with mtime 0, so the bytes are reproducible."""
    path = Path(path)
    if not (path.name.endswith(".json") or path.name.endswith(".json.gz")):
        raise ManifestError(f"{path}: a split manifest must be named *.json or *.json.gz")
    return atomic_write_json(path, manifest)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class SplitManifest:
    """A loaded, validated manifest. ``data`` is the parsed JSON object."""

    path: Path
    data: dict[str, Any]

    @property
    def manifest_id(self) -> str:
        return self.data["manifest_id"]

    @property
    def num_clients(self) -> int:
        return self.data["num_clients"]

    @property
    def content_sha256(self) -> str:
        return self.data["content_sha256"]

    @property
    def dataset(self) -> str:
        return self.data["dataset"]

    @property
    def annotation_split(self) -> str:
        return self.data["annotation_split"]

    @property
    def partitioner(self) -> str:
        return self.data["partitioner"]

    @property
    def overlap(self) -> bool:
        return self.data["overlap"]

    def client_videos(self, client_id: int) -> list[tuple[str, int]]:
        """``(video, label)`` pairs of one client, sorted by path."""
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"{self.path}: client_id {client_id} is not in 0..{self.num_clients - 1}")
        return [(v["video"], v["label"]) for v in self.data["clients"][client_id]["videos"]]


def _fail(path: Path, what: str) -> ManifestError:
    return ManifestError(f"{path}: {what}")


def validate_manifest_data(data: Any, path: Path) -> None:
    """Structure, hash and statistics checks; raises ``ManifestError`` naming file and key."""
    if not isinstance(data, dict):
        raise _fail(path, f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise _fail(path, f"key 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    for key, kind in REQUIRED_KEYS.items():
        if key not in data:
            raise _fail(path, f"missing required key {key!r}")
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(path, f"key {key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    clients = data["clients"]
    if not clients:
        raise _fail(path, "has no clients (key 'clients' is empty); a manifest needs at least one client")
    if data["num_clients"] != len(clients):
        raise _fail(path, f"key 'num_clients' is {data['num_clients']} but 'clients' has {len(clients)} entries")
    for i, client in enumerate(clients):
        where = f"clients[{i}]"
        if not isinstance(client, dict) or set(client) != {"client_id", "videos"}:
            raise _fail(path, f"{where} must be an object with keys client_id and videos")
        if client["client_id"] != i:
            raise _fail(path, f"{where}.client_id is {client['client_id']!r}, expected {i} (ids 0..N-1 in order)")
        if not isinstance(client["videos"], list):
            raise _fail(path, f"{where}.videos must be a list")
        for j, v in enumerate(client["videos"]):
            if (
                not isinstance(v, dict)
                or set(v) != {"video", "label"}
                or not isinstance(v["video"], str)
                or not isinstance(v["label"], int)
                or isinstance(v["label"], bool)
            ):
                raise _fail(path, f"{where}.videos[{j}] must be {{'video': str, 'label': int}}, got {v!r}")
        names = [v["video"] for v in client["videos"]]
        if len(set(names)) != len(names):
            dup = next(n for n, k in Counter(names).items() if k > 1)
            raise _fail(path, f"{where} lists video {dup!r} twice")
    actual = content_sha256(clients)
    if actual != data["content_sha256"]:
        raise _fail(
            path,
            f"key 'content_sha256' is {data['content_sha256']} but the clients hash to {actual}: "
            "the manifest was edited or corrupted (regenerate it with `fedvid splits make`)",
        )
    if data["statistics"] != client_statistics(clients):
        raise _fail(path, "key 'statistics' does not match the clients (edited by hand?)")
    if data["properties"] != split_properties(clients, data["num_classes"]):
        raise _fail(path, "key 'properties' does not match the clients (edited by hand?)")
    has_overlap = data["properties"]["total_entries"] != data["properties"]["unique_videos"]
    if has_overlap != data["overlap"]:
        raise _fail(
            path,
            f"key 'overlap' is {data['overlap']} but {'some' if has_overlap else 'no'} video is in several clients",
        )


def load_manifest(path: str | os.PathLike) -> SplitManifest:
    """Read and validate a manifest (``.json`` or ``.json.gz``)."""
    path = Path(path)
    try:
        data = read_json(path)
    except (ValueError, FileNotFoundError) as e:
        raise ManifestError(str(e)) from e
    validate_manifest_data(data, path)
    return SplitManifest(path=path, data=data)


def read_manifest_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


# ----------------------------------------------------------------------------- committed set


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
    return DATASETS_DIR / manifest["dataset"] / "splits" / (manifest["manifest_id"] + (".json.gz" if compress else ".json"))


# ----------------------------------------------------------------------------- configs


def compose_splits_config(overrides: Sequence[str]) -> Any:
    """Compose ``conf/splits.yaml`` with Hydra overrides, as ``fedvid splits make`` does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import benchmark.config  # noqa: F401  (registers the ${project_root:} resolver)
    from benchmark import CONF_DIR

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="splits", overrides=list(overrides))


def command_overrides(make_command: str) -> list[str]:
    """The Hydra overrides of a manifest's ``make_command`` (``fedvid splits make A=B ...``)."""
    prefix = "fedvid splits make"
    if not make_command.startswith(prefix):
        raise ManifestError(f"make_command {make_command!r} does not start with {prefix!r}")
    return make_command[len(prefix) :].split()


def _dataset_choice(overrides: Sequence[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")), None)


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


def make_from_overrides(overrides: Sequence[str], cache: dict | None = None) -> dict[str, Any]:
    """Compose the config, read the annotations and make the manifest (``make-standard``, ``verify``)."""
    cfg = compose_splits_config(overrides)
    annotations = annotations_for(cfg, cache)
    return make_manifest(annotations, cfg.partition, int(cfg.seed), dataset_choice=_dataset_choice(overrides),
                         inputs=input_overrides(overrides))


# ----------------------------------------------------------------------------- verify


def verify_manifest(
    path: str | os.PathLike, annotations: Any = None, *, regenerate: bool = True, cache: dict | None = None
) -> list[str]:
    """Problems with one manifest (empty list = good); every message starts with the file.

    Checks: format, keys, content_sha256, statistics (``load_manifest``); clients disjoint
    unless the manifest declares ``overlap``; every video in the train split with its
    label; no test video; ``source_sha256`` equal to the annotation lists' hashes; and,
    with ``regenerate``, that ``make_command`` reproduces the file byte for byte (imported
    splits only when their published files are present).
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
        cfg = compose_splits_config(overrides)
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
            k for k in set(data["source_sha256"]) | set(annotations.source_sha256)
            if data["source_sha256"].get(k) != annotations.source_sha256.get(k)
        )
        problem(f"source_sha256 differs from the annotation lists for {changed[:5]} (lists changed since the split was made)")
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
        if data["partitioner"] == "imported":
            folder = _resolve_project_path(data["params"]["path"])
            if not folder.is_dir():
                return problems  # the published files are not here; nothing more to compare
            for rel, sha in data.get("imported_sha256", {}).items():
                f = _resolve_project_path(rel)
                if not f.is_file() or sha256_file(f) != sha:
                    problem(f"imported_sha256: {rel} is missing or changed since the split was imported")
        try:
            fresh = make_manifest(annotations, cfg.partition, int(cfg.seed), dataset_choice=_dataset_choice(overrides),
                                  inputs=input_overrides(overrides))
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
                (*base, "partition=pathological", f"partition.classes_per_client={classes_per_client}",
                 "partition.num_clients=10", "seed=0")
            )
        )
    k400 = ("dataset=kinetics400",)
    out.append(StandardSplit((*k400, "partition=iid", "partition.num_clients=100", "seed=0"), compress=True))
    out += [
        StandardSplit((*k400, "partition=dirichlet", f"partition.alpha={a}", "partition.num_clients=100", "seed=0"), compress=True)
        for a in (0.1, 0.5)
    ]
    out.append(
        StandardSplit(
            (*k400, "partition=pathological", "partition.classes_per_client=8", "partition.num_clients=100", "seed=0"),
            compress=True,
        )
    )
    fedvssl = "../shared/annotations/kinetics400/fedvssl_splits"
    out += [
        StandardSplit(
            (*k400, "partition=imported", f"partition.path={fedvssl}/{kind}", f"partition.tag=fedvssl-{kind}",
             "partition.num_clients=100"),
            compress=True,
        )
        for kind in ("iid", "noniid")
    ]
    return out


#: The manifests committed in ``datasets/<name>/splits/`` (``fedvid splits make-standard``).
STANDARD_SPLITS: list[StandardSplit] = _standard_splits()
