"""Readers for the official annotation lists of UCF101, HMDB51 and Kinetics.

Each reader returns an :class:`AnnotationSplit`: the train and test ``VideoRecord``s of
one split (path relative to the dataset root, 0-based class index, class name) and the
sha256 of every source list it read (keys are stable relative names, so manifests can
record them). ``load_annotations(cfg)`` picks the registered :class:`DatasetReader` named by a
``conf/dataset`` config's ``name``; a new dataset format is one class registered with
``@register_dataset_reader(name)``.

Formats (the copies in ``datasets/<name>/`` are byte-for-byte; see their SOURCES.md):

- UCF101 ``ucfTrainTestlist/``: ``classInd.txt`` (``id Name``, ids 1..101),
  ``trainlist0K.txt`` (``Class/v_Class_gXX_cYY.avi id``), ``testlist0K.txt`` (path only;
  the label comes from the class folder). CRLF line endings.
- HMDB51 ``testTrainMulti_7030_splits/<class>_test_splitK.txt``: ``name.avi F `` with
  F = 1 train, 2 test, 0 unused (trailing space). Classes are the sorted file prefixes.
- Kinetics CSV (any release): header naming ``label,youtube_id,time_start,time_end,split``
  (+ optional ``is_cc``), or a FedVSSL-style list ``class_dir/ytid_start_end id`` whose
  1-based ids come from its ``classInd.txt`` and are mapped to the label map by name.
  Videos live at ``<subdir>/<label with '_' for ' '>/<ytid>_<start:06d>_<end:06d>.mp4``.

Malformed input raises :class:`AnnotationFormatError` naming the file, the line number
and the offending text.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

from benchmark.data.records import AnnotationSplit, VideoRecord
from benchmark.data.resolve import check_relative_path
from benchmark.io import sha256_file
from benchmark.registry import DATASET_READERS, register_dataset_reader

KINETICS_VIDEO_EXT = ".mp4"


class AnnotationFormatError(ValueError):
    """A line of an annotation list does not have the expected format."""

    def __init__(self, file: Path, line_no: int, text: str, expected: str):
        self.file, self.line_no, self.text = file, line_no, text
        super().__init__(f"{file}:{line_no}: {expected}; got {text!r}")


# ---------------------------------------------------------------------------- helpers


def _open_text(file: Path) -> io.TextIOBase:
    """Open a UTF-8 list (``.gz`` transparently) without newline translation."""
    if not file.is_file():
        raise FileNotFoundError(f"annotation file {file} does not exist")
    raw = gzip.open(file, "rb") if file.suffix == ".gz" else open(file, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without CR/LF) for every non-blank line."""
    try:
        with _open_text(file) as f:
            for line_no, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield line_no, text
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc}); expected an annotation list") from exc
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{file}: not a complete gzip file ({exc}); expected a gzip-compressed list") from exc


def _safe_path(path: str, file: Path, line_no: int, text: str) -> str:
    """``path`` if it stays inside the dataset root, else an error naming file and line."""
    try:
        return check_relative_path(path, "list entry")
    except ValueError as exc:
        raise AnnotationFormatError(file, line_no, text, str(exc)) from None


def _source_key(file: Path, base: Path | None) -> str:
    """Stable name of a source file: relative to ``base`` when inside it, else its name."""
    if base is not None:
        try:
            return file.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return file.name


def _split_number(split: object, dataset: str) -> int:
    try:
        number = int(str(split).strip())
    except ValueError:
        number = 0
    if number < 1 or str(split).strip() != str(number):
        raise ValueError(
            f"{dataset}: split must be a positive integer (1, 2 or 3 for the official lists); got {split!r}"
        )
    return number


def _require(file: Path, dataset: str, split: int) -> Path:
    if not file.is_file():
        have = sorted(p.name for p in file.parent.glob("*.txt")) if file.parent.is_dir() else []
        shown = ", ".join(have[:8]) + (f", ... ({len(have)} files)" if len(have) > 8 else "")
        raise FileNotFoundError(
            f"{dataset} split {split}: annotation file {file} does not exist "
            f"(files in {file.parent}: {shown or 'none, or the folder is missing'}); "
            "check dataset.annotations and dataset.split"
        )
    return file


