"""Image-track evaluation, as hc-fang/ssd's ``linear_eval.py`` and ``semi_eval.py`` (@ ffb85ba).

- **Linear probe** (``linear_eval.py``:73-115): frozen encoder in eval mode, features of the
  full train and test sets (``ToTensor()`` only, no augmentation; pooled 512-d as the
  official ``AvgPool2d(4)`` + ``fc = Identity``), ``Linear(d, classes)`` trained with Adam
  (lr 3e-3) for 200 epochs over shuffled batches of 512; top-1 on the test set every 20
  epochs; the reported ``top1`` is the last epoch's.
- **Semi-supervised fine-tuning** (``semi_eval.py``:75-136): a stratified labelled subset of
  ``ratio`` x N train images drawn as ``sklearn.model_selection.train_test_split(range(N),
  train_size=ratio, stratify=targets)`` after ``np.random.seed(17)`` (:func:`stratified_subset`
  reimplements that draw); encoder (train mode) + ``Linear(d, classes)``, SGD momentum 0.9
  with lr 1e-3 for the encoder and 0.3 for the head, 200 epochs of batch 128 with
  ``RandomResizedCrop(32, scale=(0.64, 1), ratio=(1, 1))`` + horizontal flip; test top-1
  every 50 epochs, the reported number is the **best** of those (the official script prints
  ``best semi eval acc``: it selects on the test set; we report it as published and say so).
- **Representation metrics** of the test features (uniformity, effective rank; the video
  track's ``benchmark.evaluation.representation``).

Shapes: images uint8 (N, H, W, 3); features float (N, d).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.evaluation.representation import representation_metrics


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] (torchvision ``ToTensor``)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Backbone map (B, d, ...) averaged over every axis after the channel -> (B, d)."""
    return backbone(x).flatten(2).mean(dim=2)


