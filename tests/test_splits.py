"""Federated split partitioners, fedvid-split/1 manifests and the `fedvid splits` CLI.

Runs on the real UCF101 / HMDB51 split-1 lists in datasets/ and the committed manifests.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from benchmark import DATASETS_DIR
from benchmark.cli import main as fedvid
from benchmark.commands.splits import compose_splits_config
from benchmark.io import atomic_write_json, canonical_json_bytes, sha256_bytes
from benchmark.registry import build_partitioner
from benchmark.splits.format import (
    FORMAT,
    ManifestError,
    client_statistics,
    load_manifest,
    manifest_bytes,
    split_properties,
)
from benchmark.splits.make import make_manifest
from benchmark.splits.partition import PartitionError
from benchmark.splits.standard import (
    STANDARD_SPLITS,
    committed_manifests,
    standard_manifest_path,
    standard_split_hashes,
)
from benchmark.splits.verify import annotations_for, verify_manifest

UCF_SPLITS = DATASETS_DIR / "ucf101" / "splits"
HMDB_SPLITS = DATASETS_DIR / "hmdb51" / "splits"
K400_SPLITS = DATASETS_DIR / "kinetics400" / "splits"


@pytest.fixture(scope="module")
def annotations():
    cache: dict = {}
    return {name: annotations_for(compose_splits_config([f"dataset={name}"]), cache) for name in ("ucf101", "hmdb51")}


def _kl_to_global(clients: list[list[tuple[str, int]]], num_classes: int) -> float:
    """Mean over clients of KL(client label distribution || global label distribution), nats."""
    glob = np.bincount([lab for c in clients for _, lab in c], minlength=num_classes).astype(float)
    glob /= glob.sum()
    kls = []
    for c in clients:
        p = np.bincount([lab for _, lab in c], minlength=num_classes).astype(float)
        p /= p.sum()
        m = p > 0
        kls.append(float((p[m] * np.log(p[m] / glob[m])).sum()))
    return float(np.mean(kls))


CASES = [
    ("iid", {}, 10),
    ("dirichlet", {"alpha": 0.1, "min_size": 10}, 10),
    ("dirichlet", {"alpha": 1.0, "min_size": 10}, 7),
    ("pathological", {"classes_per_client": 11}, 10),
    ("pathological", {"classes_per_client": 3}, 40),
    ("quantity", {"sigma": 1.0, "min_size": 10}, 10),
]


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
@pytest.mark.parametrize("name,params,num_clients", CASES)
def test_partition_invariants(annotations, dataset, name, params, num_clients):
    ann = annotations[dataset]
    clients = build_partitioner(name).split(ann.train, num_clients, params, 0)
    train = {(r.path, r.label) for r in ann.train}
    videos = [v for c in clients for v, _ in c]
    assert len(clients) == num_clients
    assert len(videos) == len(set(videos)), "a video is in two clients"
    assert {p for c in clients for p in c} == train, "clients must cover exactly the train split"
    assert not set(videos) & {r.path for r in ann.test}
    assert all(c == sorted(c) and c for c in clients)
    sizes = [len(c) for c in clients]
    if name == "iid":
        assert max(sizes) - min(sizes) <= 1
    if name in ("dirichlet", "quantity"):
        assert min(sizes) >= params["min_size"]
    if name == "quantity":
        assert max(sizes) > 3 * min(sizes)  # log-normal sigma 1: clearly skewed sizes
    if name == "pathological":
        k = params["classes_per_client"]
        assert all(len({lab for _, lab in c}) == k for c in clients)


def test_pathological_k8_over_400_classes_pairs_clients():
    # 100 clients x 8 classes over 400 classes: each class in exactly 2 clients, half its videos each.
    rng = np.random.default_rng(5)
    records = [(f"c{lab}/v{i:05d}.mp4", int(lab)) for i, lab in enumerate(np.repeat(np.arange(400), 11))]
    rng.shuffle(records)
    clients = build_partitioner("pathological").split(records, 100, {"classes_per_client": 8}, 0)
    owners: dict[int, set[int]] = {}
    for cid, c in enumerate(clients):
        assert len({lab for _, lab in c}) == 8
        for _, lab in c:
            owners.setdefault(lab, set()).add(cid)
    assert all(len(o) == 2 for o in owners.values()) and len(owners) == 400
    assert sorted(len(c) for c in clients)[0] >= 8 * 5


def test_dirichlet_skew_increases_as_alpha_falls(annotations):
    ann = annotations["hmdb51"]
    alphas = [10.0, 1.0, 0.5, 0.1, 0.05]
    skew = [
        np.mean(
            [
                _kl_to_global(build_partitioner("dirichlet").split(ann.train, 10, {"alpha": a, "min_size": 10}, s), 51)
                for s in range(3)
            ]
        )
        for a in alphas
    ]
    assert all(lo < hi for lo, hi in zip(skew, skew[1:])), dict(zip(alphas, skew))
    assert skew[0] < 0.1 and skew[-1] > 1.5  # near-IID at alpha 10, strongly skewed at 0.05
    # Classes seen per client fall with alpha, too.
    classes = [
        np.mean(
            [
                len({lab for _, lab in c})
                for c in build_partitioner("dirichlet").split(ann.train, 10, {"alpha": a, "min_size": 10}, 0)
            ]
        )
        for a in (10.0, 0.1)
    ]
    assert classes[0] > 2 * classes[1]


def test_partition_errors_name_the_key(annotations):
    train = annotations["hmdb51"].train
    with pytest.raises(PartitionError, match=r"min_size=400.*exceeds"):
        build_partitioner("dirichlet").split(train, 10, {"alpha": 0.1, "min_size": 400}, 0)
    small = [(f"c{i % 4}/v{i:03d}.avi", i % 4) for i in range(200)]
    with pytest.raises(PartitionError, match=r"alpha=0.01.*no draw in 1000 gave every client >= min_size=19"):
        build_partitioner("dirichlet").split(small, 10, {"alpha": 0.01, "min_size": 19}, 0)
    with pytest.raises(PartitionError, match=r"classes_per_client >= 6"):
        build_partitioner("pathological").split(train, 10, {"classes_per_client": 5}, 0)
    with pytest.raises(PartitionError, match=r"partition.alpha must be a positive number"):
        build_partitioner("dirichlet").split(train, 10, {"alpha": 0, "min_size": 1}, 0)
    with pytest.raises(PartitionError, match=r"partition.num_clients=4000 is more than the 3570 videos"):
        build_partitioner("iid").split(train, 4000, {}, 0)


@pytest.mark.parametrize("name,params", [(n, p) for n, p, _ in CASES[:4]])
def test_input_order_and_rerun_do_not_change_the_manifest(annotations, name, params):
    ann = annotations["ucf101"]
    cfg = {"name": name, "num_clients": 10, **params}
    reference = manifest_bytes(make_manifest(ann, cfg, 3))
    shuffled = list(ann.train)
    random.Random(1).shuffle(shuffled)
    ann_shuffled = type(ann)(
        ann.dataset, ann.split, ann.classes, shuffled, ann.test, dict(reversed(ann.source_sha256.items()))
    )
    assert manifest_bytes(make_manifest(ann_shuffled, cfg, 3)) == reference
    assert manifest_bytes(make_manifest(ann, cfg, 4)) != reference  # the seed matters


def test_manifest_layout_and_hash(annotations):
    ann = annotations["ucf101"]
    m = make_manifest(ann, {"name": "dirichlet", "num_clients": 10, "alpha": 0.1, "min_size": 10}, 0)
    assert m["format"] == FORMAT == "fedvid-split/1"
    assert m["manifest_id"] == "ucf101-s1-dirichlet0.1-c10-seed0"
    assert (m["dataset"], m["annotation_split"], m["num_clients"], m["overlap"]) == ("ucf101", "1", 10, False)
    assert set(m["source_sha256"]) == {"classInd.txt", "trainlist01.txt", "testlist01.txt"}
    assert m["source_sha256"]["trainlist01.txt"] == "f7a4d7abc05147b921c17fc227d731197c3583f29945d1f1d46bce830d1b9f12"
    assert m["params"] == {"alpha": 0.1, "min_size": 10} and m["seed"] == 0
    assert m["content_sha256"] == sha256_bytes(canonical_json_bytes(m["clients"]))
    first = m["clients"][0]
    assert set(first) == {"client_id", "videos"} and set(first["videos"][0]) == {"video", "label"}
    assert m["statistics"]["clients"][0]["num_videos"] == len(first["videos"])
    assert m["make_command"] == (
        "fedvid splits make dataset=ucf101 dataset.split=1 partition=dirichlet partition.alpha=0.1 "
        "partition.min_size=10 partition.num_clients=10 seed=0"
    )


def test_committed_standard_set():
    paths = committed_manifests()
    names = sorted(p.name for p in paths)
    assert len(paths) == len(STANDARD_SPLITS) == 22
    for want in (
        "ucf101-s1-iid-c5-seed0.json",
        "ucf101-s1-iid-c10-seed0.json",
        "ucf101-s1-dirichlet0.1-c10-seed0.json",
        "ucf101-s1-dirichlet0.5-c10-seed0.json",
        "ucf101-s1-dirichlet1.0-c10-seed0.json",
        "ucf101-s1-pathological-k11-c10-seed0.json",
        "hmdb51-s1-pathological-k6-c10-seed0.json",
        "kinetics400-official-iid-c100-seed0.json.gz",
        "kinetics400-official-dirichlet0.1-c100-seed0.json.gz",
        "kinetics400-official-dirichlet0.5-c100-seed0.json.gz",
        "kinetics400-official-pathological-k8-c100-seed0.json.gz",
        "kinetics400-official-fedvssl-iid-c100.json.gz",
        "kinetics400-official-fedvssl-noniid-c100.json.gz",
        "cifar10-official-ssd-dir0.1-c10.json.gz",
        "cifar10-official-ssd-dir0.1-c50.json.gz",
        "cifar100-official-ssd-dir0.1-c10.json.gz",
        "cifar100-official-ssd-dir0.1-c50.json.gz",
    ):
        assert want in names
    hashes = standard_split_hashes()
    assert len(hashes) == 22
    ucf = load_manifest(UCF_SPLITS / "ucf101-s1-dirichlet0.5-c10-seed0.json")
    assert hashes[ucf.content_sha256] == ucf.manifest_id == "ucf101-s1-dirichlet0.5-c10-seed0"
    assert sum(p.stat().st_size for p in paths) < 32 * 2**20


@pytest.mark.parametrize(
    "path",
    [UCF_SPLITS / "ucf101-s1-dirichlet0.1-c10-seed0.json", HMDB_SPLITS / "hmdb51-s1-pathological-k6-c10-seed0.json"],
)
def test_committed_manifest_regenerates_byte_identical(tmp_path, monkeypatch, path):
    manifest = load_manifest(path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / path.name
    overrides = manifest.data["make_command"].split()[3:]
    assert fedvid(["splits", "make", *overrides, f"out={out}"]) == 0
    assert out.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no outputs/, .hydra/ or log file
    assert verify_manifest(path, compose_splits_config) == []


def test_cli_make_gz_stats_and_client_videos(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["dataset=hmdb51", "partition=quantity", "partition.sigma=1.5", "partition.num_clients=6", "seed=2"]
    assert fedvid(["splits", "make", *args, "out=sub/q.json.gz"]) == 0
    gz = tmp_path / "sub" / "q.json.gz"
    raw = gz.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\x00\x00\x00\x00"  # gzip, mtime 0
    m = load_manifest(gz)
    assert m.manifest_id == "hmdb51-s1-quantity-sigma1.5-c6-seed2" and m.num_clients == 6
    pairs = m.client_videos(3)
    assert pairs == sorted(pairs) and all(isinstance(v, str) and isinstance(lab, int) for v, lab in pairs)
    assert sum(len(m.client_videos(c)) for c in range(6)) == 3570
    with pytest.raises(IndexError, match="client_id 6"):
        m.client_videos(6)
    assert fedvid(["splits", "make", *args, "out=again.json"]) == 0
    assert gzip.decompress(raw) == (tmp_path / "again.json").read_bytes()

    capsys.readouterr()
    assert fedvid(["splits", "stats", str(gz), "--png", "map.png"]) == 0
    out = capsys.readouterr().out
    sizes = [row["num_videos"] for row in m.data["statistics"]["clients"]]
    assert f"{max(sizes):,}" in out and "3,570 entries over 6 clients" in out
    png = (tmp_path / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def _tampered_copy(src: Path, dst: Path, *, rehash: bool) -> tuple[int, str]:
    data = json.loads(src.read_bytes())
    video = data["clients"][2]["videos"][7]
    video["label"] = (video["label"] + 1) % data["num_classes"]
    if rehash:  # a careful forger: every derived field recomputed
        data["content_sha256"] = sha256_bytes(canonical_json_bytes(data["clients"]))
        data["statistics"] = client_statistics(data["clients"])
        data["properties"] = split_properties(data["clients"], data["num_classes"])
    atomic_write_json(dst, data)
    return video["label"], video["video"]


def test_tampered_manifest_fails_naming_the_file(tmp_path, capsys):
    src = UCF_SPLITS / "ucf101-s1-iid-c10-seed0.json"
    bad = tmp_path / "ucf101-tampered.json"
    _tampered_copy(src, bad, rehash=False)
    with pytest.raises(ManifestError, match=rf"{bad}: key 'content_sha256' is .* but the clients hash to"):
        load_manifest(bad)
    problems = verify_manifest(bad, compose_splits_config)
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: key 'content_sha256'")
    capsys.readouterr()
    assert fedvid(["splits", "verify", str(src), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {bad}: key 'content_sha256'" in err.replace("\n", "") and "1 of 2 manifests ok" in err

    forged = tmp_path / "ucf101-forged.json"
    label, video = _tampered_copy(src, forged, rehash=True)
    load_manifest(forged)  # internally consistent ...
    problems = verify_manifest(forged, compose_splits_config)  # ... but not what the official list says
    assert problems and all(p.startswith(f"{forged}: ") for p in problems)
    assert f"{video!r} has label {label}" in problems[0]


def test_verify_catches_test_videos_overlap_and_bad_format(tmp_path, annotations):
    ann = annotations["hmdb51"]
    m = make_manifest(ann, {"name": "iid", "num_clients": 5}, 0)
    test_video = ann.test[0]
    m["clients"][1]["videos"].append({"video": test_video.path, "label": test_video.label})
    m["clients"][1]["videos"].sort(key=lambda v: v["video"])
    m["clients"][4]["videos"].append(dict(m["clients"][0]["videos"][0]))
    m["clients"][4]["videos"].sort(key=lambda v: v["video"])
    m["content_sha256"] = sha256_bytes(canonical_json_bytes(m["clients"]))
    m["statistics"] = client_statistics(m["clients"])
    m["properties"] = split_properties(m["clients"], m["num_classes"])
    m["overlap"] = True  # declared, so the duplicate itself is allowed ...
    path = tmp_path / "bad.json"
    atomic_write_json(path, m)
    problems = verify_manifest(path, compose_splits_config, ann, regenerate=False)
    assert any(f"{test_video.path!r} is a test video" in p for p in problems)
    m["overlap"] = False  # ... but undeclared overlap is caught by load_manifest
    atomic_write_json(path, m)
    with pytest.raises(ManifestError, match=rf"{path}: key 'overlap' is False but some video"):
        load_manifest(path)
    atomic_write_json(path, {**m, "format": "fedvid-split/0"})
    with pytest.raises(ManifestError, match=rf"{path}: key 'format' is 'fedvid-split/0', expected 'fedvid-split/1'"):
        load_manifest(path)
    atomic_write_json(path, {k: v for k, v in m.items() if k != "seed"})
    with pytest.raises(ManifestError, match=rf"{path}: missing required key 'seed'"):
        load_manifest(path)


def test_fedvssl_imported_manifests():
    noniid = load_manifest(K400_SPLITS / "kinetics400-official-fedvssl-noniid-c100.json.gz")
    p = noniid.data["properties"]
    assert noniid.overlap is True and noniid.num_clients == 100 and noniid.partitioner == "imported"
    assert (p["total_entries"], p["unique_videos"], p["classes_covered"]) == (228_382, 60_505, 106)
    assert p["classes_per_client"] == {"min": 8, "max": 8}
    assert p["clients_per_video"] == {"1": 2272, "2": 2271, "3": 2280, "4": 53682}
    assert p["identical_class_set_groups"] == [[c, c + 50] for c in range(50)]
    assert p["identical_class_set_groups_disjoint_videos"] is True
    assert "228,382 entries" in p["notes"] and "60,505 unique videos" in p["notes"] and "106 of 400" in p["notes"]
    # client_dist1.json's first entry: taking_a_shower/Wf9RFoSFJWc_000009_000019, classInd id 42
    label_map = (DATASETS_DIR / "kinetics400" / "label_map.txt").read_text().splitlines()
    assert (
        "train/taking_a_shower/Wf9RFoSFJWc_000009_000019.mp4",
        label_map.index("taking a shower"),
    ) in noniid.client_videos(0)

    iid = load_manifest(K400_SPLITS / "kinetics400-official-fedvssl-iid-c100.json.gz")
    p = iid.data["properties"]
    assert iid.overlap is False and (p["total_entries"], p["unique_videos"], p["classes_covered"]) == (219_664,) * 2 + (
        400,
    )
    assert p["videos_per_client"] == {"min": 2196, "max": 2197}
    assert set(iid.data["imported_sha256"]) >= {
        "../shared/annotations/kinetics400/fedvssl_splits/iid/client_dist1.json",
        "../shared/annotations/kinetics400/fedvssl_splits/classInd.txt",
    }


def test_standard_path_naming():
    m = {"dataset": "kinetics400", "manifest_id": "kinetics400-official-iid-c100-seed0"}
    assert standard_manifest_path(m, True) == K400_SPLITS / "kinetics400-official-iid-c100-seed0.json.gz"


def test_cli_make_reports_bad_params(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fedvid(["splits", "make", "dataset=hmdb51", "partition=pathological", "partition.classes_per_client=2"]) == 1
    err = capsys.readouterr().err
    assert "partition.classes_per_client=2 x num_clients=10 = 20 class slots cannot cover the 51 classes" in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- provenance (issue 14, case 7)


def _custom_ucf_lists(tmp_path: Path) -> Path:
    """The official UCF101 lists with the last 100 train videos of list 1 left out."""
    import shutil

    lists = tmp_path / "lists"
    shutil.copytree(DATASETS_DIR / "ucf101" / "ucfTrainTestlist", lists)
    train = (lists / "trainlist01.txt").read_text().splitlines(keepends=True)
    (lists / "trainlist01.txt").write_text("".join(train[:-100]))
    return lists


def test_a_manifest_from_custom_lists_records_them_keeps_its_own_id_and_verifies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lists = _custom_ucf_lists(tmp_path)
    args = ["dataset=ucf101", f"dataset.annotations={lists}", "partition=iid", "partition.num_clients=5", "seed=0"]
    assert fedvid(["splits", "make", *args, "out=custom.json"]) == 0
    m = load_manifest(tmp_path / "custom.json")
    committed = load_manifest(UCF_SPLITS / "ucf101-s1-iid-c5-seed0.json")
    assert m.content_sha256 != committed.content_sha256
    assert m.manifest_id == f"ucf101-s1-iid-c5-seed0-custom-{m.content_sha256[:8]}"
    assert f"dataset.annotations={lists}" in m.data["make_command"]
    capsys.readouterr()
    assert fedvid(["splits", "verify", str(tmp_path / "custom.json")]) == 0, capsys.readouterr()


def test_overlapping_train_and_test_lists_and_an_empty_class_list_are_errors(tmp_path):
    from benchmark.data.annotations import read_hmdb51
    from benchmark.data.records import AnnotationSplit, VideoRecord

    # e.g. the same Kinetics CSV given as train and test list
    train = [VideoRecord(f"train/a/{i}.mp4", 0, "a") for i in range(4)]
    same = AnnotationSplit("kinetics400", "official", ["a"], train, list(train), {"train.csv": "0" * 64})
    with pytest.raises(PartitionError, match=r"share 4 videos .*lists: train.csv\): train/test leakage"):
        make_manifest(same, {"name": "iid", "num_clients": 2}, 0)

    hmdb = tmp_path / "hmdb"
    hmdb.mkdir()
    (hmdb / "run_test_split1.txt").write_text("a.avi 1\nb.avi 2\n")
    (hmdb / "walk_test_split1.txt").write_text("")
    with pytest.raises(ValueError, match=r"walk_test_split1.txt: empty list \(no videos of class 'walk'\)"):
        read_hmdb51(hmdb, 1)


def test_a_manifest_without_clients_is_refused_naming_the_file(tmp_path):
    data = json.loads((UCF_SPLITS / "ucf101-s1-iid-c5-seed0.json").read_text())
    data.update(clients=[], num_clients=0)
    atomic_write_json(tmp_path / "empty.json", data)
    with pytest.raises(ManifestError, match=r"empty.json: has no clients"):
        load_manifest(tmp_path / "empty.json")


def test_a_partitioner_is_one_registered_class_whose_declaration_names_and_checks_it():
    from benchmark.registry import PARTITIONERS, Registry
    from benchmark.splits.make import manifest_id_for
    from benchmark.splits.partition import Param, Partitioner

    assert PARTITIONERS.names() == ["dirichlet", "dirichlet_fedbox", "iid", "imported", "pathological", "quantity"]
    # the ids of the committed splits come from the declarations
    assert (
        manifest_id_for("ucf101", "1", "dirichlet", {"alpha": 0.5, "min_size": 10}, 10, 0)
        == "ucf101-s1-dirichlet0.5-c10-seed0"
    )
    assert (
        manifest_id_for("ucf101", "1", "pathological", {"classes_per_client": 11}, 10, 0)
        == "ucf101-s1-pathological-k11-c10-seed0"
    )
    assert (
        manifest_id_for("ucf101", "1", "quantity", {"sigma": 1.0, "min_size": 10}, 10, 3)
        == "ucf101-s1-quantity-sigma1.0-c10-seed3"
    )
    assert manifest_id_for("k400", "train", "imported", {"tag": "fedvssl-iid"}, 100, 0) == "k400-train-fedvssl-iid-c100"
    with pytest.raises(PartitionError, match="partition.alpha is required"):
        build_partitioner("dirichlet").check_params({"min_size": 1})

    registry = Registry("partitioner", "fedvid.test-partitioners", "benchmark.splits.partition:Partitioner", modules=())

    @registry.register("round_robin")
    class RoundRobin(Partitioner):
        params = (Param("offset", int, positive=False, id_label="-o"),)

        def split(self, records, num_clients, params, seed):
            return [
                [p for i, p in enumerate(records) if (i + params["offset"]) % num_clients == c]
                for c in range(num_clients)
            ]

    assert registry.get("round_robin")().manifest_id("ds-s1", {"offset": 2}, 4, 7) == "ds-s1-round_robin-o2-c4-seed7"
    with pytest.raises(TypeError, match="not a subclass of benchmark.splits.partition.Partitioner"):
        registry.register("plain")(object)