def _check_unique(records: list[tuple[int, VideoRecord]], file: Path) -> list[VideoRecord]:
    first_line: dict[str, int] = {}
    for line_no, record in records:
        if record.path in first_line:
            raise AnnotationFormatError(
                file, line_no, record.path, f"video listed twice (first on line {first_line[record.path]})"
            )
        first_line[record.path] = line_no
    return [record for _, record in records]


def _check_disjoint(train: list[VideoRecord], test: list[VideoRecord], train_file: Path, test_file: Path) -> None:
    overlap = {r.path for r in train} & {r.path for r in test}
    if overlap:
        raise ValueError(
            f"{len(overlap)} videos are in both {train_file} and {test_file} (e.g. {sorted(overlap)[0]!r}); "
            "a split's train and test lists must be disjoint"
        )


def _read_class_index(file: Path, *, consecutive: bool) -> dict[int, tuple[str, int]]:
    """Parse ``id name`` lines -> {id: (name, line_no)}; ids 1..N (in order if ``consecutive``)."""
    table: dict[int, tuple[str, int]] = {}
    names: set[str] = set()
    for line_no, text in _lines(file):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationFormatError(file, line_no, text, "expected '<id> <class name>'")
        class_id, name = int(parts[0]), parts[1]
        if consecutive and class_id != len(table) + 1:
            raise AnnotationFormatError(
                file, line_no, text, f"expected class id {len(table) + 1} (ids run 1..N in order)"
            )
        if class_id in table or name in names:
            raise AnnotationFormatError(file, line_no, text, "class id or name listed twice")
        table[class_id] = (name, line_no)
        names.add(name)
    if not table:
        raise ValueError(f"{file}: no classes listed")
    if sorted(table) != list(range(1, len(table) + 1)):
        raise ValueError(f"{file}: class ids must be 1..{len(table)} without gaps")
    return table


# ---------------------------------------------------------------------------- UCF101


def read_ucf101(annotation_dir: str | os.PathLike, split: int) -> AnnotationSplit:
    """Read ``classInd.txt``, ``trainlist0{split}.txt`` and ``testlist0{split}.txt``.

    Paths are kept exactly as listed (including the ``v_HandStandPushups`` case quirk,
    which ``resolve_videos`` maps to the real files). Labels are classInd id - 1.
    """
    directory = Path(annotation_dir)
    split = _split_number(split, "ucf101")
    class_file = _require(directory / "classInd.txt", "ucf101", split)
    train_file = _require(directory / f"trainlist{split:02d}.txt", "ucf101", split)
    test_file = _require(directory / f"testlist{split:02d}.txt", "ucf101", split)

    classes = [name for _, (name, _) in sorted(_read_class_index(class_file, consecutive=True).items())]
    label_of = {name: i for i, name in enumerate(classes)}

    def read_list(file: Path) -> list[VideoRecord]:
        records = []
        for line_no, text in _lines(file):
            parts = text.split()
            if len(parts) not in (1, 2) or (len(parts) == 2 and not parts[1].isdigit()):
                raise AnnotationFormatError(
                    file, line_no, text, "expected '<Class>/<video>.avi' optionally followed by a class id"
                )
            path = parts[0]
            _safe_path(path, file, line_no, text)
            folder, _, video = path.partition("/")
            if not video or "/" in video:
                raise AnnotationFormatError(file, line_no, text, "expected a path of the form '<Class>/<video>.avi'")
            if folder not in label_of:
                raise AnnotationFormatError(file, line_no, text, f"class folder {folder!r} is not in {class_file.name}")
            label = label_of[folder]
            if len(parts) == 2 and int(parts[1]) != label + 1:
                raise AnnotationFormatError(
                    file,
                    line_no,
                    text,
                    f"class id {parts[1]} contradicts folder {folder!r} (id {label + 1} in {class_file.name})",
                )
            records.append((line_no, VideoRecord(path, label, folder)))
        return _check_unique(records, file)

    train, test = read_list(train_file), read_list(test_file)
    _check_disjoint(train, test, train_file, test_file)
    return AnnotationSplit(
        dataset="ucf101",
        split=str(split),
        classes=classes,
        train=train,
        test=test,
        source_sha256={f.name: sha256_file(f) for f in (class_file, train_file, test_file)},
    )