@torch.no_grad()
def extract_features(
    backbone: nn.Module, images: np.ndarray, batch_size: int = 512, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Frozen features (N, d) of uint8 images (N, H, W, 3), the backbone in eval mode."""
    was_training = backbone.training
    backbone.eval().to(device)
    out = [
        pooled(backbone, to_unit(images[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(backbone, "out_channels", 0))


def linear_eval(
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    epochs: int = 200,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 1,
    test_every: int = 20,
) -> dict[str, Any]:
    """``linear_eval.py``: Adam-trained ``Linear(d, num_classes)`` on frozen features
    (N, d). Returns ``top1`` (after the last epoch) and ``top1_history`` (every ``test_every``)."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    classifier = nn.Linear(train_z.shape[1], num_classes)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    history: list[float] = []
    for epoch in range(epochs):
        classifier.train()
        order = torch.randperm(len(train_z), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(train_z[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if (epoch + 1) % test_every == 0 or epoch + 1 == epochs:
            history.append(_accuracy(classifier, test_z, test_y))
    return {"top1": history[-1] if history else None, "top1_history": history}


@torch.no_grad()
def _accuracy(classifier: nn.Module, z: torch.Tensor, y: torch.Tensor) -> float:
    classifier.eval()
    return float((classifier(z).argmax(dim=1) == y).float().mean())


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """sklearn.utils.extmath._approximate_mode: per-class draws closest to the proportions,
    ties in the remainders broken by ``rng.choice``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        values = np.sort(np.unique(remainder))[::-1]
        for value in values:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_subset(labels: Sequence[int], ratio: float, seed: int = 17) -> list[int]:
    """The labelled indices of ``train_test_split(list(range(N)), train_size=ratio, stratify=labels)``
    with numpy's global RNG seeded by ``seed`` (``semi_eval.py``:29, 90): StratifiedShuffleSplit's
    draw (n_train = floor(ratio x N); per-class counts by ``_approximate_mode``; each class
    permuted; the union permuted). Reimplemented from scikit-learn's code (not installed here)."""
    y = np.asarray(labels)
    n = len(y)
    n_train = int(math.floor(ratio * n))
    n_test = n - n_train
    rng = np.random.RandomState(seed)
    classes, y_indices = np.unique(y, return_inverse=True)
    class_counts = np.bincount(y_indices)
    # scikit-learn's checks (train_test_split / StratifiedShuffleSplit refuse these draws)
    if n_train == 0:
        raise ValueError(
            f"semi-supervised subset: {ratio} of {n} train images is empty; use more images or a larger ratio"
        )
    if class_counts.min() < 2:
        raise ValueError("semi-supervised subset: a class has only 1 image; stratification needs at least 2 per class")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"semi-supervised subset: {n_train} labelled images for {len(classes)} classes; a stratified "
            f"draw needs at least one per class (use at least {len(classes) / ratio:.0f} train images)"
        )
    class_indices = np.split(np.argsort(y_indices, kind="mergesort"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    for i in range(len(classes)):
        permutation = rng.permutation(class_counts[i])
        perm = class_indices[i].take(permutation, mode="clip")
        train.extend(perm[: n_i[i]])
    del t_i  # drawn for the RNG stream only (the test part is not used)
    return [int(i) for i in rng.permutation(train)]


def _square_crop_flip(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """``RandomResizedCrop(size, scale, ratio=(1, 1), antialias=True)`` + ``RandomHorizontalFlip``
    on one float image (3, H, W)."""
    height, width = x.shape[-2:]
    area = height * width
    box = None
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator)))
        side = int(round(math.sqrt(target)))
        if 0 < side <= width and 0 < side <= height:
            top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
            box = (top, left, side, side)
            break
    if box is None:
        side = min(height, width)
        box = ((height - side) // 2, (width - side) // 2, side, side)
    top, left, h, w = box
    crop = x[:, top : top + h, left : left + w].unsqueeze(0)
    out = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    if float(torch.rand((), generator=generator)) < 0.5:
        out = out.flip(-1)
    return out


def semi_eval(
    backbone: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    ratio: float,
    epochs: int = 200,
    batch_size: int = 128,
    encoder_lr: float = 1e-3,
    head_lr: float = 0.3,
    momentum: float = 0.9,
    crop_scale: Sequence[float] = (0.64, 1.0),
    test_every: int = 50,
    seed: int = 17,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """``semi_eval.py``: fine-tune a copy of the encoder with a linear head on the stratified
    ``ratio`` subset; returns ``top1`` (best test accuracy over the checks every ``test_every``
    epochs, as the official script reports), ``top1_history`` and ``num_labelled``."""
    labelled = stratified_subset(train_labels.tolist(), ratio, seed)
    encoder = copy.deepcopy(backbone).to(device)
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    classifier = nn.Linear(int(encoder.out_channels), num_classes).to(device)
    optimizer = torch.optim.SGD(
        [{"params": encoder.parameters()}, {"params": classifier.parameters(), "lr": head_lr}],
        lr=encoder_lr,
        momentum=momentum,
    )
    x_all, y_all = to_unit(train_images[labelled]), torch.as_tensor(train_labels[labelled], dtype=torch.int64)
    x_test, y_test = to_unit(test_images), torch.as_tensor(test_labels, dtype=torch.int64)
    scale = (float(crop_scale[0]), float(crop_scale[1]))
    history: list[float] = []
    for epoch in range(epochs):
        encoder.train()
        classifier.train()
        order = torch.randperm(len(labelled), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm in train mode needs 2 samples (the official loader never gives 1 at 1 %)
                continue
            x = torch.stack([_square_crop_flip(x_all[i], scale, gen) for i in idx.tolist()]).to(device)
            loss = F.cross_entropy(classifier(pooled(encoder, x)), y_all[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if (epoch + 1) % test_every == 0 or epoch + 1 == epochs:
            encoder.eval()
            classifier.eval()
            with torch.no_grad():
                preds = torch.cat(
                    [
                        classifier(pooled(encoder, x_test[i : i + 128].to(device))).argmax(1).cpu()
                        for i in range(0, len(x_test), 128)
                    ]
                )
            history.append(float((preds == y_test).float().mean()))
    return {"top1": max(history) if history else None, "top1_history": history, "num_labelled": len(labelled)}


def evaluate_image_backbone(
    backbone: nn.Module,
    dataset: Mapping,
    image_eval: Mapping,
    protocol_id: Mapping,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Linear probe, semi-supervised fine-tuning (each ``image_eval.semi.ratios``) and
    representation metrics on the run's image ``dataset`` (its config block; train -> test).

    image_eval: the ``eval.image`` block (``linear``, ``semi``); protocol_id: the ``{"name",
    "version", "variant"}`` the entries claim. Returns the report ``{"evaluations": {...},
    "datasets": {...}, "wall_time_s"}`` the runner records."""
    from omegaconf import OmegaConf

    from benchmark.data.images import load_image_set

    started = time.perf_counter()
    ds = OmegaConf.create(_plain(dataset))
    ev = OmegaConf.create(_plain(image_eval))
    train, test = load_image_set(ds, train=True), load_image_set(ds, train=False)
    k = len(train.classes)
    lin = ev.linear
    train_z = extract_features(backbone, train.images, int(lin.batch_size), device)
    test_z = extract_features(backbone, test.images, int(lin.batch_size), device)
    ds_id = str(ds.id)
    linear = linear_eval(
        train_z,
        torch.as_tensor(train.labels),
        test_z,
        torch.as_tensor(test.labels),
        k,
        int(lin.epochs),
        int(lin.batch_size),
        float(lin.lr),
        int(lin.seed),
    )
    common = {
        **_plain(protocol_id),
        "dataset": ds_id,
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": k,
        "feature_dim": int(train_z.shape[1]),
        "pooling": "avg",
    }
    out: dict[str, Any] = {
        "image_linear_probe": {
            ds_id: {
                **linear,
                "protocol": {
                    **common,
                    "source": "hc-fang/ssd linear_eval.py",
                    **{key: lin[key] for key in ("epochs", "batch_size", "lr", "seed")},
                },
            }
        },
        "image_semi": {ds_id: {}},
        "representation": {ds_id: representation_metrics(test_z.unsqueeze(1))},
    }
    semi = ev.semi
    for ratio in semi.ratios:
        res = semi_eval(
            backbone,
            train.images,
            train.labels,
            test.images,
            test.labels,
            k,
            float(ratio),
            int(semi.epochs),
            int(semi.batch_size),
            float(semi.encoder_lr),
            float(semi.head_lr),
            float(semi.momentum),
            list(semi.crop_scale),
            int(semi.test_every),
            int(semi.seed),
            device,
        )
        out["image_semi"][ds_id][f"{float(ratio) * 100:g}%"] = res
    out["image_semi"][ds_id]["protocol"] = {
        **common,
        "source": "hc-fang/ssd semi_eval.py",
        **{key: semi[key] for key in ("epochs", "batch_size", "encoder_lr", "head_lr", "test_every", "seed")},
    }
    return {
        "evaluations": _plain(out),
        "datasets": {ds_id: {"num_train": len(train), "num_test": len(test)}},
        "wall_time_s": round(time.perf_counter() - started, 3),
    }


def _plain(value: Any) -> Any:
    """Config values (ListConfig, DictConfig) -> plain JSON types."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
