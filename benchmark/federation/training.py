"""One client's local training for one round, independent of Flower.

The ClientApp and the centralized engine call :func:`run_local_training` with a
:class:`~benchmark.specs.LocalTrainingSpec`; it builds the backbone + method, loads the global (exchanged) weights and the
client's own local tensors, trains over the client's manifest videos and returns the new
exchanged weights, the new local tensors and the metrics.

Determinism: every random choice derives from ``(seed, round, client_id)`` through
``numpy.random.SeedSequence``; the same config + seed gives bit-identical weights,
whichever process or actor runs the client (this is what makes resume exact).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from benchmark.config_check import LAST_BATCH_RULES
from benchmark.device import resolve_device
from benchmark.registry import build_backbone, build_method
from benchmark.specs import LocalTrainingSpec, ModelSpec, OptimizerSpec

#: Decoded frames a client's decode worker (each, or the training process without workers)
#: may keep during a round (benchmark.data.decoding.cached_videos): a demo client's ~60
#: synthetic videos at short side 72 take ~60 MiB; a video visited once per round is never
#: decoded whole.
TRAIN_VIDEO_CACHE_BYTES = 256 << 20

# Domain tags keep the seed streams of different uses apart.
_TAG_INIT, _TAG_DATA, _TAG_TRAIN, _TAG_FAULT, _TAG_SAMPLE = 11, 23, 37, 41, 53


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, round, client_id)``), stable across runs."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def build_model(model: ModelSpec, init_seed: int):
    """Backbone + method, initialised from ``init_seed``.

    Module initialisation draws from torch's default generator, so it runs inside
    ``fork_rng`` with an explicit seed and leaves the caller's RNG state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        backbone = build_backbone(model.backbone, **model.backbone_params)
        method = build_method(model.method, backbone, exchange=model.exchange, **model.method_params)
    return method


def initial_global_state(model: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """The round-0 global model: the exchanged tensors of a model initialised from the run's ``seed``."""
    return build_model(model, derive_seed(seed, _TAG_INIT)).exchanged_state()


def client_init_seed(seed: int, client_id: int) -> int:
    """Seed of a client's own (never exchanged) heads before its first round."""
    return derive_seed(seed, _TAG_INIT, client_id + 1)


def sample_clients(seed: int, server_round: int, client_ids: list[int], per_round: int | float) -> list[int]:
    """Seeded client sampling: ``per_round`` (int count or float fraction) of ``client_ids``.

    Uses ``numpy.random.default_rng`` seeded by ``(seed, round)``, so round r samples the
    same clients in a resumed run as in an uninterrupted one. Returns sorted client ids.
    """
    ids = sorted(int(c) for c in client_ids)
    k = clients_per_round(per_round, len(ids))
    rng = np.random.default_rng(derive_seed(seed, _TAG_SAMPLE, server_round))
    return sorted(int(c) for c in rng.choice(ids, size=k, replace=False))


def clients_per_round(per_round: int | float, num_clients: int) -> int:
    """Resolve ``federation.clients_per_round`` (int = count, float in (0, 1] = fraction)."""
    if isinstance(per_round, bool) or not isinstance(per_round, (int, float)):
        raise ValueError(f"federation.clients_per_round={per_round!r}: expected an int count or a float fraction")
    if isinstance(per_round, float):
        if not 0.0 < per_round <= 1.0:
            raise ValueError(f"federation.clients_per_round={per_round}: a fraction must be in (0, 1]")
        return max(1, int(math.floor(per_round * num_clients + 1e-9)))
    if not 1 <= per_round <= num_clients:
        raise ValueError(f"federation.clients_per_round={per_round}: expected 1..{num_clients} (the number of clients)")
    return int(per_round)


def round_learning_rate(opt: OptimizerSpec, server_round: int) -> float:
    """Learning rate of a round: ``client.optimizer.lr`` under ``client.optimizer.schedule``.

    constant: the same every round; cosine: lr · ½(1 + cos(π (r-1) / R)) over R rounds.
    """
    base = opt.lr
    schedule = opt.schedule
    if schedule == "constant":
        return base
    if schedule == "cosine":
        total = opt.rounds
        return base * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / max(1, total)))
    raise ValueError(f"client.optimizer.schedule={schedule!r}: expected 'constant' or 'cosine'")


def make_optimizer(opt: OptimizerSpec, params, lr: float) -> torch.optim.Optimizer:
    name = opt.name
    wd = opt.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"client.optimizer.name={opt.name!r}: expected one of 'sgd', 'adam', 'adamw'")


PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``client.precision`` -> (autocast dtype or None for fp32, whether a grad scaler is needed).

    bf16 runs on CPU (autocast's CPU bf16 kernels; avx512_bf16/AMX make it pay) and CUDA and
    needs no scaler; fp16 is CUDA-only and scales the loss (``torch.amp.GradScaler``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"client.precision={precision!r}: expected one of {PRECISIONS}")
    if precision == "fp32":
        return None, False
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "client.precision=fp16 needs a CUDA device (CPU autocast is bf16); use client.precision=bf16 or fp32"
        )
    return (torch.bfloat16, False) if precision == "bf16" else (torch.float16, True)


@lru_cache(maxsize=4)
def _load_manifest(path: str):
    from benchmark.splits.format import load_manifest

    return load_manifest(path)


def client_videos(
    manifest_path: str, dataset_root: str, client_id: int, allow_missing: bool = False, image: bool = False
) -> list[tuple[str, int]]:
    """(absolute video path, label) of one client's manifest entry, resolved under ``dataset_root``.

    Uses ``benchmark.data.resolve.resolve_videos`` (case-mismatch lookup, missing/empty
    files reported by path; skipped only with ``allow_missing_videos=true``). ``image``: the
    entries as listed (image records; the runner checked them against the files).
    """
    from benchmark.data.records import VideoRecord
    from benchmark.data.resolve import resolve_videos

    manifest = _load_manifest(str(manifest_path))
    if not 0 <= client_id < manifest.num_clients:
        raise ValueError(
            f"client id {client_id} is not in {manifest_path} (it has clients 0..{manifest.num_clients - 1}); "
            "check the SuperNode's --node-config client-id"
        )
    if image:  # image track: manifest records name images of the dataset files (benchmark/data/images.py)
        return [(rel, int(label)) for rel, label in manifest.client_videos(client_id)]
    records = [
        VideoRecord(path=rel, label=int(label), class_name="") for rel, label in manifest.client_videos(client_id)
    ]
    resolved = resolve_videos(records, dataset_root, allow_missing=allow_missing, show_progress=False)
    return [(str(path), int(rec.label)) for rec, path in resolved.present]


def client_last_batch(rule: str, num_videos: int, batch_size: int, num_clients: int) -> str:
    """The loader's ``last_batch`` (keep | drop | pad) for one client's local epochs.

    rule ``drop`` (the benchmark's default): the ragged last batch is dropped (a batch of
    one video is useless to contrastive and uniformity losses); ``keep``: kept; ``pad``:
    padded to a whole batch with the epoch's first videos, as CtP's ``GroupSampler`` that
    FedVSSL's clients train with (microsoft/CtP pyvrl/datasets/dataloader/group_sampler.py:36-39;
    it fails its assert below half a batch, where ours cycles the order); ``ssd``:
    hc-fang/ssd's rule, dropped with at most 10 clients (``drop_last=True``,
    mains/train_fedalignuniform.py:121-125), kept with more (:126-130), except a batch of
    one video, which its client skips (methods/fedalignuniform/client.py:89-90). Under
    ``drop`` and ``ssd`` a client with at most ``batch_size`` videos trains on one batch of
    all of them (the official SSD loader would give it none).
    """
    if rule not in LAST_BATCH_RULES:
        raise ValueError(f"client.last_batch={rule!r}: expected one of {', '.join(LAST_BATCH_RULES)}")
    n, b = int(num_videos), int(batch_size)
    if rule in ("pad", "keep"):
        return rule
    if n <= b:
        return "keep"
    if rule == "ssd" and num_clients > 10:
        return "drop" if n % b == 1 else "keep"
    return "drop"


def loader_batches(num_videos: int, batch_size: int, rule: str, num_clients: int) -> int:
    """The batches one local epoch's loader holds, as the official loader of ``client.last_batch``
    ``rule`` counts them: :func:`epoch_batches`, plus the one-video batch the ``ssd`` rule skips
    (hc-fang/ssd's loader holds it and its client skips it: ``len(aug_train_loader)``, which its
    server weights clients by, methods/fedalignuniform/server.py:132-134;
    ``federation.client_weight: batches``)."""
    n, b = int(num_videos), int(batch_size)
    skipped = rule == "ssd" and num_clients > 10 and n > b and n % b == 1
    return epoch_batches(n, b, rule, num_clients) + (1 if skipped else 0)


def logged_loss(losses: Sequence[float], steps_per_epoch: int, interval: int) -> tuple[float | None, int]:
    """The loss of a round as mmcv's text log reports it and FedVSSL's client reads it back:
    per epoch, one entry per complete window of ``interval`` steps, the window's mean loss
    rounded to 5 decimals (``LoggerHook`` with mmcv's default ``ignore_last=True`` leaves out
    the last ``steps % interval`` steps of an epoch; ``TextLoggerHook`` writes ``log.json``
    with 5 decimals); then the plain mean of the entries (yasar-rehman/FEDVSSL
    reproduce_papers/fedssl/main_cam_st_theta_b_mixed_+SWA_wo_mement.py:185-205). Returns
    (that mean, the number of entries); (None, 0) when no window is complete, where the
    official client would divide by zero."""
    entries = []
    for start in range(0, len(losses), steps_per_epoch):
        epoch = losses[start : start + steps_per_epoch]
        for window in range(0, len(epoch) - interval + 1, interval):
            entries.append(round(sum(epoch[window : window + interval]) / interval, 5))
    return (sum(entries) / len(entries), len(entries)) if entries else (None, 0)


