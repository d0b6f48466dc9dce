"""Fine-tuning the whole network from the pretrained backbone (CtP / FedVSSL protocol).

Model: backbone -> global average pool -> dropout -> linear head (weights N(0, 0.01^2),
bias 0, drawn from a seeded generator). Training: one random clip per video per step
(``TrainClipDataset``: random start, random crop, horizontal flip), cross-entropy, SGD
with momentum and weight decay, lr multiplied by ``gamma`` at each epoch in
``milestones`` (MultiStepLR). Test: N uniformly spaced centre-cropped clips per video;
clip-level metrics judge each clip alone, video-level metrics average the N softmax
outputs (TSN-style consensus).

The pretrained backbone passed in is never modified (a deep copy is trained). Dropout and
BatchNorm's randomness come from the global RNG, which is forked and seeded with
``eval.finetune.seed`` for the duration of the fine-tuning.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.evaluation.features import ClipSettings, ClipSource
from benchmark.evaluation.metrics import clip_and_video_metrics


class ClassifierHead(nn.Module):
    """backbone -> GAP -> dropout -> linear. forward: (B, 3, T, H, W) -> (B, num_classes) logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float, generator: torch.Generator):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(int(backbone.out_channels), num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=generator) * 0.01)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x).mean(dim=(2, 3, 4))))


def finetune(backbone: nn.Module, ds, cfg, clip: ClipSettings, device: torch.device, progress=None) -> dict:
    """Fine-tune on ``ds.train``, test on ``ds.test``; returns metrics and the training log.

    ds: a :class:`benchmark.evaluation.pipeline.Downstream` ((path, label) lists, classes).
    Returns clip_/video_ top1, top5, mean_class_accuracy (fractions), ``epochs``,
    ``train_loss`` (mean per epoch) and ``lr`` (per epoch).
    """
    from benchmark.data.loaders import TrainClipDataset, make_train_loader

    ft = cfg.eval.finetune
    seed = int(ft.seed)
    num_classes = len(ds.classes)
    epochs = int(ft.epochs)
    if epochs < 1:
        raise ValueError(f"eval.finetune.epochs={epochs}: expected at least 1")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ClassifierHead(copy.deepcopy(backbone), num_classes, float(ft.dropout),
                               torch.Generator().manual_seed(seed)).to(device)
        train_set = TrainClipDataset(
            ds.train, frames=clip.frames, stride=clip.stride, short_side=clip.short_side,
            crop_size=clip.crop_size, backend=clip.backend, seed=seed,
        )
        loader = make_train_loader(train_set, batch_size=int(ft.batch_size), num_workers=int(ft.num_workers),
                                   seed=seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=float(ft.lr), momentum=float(ft.momentum),
                                    weight_decay=float(ft.weight_decay))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(m) for m in ft.milestones],
                                                         gamma=float(ft.gamma))
        task = progress.add_task(f"{ds.id} fine-tune", total=epochs * len(loader)) if progress is not None else None
        losses, lrs = [], []
        for epoch in range(epochs):
            train_set.set_epoch(epoch)
            model.train()
            total, count = 0.0, 0
            lrs.append(optimizer.param_groups[0]["lr"])
            for batch in loader:
                x = batch["video"].to(device, non_blocking=True)
                y = batch["label"].to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * y.numel()
                count += y.numel()
                if task is not None:
                    progress.advance(task)
            scheduler.step()
            losses.append(total / max(count, 1))
        if task is not None:
            progress.remove_task(task)

        model.eval()
        source = ClipSource(ds.test, clip, batch_size=int(cfg.eval.batch_size), num_workers=int(cfg.eval.num_workers),
                            max_bytes=0, description=f"{ds.id}/test")
        scores, labels = [], []
        with torch.no_grad():
            for clips, y in source:
                b, n = clips.shape[:2]
                logits = model(clips.reshape(b * n, *clips.shape[2:]).to(device)).float().cpu()
                scores.append(logits.reshape(b, n, -1))
                labels.append(y)
    result = clip_and_video_metrics(torch.cat(scores), torch.cat(labels), num_classes)
    result.update(epochs=epochs, train_loss=losses, lr=lrs)
    return result
