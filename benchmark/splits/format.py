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
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write_json, dumps_json, read_json, sha256_bytes

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


class ManifestError(ValueError):
    """A manifest file is malformed or inconsistent; the message starts with the file."""


# ----------------------------------------------------------------------------- statistics


def client_statistics(clients: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-client sizes and class counts (integers only)."""
    rows = []
    for c in clients:
        counts = Counter(v["label"] for v in c["videos"] if v["label"] >= 0)
        row = {
            "client_id": c["client_id"],
            "num_videos": len(c["videos"]),
            "num_classes": len(counts),
            "class_counts": [[label, counts[label]] for label in sorted(counts)],
        }
        unlabelled = sum(1 for v in c["videos"] if v["label"] < 0)
        if unlabelled:  # label -1: not recorded (an imported index split; the dataset files have it)
            row["unlabelled"] = unlabelled
        rows.append(row)
    return {"clients": rows}


def split_properties(clients: Sequence[Mapping[str, Any]], num_classes: int) -> dict[str, Any]:
    """Facts a user comparing against this split needs, computed from the clients."""
    per_video = Counter(v["video"] for c in clients for v in c["videos"])
    class_sets = [frozenset(v["label"] for v in c["videos"] if v["label"] >= 0) for c in clients]
    sizes = [len(c["videos"]) for c in clients]
    groups: dict[frozenset, list[int]] = {}
    for c, s in zip(clients, class_sets):
        if s:  # unlabelled clients (label -1) have no class set to compare
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
    unlabelled = sum(1 for c in clients for v in c["videos"] if v["label"] < 0)
    if unlabelled:
        props["unlabelled_entries"] = unlabelled
    props["notes"] = _notes(props, len(clients))
    return props


def _notes(p: Mapping[str, Any], num_clients: int) -> str:
    text = [
        f"{p['total_entries']:,} entries over {num_clients} clients: {p['unique_videos']:,} unique videos, "
        f"{p['classes_covered']} of {p['num_classes']} classes, "
        f"{p['classes_per_client']['min']}-{p['classes_per_client']['max']} classes and "
        f"{p['videos_per_client']['min']:,}-{p['videos_per_client']['max']:,} videos per client."
    ]
    if p.get("unlabelled_entries"):
        text = [
            f"{p['total_entries']:,} entries over {num_clients} clients: {p['unique_videos']:,} unique items, "
            f"{p['videos_per_client']['min']:,}-{p['videos_per_client']['max']:,} per client. Labels are not recorded "
            f"(label -1: a published index split; the labels are read from the dataset files at run time)."
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


# ----------------------------------------------------------------------------- writing


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