def epoch_batches(num_videos: int, batch_size: int, rule: str = "drop", num_clients: int = 1) -> int:
    """Batches in one local epoch of a client with ``num_videos`` videos under ``client.last_batch``
    ``rule`` (:func:`client_last_batch`): ``⌊n / batch_size⌋`` when the ragged batch is dropped,
    ``⌈n / batch_size⌉`` when it is kept or padded."""
    full, ragged = divmod(int(num_videos), int(batch_size))
    kept = ragged and client_last_batch(rule, num_videos, batch_size, num_clients) != "drop"
    return full + (1 if kept else 0)


@dataclass
class LocalResult:
    """What one client returns after a round.

    exchanged: tensors sent to the server (name -> tensor, CPU).
    local: tensors kept by the client (heads when exchange == "backbone"), CPU.
    num_examples: what FedAvg-style aggregators weight the client by: its training-set size
        (its videos), as Flower's strategies and FedVSSL do (``len(train_dataset)``), or with
        ``federation.client_weight: batches`` its loader's batches per epoch, as hc-fang/ssd's
        server (``len(client.aug_train_loader)``); the samples processed this round are
        ``metrics["samples_processed"]``.
    metrics: loss (the mean over steps, or mmcv's log entries: ``client.loss_log_interval``),
        compute_s, steps, loader_batches, ...
    """

    exchanged: dict[str, torch.Tensor]
    local: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def maybe_inject_failure(seed: int, prob: float, server_round: int, client_id: int) -> None:
    """``fault.client_failure_prob``: raise in a seeded, reproducible subset of (round, client)."""
    if prob <= 0.0:
        return
    draw = np.random.default_rng(derive_seed(seed, _TAG_FAULT, server_round, client_id)).random()
    if draw < prob:
        raise RuntimeError(
            f"injected failure of client {client_id} in round {server_round} (fault.client_failure_prob={prob})"
        )


def begin_round(method, global_state: dict[str, torch.Tensor], local_state, server_round: int) -> None:
    """``method.start_round(global_state, local_state or None, server_round)``, where
    ``global_state`` may be read-only views of the server's message (the ClientApp's, no copy):
    the default hook only copies them into the model; a method that overrides it gets
    tensors of its own, as it did before, which it may keep or change."""
    if "start_round" in method.overridden_hooks():
        global_state = {k: v.clone() for k, v in global_state.items()}
    method.start_round(global_state, local_state or None, server_round)


