"""Image track data layer: CIFAR-10/100 and Tiny-ImageNet readers on files written in their
distributed formats, and SSD's published splits as committed manifests."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import re

import numpy as np
import pytest

from benchmark import DATASETS_DIR
from benchmark.commands.splits import compose_splits_config
from benchmark.data.annotations import load_annotations
from benchmark.data.images import (
    CIFAR_SPECS,
    ImageDataError,
    make_cifar_standin,
    read_cifar,
    read_tiny_imagenet,
    record_index,
    tiny_imagenet_records,
    write_cifar,
    write_tiny_imagenet,
)
from benchmark.splits.format import load_manifest
from benchmark.splits.partition import PartitionError, imported_index_lists
from benchmark.splits.verify import verify_manifest


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _official_style_batch(images: np.ndarray, labels: list[int], label_key: str) -> bytes:
    """A batch pickled the way the original (Python 2) files are: keys and names as byte strings."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return pickle.dumps(
        {
            b"batch_label": b"training batch 1 of 5",
            label_key.encode(): labels,
            b"data": data,
            b"filenames": [b"x.png"] * len(images),
        },
        protocol=2,
    )


def test_cifar10_reader_follows_torchvision_order_and_channel_layout(tmp_path):
    train, test = _images(10, 0), _images(4, 1)
    tl, el = np.arange(10) % 10, np.array([3, 1, 4, 1])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    base = write_cifar(tmp_path, "cifar10", (train, tl), (test, el), names)
    assert sorted(p.name for p in base.iterdir()) == [
        "batches.meta",
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    got = read_cifar(tmp_path, "cifar10", train=True)
    assert got.images.shape == (10, 32, 32, 3) and got.images.dtype == np.uint8
    np.testing.assert_array_equal(got.images, train)  # data_batch_1..5 concatenated in order
    np.testing.assert_array_equal(got.labels, tl)
    assert got.classes == names
    # the distributed layout: 1,024 red, then green, then blue values, row-major
    raw = pickle.loads((base / "data_batch_1").read_bytes(), encoding="latin1")
    assert raw["data"][0, 0] == train[0, 0, 0, 0] and raw["data"][0, 1024] == train[0, 0, 0, 1]
    assert raw["data"][0, 33] == train[0, 1, 1, 0]
    np.testing.assert_array_equal(read_cifar(base, "cifar10", train=False).labels, el)


def test_cifar_reader_reads_byte_keys_of_the_original_python2_pickles(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    imgs = _images(3, 2)
    (base / "train").write_bytes(_official_style_batch(imgs, [5, 99, 0], "fine_labels"))
    (base / "test").write_bytes(_official_style_batch(imgs[:1], [7], "fine_labels"))
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, protocol=2))
    got = read_cifar(tmp_path, "cifar100")
    assert got.labels.tolist() == [5, 99, 0] and got.classes[99] == "c99"
    np.testing.assert_array_equal(got.images, imgs)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_corrupt_or_missing_batches_name_the_file_and_the_fix(tmp_path, damage):
    base = write_cifar(
        tmp_path,
        "cifar10",
        (_images(10, 0), np.zeros(10, int)),
        (_images(2, 1), np.zeros(2, int)),
        [str(i) for i in range(10)],
    )
    f = base / "data_batch_3"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:500])
    elif damage == "garbage":
        f.write_bytes(b"\x00not a pickle at all" * 10)
    else:
        f.unlink()
    with pytest.raises(ImageDataError) as e:
        read_cifar(tmp_path, "cifar10")
    msg = str(e.value)
    assert msg.startswith(str(f)) and "cifar.html" in msg and len(msg.splitlines()) == 1
    assert ("missing" in msg) if damage == "missing" else ("truncated or corrupt" in msg)


def test_tiny_imagenet_reader_follows_image_folder_order_and_val_annotations(tmp_path):
    rng = np.random.default_rng(0)
    wnids = ["n02", "n01", "n03"]
    imgs = {w: [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(12)] for w in wnids}
    write_tiny_imagenet(tmp_path, imgs, [(imgs["n03"][0], "n03"), (imgs["n01"][1], "n01")])
    classes, train = tiny_imagenet_records(tmp_path, True)
    assert classes == ["n01", "n02", "n03"]  # sorted wnids (torchvision find_classes)
    assert len(train) == 36
    # sorted(fnames): n01_0, n01_1, n01_10, n01_11, n01_2, ...
    assert [p for p, _ in train[:4]] == [f"train/n01/images/n01_{i}.JPEG" for i in (0, 1, 10, 11)]
    assert [lab for _, lab in train[::12]] == [0, 1, 2]
    val = read_tiny_imagenet(tmp_path, train=False)
    assert val.labels.tolist() == [2, 0] and val.images.shape == (2, 64, 64, 3)
    small = read_tiny_imagenet(tmp_path, train=False, size=32)
    assert small.images.shape == (2, 32, 32, 3)
    # dirichlet splits of Tiny-ImageNet from the real layout
    ann = load_annotations({"name": "tiny_imagenet", "id": "tiny_imagenet", "root": str(tmp_path)})
    assert len(ann.train) == 36 and ann.train[0].label == 0 and ann.test[0].class_name == "n03"
    from benchmark.splits.make import make_manifest

    m = make_manifest(ann, {"name": "dirichlet", "alpha": 0.1, "num_clients": 3, "min_size": 1}, 0)
    assert (
        sum(len(c["videos"]) for c in m["clients"]) == 36
        and m["manifest_id"] == "tiny_imagenet-official-dirichlet0.1-c3-seed0"
    )
    (tmp_path / "tiny-imagenet-200" / "train" / "n02" / "images" / "n02_3.JPEG").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ImageDataError, match=r"n02_3\.JPEG: cannot decode"):
        read_tiny_imagenet(tmp_path, train=True)


