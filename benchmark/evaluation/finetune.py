"""Fine-tuning the whole network from the pretrained backbone (CtP / FedVSSL protocol).

CtP's recipe (microsoft/CtP configs/recognizers/_base_/runtime_ucf101.py, model_r3d18.py;
every value in docs/protocols/ctp.md). Model: backbone (in the protocol's layout) -> global
average pool -> dropout -> linear head (weights N(0, head_init_std^2), bias 0, drawn from
a seeded generator). Training: one random clip per video per step (``TrainClipDataset``:
random start, short side drawn from ``train_short_sides``, random crop, flip with
``flip_prob``, then CtP's brightness / contrast / hue-saturation steps; with
``eval.clip.sampling=ctp`` short videos repeat their last frame and every epoch is padded
to whole batches, as CtP's sampler and ``GroupSampler``), cross-entropy, SGD
with momentum and weight decay, gradients clipped to ``grad_clip_norm``, lr multiplied by
``gamma`` at each epoch in ``milestones`` (MultiStepLR). Test: N clips per video
(``eval.clip``); clip-level metrics judge each clip alone, video-level metrics take the
softmax of the N clips' averaged logits (CtP's ``TSN.forward_test``).

The pretrained backbone passed in is never modified (a deep copy is trained). Dropout and
BatchNorm's randomness come from the global RNG, which is forked and seeded with
``eval.finetune.seed`` for the duration of the fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.evaluation.features import ClipSettings, ClipSource
from benchmark.evaluation.metrics import clip_and_video_metrics
from benchmark.evaluation.spec import FinetuneSpec


class ClassifierHead(nn.Module):
    """backbone -> GAP -> dropout -> linear. forward: (B, 3, T, H, W) -> (B, num_classes) logits."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, dropout: float, generator: torch.Generator, init_std: float = 0.001
    ):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(int(backbone.out_channels), num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=generator) * init_std)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x).mean(dim=(2, 3, 4))))


class ColorView:
    """A loader ``sample_transform`` applying CtP's colour steps to the one training view
    (a class, not a closure, so loader workers can pickle it)."""

    def __init__(self, color) -> None:
        from benchmark.data.transforms import CtPColorAugment

        self.augment = CtPColorAugment(
            float(color["prob"]),
            float(color["brightness_delta"]),
            float(color["contrast_delta"]),
            float(color["hue_delta"]),
            float(color["saturation_delta"]),
        )

    def __call__(self, views: list[torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        (view,) = views
        return {"video": self.augment(view, generator)}


def color_transform(color) -> ColorView | None:
    """:class:`ColorView` for ``eval.finetune.color``, or None (no colour augmentation)."""
    return ColorView(color) if color else None


def finetune(
    backbone: nn.Module,
    ds,
    ft: FinetuneSpec,
    clip: ClipSettings,
    device: torch.device,
    *,
    test_batch_size: int,
    test_num_workers: int,
    progress=None,
) -> dict:
    """Fine-tune on ``ds.train``, test on ``ds.test``; returns metrics and the training log.

    ds: a :class:`benchmark.evaluation.pipeline.Downstream` ((path, label) lists, classes); ft: the
    recipe (``eval.finetune``); test clips are decoded test_batch_size videos at a time.
    Returns clip_/video_ top1, top5, mean_class_accuracy (fractions), ``epochs``,
    ``train_loss`` (mean per epoch) and ``lr`` (per epoch).
    """
    from benchmark.data.clips import CtPRandomClip
    from benchmark.data.loaders import TrainClipDataset, make_train_loader

    seed = int(ft.seed)
    num_classes = len(ds.classes)
    epochs = int(ft.epochs)
    if epochs < 1:
        raise ValueError(f"eval.finetune.epochs={epochs}: expected at least 1")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), contextlib.ExitStack() as stack:
        torch.manual_seed(seed)
        model = ClassifierHead(
            copy.deepcopy(backbone),
            num_classes,
            float(ft.dropout),
            torch.Generator().manual_seed(seed),
            float(ft.head_init_std),
        ).to(device)
        sides = ft.train_short_sides
        # CtP's recognizer pipeline (eval.clip.sampling=ctp): its RandomFrameSampler repeats
        # a short video's last frame, and its sampler pads every epoch to whole batches
        ctp = clip.sampling == "ctp"
        train_set = TrainClipDataset(
            ds.train,
            frames=clip.frames,
            stride=clip.stride,
            short_side=[int(x) for x in sides] if sides else clip.short_side,
            crop_size=clip.crop_size,
            backend=clip.backend,
            seed=seed,
            flip_prob=float(ft.flip_prob),
            sample_transform=color_transform(ft.color),
            normalization=clip.normalization,
            frame_sampler=CtPRandomClip(clip.frames, clip.stride) if ctp else None,
        )
        clip_norm = ft.grad_clip_norm
        # one worker for every epoch (persistent), stopped when the block exits, error or not
        loader = stack.enter_context(
            make_train_loader(
                train_set,
                batch_size=int(ft.batch_size),
                num_workers=int(ft.num_workers),
                seed=seed,
                last_batch="pad" if ctp else "keep",
            )
        )
        optimizer = torch.optim.SGD(
            model.parameters(), lr=float(ft.lr), momentum=float(ft.momentum), weight_decay=float(ft.weight_decay)
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[int(m) for m in ft.milestones], gamma=float(ft.gamma)
        )
        task = progress.add_task(f"{ds.id} fine-tune", total=epochs * len(loader)) if progress is not None else None
        losses, lrs = [], []
        for epoch in range(epochs):
            train_set.set_epoch(epoch)
            model.train()
            total, count = 0.0, 0
            lrs.append(optimizer.param_groups[0]["lr"])
            for batch in loader:
                x = train_set.normalize_video(batch["video"].to(device, non_blocking=True))
                y = batch["label"].to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip_norm))
                optimizer.step()
                total += loss.item() * y.numel()
                count += y.numel()
                if task is not None:
                    progress.advance(task)
            scheduler.step()
            losses.append(total / max(count, 1))
        if task is not None:
            progress.remove_task(task)
        loader.close()  # free the training worker's core before the test clips' workers start

        model.eval()
        source = ClipSource(
            ds.test,
            clip,
            batch_size=test_batch_size,
            num_workers=test_num_workers,
            max_bytes=0,
            description=f"{ds.id}/test",
        )
        scores, labels = [], []
        with torch.no_grad():
            for clips, y in source:
                b, n = clips.shape[:2]
                logits = model(clips.reshape(b * n, *clips.shape[2:]).to(device)).float().cpu()
                scores.append(logits.reshape(b, n, -1))
                labels.append(y)
    # CtP's test: softmax of the logits averaged over the clips
    result = clip_and_video_metrics(torch.cat(scores), torch.cat(labels), num_classes, consensus="logits")
    result.update(epochs=epochs, train_loss=losses, lr=lrs)
    return result
