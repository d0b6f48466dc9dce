"""Bench-only components of perf/bench_scale.py (registered through the ordinary
``fedvid.methods`` / ``fedvid.backbones`` entry points that the bench declares in a
temporary ``.dist-info``; never part of the package).

- backbone ``scale_r3d18``: the real R3D-18 module (same 120 state tensors and shapes,
  33.2 M parameters, 132.7 MB) whose values are a constant instead of Kaiming draws
  (building the real one costs ~2 s of CPU per client and round, which is client compute).
- method ``scale_noop`` (exchange=backbone): a local head of CtP's size for R3D-18
  (28.4 MB, kept as client state like CtP's), and a "training step" that only shifts every
  weight by a small constant (so each update differs from the global model) and returns a
  zero loss: near-zero local compute through the real runner path (loader, optimizer,
  ClientApp, client state files, Flower messages).
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.methods import SSLMethod
from benchmark.models.backbones import R3D18
from benchmark.registry import register_backbone, register_method

#: CtP's local head for R3D-18 (temporal conv 512x512x2, fc1 512x12800, pred 64x512 + biases).
CTP_HEAD_SHAPES = ((512, 512, 2, 1, 1), (512,), (512, 12800), (512,), (64, 512), (64,))


@register_backbone("scale_r3d18")
class ScaleR3D18(R3D18):
    def __init__(self) -> None:
        with torch.device("meta"):
            super().__init__()
        self.to_empty(device="cpu")
        with torch.no_grad():
            for t in self.state_dict().values():
                t.fill_(0.01 if t.is_floating_point() else 0)


@register_method("scale_noop")
class ScaleNoop(SSLMethod):
    pretext = "none"
    default_exchange = "backbone"

    def __init__(self, backbone: nn.Module, exchange: str | None = None, step: float = 1e-5) -> None:
        super().__init__(backbone, exchange)
        self.head = nn.ParameterList([nn.Parameter(torch.full(s, 0.01)) for s in CTP_HEAD_SHAPES])
        self.tick = nn.Parameter(torch.zeros(1))
        self.step = float(step)
        self.client_id = 0

    def set_client_context(self, client_id: int, num_clients: int) -> None:
        self.client_id = client_id

    def training_loss(self, batch):
        with torch.no_grad():
            delta = self.step * (1 + self.client_id % 3)
            for p in self.backbone.parameters():
                p.add_(delta)
            for p in self.head:
                p.add_(delta)
        return (self.tick * 0.0).sum(), {}