def test_standin_is_deterministic_real_format_and_balanced(tmp_path):
    a = make_cifar_standin(tmp_path / "a", per_class_train=3, per_class_test=2, seed=0)
    b = make_cifar_standin(tmp_path / "b", per_class_train=3, per_class_test=2, seed=0)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    s = read_cifar(a, "cifar10")
    assert len(s) == 30 and np.bincount(s.labels).tolist() == [3] * 10
    ann = load_annotations(
        {"name": "cifar10", "id": "synthetic_cifar10", "root": str(tmp_path / "a"), "labels_from_files": True}
    )
    assert [r.path for r in ann.train[:2]] == ["train/00000", "train/00001"] and ann.train[0].label == int(s.labels[0])
    assert len(ann.test) == 20 and set(ann.source_sha256) == {
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    }


# ----------------------------------------------------------------------------- SSD's splits

_SOURCES = {
    d: dict(
        re.findall(
            r"^\| (ssd_splits/\S+) \| .*\| [0-9a-f]{64} \| ([0-9a-f]{64}) \|$",
            (DATASETS_DIR / d / "SOURCES.md").read_text(),
            re.M,
        )
    )
    for d in ("cifar10", "cifar100")
}
#: sha256 of the upstream files (hc-fang/ssd@ffb85bae data/fed/*.json, as in the project annotation store)
_UPSTREAM = {
    "cifar10_dir_client10_alpha0.1.json": "fc792ebc0b7bd2acd228cf7f8278caca0cc99c15727426a73d5039838ec1fba0",
    "cifar10_dir_client50_alpha0.1.json": "9bdf595e3f2197e816576df1b4db1815256802fc15e903299f85d07ca6b983a9",
    "cifar100_dir_client10_alpha0.1.json": "4e96aa08f9d3e786281c139d4b372c1e3b8c05f7096e2d66c5b2893182be41d0",
    "cifar100_dir_client50_alpha0.1.json": "a0a15b2cb5a7a7c070d06ec92f532f4eba5b323ae738952b397c790b081c2b5a",
}
#: (min, max) client sizes the annotation store's SOURCES.md records for each file
_SIZES = {
    "cifar10_dir_client10_alpha0.1.json": (2920, 7520),
    "cifar10_dir_client50_alpha0.1.json": (60, 4039),
    "cifar100_dir_client10_alpha0.1.json": (3624, 7019),
    "cifar100_dir_client50_alpha0.1.json": (452, 1831),
}


@pytest.mark.parametrize("dataset,clients", [("cifar10", 10), ("cifar10", 50), ("cifar100", 10), ("cifar100", 50)])
def test_ssd_split_manifests_have_the_client_sizes_of_the_published_files(dataset, clients):
    name = f"{dataset}_dir_client{clients}_alpha0.1.json"
    src = DATASETS_DIR / dataset / "ssd_splits" / (name + ".gz")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == _SOURCES[dataset][f"ssd_splits/{name}.gz"]
    raw = gzip.decompress(src.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == _UPSTREAM[name]  # byte-for-byte the upstream file
    published = json.loads(raw)
    m = load_manifest(DATASETS_DIR / dataset / "splits" / f"{dataset}-official-ssd-dir0.1-c{clients}.json.gz")
    assert m.num_clients == clients == len(published) and m.partitioner == "imported" and not m.overlap
    sizes = [row["num_videos"] for row in m.data["statistics"]["clients"]]
    assert sizes == [len(c) for c in published]
    assert (min(sizes), max(sizes)) == _SIZES[name] and sum(sizes) == 50_000
    for k in (0, clients - 1):  # client k holds exactly the published indices, as train/<index> records
        assert sorted(record_index(v) for v, _ in m.client_videos(k)) == sorted(published[k])
    assert {lab for c in range(clients) for _, lab in m.client_videos(c)} == {-1}
    assert "Labels are not recorded" in m.data["properties"]["notes"]


def test_splits_verify_accepts_the_ssd_manifests_and_rejects_an_edit(tmp_path):
    path = DATASETS_DIR / "cifar10" / "splits" / "cifar10-official-ssd-dir0.1-c10.json.gz"
    assert verify_manifest(path, compose_splits_config) == []
    data = json.loads(gzip.decompress(path.read_bytes()))
    data["clients"][0]["videos"].pop()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert "content_sha256" in verify_manifest(bad, compose_splits_config)[0]


def test_index_list_import_errors_name_the_file(tmp_path):
    recs = [(f"train/{i:05d}", -1) for i in range(5)]
    f = tmp_path / "s.json"
    f.write_text(json.dumps([[0, 1], [2, 9]]))
    with pytest.raises(PartitionError, match=r"s\.json: client 1 has index 9 outside the 5 train images"):
        imported_index_lists(recs, 2, f)
    f.write_text("[[0, 1], [2")
    with pytest.raises(PartitionError, match=r"s\.json: not a readable JSON index split"):
        imported_index_lists(recs, 2, f)
    f.write_text(json.dumps([[0, 1], [2, 3, 4]]))
    assert imported_index_lists(recs, 2, f)[1] == [("train/00002", -1), ("train/00003", -1), ("train/00004", -1)]
    assert CIFAR_SPECS["cifar100"].label_key == "fine_labels"
