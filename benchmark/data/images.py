"""Image datasets in their distributed on-disk formats: CIFAR-10, CIFAR-100, Tiny-ImageNet-200.

Readers return an :class:`ImageSet` (uint8 images (N, H, W, 3), 0-based labels, class
names) in **torchvision's order**, because published federated splits (hc-fang/ssd's
``data/fed/*.json``) are lists of indices into that order:

- CIFAR-10 (``cifar-10-batches-py/``): train = ``data_batch_1`` .. ``data_batch_5``
  concatenated in that order (10,000 each), test = ``test_batch``; labels ``labels``,
  class names ``label_names`` of ``batches.meta`` (torchvision ``CIFAR10``).
- CIFAR-100 (``cifar-100-python/``): train = ``train`` (50,000), test = ``test``; labels
  ``fine_labels``, names ``fine_label_names`` of ``meta`` (torchvision ``CIFAR100``).
  Each batch is a Python pickle of a dict with ``data`` (N, 3072) uint8, the 1,024 red,
  then green, then blue values of a 32 x 32 image, row-major. Keys are read whether
  stored as ``str`` or ``bytes`` (the original files are Python 2 pickles; torchvision
  loads them with ``encoding="latin1"``, as here).
- Tiny-ImageNet-200 (``tiny-imagenet-200/``): train = ``ImageFolder(train/)`` order:
  class folders (wnids) sorted, then the image files under each (``images/*.JPEG``)
  sorted by path; test = ``val/images/*`` labelled by ``val/val_annotations.txt``
  (``<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>``), in the annotation file's order;
  ``wnids.txt`` must list exactly the train class folders.

A missing, truncated or corrupt file raises :class:`ImageDataError`, whose message
names the file and says how to fix it. ``write_cifar`` / ``write_tiny_imagenet`` write
the same formats (tests and the synthetic stand-in, ``make_cifar_standin``).

For the split layer, CIFAR records are named ``train/<index:05d>`` / ``test/<index:05d>``
(sorted names = torchvision order). :func:`cifar_index_annotations` builds them without
the data files; their labels are -1 ("read from the batches at run time"): a published
index split carries no labels, and the benchmark never invents them.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmark.data.records import AnnotationSplit, VideoRecord

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    num_train: int
    num_test: int


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
        10,
        50_000,
        10_000,
    ),
    "cifar100": CifarSpec(
        "cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100, 50_000, 10_000
    ),
}


class ImageDataError(ValueError):
    """An image dataset file is missing or unreadable; the message starts with the file."""


@dataclass
class ImageSet:
    """images: uint8 (N, H, W, 3); labels: int64 (N,), 0-based; classes: names by label;
    files: the source files read, in order."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    files: list[Path]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------- CIFAR


def _fix_hint(name: str) -> str:
    return f"download the python version of {name} from {CIFAR_URL} and unpack it under dataset.root"


