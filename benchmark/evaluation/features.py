"""Clip features of a downstream split: N uniformly spaced clips per video, pooled, cached.

One pass per (model, dataset, split) produces clip-level features (V, N, D); video-level
features are their mean over N. The backbone runs in eval mode without gradients.

Two caches:

- **Feature cache (disk).** Features are saved under ``cache_dir/<key>.pt`` where ``key`` is
  the sha256 of (model hash, dataset id, split, pooling, clip settings, video list), so
  several evaluations of one model (retrieval, linear probe, representation metrics,
  ``fedvid evaluate`` after ``fedvid run``) decode each video once. Written atomically,
  read with ``torch.load(weights_only=True)``.
- **Decoded-clip cache (memory).** The perturbation study computes features of the same
  clips for every (k, seed). The normalised clips of a split are therefore kept in memory
  after the first decode when they fit in ``clip_cache_max_bytes`` (the synthetic sets take
  a few MiB). The exact float tensors are kept, not a uint8 re-quantisation, so k = 0
  reproduces the clean features bit for bit. Paper-scale sets (UCF101 at 10 x 16 x 112^2:
  ~60 GB even as uint8) do not fit; they are streamed from disk again for every (k, seed).
"""

from __future__ import annotations

import io
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.io import atomic_write_bytes, canonical_json_bytes, sha256_bytes

POOLINGS = ("avg", "vcop")


@dataclass(frozen=True)
class ClipSettings:
    """How clips are sampled from a video for evaluation.

    num_clips: N uniformly spaced clips per video; frames: T frames per clip taken every
    ``stride`` frames; short_side: resize so the short side has this many pixels;
    crop_size: square centre crop; sampling: the evaluation pipeline copied, where the clips
    start and how the centre crop rounds (``uniform`` | ``ctp``: CtP's UniformFrameSampler and
    GroupCenterCrop | ``vcop``: VCOP's retrieve_clips.py, see :mod:`benchmark.data.clips` and
    :func:`benchmark.data.transforms.eval_transform`); normalization: ``kinetics`` |
    ``imagenet`` | ``none``.
    """

    num_clips: int
    frames: int
    stride: int
    short_side: int
    crop_size: int
    backend: str = "auto"
    sampling: str = "uniform"
    normalization: str = "kinetics"


def pool_feature_map(fmap: torch.Tensor, pooling: str = "avg") -> torch.Tensor:
    """(B, C, T, H, W) last-stage feature map -> (B, D) clip features.

    ``avg``: global average pooling, D = C. ``vcop``: max-pool with kernel/stride (1, 2, 2)
    and flatten (the layout of VCOP/CtP retrieval code), D = C * T * floor(H/2) * floor(W/2),
    e.g. 9,216 for a 512 x 2 x 7 x 7 map.
    """
    if fmap.ndim != 5:
        raise ValueError(f"expected a (B, C, T, H, W) feature map from the backbone, got {tuple(fmap.shape)}")
    if pooling == "avg":
        return fmap.mean(dim=(2, 3, 4))
    if pooling == "vcop":
        if fmap.shape[-1] < 2 or fmap.shape[-2] < 2:
            raise ValueError(
                f"eval.pooling=vcop needs a feature map of at least 2x2 spatially, got {tuple(fmap.shape)}; "
                "use eval.pooling=avg or larger clips"
            )
        return F.max_pool3d(fmap, kernel_size=(1, 2, 2), stride=(1, 2, 2)).flatten(1)
    raise ValueError(f"eval.pooling={pooling!r}: expected one of {POOLINGS}")


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the (name, dtype, shape, bytes) of every state-dict entry, in sorted order."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class SplitFeatures:
    """Features of one split. features: (V, N, D) float32 clip features; labels: (V,) int64."""

    features: torch.Tensor
    labels: torch.Tensor

    @property
    def video_features(self) -> torch.Tensor:
        """(V, D): mean of the N clip features."""
        return self.features.mean(dim=1)


class ClipSource:
    """Decoded, normalised evaluation clips of one split, in list order.

    videos: list of (path, label) pairs. Iterating yields
    (clips (B, N, C, T, H, W) float32, labels (B,) int64). The first full pass is kept in
    memory when its size stays within ``max_bytes`` (see the module doc).
    """

    def __init__(
        self,
        videos: Sequence,
        clip: ClipSettings,
        *,
        batch_size: int,
        num_workers: int,
        max_bytes: int,
        description: str = "",
    ) -> None:
        if not videos:
            raise ValueError(f"{description or 'evaluation split'}: no videos to evaluate")
        self.videos = [(str(path), int(label)) for path, label in videos]
        self.clip = clip
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_bytes = max_bytes
        self.description = description
        self._memory: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.videos) / self.batch_size)

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def _loader(self):
        from benchmark.data.loaders import EvalClipDataset, make_eval_loader

        dataset = EvalClipDataset(
            self.videos,
            num_clips=self.clip.num_clips,
            frames=self.clip.frames,
            stride=self.clip.stride,
            short_side=self.clip.short_side,
            crop_size=self.clip.crop_size,
            backend=self.clip.backend,
            sampling=self.clip.sampling,
            normalization=self.clip.normalization,
        )
        return make_eval_loader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._memory is not None:
            yield from self._memory
            return
        kept: list[tuple[torch.Tensor, torch.Tensor]] | None = []
        size = 0
        for batch in self._loader():
            clips = batch["video"]
            labels = torch.as_tensor(batch["label"], dtype=torch.long)
            if clips.ndim != 6:
                raise ValueError(
                    f"{self.description}: EvalClipDataset must yield (N, C, T, H, W) clips per video; "
                    f"got a batch of shape {tuple(clips.shape)}"
                )
            if kept is not None:
                size += clips.numel() * clips.element_size()
                if size <= self.max_bytes:
                    kept.append((clips, labels))
                else:
                    kept = None
            yield clips, labels
        if kept is not None:
            self._memory = kept