# ---------------------------------------------------------------------------- HMDB51

_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")
_HMDB_FLAGS = {"1": "train", "2": "test", "0": "unused"}


def read_hmdb51(annotation_dir: str | os.PathLike, split: int) -> AnnotationSplit:
    """Read the ``<class>_test_split{split}.txt`` file of every class.

    Records are ``<class>/<name.avi>``, labels the position in the sorted class list;
    flag 1 = train, 2 = test, 0 = unused (left out).
    """
    directory = Path(annotation_dir)
    split = _split_number(split, "hmdb51")
    if not directory.is_dir():
        raise FileNotFoundError(f"hmdb51: annotation folder {directory} does not exist; check dataset.annotations")
    found = [m for p in directory.iterdir() if (m := _HMDB_FILE.match(p.name))]
    classes = sorted({m["cls"] for m in found})
    if not classes:
        raise FileNotFoundError(
            f"hmdb51: no '<class>_test_split<k>.txt' files in {directory}; check dataset.annotations"
        )
    files = [_require(directory / f"{name}_test_split{split}.txt", "hmdb51", split) for name in classes]

    train: list[VideoRecord] = []
    test: list[VideoRecord] = []
    for label, (name, file) in enumerate(zip(classes, files)):
        listed: list[tuple[int, VideoRecord]] = []
        for line_no, text in _lines(file):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in _HMDB_FLAGS:
                raise AnnotationFormatError(
                    file, line_no, text, "expected '<video>.avi <1|2|0>' (1 train, 2 test, 0 unused)"
                )
            path = f"{name}/{parts[0]}"
            _safe_path(path, file, line_no, text)
            if "/" in parts[0]:
                raise AnnotationFormatError(
                    file, line_no, text, "expected a bare file name (the class comes from the list's name)"
                )
            listed.append((line_no, VideoRecord(path, label, name)))
            if parts[1] != "0":
                (train if parts[1] == "1" else test).append(listed[-1][1])
        if not listed:  # an empty class list would silently drop the class
            raise ValueError(f"{file}: empty list (no videos of class {name!r}); restore the file or remove the class")
        _check_unique(listed, file)
    return AnnotationSplit(
        dataset="hmdb51",
        split=str(split),
        classes=classes,
        train=train,
        test=test,
        source_sha256={f.name: sha256_file(f) for f in files},
    )


# ---------------------------------------------------------------------------- Kinetics


def kinetics_class_dir(label: str) -> str:
    """Folder of a Kinetics class: the label with spaces replaced by '_' (FedVSSL/CtP layout)."""
    return label.replace(" ", "_")


def _is_csv(file: Path) -> bool:
    return file.name.endswith((".csv", ".csv.gz"))


def _time(value: str, file: Path, line_no: int, text: str, column: str) -> int:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0 or seconds != int(seconds):
        raise AnnotationFormatError(file, line_no, text, f"column {column!r} must be a whole number of seconds >= 0")
    return int(seconds)


def _read_kinetics_csv(file: Path) -> list[tuple[int, str, str, str]]:
    """Rows of a Kinetics CSV as (line_no, label, clip stem, text); needs a label column."""
    try:
        return _parse_kinetics_csv(file)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc}); expected a Kinetics CSV") from exc
    except csv.Error as exc:
        raise ValueError(f"{file}: not a readable CSV ({exc}); expected a Kinetics CSV") from exc


