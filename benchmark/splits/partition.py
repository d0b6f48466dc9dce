"""Partitioners: divide a train split's videos among federated clients.

Every partitioner is a pure function ``(records, num_clients, params, seed) -> clients``:

- ``records``: the train split as ``(video, label)`` pairs (``VideoRecord`` objects work
  too); they are sorted by path first, so the order they come in cannot change the result.
- ``clients``: ``num_clients`` lists of ``(video, label)`` pairs, each sorted by path.
- All randomness comes from one ``numpy.random.default_rng(seed)`` stream; nothing
  depends on ``hash()``, dict order or global RNG state.

Each is registered (``benchmark.registry.PARTITIONERS``, under the name used in
``conf/partition/*.yaml``) as a :class:`Partitioner` subclass that declares its parameters;
the manifest id and the early config check come from that declaration. Adding a
partitioner is one registered class plus one config file.
``imported`` takes a published split as-is (it reads files, draws nothing, and may give
one video to several clients when the published split does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark import PROJECT_ROOT
from benchmark.io import sha256_file
from benchmark.registry import register_partitioner

Pair = tuple[str, int]

#: How many times the Dirichlet draw is repeated before giving up on ``min_size``.
DIRICHLET_MAX_RETRIES = 1000


class PartitionError(ValueError):
    """A partition cannot be made with the given parameters (the message says which)."""


def as_pairs(records: Iterable[Any]) -> list[Pair]:
    """``(video, label)`` pairs sorted by path; accepts pairs or objects with ``.path``/``.label``."""
    pairs: list[Pair] = []
    for r in records:
        if isinstance(r, tuple):
            video, label = r
        else:
            video, label = r.path, r.label
        pairs.append((str(video), int(label)))
    pairs.sort()
    seen = set()
    for video, _ in pairs:
        if video in seen:
            raise PartitionError(f"video {video!r} appears twice in the records to partition")
        seen.add(video)
    return pairs


def _check_num_clients(pairs: Sequence[Pair], num_clients: int) -> None:
    if not isinstance(num_clients, (int, np.integer)) or isinstance(num_clients, bool) or num_clients < 1:
        raise PartitionError(f"partition.num_clients must be a positive integer, got {num_clients!r}")
    if num_clients > len(pairs):
        raise PartitionError(f"partition.num_clients={num_clients} is more than the {len(pairs)} videos to partition")


def _param(params: Mapping[str, Any], key: str, kind: type, *, positive: bool = True) -> Any:
    if key not in params or params[key] is None:
        raise PartitionError(f"partition.{key} is required")
    value = params[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or (positive and not value > 0):
        what = "a positive integer" if kind is int else "a positive number"
        raise PartitionError(f"partition.{key} must be {what}, got {value!r}")
    return kind(value)


def _finish(pairs: Sequence[Pair], groups: Sequence[Iterable[int]]) -> list[list[Pair]]:
    """Index groups -> client lists of pairs, each sorted by path."""
    return [sorted(pairs[int(i)] for i in group) for group in groups]


def iid(records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int) -> list[list[Pair]]:
    """Shuffled, equal sizes.

    Algorithm: sort by path; ``perm = rng.permutation(n)``; client ``c`` gets the ``c``-th
    of ``num_clients`` contiguous chunks of ``perm`` (``numpy.array_split``: sizes differ
    by at most one, the first ``n % num_clients`` clients get the extra video).
    """
    pairs = as_pairs(records)
    _check_num_clients(pairs, num_clients)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(pairs))
    return _finish(pairs, np.array_split(perm, num_clients))


def dirichlet(records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int) -> list[list[Pair]]:
    """Label skew by a per-class Dirichlet allocation (Hsu et al. 2019; as in FedML and
    Flower Datasets' ``DirichletPartitioner`` without self-balancing).

    Params: ``alpha`` (concentration; smaller = more skew), ``min_size`` (every client
    must get at least this many videos).

    Algorithm: sort by path; repeat up to ``DIRICHLET_MAX_RETRIES`` times, continuing the
    same generator: for each class ``k`` in increasing label order, shuffle its videos
    (``rng.permutation``), draw ``p ~ Dirichlet(alpha * ones(num_clients))`` and cut the
    shuffled list at ``rint(cumsum(p)[:-1] * n_k)``; client ``c`` gets piece ``c``. (FedML
    and Flower cut at ``floor(...)``, which hands the last client one extra video of almost
    every class when its share is tiny; rounding the cumulative cuts has no such bias.) Accept
    the first draw in which every client has ``>= min_size`` videos; otherwise raise
    ``PartitionError`` naming alpha, min_size and the best smallest client reached.
    """
    pairs = as_pairs(records)
    _check_num_clients(pairs, num_clients)
    alpha = _param(params, "alpha", float)
    min_size = _param(params, "min_size", int, positive=False)
    if min_size < 0:
        raise PartitionError(f"partition.min_size must be >= 0, got {min_size}")
    if min_size * num_clients > len(pairs):
        raise PartitionError(
            f"partition.min_size={min_size} x num_clients={num_clients} exceeds the {len(pairs)} videos"
        )
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    rng = np.random.default_rng(seed)
    best = -1
    for _ in range(DIRICHLET_MAX_RETRIES):
        groups: list[list[int]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = idx[rng.permutation(len(idx))]
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.rint(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for c, piece in enumerate(np.split(idx, cuts)):
                groups[c].extend(piece.tolist())
        smallest = min(len(g) for g in groups)
        if smallest >= min_size:
            return _finish(pairs, groups)
        best = max(best, smallest)
    raise PartitionError(
        f"dirichlet partition with alpha={alpha}, num_clients={num_clients}: no draw in "
        f"{DIRICHLET_MAX_RETRIES} gave every client >= min_size={min_size} videos (best smallest "
        f"client: {best}); lower partition.min_size, raise partition.alpha or use fewer clients"
    )


def _counts_from_ratios(total: int, ratios: np.ndarray) -> np.ndarray:
    """fedbox ``_counts_from_ratios``: floor(total x normalised ratios), the remainder to the
    largest fractional parts (``argsort``'s order breaks ties)."""
    ratios = ratios / ratios.sum()
    counts = total * ratios
    result = np.floor(counts).astype(np.int64)
    rest = total - int(result.sum())
    if rest > 0:
        result[np.argsort(counts - result)[-rest:]] += 1
    return result


def dirichlet_fedbox(
    records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int
) -> list[list[Pair]]:
    """Label skew by a per-class Dirichlet allocation exactly as hc-fang/ssd draws it
    (``split_dataset.py`` -> ``fedbox/utils/data/splitting.py`` ``split_dirichlet_label`` @ ffb85ba).

    Params: ``alpha``; ``numpy_seed``: the seed of numpy's legacy global generator
    (``set_seed(1)`` in ``split_dataset.py``). The run's ``seed`` does not enter the draw.

    Algorithm (one ``numpy.random.RandomState(numpy_seed)``, the stream ``np.random.seed``
    gives): sort by path (= torchvision order for CIFAR's ``train/<index>`` records and
    Tiny-ImageNet's ``ImageFolder`` paths); ``P = dirichlet(alpha * ones(num_clients),
    size=num_classes)`` in one draw; then for each class in increasing label order, its
    positions in ascending order are shuffled in place (``shuffle``) and cut into
    ``_counts_from_ratios(n_k, P[k])`` pieces; client ``c`` gets piece ``c``. No redraw: a
    client may end up empty (the runner then refuses the split). Reproduces the four
    published SSD CIFAR splits index for index (``tests/test_image_track.py``).
    """
    pairs = as_pairs(records)
    _check_num_clients(pairs, num_clients)
    alpha = _param(params, "alpha", float)
    numpy_seed = _param(params, "numpy_seed", int, positive=False)
    if not 0 <= numpy_seed < 2**32:
        raise PartitionError(f"partition.numpy_seed must be in 0..2**32-1 (a numpy.random.seed), got {numpy_seed}")
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    classes, y = np.unique(labels, return_inverse=True)
    rs = np.random.RandomState(numpy_seed)
    proportion = rs.dirichlet(np.repeat(alpha, num_clients), size=len(classes))  # (classes, clients)
    groups: list[list[int]] = [[] for _ in range(num_clients)]
    for k in range(len(classes)):
        idx = np.flatnonzero(y == k)
        rs.shuffle(idx)
        cuts = np.cumsum(_counts_from_ratios(len(idx), proportion[k]))[:-1]
        for c, piece in enumerate(np.split(idx, cuts)):
            groups[c].extend(piece.tolist())
    return _finish(pairs, groups)


def pathological(records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int) -> list[list[Pair]]:
    """Exactly ``classes_per_client`` (k) classes per client; every video in exactly one client.

    Needs ``k <= num_classes`` and ``num_clients * k >= num_classes`` (so every class, and
    hence every video, has a client).

    Algorithm: sort by path. There are ``S = num_clients * k`` class slots; every class
    gets ``S // C`` slots and the classes at the first ``S % C`` positions of
    ``rng.permutation(C)`` get one more. Lay the slots out as runs, one run per class in
    the order of a second ``rng.permutation(C)``, and give slot ``i`` to client
    ``client_perm[i % num_clients]`` (``client_perm = rng.permutation(num_clients)``).
    A run is at most ``num_clients`` long, so a client never gets a class twice and every
    client gets exactly k classes. Then each class's videos are shuffled
    (``rng.permutation``) and split into as many near-equal parts as the class has slots
    (``numpy.array_split``), in increasing client id order. When ``S`` is a multiple of
    ``C`` (e.g. 100 clients x 8 classes over Kinetics-400's 400 classes) clients come in
    groups that share the same k classes with disjoint videos.
    """
    pairs = as_pairs(records)
    _check_num_clients(pairs, num_clients)
    k = _param(params, "classes_per_client", int)
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    classes = np.unique(labels)
    num_classes = len(classes)
    if k > num_classes:
        raise PartitionError(f"partition.classes_per_client={k} is more than the {num_classes} classes in the split")
    slots = num_clients * k
    if slots < num_classes:
        need = -(-num_classes // num_clients)
        raise PartitionError(
            f"partition.classes_per_client={k} x num_clients={num_clients} = {slots} class slots "
            f"cannot cover the {num_classes} classes (every video must go to a client); use "
            f"classes_per_client >= {need} or more clients"
        )
    rng = np.random.default_rng(seed)
    counts = np.full(num_classes, slots // num_classes, dtype=np.int64)
    counts[rng.permutation(num_classes)[: slots % num_classes]] += 1
    client_perm = rng.permutation(num_clients)
    owners: list[list[int]] = [[] for _ in range(num_classes)]
    slot = 0
    for ci in rng.permutation(num_classes):
        for _ in range(int(counts[ci])):
            owners[ci].append(int(client_perm[slot % num_clients]))
            slot += 1
    groups: list[list[int]] = [[] for _ in range(num_clients)]
    for ci, cls in enumerate(classes):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        if len(idx) < len(owners[ci]):
            raise PartitionError(
                f"class {int(cls)} has {len(idx)} videos but must be shared by {len(owners[ci])} clients; "
                "lower partition.classes_per_client"
            )
        for client, piece in zip(sorted(owners[ci]), np.array_split(idx, len(owners[ci]))):
            groups[client].extend(piece.tolist())
    return _finish(pairs, groups)


def quantity(records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int) -> list[list[Pair]]:
    """Size skew with IID labels: client sizes follow a log-normal distribution.

    Params: ``sigma`` (log-normal shape; larger = more skew), ``min_size`` (>= 1).

    Algorithm: sort by path; ``w = rng.lognormal(0, sigma, num_clients)``, normalised to
    sum 1. Every client gets ``min_size`` videos plus its share ``w_c`` of the remaining
    ``n - num_clients * min_size`` by the largest-remainder method (floors first, then one
    more to the largest fractional parts, ties to the lower client id). Then
    ``perm = rng.permutation(n)`` is cut into contiguous chunks of those sizes.
    """
    pairs = as_pairs(records)
    _check_num_clients(pairs, num_clients)
    sigma = _param(params, "sigma", float)
    min_size = _param(params, "min_size", int)
    spare = len(pairs) - num_clients * min_size
    if spare < 0:
        raise PartitionError(
            f"partition.min_size={min_size} x num_clients={num_clients} exceeds the {len(pairs)} videos"
        )
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, sigma, num_clients)
    share = w / w.sum() * spare
    sizes = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - sizes), kind="stable")
    sizes[order[: spare - int(sizes.sum())]] += 1
    sizes += min_size
    perm = rng.permutation(len(pairs))
    return _finish(pairs, np.split(perm, np.cumsum(sizes)[:-1]))


def _video_key(path: str) -> str:
    """Match key ``<class folder>/<clip>``: no split folder, no extension, spaces as '_'."""
    parts = path.rsplit("/", 2)
    name, folder = parts[-1], (parts[-2] if len(parts) > 1 else "")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{folder.replace(' ', '_')}/{stem}"


def _class_key(name: str) -> str:
    return name.strip().replace(" ", "_")


def fedvssl_client_files(directory: Path) -> list[Path]:
    """``client_dist1.json .. client_distN.json`` of a FedVSSL split folder, in client order."""
    files = sorted(directory.glob("client_dist*.json"), key=lambda f: int(f.stem[len("client_dist") :] or 0))
    numbers = [int(f.stem[len("client_dist") :]) for f in files]
    if not files:
        raise PartitionError(f"{directory}: no client_dist<N>.json files (expected a FedVSSL split folder)")
    if numbers != list(range(1, len(files) + 1)):
        raise PartitionError(f"{directory}: client files must be client_dist1..{len(files)}.json, found {numbers}")
    return files


def fedvssl_class_index(directory: Path) -> tuple[Path, dict[int, str]]:
    """The split's ``classInd.txt`` (``"<1-based id> <class_name>"`` lines), in the folder or its parent."""
    for candidate in (directory / "classInd.txt", directory.parent / "classInd.txt"):
        if candidate.is_file():
            index: dict[int, str] = {}
            for n, line in enumerate(candidate.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split(maxsplit=1)
                if len(parts) != 2 or not parts[0].isdigit():
                    raise PartitionError(f"{candidate}:{n}: expected '<id> <class_name>', got {line!r}")
                index[int(parts[0])] = parts[1].strip()
            return candidate, index
    raise PartitionError(f"{directory}: no classInd.txt in the folder or its parent")


def imported(records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int) -> list[list[Pair]]:
    """A published split taken as-is (FedVSSL format), mapped onto this dataset's records.

    Params: ``path`` (folder with ``client_dist1..N.json``, each a JSON list of
    ``{"name": "<class_dir>/<clip>", "label": <1-based classInd id>}``; ``classInd.txt`` in
    the folder or its parent). ``records`` must carry ``class_name`` (``VideoRecord``).

    Algorithm: file ``client_distN.json`` becomes client ``N - 1``. Each entry's ``name`` is
    matched to the train record with the same ``<class folder>/<clip>`` (the record's split
    folder and extension dropped, spaces in the class folder read as '_'); its label is the record's 0-based label, after checking
    that the entry's classInd id names the record's class. Duplicates inside one client are
    an error; the same video in several clients is kept (the published split has it).
    ``seed`` is unused. ``num_clients`` must equal the number of files.
    """
    if not params.get("path"):
        raise PartitionError("partition.path is required for the imported partitioner (a FedVSSL split folder)")
    directory = Path(str(params["path"]))
    if directory.is_file():
        return imported_index_lists(records, num_clients, directory)
    if not directory.is_dir():
        raise PartitionError(f"partition.path={directory}: no such folder")
    files = fedvssl_client_files(directory)
    if num_clients != len(files):
        raise PartitionError(
            f"partition.num_clients={num_clients} but {directory} has {len(files)} client files; "
            f"set partition.num_clients={len(files)}"
        )
    class_file, class_index = fedvssl_class_index(directory)
    by_key: dict[str, Any] = {}
    for r in records:
        key = _video_key(r.path)
        if key in by_key:
            raise PartitionError(f"records {by_key[key].path!r} and {r.path!r} have the same name {key!r}")
        by_key[key] = r
    clients: list[list[Pair]] = []
    for f in files:
        try:
            entries = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PartitionError(f"{f}: invalid JSON ({e})") from e
        if not isinstance(entries, list):
            raise PartitionError(f"{f}: expected a JSON list of {{name, label}} objects")
        videos: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != {"name", "label"}:
                raise PartitionError(f"{f}[{i}]: expected an object with keys name and label, got {entry!r}")
            record = by_key.get(_video_key(entry["name"]))
            if record is None:
                raise PartitionError(f"{f}[{i}]: {entry['name']!r} is not in the train split")
            published_class = class_index.get(entry["label"])
            if published_class is None or _class_key(published_class) != _class_key(record.class_name):
                raise PartitionError(
                    f"{f}[{i}]: label {entry['label']} is {published_class!r} in {class_file}, "
                    f"but {record.path!r} is class {record.class_name!r}"
                )
            if record.path in videos:
                raise PartitionError(f"{f}: {entry['name']!r} is listed twice")
            videos[record.path] = int(record.label)
        clients.append(sorted(videos.items()))
    return clients


def read_index_lists(file: Path) -> list[list[int]]:
    """A published index split (hc-fang/ssd ``data/fed/*.json``; ``.json.gz`` = the same bytes gzipped):
    a JSON list with one list of 0-based dataset indices per client."""
    import gzip

    try:
        raw = file.read_bytes()
        data = json.loads(gzip.decompress(raw) if file.name.endswith(".gz") else raw)
    except (OSError, EOFError, ValueError) as e:
        raise PartitionError(
            f"{file}: not a readable JSON index split ({type(e).__name__}: {e}); restore the file"
        ) from None
    if not isinstance(data, list) or not all(
        isinstance(c, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in c) for c in data
    ):
        raise PartitionError(f"{file}: expected a JSON list of client lists of integer indices")
    return data


def imported_index_lists(records: Sequence[Any], num_clients: int, file: Path) -> list[list[Pair]]:
    """A published split given as index lists into the train set's torchvision order (SSD's format).

    ``records`` sorted by path must be that order (the CIFAR readers name records
    ``train/<index:05d>``). List ``k`` becomes client ``k``; an index outside the train
    set or listed twice in one client is an error; labels are the records' labels.
    """
    pairs = as_pairs(records)
    clients_idx = read_index_lists(file)
    if num_clients != len(clients_idx):
        raise PartitionError(
            f"partition.num_clients={num_clients} but {file} has {len(clients_idx)} clients; "
            f"set partition.num_clients={len(clients_idx)}"
        )
    clients: list[list[Pair]] = []
    for k, idx in enumerate(clients_idx):
        bad = [i for i in idx if not 0 <= i < len(pairs)]
        if bad:
            raise PartitionError(f"{file}: client {k} has index {bad[0]} outside the {len(pairs)} train images")
        if len(set(idx)) != len(idx):
            raise PartitionError(f"{file}: client {k} lists an index twice")
        clients.append(sorted(pairs[i] for i in idx))
    return clients


# ----------------------------------------------------------------------------- registered


@dataclass(frozen=True)
class Param:
    """A declared ``partition.<name>`` parameter.

    kind: int or float. positive: must be > 0 (else >= 0 is checked by the partitioner).
    id_label: when not None, the value is part of the manifest id, after this label
    (``dirichlet`` + ``""`` + ``0.5`` -> ``dirichlet0.5``).
    """

    name: str
    kind: type
    positive: bool = True
    id_label: str | None = None


def format_value(value: Any) -> str:
    """How a parameter value is written in manifest ids and make commands (floats by repr)."""
    return repr(value) if isinstance(value, float) else str(value)


def relative_to_project(path: str | os.PathLike) -> str:
    """A path as recorded in a manifest: relative to the repository, POSIX separators."""
    return Path(os.path.relpath(Path(path).resolve(), PROJECT_ROOT)).as_posix()


def project_path(path: str) -> Path:
    """A path recorded in a manifest (relative to the repository, or absolute) on this machine."""
    p = Path(path)
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


@dataclass(frozen=True)
class PreparedParams:
    """A partitioner's parameters as ``split`` takes them (``for_split``) and as the manifest records
    them (``recorded``: its ``params`` and ``make_command``), plus further header fields (``header``)."""

    for_split: dict[str, Any]
    recorded: dict[str, Any]
    header: dict[str, Any]


class Partitioner:
    """Base of the registered partitioners: ``split(records, num_clients, params, seed)``.

    params: the declared parameters (``partition.*`` besides ``name`` and ``num_clients``).
    allows_overlap: whether one video may go to several clients.
    """

    registry_name: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    allows_overlap: ClassVar[bool] = False

    def split(self, records: Sequence[Any], num_clients: int, params: Mapping[str, Any], seed: int) -> list[list[Pair]]:
        raise NotImplementedError

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Every declared parameter present and of its kind (PartitionError naming ``partition.<key>``)."""
        for p in self.params:
            _param(params, p.name, p.kind, positive=p.positive)

    def prepare(self, params: Mapping[str, Any]) -> PreparedParams:
        """The parameters to split with and to record; the same, with no further header, by default."""
        return PreparedParams(dict(params), dict(params), {})

    def recorded_input_problems(self, manifest: Mapping[str, Any]) -> list[str] | None:
        """Problems with inputs a manifest records besides the annotation lists (``fedvid splits
        verify``); None when those inputs are not on this machine, so it cannot be regenerated here."""
        return []

    def manifest_id(self, head: str, params: Mapping[str, Any], num_clients: int, seed: int) -> str:
        """``<head>-<name><label><value>...-c<clients>-seed<seed>`` from the declared id parameters."""
        part = self.registry_name + "".join(
            f"{p.id_label}{format_value(params.get(p.name))}" for p in self.params if p.id_label is not None
        )
        return f"{head}-{part}-c{num_clients}-seed{seed}"


@register_partitioner("iid")
class IID(Partitioner):
    __doc__ = iid.__doc__

    def split(self, records, num_clients, params, seed):
        return iid(records, num_clients, params, seed)


@register_partitioner("dirichlet")
class Dirichlet(Partitioner):
    __doc__ = dirichlet.__doc__
    params = (Param("alpha", float, id_label=""), Param("min_size", int, positive=False))

    def split(self, records, num_clients, params, seed):
        return dirichlet(records, num_clients, params, seed)


@register_partitioner("dirichlet_fedbox")
class DirichletFedbox(Partitioner):
    __doc__ = dirichlet_fedbox.__doc__
    params = (Param("alpha", float, id_label=""), Param("numpy_seed", int, positive=False, id_label="-np"))

    def split(self, records, num_clients, params, seed):
        return dirichlet_fedbox(records, num_clients, params, seed)


@register_partitioner("pathological")
class Pathological(Partitioner):
    __doc__ = pathological.__doc__
    params = (Param("classes_per_client", int, id_label="-k"),)

    def split(self, records, num_clients, params, seed):
        return pathological(records, num_clients, params, seed)


@register_partitioner("quantity")
class Quantity(Partitioner):
    __doc__ = quantity.__doc__
    params = (Param("sigma", float, id_label="-sigma"), Param("min_size", int))

    def split(self, records, num_clients, params, seed):
        return quantity(records, num_clients, params, seed)


@register_partitioner("imported")
class Imported(Partitioner):
    """A published split taken as-is (:func:`imported`): it draws nothing (no seed in its id),
    names itself by ``tag`` and may give one video to several clients."""

    allows_overlap = True
    #: The parameter that names the split in the manifest id (kept in the header).
    id_param: ClassVar[str] = "tag"

    def split(self, records, num_clients, params, seed):
        return imported(records, num_clients, params, seed)

    def check_params(self, params: Mapping[str, Any]) -> None:
        if not params.get("path"):
            raise PartitionError(
                "partition.path is required for the imported partitioner "
                "(a FedVSSL split folder or an SSD index-list file)"
            )

    def prepare(self, params: Mapping[str, Any]) -> PreparedParams:
        """Split from the folder's absolute path; record it relative to the repository, with its
        ``tag`` (default: the folder name) and the published files' hashes (``imported_sha256``)."""
        self.check_params(params)
        folder = project_path(str(params["path"]))
        recorded = {
            **params,
            "path": relative_to_project(folder),
            self.id_param: params.get(self.id_param) or folder.name.split(".")[0],
        }
        if folder.is_file():  # an index-list split (hc-fang/ssd data/fed/*.json)
            files = [folder]
        else:
            class_file, _ = fedvssl_class_index(folder)
            files = [*fedvssl_client_files(folder), class_file]
        hashes = {relative_to_project(f): sha256_file(f) for f in files}
        return PreparedParams({**params, "path": str(folder)}, recorded, {"imported_sha256": hashes})

    def recorded_input_problems(self, manifest: Mapping[str, Any]) -> list[str] | None:
        if not project_path(manifest["params"]["path"]).exists():
            return None  # the published files are not here; nothing more to compare
        return [
            f"imported_sha256: {rel} is missing or changed since the split was imported"
            for rel, sha in manifest.get("imported_sha256", {}).items()
            if not project_path(rel).is_file() or sha256_file(project_path(rel)) != sha
        ]

    def manifest_id(self, head: str, params: Mapping[str, Any], num_clients: int, seed: int) -> str:
        return f"{head}-{params[self.id_param]}-c{num_clients}"