def compute_features(
    backbone: nn.Module,
    source: ClipSource,
    pooling: str,
    device: torch.device,
    progress=None,
    task_label: str = "features",
    parallel: int = 1,
) -> SplitFeatures:
    """Run ``backbone`` (eval mode, no gradients) over every clip of ``source``; (V, N, D) features.

    ``progress``: an optional ``rich.progress.Progress`` to show a bar on. ``parallel``: batches
    in flight on that many Python threads (:func:`feature_threads`); each batch is computed
    exactly as alone (torch's per-thread op count is unchanged), so the features are
    bit-identical to ``parallel=1``.
    """
    was_training = backbone.training
    backbone.eval()
    task = progress.add_task(task_label, total=source.num_batches) if progress is not None else None

    def forward(clips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread
            b, n = clips.shape[:2]
            x = clips.reshape(b * n, *clips.shape[2:]).to(device, non_blocking=True)
            return pool_feature_map(backbone(x), pooling).float().cpu().reshape(b, n, -1)

    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def done(f: torch.Tensor) -> None:
        feats.append(f)
        if task is not None:
            progress.advance(task)

    try:
        if parallel <= 1:
            for clips, y in source:
                labels.append(y)
                done(forward(clips))
        else:
            with ThreadPoolExecutor(parallel, thread_name_prefix="fedvid-features") as pool:
                pending: deque[Future] = deque()
                for clips, y in source:
                    labels.append(y)
                    pending.append(pool.submit(forward, clips))
                    while len(pending) > parallel:  # in order; at most `parallel` batches held
                        done(pending.popleft().result())
                while pending:
                    done(pending.popleft().result())
    finally:
        backbone.train(was_training)
        if task is not None:
            progress.remove_task(task)
    return SplitFeatures(torch.cat(feats), torch.cat(labels))


#: Most batches in flight on a CPU: each thread holds one batch's activations.
MAX_FEATURE_THREADS = 4


def feature_threads(device: torch.device, torch_threads: int | None) -> int:
    """How many batches :func:`compute_features` runs at once: on a CPU with a fixed torch
    thread count, one per group of that many free cores (at most :data:`MAX_FEATURE_THREADS`);
    else 1. Independent forwards on 1 torch thread each scale with the cores, where one
    forward on 2 OpenMP threads was several times slower on the shared 2-core machine
    (perf/RESULTS.md)."""
    if device.type != "cpu" or not torch_threads:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores // int(torch_threads), MAX_FEATURE_THREADS))


def _video_identity(path) -> tuple[int, int, int] | None:
    from benchmark.data.decoding import file_identity

    try:
        return file_identity(path)
    except OSError:
        return None


def feature_cache_key(
    model_sha256: str, dataset_id: str, split: str, pooling: str, clip: ClipSettings, videos: Sequence
) -> str:
    """sha256 naming a feature file: model, dataset, split, pooling, clip settings, video list
    with each file's identity (size, mtime, inode: a replaced or rewritten video gets new
    features, never stale ones; ``None`` for a file that cannot be stat'ed)."""
    listing = sha256_bytes("\n".join(f"{path}\t{label}\t{_video_identity(path)}" for path, label in videos).encode())
    return sha256_bytes(
        canonical_json_bytes(
            {
                "model": model_sha256,
                "dataset": dataset_id,
                "split": split,
                "pooling": pooling,
                "clip": asdict(clip),
                "videos": listing,
                # 3: protocols ctp/fedvssl/ssd v2 (ShortSideResize rounds as CtP, `ctp` clips are
                # centre-cropped as its GroupCenterCrop): features of the old frames never served again
                "version": 3,
            }
        )
    )


def load_cached(path: Path) -> SplitFeatures | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return SplitFeatures(data["features"], data["labels"])
    except Exception:  # noqa: BLE001 - a corrupt or foreign file is recomputed, never trusted
        return None


def save_cached(path: Path, features: SplitFeatures) -> None:
    buf = io.BytesIO()
    torch.save({"features": features.features.contiguous(), "labels": features.labels.contiguous()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def cached_features(
    backbone: nn.Module,
    source: ClipSource,
    *,
    model_sha256: str,
    dataset_id: str,
    split: str,
    pooling: str,
    device: torch.device,
    cache_dir: Path | None,
    progress=None,
    parallel: int = 1,
) -> tuple[SplitFeatures, bool]:
    """Features from the disk cache when present, else computed (and saved; ``parallel``: see
    :func:`compute_features`). Returns (features, was_cached)."""
    path = None
    if cache_dir is not None:
        key = feature_cache_key(model_sha256, dataset_id, split, pooling, source.clip, source.videos)
        path = Path(cache_dir) / f"{key}.pt"
        hit = load_cached(path)
        if hit is not None and hit.features.shape[0] == len(source):
            return hit, True
    features = compute_features(
        backbone, source, pooling, device, progress, f"{dataset_id}/{split} features", parallel=parallel
    )
    if path is not None:
        save_cached(path, features)
    return features, False
