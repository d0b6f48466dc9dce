"""Image track: CIFAR ResNet-18, image views, the modality-agnostic SSD / align-uniform,
the image loader, evaluation as hc-fang/ssd's linear_eval.py / semi_eval.py, the ssd-* tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.data.images import TrainImageDataset, make_cifar_standin, read_cifar
from benchmark.data.loaders import make_train_loader
from benchmark.data.transforms import SimCLRVideoAugment
from benchmark.evaluation.image_eval import (
    _approximate_mode,
    extract_features,
    linear_eval,
    semi_eval,
    stratified_subset,
)
from benchmark.registry import build_backbone, build_method


def test_cifar_resnet18_is_the_official_network():
    net = build_backbone("cifar_resnet18")
    assert net.out_channels == 512
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    # hc-fang/ssd models/resnet.py ResNet18(num_classes=10) has 11,173,962 parameters; minus fc (512*10+10)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962 - 5_130
    x = torch.rand(2, 3, 32, 32)
    fmap = net.eval()(x)
    assert fmap.shape == (2, 512, 4, 4)
    # averaging every axis after the channel == the official AvgPool2d((4, 4)) + flatten
    torch.testing.assert_close(fmap.flatten(2).mean(2), F.avg_pool2d(fmap, 4).flatten(1))
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        net(torch.rand(1, 3, 2, 32, 32))


def test_image_views_are_the_one_frame_clip_views_and_accept_uint8():
    aug = SimCLRVideoAugment()
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    a = aug(img, torch.Generator().manual_seed(5))
    b = aug(img.float() / 255, torch.Generator().manual_seed(5))
    c = aug((img.float() / 255).unsqueeze(1), torch.Generator().manual_seed(5)).squeeze(1)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


@pytest.mark.parametrize("name", ["ssd", "align_uniform"])
def test_the_same_method_class_trains_on_clips_and_images(name):
    torch.manual_seed(0)
    img_method = (
        build_method(name, build_backbone("cifar_resnet18", width=8), basis_seed=0)
        if name == "ssd"
        else build_method(name, build_backbone("cifar_resnet18", width=8))
    )
    vid_method = build_method(name, build_backbone("tiny_r3d", width=4), **({"basis_seed": 0} if name == "ssd" else {}))
    assert type(img_method) is type(vid_method) and set(type(img_method).modalities) == {"video", "image"}
    if name == "ssd":
        img_method.set_client_context(1, 10)
        assert int(img_method.basis.shape[0]) == 64  # d = 8 * width
    gen = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    sample = img_method.sample_transform(views, gen)
    assert sample["video"].shape == (2, 3, 32, 32)
    batch = {"video": torch.stack([img_method.sample_transform(views, gen)["video"] for _ in range(4)])}
    loss, logs = img_method.training_loss(batch)
    assert torch.isfinite(loss) and batch["video"].shape == (4, 2, 3, 32, 32)
    loss.backward()
    assert img_method.backbone.conv1.weight.grad.abs().sum() > 0
    assert {"align", "uniform"} <= set(logs)
    with pytest.raises(ValueError, match=r"\(B, 2, C, H, W\) \(images\)"):
        img_method.training_loss({"video": torch.rand(4, 3, 32, 32)})


def test_image_dataset_serves_uint8_views_seeded_per_epoch_and_item(tmp_path):
    make_cifar_standin(tmp_path, per_class_train=2, per_class_test=1)
    data = read_cifar(tmp_path, "cifar10")
    seen = []

    def transform(views, generator):
        seen.append([v.clone() for v in views])
        return {"video": torch.stack([v.float() / 255 for v in views])}

    ds = TrainImageDataset(data.images, [(3, int(data.labels[3])), (7, int(data.labels[7]))], 2, transform, seed=11)
    s = ds[(0, 1)]
    assert s["video"].shape == (2, 3, 32, 32) and int(s["label"]) == int(data.labels[7]) and int(s["index"]) == 1
    v0, v1 = seen[-1]
    assert v0.dtype == torch.uint8 and v0.shape == (3, 32, 32)
    original = torch.from_numpy(data.images[7]).permute(2, 0, 1)
    for v in (v0, v1):  # each view is the image, flipped or not
        assert torch.equal(v, original) or torch.equal(v, original.flip(-1))
    torch.testing.assert_close(ds[(0, 1)]["video"], s["video"])  # same (epoch, item): same draws
    flips = {tuple(torch.equal(v, original) for v in (ds[(e, 1)], seen[-1])[1]) for e in range(40)}
    assert len(flips) == 4  # the two views draw their flips independently
    loader = make_train_loader(ds, batch_size=2, num_workers=0, seed=3, epochs=[0, 1])
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["video"].shape == (2, 2, 3, 32, 32)


def test_tiny_imagenet_standin_is_the_real_layout_deterministic_and_regenerated_on_new_parameters(tmp_path):
    from benchmark.data.images import ensure_standin, load_image_set, read_tiny_imagenet, tiny_imagenet_records

    cfg = {"name": "tiny_imagenet", "root": str(tmp_path / "t"), "image_size": 32}
    cfg["standin"] = {"per_class_train": 3, "per_class_test": 2, "seed": 0, "num_classes": 4}
    base = ensure_standin(cfg)
    assert (base / "wnids.txt").read_text().split() == [f"n{c:08d}" for c in range(4)]
    classes, records = tiny_imagenet_records(base)
    assert records[0] == ("train/n00000000/images/n00000000_0.JPEG", 0) and len(records) == 12
    assert [lab for _, lab in records] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # ImageFolder order
    train, test = load_image_set(cfg, True), load_image_set(cfg, False)
    assert train.images.shape == (12, 32, 32, 3) and sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    again = read_tiny_imagenet(base, True, 32)
    assert np.array_equal(again.images, train.images)
    stamp = (base / "standin.json").stat().st_mtime_ns
    assert ensure_standin(cfg) == base and (base / "standin.json").stat().st_mtime_ns == stamp  # kept
    cfg["standin"] = {**cfg["standin"], "num_classes": 2}
    ensure_standin(cfg)  # other parameters: other files, and the cached read is dropped
    assert len(tiny_imagenet_records(base)[1]) == 6 and len(load_image_set(cfg, True)) == 6


def test_stratified_subset_hand_example_and_properties():
    # 50/30/20 labels, 10 %: n_train = 10, per class 5/3/2 (proportional, no remainder)
    labels = [0] * 50 + [1] * 30 + [2] * 20
    picked = stratified_subset(labels, 0.1, 17)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert np.bincount([labels[i] for i in picked]).tolist() == [5, 3, 2]
    assert picked == stratified_subset(labels, 0.1, 17) and picked != stratified_subset(labels, 0.1, 18)
    # remainders: 3 classes of 10, 4 draws -> floor 1 each, one extra to a tied class drawn by the rng
    counts = _approximate_mode(np.array([10, 10, 10]), 4, np.random.RandomState(0))
    assert sorted(counts.tolist()) == [1, 1, 2]
    # CIFAR-10 at 1 %: 500 images, 50 per class
    cifar_like = np.repeat(np.arange(10), 5000)
    sub = stratified_subset(cifar_like.tolist(), 0.01, 17)
    assert np.bincount(cifar_like[sub]).tolist() == [50] * 10


def test_linear_eval_learns_separable_features_and_reports_the_last_epoch():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(200) % 4
    z = centers[y] + 0.3 * torch.randn(200, 16, generator=g)
    res = linear_eval(z[:160], y[:160], z[160:], y[160:], 4, epochs=40, batch_size=64, lr=3e-2, seed=1)
    assert res["top1"] == 1.0 and len(res["top1_history"]) == 2 and res["top1"] == res["top1_history"][-1]
    again = linear_eval(z[:160], y[:160], z[160:], y[160:], 4, epochs=40, batch_size=64, lr=3e-2, seed=1)
    assert again == res


def test_semi_eval_fine_tunes_a_copy_and_reports_the_best_check(tmp_path):
    make_cifar_standin(tmp_path, per_class_train=4, per_class_test=2)
    tr, te = read_cifar(tmp_path, "cifar10"), read_cifar(tmp_path, "cifar10", False)
    net = build_backbone("cifar_resnet18", width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = semi_eval(net, tr.images, tr.labels, te.images, te.labels, 10, 0.5, epochs=2, batch_size=8, test_every=1)
    with pytest.raises(ValueError, match="needs at least one per class"):
        stratified_subset(tr.labels.tolist(), 0.2, 17)  # 8 labelled images for 10 classes: sklearn refuses too
    assert res["num_labelled"] == 20 and len(res["top1_history"]) == 2 and res["top1"] == max(res["top1_history"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the pretrained model is untouched
    feats = extract_features(net, te.images, batch_size=7)
    assert feats.shape == (20, 32)


#: The image track's reproduce tables: (table, dataset config, client count, per-round fraction).
SSD_IMAGE_TABLES = [
    (f"ssd-{d}-{kind}", ds, 10 if kind == "crosssilo" else 50, 1.0 if kind == "crosssilo" else 0.2)
    for d, ds in (("cifar10", "cifar10"), ("cifar100", "cifar100"), ("tinyimagenet", "tiny_imagenet"))
    for kind in ("crosssilo", "crossdevice")
]


@pytest.mark.parametrize("name,dataset,clients,fraction", SSD_IMAGE_TABLES)
def test_ssd_tables_rows_and_full_scale_settings(name, dataset, clients, fraction):
    from test_protocols import compose

    from benchmark.commands.reproduce import TABLES, reproduced_metric

    t = TABLES[name]
    assert [r.label for r in t.rows] == ["FedAlignUniform", "SSD"] and t.protocol == "ssd_image"
    assert all(r.reported_record is None for r in t.rows)  # no citable reported numbers: none recorded
    assert "GPU" in t.full_compute
    cfg = compose(list(t.rows[1].overrides))
    assert (cfg.method.name, cfg.backbone.name, cfg.seed, cfg.client.batch_size) == ("ssd", "cifar_resnet18", 17, 128)
    assert (cfg.client.optimizer.lr, cfg.federation.rounds, cfg.federation.local_epochs) == (0.1, 100, 5)
    assert (cfg.dataset.name, cfg.partition.num_clients, cfg.federation.clients_per_round) == (
        dataset,
        clients,
        fraction,
    )
    # the draw of split_dataset.py; numpy_seed 17 reproduces the published cifar10 c10 file, 1 the others
    assert (cfg.partition.name, cfg.partition.alpha) == ("dirichlet_fedbox", 0.1)
    assert cfg.partition.numpy_seed == (17 if name == "ssd-cifar10-crosssilo" else 1)
    if dataset == "tiny_imagenet":  # no published split: drawn at run time; 64x64 images read at 32x32
        assert cfg.split_manifest is None and cfg.dataset.image_size == 32
    else:
        assert cfg.split_manifest.endswith(f"{dataset}-official-ssd-dir0.1-c{clients}.json.gz")
    assert compose(list(t.rows[0].overrides)).method.name == "align_uniform"
    assert reproduced_metric(t.metrics[0], "smoke") == f"image_linear_probe.synthetic_{dataset}.top1"


def test_fedbox_counts_hand_example():
    from benchmark.splits.partition import _counts_from_ratios

    # 10 x [0.25, 0.35, 0.40] = 2.5, 3.5, 4.0 -> floor 2, 3, 4; one left over goes to the largest
    # remainder; the tie (0.5, 0.5) is broken by argsort's order: the later index (client 1)
    assert _counts_from_ratios(10, np.array([0.25, 0.35, 0.40])).tolist() == [2, 4, 4]
    assert _counts_from_ratios(7, np.array([2.0, 2.0])).tolist() == [3, 4]  # ratios are normalised


def _published(dataset: str, clients: int) -> list[list[int]]:
    import gzip

    from benchmark import DATASETS_DIR

    path = DATASETS_DIR / dataset / "ssd_splits" / f"{dataset}_dir_client{clients}_alpha0.1.json.gz"
    return json.loads(gzip.decompress(path.read_bytes()))


def test_dirichlet_fedbox_reproduces_the_published_ssd_splits_index_for_index():
    """hc-fang/ssd's files list, per client, class 0's share, then class 1's ... (split_dataset.py).
    The block sizes follow from the seed alone (CIFAR classes have 5,000 / 500 images), so the
    files give back every CIFAR train label; the two files of a dataset must agree on them, and
    our partitioner on those labels must hand every client exactly the published indices."""
    from benchmark.registry import build_partitioner
    from benchmark.splits.partition import _counts_from_ratios

    fedbox = build_partitioner("dirichlet_fedbox")
    for dataset, num_classes in (("cifar10", 10), ("cifar100", 100)):
        recovered = []
        for clients in (10, 50):
            seed = 17 if (dataset, clients) == ("cifar10", 10) else 1
            published = _published(dataset, clients)
            proportion = np.random.RandomState(seed).dirichlet(np.repeat(0.1, clients), size=num_classes)
            counts = np.stack([_counts_from_ratios(50_000 // num_classes, proportion[c]) for c in range(num_classes)])
            assert [len(c) for c in published] == counts.sum(0).tolist()
            labels = np.full(50_000, -1)
            for k, indices in enumerate(published):
                labels[indices] = np.repeat(np.arange(num_classes), counts[:, k])
            assert (labels >= 0).all() and np.bincount(labels).tolist() == [50_000 // num_classes] * num_classes
            recovered.append(labels)
            records = [(f"train/{i:05d}", int(lab)) for i, lab in enumerate(labels)]
            ours = fedbox.split(records, clients, {"alpha": 0.1, "numpy_seed": seed}, 0)
            assert [[int(v.split("/")[1]) for v, _ in c] for c in ours] == [sorted(c) for c in published]
        assert np.array_equal(*recovered)  # both files describe the same CIFAR labels
    with pytest.raises(ValueError, match="numpy_seed"):
        fedbox.split([("a", 0), ("b", 1)], 2, {"alpha": 0.1, "numpy_seed": -1}, 0)


def _assert_smoke_record(record: dict, table, row_index: int, run_dir, *, engine: str) -> None:
    """A scale=smoke record of ``table``'s row: protocol, status, metrics in range, split, budget."""
    from benchmark.commands.reproduce import reproduced_metric
    from leaderboard.record import ResultRecord
    from leaderboard.records import validate_records

    _, problems = validate_records([run_dir / "result.json"])
    assert problems == [], [str(p) for p in problems]
    assert record["protocol"] == {"name": "ssd_image", "version": 2, "variant": "smoke"}
    assert record["status"] == "reproduced"
    assert record["method"]["name"].startswith(("align_uniform", "ssd")[row_index])
    metrics = ResultRecord.from_json(record).evaluations.metrics()
    for m in table.metrics:
        assert 0.0 <= metrics[reproduced_metric(m, "smoke")] <= 1.0, m
    ds = reproduced_metric(table.metrics[0], "smoke").split(".")[1]
    ev = record["evaluations"]
    assert ev["image_linear_probe"][ds]["protocol"]["num_train"] == 1000  # 10 classes x 100
    assert [ev["image_semi"][ds][k]["num_labelled"] for k in ("1%", "10%")] == [10, 100]
    rep = ev["representation"][ds]
    assert rep["num_videos"] == 20 and rep["feature_dim"] == 64 and -4.0 <= rep["uniformity"] <= 0.0
    crosssilo = table.name.endswith("crosssilo")
    clients, per_round = (3, 3) if crosssilo else (5, 1)  # the table's fraction (1.0 / 0.2) of the smoke clients
    manifest = json.loads((run_dir / "split_manifest.json").read_text())
    assert (manifest["partitioner"], manifest["num_clients"], manifest["dataset"]) == ("dirichlet_fedbox", clients, ds)
    assert manifest["params"]["numpy_seed"] == (17 if table.name == "ssd-cifar10-crosssilo" else 1)
    assert record["track"]["split_manifest_id"] == manifest["manifest_id"]
    assert (record["track"]["num_clients"], record["track"]["clients_per_round"]) == (clients, per_round)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 1 and np.isfinite(rounds[0]["loss"])
    if engine == "centralized":  # the pooled model makes the federated run's steps: 2 per sampled client
        assert len(rounds[0]["budget"]["federated_sampled_clients"]) == per_round
        assert rounds[0]["steps"] == 2 * per_round and record["method"]["aggregator"] == "centralized"
    else:
        assert len(rounds[0]["replied_clients"]) == per_round and record["method"]["aggregator"] == "fedavg"


