"""Classification metrics shared by the linear probe and fine-tuning (torchmetrics)."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1, top-5 (micro) and mean class accuracy (macro top-1) of class scores.

    scores: (N, num_classes) logits or probabilities; labels: (N,) int in [0, num_classes).
    Top-5 becomes top-min(5, num_classes) for datasets with fewer than 5 classes.
    Mean class accuracy averages per-class recall over the classes present in ``labels``.
    """
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must be (N, {num_classes}); got {tuple(scores.shape)}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be ({scores.shape[0]},); got {tuple(labels.shape)}")
    scores = scores.detach().float().cpu()
    labels = labels.detach().long().cpu()
    top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")(scores, labels)
    top5 = MulticlassAccuracy(num_classes=num_classes, top_k=min(5, num_classes), average="micro")(scores, labels)
    # ignore classes absent from the test labels instead of counting them as 0 recall
    per_class = MulticlassAccuracy(num_classes=num_classes, top_k=1, average=None)(scores, labels)
    present = torch.bincount(labels, minlength=num_classes) > 0
    mean_class = per_class[present].mean()
    return {"top1": float(top1), "top5": float(top5), "mean_class_accuracy": float(mean_class)}


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    cm = MulticlassConfusionMatrix(num_classes=num_classes)(predictions.long().cpu(), labels.long().cpu())
    return cm.long()


def clip_and_video_metrics(
    clip_scores: torch.Tensor, labels: torch.Tensor, num_classes: int, consensus: str = "softmax"
) -> dict[str, float]:
    """Clip-level and video-level metrics from per-clip class scores.

    clip_scores: (V, N, num_classes) logits of N clips per video; labels: (V,).
    Clip level: every clip is judged on its own (V*N samples). Video level, ``consensus``:
    ``softmax``: softmax probabilities averaged over the N clips (TSN-style); ``logits``:
    softmax of the averaged logits (CtP's ``TSN.forward_test``, pyvrl/models/classifiers/tsn/tsn_model.py:89-91).
    Keys: clip_top1, clip_top5, clip_mean_class_accuracy, video_top1, video_top5,
    video_mean_class_accuracy.
    """
    v, n, c = clip_scores.shape
    clip = classification_metrics(clip_scores.reshape(v * n, c), labels.repeat_interleave(n), num_classes)
    if consensus == "softmax":
        video_scores = clip_scores.softmax(dim=-1).mean(dim=1)
    elif consensus == "logits":
        video_scores = clip_scores.mean(dim=1).softmax(dim=-1)
    else:
        raise ValueError(f"consensus={consensus!r}: expected 'softmax' or 'logits'")
    video = classification_metrics(video_scores, labels, num_classes)
    return {**{f"clip_{k}": x for k, x in clip.items()}, **{f"video_{k}": x for k, x in video.items()}}
