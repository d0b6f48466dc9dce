"""Video MoCo (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020) on clips, as in microsoft/CtP @ 847b8fc (pyvrl/models/pretraining/moco/moco_model.py,
moco_dataset.py; configs/moco/r3d_18_kinetics/pretraining.py, configs/moco/pretraining_runtime_ucf.py).

Data: two clips of the same video (query, key), each from CtP's ``RandomFrameSampler``
(stride U{1..4}, temporal jitter) with its own spatial augmentation. Model: query encoder
(``backbone`` + ``fc``: MLP 512-512-128), key encoder (``key_backbone`` + ``key_fc``, no
gradient, momentum update k <- m k + (1 - m) q), a queue of K normalised keys; InfoNCE
over [q.k+, q.queue] / T. Federation: the key encoder and the queue are client-local state
(:attr:`MoCo.local_only`), never sent; see docs/methods/moco.md.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.clips import ctp_train_clip_indices
from benchmark.methods import SSLMethod
from benchmark.registry import register_method

from .pyvrl_heads import global_pool, pretraining_backbone


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's loss: q, k (N, D) L2-normalised, queue (D, K) -> cross-entropy of
    [q.k, q.queue] / T with the positive at index 0 (moco_model.py L162-L177)."""
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def _mlp(in_channels: int, out_channels: int, mlp: bool) -> nn.Module:
    if mlp:
        return nn.Sequential(nn.Linear(in_channels, in_channels), nn.ReLU(), nn.Linear(in_channels, out_channels))
    return nn.Linear(in_channels, out_channels)


@register_method("moco")
class MoCo(SSLMethod):
    """Batch: ``video`` (B, 2, C, T, H, W): [:, 0] queries, [:, 1] keys."""

    pretext = "moco"
    num_views = 2
    default_exchange = "full"
    local_only = ("key_backbone.", "key_fc.", "queue")  # "queue" also covers "queue_ptr"

    def __init__(
        self,
        backbone: nn.Module,
        num_frames: int = 16,
        strides: Sequence[int] = (1, 2, 3, 4),
        temporal_jitter: bool = True,
        out_channels: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        mlp: bool = True,
        backbone_layout: str = "downstream",
        **kwargs,
    ) -> None:
        super().__init__(pretraining_backbone(backbone, backbone_layout), **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"method.params.momentum={momentum}: expected a value in [0, 1]")
        if temperature <= 0 or queue_size <= 0:
            raise ValueError(
                f"method.params: temperature={temperature}, queue_size={queue_size}: expected positive values"
            )
        self.clip_len, self.strides, self.temporal_jitter = (
            int(num_frames),
            [int(s) for s in strides],
            bool(temporal_jitter),
        )
        self.K, self.m, self.T = int(queue_size), float(momentum), float(temperature)
        channels = int(self.backbone.out_channels)
        self.fc = _mlp(channels, out_channels, mlp)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_fc = copy.deepcopy(self.fc)
        for p in (*self.key_backbone.parameters(), *self.key_fc.parameters()):
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(out_channels, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._batch_size: int | None = None  # set by the first enqueue (a whole batch)

    # --- data ----------------------------------------------------------------------
    def sample_frames(self, num_frames: int, generator: torch.Generator):
        """Two independent RandomFrameSampler clips (query, key); no targets."""
        return [
            ctp_train_clip_indices(num_frames, self.clip_len, self.strides, self.temporal_jitter, generator)
            for _ in range(2)
        ], {}

    # --- model ---------------------------------------------------------------------
    def _encode(self, backbone: nn.Module, fc: nn.Module, video: torch.Tensor) -> torch.Tensor:
        return F.normalize(fc(global_pool(backbone(video))), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- m k + (1 - m) q for the key encoder's parameters (``_momentum_update_key_encoder``).
        Buffers (BN running statistics) are not averaged, as in the official code."""
        for q, k in zip(
            (*self.backbone.parameters(), *self.fc.parameters()),
            (*self.key_backbone.parameters(), *self.key_fc.parameters()),
        ):
            k.mul_(self.m).add_(q.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write (N, D) keys at the queue pointer, wrapping around (``_dequeue_and_enqueue``).

        The first batch sets the batch size, which must divide the queue (the official
        assert). A smaller, ragged last batch of an epoch (``client.last_batch`` keeps it
        under some protocols; the official loader drops it) is written around the end of
        the queue, so the queue still holds the newest ``queue_size`` keys."""
        n, ptr = keys.shape[0], int(self.queue_ptr)
        if self._batch_size is None:
            if self.K % n:
                raise ValueError(
                    f"method.params.queue_size={self.K} is not a multiple of the batch size {n} "
                    "(as the official code requires); change one of them"
                )
            self._batch_size = n
        if n > self.K:
            raise ValueError(f"a batch of {n} keys does not fit method.params.queue_size={self.K}")
        slots = (torch.arange(n, device=self.queue.device) + ptr) % self.K
        self.queue[:, slots] = keys.T
        self.queue_ptr[0] = (ptr + n) % self.K

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        video = batch["video"]  # (B, 2, C, T, H, W)
        q = self._encode(self.backbone, self.fc, video[:, 0])  # (B, D)
        with torch.no_grad():
            # one process: the official cross-GPU batch shuffle changes nothing for BN here
            k = self._encode(self.key_backbone, self.key_fc, video[:, 1])
        loss = info_nce(q, k, self.queue, self.T)
        with torch.no_grad():
            acc = (torch.einsum("nc,nc->n", q, k).unsqueeze(1) >= q @ self.queue).all(dim=1).float().mean()
        self.enqueue(k)
        return loss, {"moco_top1": float(acc)}

    def after_step(self, step: int) -> None:
        # the official forward updates the key encoder before computing keys; updating after
        # each optimiser step gives the same sequence of key encoders from the second step on
        self.momentum_update()

    # --- federation ----------------------------------------------------------------
    def start_round(self, global_state, local_state, server_round: int) -> None:
        """Query encoder from the server; key encoder and queue from this client's previous
        round. In its first round a client's key encoder starts as a copy of the received
        query encoder (MoCo's initialisation, k = q)."""
        super().start_round(global_state, local_state, server_round)
        if not local_state:
            with torch.no_grad():
                for q, k in zip(
                    (*self.backbone.parameters(), *self.fc.parameters()),
                    (*self.key_backbone.parameters(), *self.key_fc.parameters()),
                ):
                    k.copy_(q)
                for q, k in zip(
                    (*self.backbone.buffers(), *self.fc.buffers()),
                    (*self.key_backbone.buffers(), *self.key_fc.buffers()),
                ):
                    k.copy_(q)
