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


def test_ssd_tables_rows_smoke_and_compute():
    from test_protocols import compose

    from benchmark.commands.reproduce import TABLES, reproduced_metric

    for d in ("cifar10", "cifar100"):
        for kind in ("crosssilo", "crossdevice"):
            t = TABLES[f"ssd-{d}-{kind}"]
            assert [r.label for r in t.rows] == ["FedAlignUniform", "SSD"] and t.protocol == "ssd_image"
            assert all(r.reported_record is None for r in t.rows)  # no citable reported numbers: none recorded
            assert "GPU" in t.full_compute
            cfg = compose(list(t.rows[1].overrides))
            n = 10 if kind == "crosssilo" else 50
            assert (cfg.method.name, cfg.backbone.name, cfg.seed, cfg.client.batch_size) == (
                "ssd",
                "cifar_resnet18",
                17,
                128,
            )
            assert (cfg.client.optimizer.lr, cfg.federation.rounds, cfg.federation.local_epochs) == (0.1, 100, 5)
            assert cfg.partition.num_clients == n and cfg.split_manifest.endswith(
                f"{d}-official-ssd-dir0.1-c{n}.json.gz"
            )
            assert compose(list(t.rows[0].overrides)).method.name == "align_uniform"
            assert reproduced_metric(t.metrics[0], "smoke") == f"image_linear_probe.synthetic_{d}.top1"


@pytest.mark.slow
def test_reproduce_ssd_cifar10_crosssilo_smoke_end_to_end(tmp_path, monkeypatch):
    """Both rows through `fedvid run` (Flower simulation) on the generated CIFAR-format stand-in."""
    from benchmark.commands.reproduce import main

    monkeypatch.setenv("FEDVID_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert main(["ssd-cifar10-crosssilo", "scale=smoke", f"out={tmp_path / 'out'}"]) == 0
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["failed"] == []
    for r in comparison["rows"]:
        assert r["reported"] is None and r["gap"] is None and 0.0 <= r["reproduced"] <= 1.0
    from leaderboard.records import validate_records

    for i, method in enumerate(("align_uniform", "ssd")):
        result = tmp_path / "out" / f"row{i}" / "result.json"
        good, problems = validate_records([result])
        assert problems == [], [str(p) for p in problems]
        record = json.loads(result.read_text())
        assert record["protocol"] == {"name": "ssd_image", "version": 1, "variant": "smoke"}
        assert record["method"]["name"].startswith(method)
        ev = record["evaluations"]
        assert ev["image_linear_probe"]["synthetic_cifar10"]["protocol"]["num_train"] == 1000
        assert [ev["image_semi"]["synthetic_cifar10"][k]["num_labelled"] for k in ("1%", "10%")] == [10, 100]
        rep = ev["representation"]["synthetic_cifar10"]
        assert rep["num_videos"] == 40 and rep["feature_dim"] == 64 and rep["uniformity"] <= 0.0
        rounds = [json.loads(line) for line in (tmp_path / "out" / f"row{i}" / "rounds.jsonl").read_text().splitlines()]
        assert len(rounds) == 2 and all(np.isfinite(r["loss"]) for r in rounds)