def run_local_training(
    spec: LocalTrainingSpec,
    client_id: int,
    server_round: int,
    global_state: dict[str, torch.Tensor],
    local_state: dict[str, torch.Tensor] | None,
    videos: list[tuple[str, int]],
    lr: float,
) -> LocalResult:
    """Train one client for one round (``spec.local_steps`` or ``spec.local_epochs``).

    global_state: exchanged tensors received from the server (possibly read-only views of
        the message: only read here, or copied for a method that overrides ``start_round``).
    local_state: the client's own tensors from its previous round, or None (first round:
        heads initialised from ``client_init_seed``).
    videos: (path, label) pairs of the client's manifest entry.
    """
    from benchmark.data.decoding import cached_videos
    from benchmark.data.images import train_image_dataset
    from benchmark.data.loaders import TrainClipDataset, make_train_loader

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    torch.set_num_threads(spec.num_threads)
    maybe_inject_failure(spec.seed, spec.failure_prob, server_round, client_id)
    if not videos:
        raise ValueError(f"client {client_id} has no videos in the split manifest")

    device = resolve_device(spec.device, "client.device")
    method = build_model(spec.model, client_init_seed(spec.seed, client_id))
    method.set_client_context(client_id, spec.num_clients)
    restored = bool(local_state)
    begin_round(method, global_state, local_state, server_round)
    method.to(device).train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: let cuDNN pick its fastest kernels once
    amp_dtype, needs_scaler = autocast_settings(spec.precision, device)
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None
    hooks = method.overridden_hooks()

    clip = spec.clip
    if spec.image_dataset is not None:  # the image track (benchmark/data/images.py)
        dataset = train_image_dataset(
            spec.image_dataset,
            videos,
            method.num_views,
            method.sample_transform,
            seed=derive_seed(spec.seed, _TAG_DATA, client_id),
        )
    else:
        dataset = TrainClipDataset(
            videos,
            frames=int(clip.frames),
            stride=clip.stride,  # int or a tuple to draw from (TrainClipSpec)
            short_side=clip.short_side,
            crop_size=int(clip.size),
            num_views=method.num_views,
            sample_transform=method.sample_transform,
            backend=clip.backend,
            seed=derive_seed(spec.seed, _TAG_DATA, client_id),
            temporal_jitter=clip.temporal_jitter,
            normalization=clip.normalization,
            frame_sampler=method.sample_frames if "sample_frames" in hooks else None,
            **({} if method.train_flip_prob is None else {"flip_prob": float(method.train_flip_prob)}),
        )
    clip_norm = spec.grad_clip_norm
    max_steps = spec.local_steps
    batch_size = spec.batch_size
    num_epochs = (
        math.ceil(max_steps / epoch_batches(len(videos), batch_size, spec.last_batch, spec.num_clients))
        if max_steps is not None
        else spec.local_epochs
    )
    # epoch ids are unique per (round, epoch), so every round draws new clips and patches
    loader = make_train_loader(
        dataset,
        batch_size=batch_size,
        num_workers=spec.num_workers,
        seed=derive_seed(spec.seed, _TAG_DATA, server_round, client_id),
        last_batch=client_last_batch(spec.last_batch, len(videos), batch_size, spec.num_clients),
        epochs=[server_round * 1000 + epoch for epoch in range(num_epochs)],
    )
    optimizer = make_optimizer(spec.optimizer, method.parameter_groups(), lr)

    losses: list[float] = []
    processed = 0
    steps = 0
    # Each video is read about num_epochs times this round: its decode worker (forked inside
    # the block) keeps whole decoded videos instead of decoding one clip at a time.
    videos_cache = cached_videos(TRAIN_VIDEO_CACHE_BYTES, visits=num_epochs)
    with videos_cache, torch.random.fork_rng(devices=[]), loader:  # the loader's workers stop on exit, error or not
        torch.manual_seed(derive_seed(spec.seed, _TAG_TRAIN, server_round, client_id))
        for batch in loader:
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            # workers ship uint8 (or [0, 1] float) clips; mean/std on the training device
            batch["video"] = dataset.normalize_video(batch["video"])
            batch = method.prepare_batch(batch)
            if amp_dtype is None:
                loss, _logs = method.training_loss(batch)
            else:  # client.precision: the forward in bf16/fp16, the weights and the optimizer in fp32
                with torch.autocast(device.type, dtype=amp_dtype):
                    loss, _logs = method.training_loss(batch)
                loss = loss.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"client {client_id}, round {server_round}: the loss is {float(loss)} at step {steps}"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                if clip_norm:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), float(clip_norm))
                optimizer.step()
            else:  # fp16: scaled loss; unscale before clipping; the step is skipped on inf/nan gradients
                scaler.scale(loss).backward()
                if clip_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(method.parameters(), float(clip_norm))
                scaler.step(optimizer)
                scaler.update()
            if "after_step" in hooks:
                with torch.no_grad():
                    method.after_step(steps)
            losses.append(float(loss.detach()))
            processed += _batch_size(batch)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
    if steps == 0:
        raise ValueError(
            f"client {client_id} made no training step: its loader is empty "
            f"({len(videos)} videos, client.batch_size={spec.batch_size})"
        )
    method.cpu()
    loss = float(np.mean(losses))
    logged = {}
    if spec.loss_log_interval:  # the loss the official client reports: mmcv's log (logged_loss)
        per_epoch = epoch_batches(len(videos), batch_size, spec.last_batch, spec.num_clients)
        mean_logged, entries = logged_loss(losses, per_epoch, spec.loss_log_interval)
        logged = {"loss_every_step": loss, "loss_log_entries": float(entries)}
        loss = mean_logged if mean_logged is not None else loss
    metrics = {
        "loss": loss,
        **logged,
        "compute_s": time.perf_counter() - t0,
        # CPU seconds of this process (all torch threads; not the loader workers): the
        # compute a dedicated machine would need, whatever else shares the cores
        "cpu_s": time.process_time() - cpu0,
        "steps": float(steps),
        "loader_batches": float(loader_batches(len(videos), batch_size, spec.last_batch, spec.num_clients)),
        "samples_processed": float(processed),
        "restored_local_state": float(restored),
    }
    # federation.client_weight: what the server's weighted averages weigh this client by
    weight = int(metrics["loader_batches"]) if spec.client_weight == "batches" else len(videos)
    return LocalResult(method.exchanged_state(), method.local_state(), weight, metrics)


def _batch_size(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if torch.is_tensor(v) and v.dim() > 0:
            return int(v.shape[0])
    raise ValueError("a training batch has no tensor with a batch dimension")