def _load_pickle(file: Path, name: str) -> dict[str, Any]:
    if not file.is_file():
        raise ImageDataError(f"{file}: missing; {_fix_hint(name)}")
    try:
        with open(file, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - truncated (EOFError, UnpicklingError), garbage, wrong protocol
        raise ImageDataError(
            f"{file}: not a readable CIFAR pickle batch ({type(e).__name__}: {e}); the file is truncated or "
            f"corrupt: {_fix_hint(name)} again"
        ) from None
    if not isinstance(obj, dict):
        raise ImageDataError(f"{file}: expected a pickled dict, got {type(obj).__name__}; {_fix_hint(name)} again")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(values: Sequence[Any]) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def _read_batch(file: Path, spec: CifarSpec, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(file, name)
    for key in ("data", spec.label_key):
        if key not in batch:
            raise ImageDataError(f"{file}: key {key!r} missing (keys: {sorted(batch)}); {_fix_hint(name)} again")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[spec.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ImageDataError(
            f"{file}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}; {_fix_hint(name)} again"
        )
    if labels.shape != (data.shape[0],):
        raise ImageDataError(f"{file}: {data.shape[0]} images but {labels.shape[0]} labels; {_fix_hint(name)} again")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ImageDataError(f"{file}: labels outside 0..{spec.num_classes - 1}; {_fix_hint(name)} again")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(root: str | os.PathLike, name: str, train: bool = True) -> ImageSet:
    """CIFAR-10 / CIFAR-100 as distributed. root: the folder holding ``cifar-10-batches-py``
    (or ``cifar-100-python``), or that folder itself. Returns images (N, 32, 32, 3) uint8."""
    if name not in CIFAR_SPECS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(CIFAR_SPECS)}")
    spec = CIFAR_SPECS[name]
    base = Path(root)
    if base.name != spec.folder:
        base = base / spec.folder
    meta = _load_pickle(base / spec.meta_file, name)
    if spec.names_key not in meta:
        raise ImageDataError(f"{base / spec.meta_file}: key {spec.names_key!r} missing; {_fix_hint(name)} again")
    classes = _names(meta[spec.names_key])
    if len(classes) != spec.num_classes:
        raise ImageDataError(f"{base / spec.meta_file}: {len(classes)} class names, expected {spec.num_classes}")
    files = [base / f for f in (spec.train_files if train else spec.test_files)]
    parts = [_read_batch(f, spec, name) for f in files]
    return ImageSet(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), classes, files)


def write_cifar(
    root: str | os.PathLike,
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
) -> Path:
    """Write ``(images (N, 32, 32, 3) uint8, labels)`` pairs in the distributed pickle layout
    under ``root/<folder>/``; CIFAR-10's train images are split over 5 batches in order."""
    from benchmark.io import atomic_write_bytes

    spec = CIFAR_SPECS[name]
    base = Path(root) / spec.folder
    base.mkdir(parents=True, exist_ok=True)

    def batch(images: np.ndarray, labels: np.ndarray, label: str) -> bytes:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        obj = {
            "batch_label": label,
            spec.label_key: [int(x) for x in labels],
            "data": data,
            "filenames": [f"img_{i:05d}.png" for i in range(len(images))],
        }
        if name == "cifar100":
            obj["coarse_labels"] = [int(x) // 5 for x in labels]
        return pickle.dumps(obj, protocol=2)

    chunks = np.array_split(np.arange(len(train[0])), len(spec.train_files))
    for f, idx in zip(spec.train_files, chunks):
        atomic_write_bytes(base / f, batch(train[0][idx], train[1][idx], f"training batch {f}"))
    atomic_write_bytes(base / spec.test_files[0], batch(test[0], test[1], "testing batch"))
    meta = {spec.names_key: list(classes)}
    if name == "cifar10":
        meta.update(num_cases_per_batch=len(chunks[0]), num_vis=3072)
    atomic_write_bytes(base / spec.meta_file, pickle.dumps(meta, protocol=2))
    return base


def _standin_draw(rng: np.random.Generator, num_classes: int, size: int):
    """The stand-ins' class model: each class is a smooth random colour field plus a
    class-specific oriented stripe pattern and per-image noise (learnable from colour and
    texture). Returns ``draw(n_per) -> (images (n_per * num_classes, size, size, 3) uint8,
    labels)``, shuffled, consuming ``rng`` in a fixed order."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (32.0 / size)
    bases = rng.uniform(40, 215, size=(num_classes, 3)).astype(np.float32)
    angles = rng.uniform(0, np.pi, size=num_classes)
    freqs = rng.uniform(0.25, 0.9, size=num_classes)

    def draw(n_per: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes), n_per)
        order = rng.permutation(len(labels))
        labels = labels[order]
        imgs = np.empty((len(labels), size, size, 3), np.uint8)
        for i, c in enumerate(labels):
            phase = rng.uniform(0, 2 * np.pi)
            stripe = np.sin(freqs[c] * (np.cos(angles[c]) * xx + np.sin(angles[c]) * yy) + phase)
            img = bases[c][None, None, :] + 35.0 * stripe[..., None] + rng.normal(0, 12, size=(size, size, 3))
            imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
        return imgs, labels.astype(np.int64)

    return draw


def make_cifar_standin(
    root: str | os.PathLike,
    name: str = "cifar10",
    per_class_train: int = 20,
    per_class_test: int = 10,
    seed: int = 0,
    num_classes: int | None = None,
) -> Path:
    """A small deterministic CIFAR-format stand-in (:func:`_standin_draw`), written with
    :func:`write_cifar` (real pickle format). ``num_classes``: how many of the dataset's
    classes get images (default all; the meta file always names all of them)."""
    spec = CIFAR_SPECS[name]
    draw = _standin_draw(np.random.default_rng(seed), num_classes or spec.num_classes, 32)
    classes = [f"class_{c:03d}" for c in range(spec.num_classes)]
    return write_cifar(root, name, draw(per_class_train), draw(per_class_test), classes)


def make_tiny_imagenet_standin(
    root: str | os.PathLike, per_class_train: int = 20, per_class_test: int = 10, seed: int = 0, num_classes: int = 10
) -> Path:
    """A small deterministic Tiny-ImageNet-200-format stand-in: ``num_classes`` wnids
    (``n00000000``..), 64 x 64 JPEGs in the real layout (:func:`write_tiny_imagenet`)."""
    draw = _standin_draw(np.random.default_rng(seed), num_classes, 64)
    wnids = [f"n{c:08d}" for c in range(num_classes)]
    train_imgs, train_labels = draw(per_class_train)
    test_imgs, test_labels = draw(per_class_test)
    train = {w: [img for img, lab in zip(train_imgs, train_labels) if lab == c] for c, w in enumerate(wnids)}
    return write_tiny_imagenet(root, train, [(img, wnids[lab]) for img, lab in zip(test_imgs, test_labels)])


def cifar_index_annotations(name: str, dataset_id: str | None = None) -> AnnotationSplit:
    """The CIFAR train/test sets as index records (``train/00000`` .. in torchvision order),
    without reading the data: labels -1 (not recorded; the batches give them at run time)."""
    spec = CIFAR_SPECS[name]
    train = [VideoRecord(f"train/{i:05d}", -1, "") for i in range(spec.num_train)]
    test = [VideoRecord(f"test/{i:05d}", -1, "") for i in range(spec.num_test)]
    classes = [str(c) for c in range(spec.num_classes)]
    return AnnotationSplit(dataset=dataset_id or name, split="official", classes=classes, train=train, test=test)


def record_index(path: str) -> int:
    """``train/01234`` -> 1234 (the torchvision index of a CIFAR record)."""
    head, _, tail = path.partition("/")
    if head not in ("train", "test") or not tail.isdigit():
        raise ValueError(f"{path!r} is not a CIFAR index record ('train/<index>' or 'test/<index>')")
    return int(tail)


# ----------------------------------------------------------------------------- Tiny-ImageNet

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _tiny_base(root: str | os.PathLike) -> Path:
    base = Path(root)
    return base if base.name == "tiny-imagenet-200" else base / "tiny-imagenet-200"


def tiny_imagenet_records(root: str | os.PathLike, train: bool = True) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path relative to the dataset folder, label)]) in torchvision order, without decoding."""
    base = _tiny_base(root)
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise ImageDataError(f"{wnids_file}: missing; download {TINY_URL} and unzip it under dataset.root")
    wnids = [w.strip() for w in wnids_file.read_text(encoding="utf-8").splitlines() if w.strip()]
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise ImageDataError(f"{train_dir}: missing; download {TINY_URL} and unzip it under dataset.root")
    classes = sorted(d.name for d in os.scandir(train_dir) if d.is_dir())  # torchvision find_classes
    if sorted(wnids) != classes:
        raise ImageDataError(
            f"{wnids_file}: lists {len(wnids)} wnids but {train_dir} has {len(classes)} class "
            f"folders; they must be the same set (re-extract the archive)"
        )
    index = {c: i for i, c in enumerate(classes)}
    out: list[tuple[str, int]] = []
    if train:
        for c in classes:  # torchvision make_dataset: sorted(os.walk(...)), sorted(fnames)
            for folder, _, fnames in sorted(os.walk(train_dir / c, followlinks=True)):
                for fname in sorted(fnames):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        out.append((Path(folder, fname).relative_to(base).as_posix(), index[c]))
        return classes, out
    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise ImageDataError(f"{ann}: missing; download {TINY_URL} and unzip it under dataset.root")
    for n, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise ImageDataError(
                f"{ann}:{n}: expected '<file>\\t<wnid>\\t<box>' with a wnid of wnids.txt, got {line!r}"
            )
        out.append((f"val/images/{parts[0]}", index[parts[1]]))
    return classes, out


def read_tiny_imagenet(root: str | os.PathLike, train: bool = True, size: int | None = None) -> ImageSet:
    """Tiny-ImageNet-200 images (N, 64, 64, 3) uint8 in torchvision order; ``size``: resize
    to (size, size) bilinearly with PIL, as hc-fang/ssd's ``Resize((32, 32))`` (PIL input)."""
    from PIL import Image

    base = _tiny_base(root)
    classes, records = tiny_imagenet_records(root, train)
    images, labels, files = [], [], []
    for rel, label in records:
        f = base / rel
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except Exception as e:  # noqa: BLE001 - PIL raises many types; all mean "re-extract"
            raise ImageDataError(
                f"{f}: cannot decode the image ({type(e).__name__}: {e}); re-extract the archive"
            ) from None
        labels.append(label)
        files.append(f)
    return ImageSet(
        np.stack(images) if images else np.zeros((0, size or 64, size or 64, 3), np.uint8),
        np.asarray(labels, np.int64),
        classes,
        files,
    )


def write_tiny_imagenet(
    root: str | os.PathLike, train: Mapping[str, Sequence[np.ndarray]], val: Sequence[tuple[np.ndarray, str]]
) -> Path:
    """Write the Tiny-ImageNet-200 layout: ``train[wnid]`` = images, ``val`` = (image, wnid) pairs."""
    from PIL import Image

    base = Path(root) / "tiny-imagenet-200"
    for wnid, imgs in train.items():
        (base / "train" / wnid / "images").mkdir(parents=True, exist_ok=True)
        boxes = []
        for i, img in enumerate(imgs):
            Image.fromarray(np.asarray(img, np.uint8)).save(
                base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "JPEG"
            )
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (img, wnid) in enumerate(val):
        Image.fromarray(np.asarray(img, np.uint8)).save(base / "val" / "images" / f"val_{i}.JPEG", "JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(train) + "\n")
    return base


# ----------------------------------------------------------------------------- annotations


def image_annotations(dataset_cfg: Mapping) -> AnnotationSplit:
    """``load_annotations`` for the image readers (``dataset.name`` cifar10 | cifar100 | tiny_imagenet).

    CIFAR: index records (labels -1, no files needed), so the committed SSD splits verify
    anywhere; with ``dataset.labels_from_files: true`` (the stand-in) the records carry the
    batches' labels and the sets' real sizes. Tiny-ImageNet: records ``train/<wnid>/images/<file>`` with their real labels,
    read from ``dataset.root`` (there is no published Tiny-ImageNet split; ``dirichlet`` makes one).
    """
    name = str(dataset_cfg.get("name"))
    dataset_id = str(dataset_cfg.get("id") or name)
    if name in CIFAR_SPECS:
        if not dataset_cfg.get("labels_from_files"):
            return cifar_index_annotations(name, dataset_id)
        from benchmark.io import sha256_file

        sets = [read_cifar(str(dataset_cfg.get("root")), name, train) for train in (True, False)]
        parts = [
            [VideoRecord(f"{part}/{i:05d}", int(lab), s.classes[int(lab)]) for i, lab in enumerate(s.labels)]
            for part, s in zip(("train", "test"), sets)
        ]
        return AnnotationSplit(
            dataset=dataset_id,
            split="official",
            classes=sets[0].classes,
            train=parts[0],
            test=parts[1],
            source_sha256={f.name: sha256_file(f) for s in sets for f in s.files},
        )
    root = dataset_cfg.get("root")
    if not root:
        raise ValueError(f"dataset config ({name}): key 'dataset.root' is missing or empty")
    classes, train = tiny_imagenet_records(root, True)
    _, test = tiny_imagenet_records(root, False)
    wnids = _tiny_base(root) / "wnids.txt"
    from benchmark.io import sha256_file

    return AnnotationSplit(
        dataset=dataset_id,
        split="official",
        classes=classes,
        train=[VideoRecord(p, lab, classes[lab]) for p, lab in train],
        test=[VideoRecord(p, lab, classes[lab]) for p, lab in test],
        source_sha256={
            "wnids.txt": sha256_file(wnids),
            "val/val_annotations.txt": sha256_file(_tiny_base(root) / "val" / "val_annotations.txt"),
        },
    )


# ----------------------------------------------------------------------------- training input

import functools  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402


def is_image_dataset(dataset_cfg: Mapping) -> bool:
    """True for the image track's dataset configs (``modality: image``)."""
    return str(dataset_cfg.get("modality") or "video") == "image"


@functools.lru_cache(maxsize=4)
def _cached_set(name: str, root: str, train: bool, size: int | None) -> ImageSet:
    if name in CIFAR_SPECS:
        return read_cifar(root, name, train)
    return read_tiny_imagenet(root, train, size)


def load_image_set(dataset_cfg: Mapping, train: bool = True) -> ImageSet:
    """The dataset's train (or test) images, read once per process. Tiny-ImageNet is resized
    to ``dataset.image_size`` (32 in hc-fang/ssd) when that key is set."""
    name = str(dataset_cfg.get("name"))
    size = dataset_cfg.get("image_size")
    return _cached_set(name, str(dataset_cfg.get("root")), bool(train), int(size) if size else None)


def record_indices(dataset_cfg: Mapping, records: Sequence[str], train: bool = True) -> list[int]:
    """Positions in :func:`load_image_set`'s order of manifest records (CIFAR ``train/<i>``,
    Tiny-ImageNet relative paths)."""
    name = str(dataset_cfg.get("name"))
    if name in CIFAR_SPECS:
        return [record_index(r) for r in records]
    _, listed = tiny_imagenet_records(str(dataset_cfg.get("root")), train)
    where = {p: i for i, (p, _) in enumerate(listed)}
    missing = [r for r in records if r not in where]
    if missing:
        raise ImageDataError(
            f"{dataset_cfg.get('root')}: {len(missing)} listed images are missing (e.g. {missing[:3]})"
        )
    return [where[r] for r in records]


class ImageItems:
    """The image track's answer to ``resolve_videos``: every manifest item checked against
    the dataset files (index in range); ``present`` = (record, index) pairs."""

    def __init__(self, records: Sequence[Any], dataset_cfg: Mapping):
        data = load_image_set(dataset_cfg, train=True)
        idx = record_indices(dataset_cfg, [r.path for r in records])
        bad = [r.path for r, i in zip(records, idx) if not 0 <= i < len(data)]
        if bad:
            raise ImageDataError(
                f"{dataset_cfg.get('root')}: the split names {len(bad)} images beyond the {len(data)} train images "
                f"of the files there (e.g. {bad[:3]}); the split is for another dataset or the files are incomplete"
            )
        self.present = list(zip(records, idx))
        self.num_records = len(records)

    def summary(self) -> dict[str, int]:
        return {
            "listed": self.num_records,
            "present": len(self.present),
            "skipped": 0,
            "missing": 0,
            "empty": 0,
            "undecodable": 0,
            "unusable": 0,
            "case_mismatch_resolved": 0,
        }


class TrainImageDataset(Dataset):
    """One client's training images as method samples.

    images: uint8 (N, H, W, 3) of the whole train set; items: (index into ``images``, label)
    of the client. An item draws ``num_views`` views of its image: each is the uint8 image
    (C, H, W), horizontally flipped with p = ``flip_prob`` (its own draw), then
    ``sample_transform(views, generator)`` applies the method's augmentation (SSD: the
    SimCLR crop / jitter / grayscale on floats in [0, 1], as hc-fang/ssd applies its
    torchvision transforms after ``ToTensor``). No mean/std normalisation: the official
    training and evaluation use ``ToTensor()`` only. The official flip comes after the crop;
    flipping first gives the same distribution (the crop box is drawn independently of
    the flip and its position distribution is mirror-symmetric).
    Keys (epoch, index[, repeat]) as :class:`benchmark.data.loaders.EpochBatchSampler` hands
    them out; draws come from ``item_seed(seed, epoch, index, repeat)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        items: Sequence[tuple[int, int]],
        num_views: int,
        sample_transform,
        seed: int,
        flip_prob: float = 0.5,
    ):
        self.images, self.items = images, [(int(i), int(lab)) for i, lab in items]
        self.num_views, self.sample_transform = int(num_views), sample_transform
        self.seed, self.flip_prob, self.epoch = int(seed), float(flip_prob), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def normalize_video(views: torch.Tensor) -> torch.Tensor:
        """What the training process applies to a shipped batch: uint8 -> [0, 1] floats
        (``ToTensor``), floats as they are; no mean/std (the official code has none)."""
        return views.float().div_(255.0) if views.dtype == torch.uint8 else views

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, torch.Tensor]:
        from benchmark.data.loaders import item_key, item_seed

        epoch, index, repeat = item_key(key, self.epoch)
        generator = torch.Generator().manual_seed(item_seed(self.seed, epoch, index, repeat))
        position, label = self.items[index]
        image = torch.from_numpy(np.ascontiguousarray(self.images[position])).permute(2, 0, 1)  # (C, H, W) uint8
        views = []
        for _ in range(self.num_views):
            flip = float(torch.rand((), generator=generator)) < self.flip_prob
            views.append(image.flip(-1) if flip else image)
        sample = dict(self.sample_transform(views, generator))
        sample["label"] = torch.tensor(label, dtype=torch.int64)
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample


def train_image_dataset(
    dataset_cfg: Mapping, videos: Sequence[tuple[str, int]], num_views: int, sample_transform, seed: int
) -> TrainImageDataset:
    """A client's :class:`TrainImageDataset` from its manifest entries ``(record, label)``;
    labels -1 (an imported index split) are replaced by the dataset files' labels."""
    data = load_image_set(dataset_cfg, train=True)
    idx = record_indices(dataset_cfg, [v for v, _ in videos])
    items = [(i, int(data.labels[i]) if lab < 0 else lab) for i, (_, lab) in zip(idx, videos)]
    return TrainImageDataset(data.images, items, num_views, sample_transform, seed)


def ensure_standin(dataset_cfg: Mapping) -> Path:
    """Generate the stand-in (CIFAR or Tiny-ImageNet format, by ``dataset.name``) under
    ``dataset.root`` unless its files are there (``dataset.standin``: per_class_train,
    per_class_test, seed, num_classes)."""
    import json
    import shutil

    from benchmark.io import atomic_write_text

    name = str(dataset_cfg.get("name"))
    root = Path(str(dataset_cfg.get("root")))
    base = root / CIFAR_SPECS[name].folder if name in CIFAR_SPECS else _tiny_base(root)
    opts = dict(dataset_cfg.get("standin") or {})
    params = {
        "name": name,
        "per_class_train": int(opts.get("per_class_train", 20)),
        "per_class_test": int(opts.get("per_class_test", 10)),
        "seed": int(opts.get("seed", 0)),
    }
    if opts.get("num_classes") is not None:  # recorded only when set: older stamps stay valid
        params["num_classes"] = int(opts["num_classes"])
    stamp = base / "standin.json"  # which parameters made the files: other parameters regenerate them
    files = [*CIFAR_SPECS[name].train_files, *CIFAR_SPECS[name].test_files] if name in CIFAR_SPECS else ["wnids.txt"]
    if all((base / f).is_file() for f in files) and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return base
    sizes = {k: params[k] for k in ("per_class_train", "per_class_test", "seed")}
    if name in CIFAR_SPECS:
        make_cifar_standin(str(root), name, **sizes, num_classes=params.get("num_classes"))
    else:
        shutil.rmtree(base, ignore_errors=True)  # other parameters: other wnids and files
        make_tiny_imagenet_standin(str(root), **sizes, num_classes=params.get("num_classes", 10))
    _cached_set.cache_clear()
    atomic_write_text(stamp, json.dumps(params, sort_keys=True))
    return base