@pytest.mark.slow
def test_every_ssd_image_table_at_smoke_scale(tmp_path, monkeypatch):
    """All six ssd-* image tables at scale=smoke, sharing one generated stand-in per dataset.

    One row goes through `fedvid reproduce` as CI users run it (its own process, the Flower
    simulation); `fedvid evaluate` on its run directory gives back its evaluation. Then every
    row of every table runs in this process with the table's smoke overrides and
    engine=centralized: the same data, split draw, method, client context, evaluation and
    record, without a SuperLink/Ray start per row (the start-up is most of a smoke row's time).
    """
    from test_protocols import compose

    from benchmark.commands.evaluate import main as evaluate_main
    from benchmark.commands.reproduce import TABLES, main
    from benchmark.commands.run import execute_run

    data = tmp_path / "data"
    monkeypatch.setenv("FEDVID_DATA_ROOT", str(data))
    monkeypatch.chdir(tmp_path)
    flower = TABLES["ssd-tinyimagenet-crossdevice"]
    out = tmp_path / "out"
    assert main([flower.name, "scale=smoke", "rows=1", f"out={out}"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["failed"] == [] and comparison["rows_run"] == ["SSD"]
    assert all(r["reported"] is None and r["gap"] is None for r in comparison["rows"])
    record = json.loads((out / "row1" / "result.json").read_text())
    _assert_smoke_record(record, flower, 1, out / "row1", engine="simulation")
    assert evaluate_main([f"checkpoint={out / 'row1'}", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    again = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["evaluations"]
    assert again == record["evaluations"]  # the image protocol again, deterministic

    threads = torch.get_num_threads()
    try:
        for name, *_ in SSD_IMAGE_TABLES:
            table = TABLES[name]
            for i, row in enumerate(table.rows):
                overrides = [o for o in table.smoke_overrides if not o.startswith("engine.client_resources")]
                cfg = compose([*row.overrides, *overrides, "engine=centralized", f"data_root={data / 'smoke'}"])
                run_dir = tmp_path / name / f"row{i}"
                record = execute_run(cfg, run_dir)
                _assert_smoke_record(record, table, i, run_dir, engine="centralized")
    finally:
        torch.set_num_threads(threads)