def _parse_kinetics_csv(file: Path) -> list[tuple[int, str, str, str]]:
    rows = []
    with _open_text(file) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("youtube_id", "time_start", "time_end") if c not in header]
        if missing:
            raise AnnotationFormatError(
                file,
                1,
                ",".join(header),
                f"Kinetics CSV header lacks {missing} (expected label,youtube_id,time_start,time_end,split[,is_cc])",
            )
        if "label" not in header:
            raise ValueError(
                f"{file}: no 'label' column — this is an unlabelled list (like the 2017 kinetics-400_test.csv) "
                "and cannot serve as a train or test split; use a labelled list such as the val CSV "
                "(2017_release/kinetics-400_val.csv) or the 2020 release test.csv"
            )
        col = {name: header.index(name) for name in ("label", "youtube_id", "time_start", "time_end")}
        for row in reader:
            line_no, text = reader.line_num, ",".join(row)
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise AnnotationFormatError(file, line_no, text, f"expected {len(header)} fields ({','.join(header)})")
            label, youtube_id = row[col["label"]].strip(), row[col["youtube_id"]].strip()
            if not label:
                raise AnnotationFormatError(file, line_no, text, "empty label (unlabelled rows cannot be used)")
            if not youtube_id or "/" in youtube_id:
                raise AnnotationFormatError(file, line_no, text, "youtube_id must be a non-empty id without '/'")
            start = _time(row[col["time_start"]], file, line_no, text, "time_start")
            end = _time(row[col["time_end"]], file, line_no, text, "time_end")
            if end <= start:
                raise AnnotationFormatError(file, line_no, text, "time_end must be greater than time_start")
            rows.append((line_no, label, f"{youtube_id}_{start:06d}_{end:06d}", text))
    return rows


def _read_named_list(
    file: Path, class_index: Path | None, label_names: dict[str, str]
) -> list[tuple[int, str, str, str]]:
    """Rows of a FedVSSL-style ``class_dir/clip id`` list as (line_no, label, clip stem, text).

    ``label_names`` maps class folder (label with '_') -> label-map spelling.
    """
    if class_index is None:
        raise ValueError(
            f"{file}: a '<class_dir>/<clip> <id>' list needs its classInd file (dataset.train_class_index / test_class_index) "
            "to map the 1-based ids to class names"
        )
    id_to_folder = {}
    for class_id, (folder, line_no) in _read_class_index(class_index, consecutive=False).items():
        if folder not in label_names:
            raise AnnotationFormatError(
                class_index, line_no, f"{class_id} {folder}", "class name not in the label map (dataset.label_map)"
            )
        id_to_folder[class_id] = folder
    rows = []
    for line_no, text in _lines(file):
        parts = text.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0].count("/") != 1:
            raise AnnotationFormatError(
                file, line_no, text, "expected '<class_dir>/<youtube_id>_<start>_<end> <class id>'"
            )
        folder, stem = parts[0].split("/")
        if not stem or stem in (".", ".."):
            raise AnnotationFormatError(file, line_no, text, "expected a clip name after '<class_dir>/'")
        class_id = int(parts[1])
        if class_id not in id_to_folder:
            raise AnnotationFormatError(file, line_no, text, f"class id {class_id} is not in {class_index}")
        if folder != id_to_folder[class_id]:
            raise AnnotationFormatError(
                file,
                line_no,
                text,
                f"class id {class_id} is {id_to_folder[class_id]!r} in {class_index.name}, not {folder!r}",
            )
        rows.append((line_no, label_names[folder], stem, text))
    return rows


def _read_label_map(file: Path) -> list[str]:
    labels = [text.strip() for _, text in _lines(file)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{file}: a class is listed twice in the label map")
    if not labels:
        raise ValueError(f"{file}: the label map is empty")
    return labels


def read_kinetics(
    label_map: str | os.PathLike | None,
    *,
    train: str | os.PathLike,
    test: str | os.PathLike,
    train_subdir: str = "train",
    test_subdir: str = "val",
    train_class_index: str | os.PathLike | None = None,
    test_class_index: str | os.PathLike | None = None,
    split: str = "official",
    base_dir: str | os.PathLike | None = None,
) -> AnnotationSplit:
    """Read a Kinetics train and test list.

    label_map: one class per line, 0-based by line (DeepMind's ``label_map.txt``); None
        derives the classes as the sorted labels of the CSV lists (CSV lists only).
    train / test: a Kinetics CSV (``.csv`` or ``.csv.gz``, any release) or a FedVSSL-style
        ``class_dir/clip id`` list (``.txt`` / ``.txt.gz``) with its ``*_class_index`` file.
    train_subdir / test_subdir: folder of each split under the dataset root ("" for none).
    base_dir: source_sha256 keys are relative to it (file name when outside it).
    """
    train_file, test_file = Path(train), Path(test)
    label_map_file = Path(label_map) if label_map is not None else None
    sources = [f for f in (label_map_file, train_file, test_file) if f is not None]
    lists = {"train": (train_file, train_subdir, train_class_index), "test": (test_file, test_subdir, test_class_index)}
    for key, file in (("label_map", label_map_file), ("train_list", train_file), ("test_list", test_file)):
        if file is not None and not file.is_file():
            raise FileNotFoundError(
                f"Kinetics {key} {file} does not exist; check dataset.{key} and dataset.annotations"
            )

    parsed: dict[str, list[tuple[int, str, str, str]]] = {}
    if label_map_file is not None:
        classes = _read_label_map(label_map_file)
    else:
        if not all(_is_csv(f) for f in (train_file, test_file)):
            raise ValueError("read_kinetics: label_map is required unless both train and test lists are Kinetics CSVs")
        parsed = {name: _read_kinetics_csv(f) for name, (f, _, _) in lists.items()}
        classes = sorted({row[1] for rows in parsed.values() for row in rows})
    label_of = {name: i for i, name in enumerate(classes)}
    folder_of = {name: kinetics_class_dir(name) for name in classes}
    folder_names = {folder: name for name, folder in folder_of.items()}
    for folder in folder_names:
        # checked once per class, so the per-clip paths below (folder + '/'-free clip name) are safe
        if "/" in folder or "\\" in folder or folder in (".", ".."):
            raise ValueError(
                f"Kinetics class {folder_names[folder]!r} cannot be a folder name (it contains '/' or is '.'/'..')"
            )
    if len(folder_names) != len(classes):
        raise ValueError(f"{label_map_file}: two classes map to the same folder once spaces become '_'")

    out: dict[str, list[VideoRecord]] = {}
    for name, (file, subdir, class_index) in lists.items():
        if name in parsed:
            rows = parsed[name]
        elif _is_csv(file):
            rows = _read_kinetics_csv(file)
        else:
            index_file = Path(class_index) if class_index is not None else None
            rows = _read_named_list(file, index_file, folder_names)
            sources.append(index_file)
        prefix = f"{subdir.strip('/')}/" if subdir and subdir.strip("/") else ""
        if prefix:
            check_relative_path(prefix, f"{name}_subdir")
        records = []
        for line_no, label, stem, text in rows:
            if label not in label_of:
                raise AnnotationFormatError(
                    file, line_no, text, f"label {label!r} is not in the label map {label_map_file}"
                )
            clip = stem if stem.endswith(KINETICS_VIDEO_EXT) else stem + KINETICS_VIDEO_EXT
            path = f"{prefix}{folder_of[label]}/{clip}"
            records.append((line_no, VideoRecord(path, label_of[label], label)))
        out[name] = _check_unique(records, file)
    _check_disjoint(out["train"], out["test"], train_file, test_file)

    base = Path(base_dir) if base_dir is not None else None
    return AnnotationSplit(
        dataset="kinetics400",
        split=str(split),
        classes=classes,
        train=out["train"],
        test=out["test"],
        source_sha256={_source_key(f, base): sha256_file(f) for f in dict.fromkeys(sources)},
    )


# ---------------------------------------------------------------------------- dispatch


class DatasetReader:
    """Base of the registered annotation readers: ``read(dataset_cfg, directory)`` returns the
    :class:`AnnotationSplit` of the lists under ``directory`` (``dataset.annotations``) that the
    ``conf/dataset`` config names; errors name the ``dataset.<key>`` at fault."""

    registry_name: ClassVar[str]

    def read(self, dataset_cfg: Mapping, directory: Path) -> AnnotationSplit:
        raise NotImplementedError


@register_dataset_reader("ucf101")
class UCF101Reader(DatasetReader):
    __doc__ = read_ucf101.__doc__

    def read(self, dataset_cfg: Mapping, directory: Path) -> AnnotationSplit:
        return read_ucf101(directory, _cfg_value(dataset_cfg, "split", str(dataset_cfg["name"])))


@register_dataset_reader("hmdb51")
class HMDB51Reader(DatasetReader):
    __doc__ = read_hmdb51.__doc__

    def read(self, dataset_cfg: Mapping, directory: Path) -> AnnotationSplit:
        return read_hmdb51(directory, _cfg_value(dataset_cfg, "split", str(dataset_cfg["name"])))


@register_dataset_reader("kinetics")
@register_dataset_reader("kinetics400")
class KineticsReader(DatasetReader):
    """Kinetics CSV or FedVSSL-style lists: ``label_map``, ``train_list``, ``test_list``,
    ``train_class_index``, ``test_class_index`` (relative to ``annotations``), ``train_subdir``,
    ``test_subdir``, ``split`` (default ``official``)."""

    def read(self, dataset_cfg: Mapping, directory: Path) -> AnnotationSplit:
        name = str(dataset_cfg["name"])

        def path(key: str, required: bool = True) -> Path | None:
            value = _cfg_value(dataset_cfg, key, name) if required else dataset_cfg.get(key)
            return None if value in (None, "") else directory / str(value)

        return read_kinetics(
            path("label_map", required=False),
            train=path("train_list"),
            test=path("test_list"),
            train_subdir=str(dataset_cfg.get("train_subdir") or ""),
            test_subdir=str(dataset_cfg.get("test_subdir") or ""),
            train_class_index=path("train_class_index", required=False),
            test_class_index=path("test_class_index", required=False),
            split=str(dataset_cfg.get("split") or "official"),
            base_dir=directory,
        )


def _cfg_value(cfg: Mapping, key: str, dataset: str) -> object:
    value = cfg.get(key)
    if value is None or value == "":
        raise ValueError(f"dataset config ({dataset}): key 'dataset.{key}' is missing or empty")
    return value


@register_dataset_reader("cifar10")
@register_dataset_reader("cifar100")
@register_dataset_reader("tiny_imagenet")
class ImageDatasetReader(DatasetReader):
    """The image track's sets (CIFAR-10/100 pickle batches, Tiny-ImageNet-200 folders):
    :func:`benchmark.data.images.image_annotations`."""

    def read(self, dataset_cfg: Mapping, directory: Path) -> AnnotationSplit:
        from benchmark.data.images import image_annotations

        return image_annotations(dataset_cfg)


def load_annotations(dataset_cfg: Mapping) -> AnnotationSplit:
    """Read the lists named by a ``conf/dataset`` config.

    Keys: ``name`` (reader: ucf101 | hmdb51 | kinetics400), ``split``, ``annotations``
    (folder of the lists), ``id`` (recorded as ``AnnotationSplit.dataset``). Kinetics also
    reads ``label_map``, ``train_list``, ``test_list``, ``train_class_index``,
    ``test_class_index``, ``train_subdir``, ``test_subdir`` (paths relative to ``annotations``).
    """
    name = dataset_cfg.get("name")
    if not isinstance(name, str) or name not in DATASET_READERS:
        raise ValueError(
            f"dataset.name must be one of {', '.join(DATASET_READERS.names())} (the annotation reader); got {name!r}"
        )
    reader = DATASET_READERS.get(name)()
    if isinstance(reader, ImageDatasetReader):  # image sets read their own files (benchmark.data.images)
        return reader.read(dataset_cfg, Path(str(dataset_cfg.get("annotations") or "")))
    directory = Path(str(_cfg_value(dataset_cfg, "annotations", name)))
    result = reader.read(dataset_cfg, directory)
    for part in ("train", "test"):
        if not getattr(result, part):
            raise ValueError(
                f"{name}: the {part} list is empty ({', '.join(sorted(result.source_sha256))} under "
                f"{directory}); check dataset.annotations and the list files"
            )
    return dataclasses.replace(result, dataset=str(dataset_cfg.get("id") or name))
