"""The client-side half of a method: a small class around an SSL loss (solo-learn style).

A method wraps a backbone (``self.backbone``), builds its own heads, and turns a batch
into a loss. The runner does everything else (data, optimisation, federation,
evaluation), so a new method is one file plus one config::

    @register_method("my_method")
    class MyMethod(SSLMethod):
        pretext = "my_pretext"
        num_views = 2

        def __init__(self, backbone, dim=128, **params):
            super().__init__(backbone, **params)
            self.head = nn.Linear(backbone.out_channels, dim)

        def training_loss(self, batch):
            v = batch["video"]                   # (B, 2, C, T, H, W)
            ...
            return loss, {"align": float(a)}

Data contract (pytorchvideo convention, channels first):
- The loader decodes ``num_views`` clips of the same video, applies the spatial
  augmentation and hands them, as **uint8** tensors with shape (C, T, H, W) (permuted
  views of channels-last frames, not contiguous), to :meth:`sample_transform` inside
  the DataLoader workers.
- :meth:`sample_transform` returns a dict of tensors; its ``"video"`` entry is uint8
  (write transforms dtype-preserving where possible: a quarter of the bytes cross the
  process boundary) or float in [0, 1] (a colour step that needs floats converts with
  ``benchmark.data.transforms.to_unit_float``). Default: ``{"video": clip}`` for one
  view, ``{"video": stack(views)}`` of shape (V, C, T, H, W) for several.
- The batch is collated in the workers and normalised (mean/std of
  ``clip.normalization``) in the training process, on the training device, before
  :meth:`training_loss` sees it: ``batch["video"]`` there is normalised float32.

Hooks (all optional; the defaults are today's behaviour, see docs/adding-a-method.md):
- :meth:`sample_frames` (data): the frame indices of the sample's clips, given the video's
  frame count and the item's seeded generator, plus per-sample targets (VCOP, Speed).
- :meth:`parameter_groups` / :meth:`after_step` (optimisation): optimiser parameter
  groups; work after every optimiser step (a momentum encoder's update, MoCo).
- :meth:`start_round` (federation): sees the incoming global tensors and the client's
  previous local tensors and decides what the model starts the round from.
- :attr:`local_only` (federation, declarative): name prefixes that never travel
  (MoCo's key encoder and queue), whatever ``exchange`` says.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

EXCHANGE_CHOICES = ("full", "backbone")

#: Hooks a method may override (``fedvid check-method`` reports and exercises those it does).
HOOKS = ("sample_frames", "sample_transform", "parameter_groups", "after_step", "start_round", "set_client_context")


class SSLMethod(nn.Module):
    #: Name of the pretext task written into result records (e.g. "ctp").
    pretext: ClassVar[str] = ""
    #: Clips per video in one training sample.
    num_views: ClassVar[int] = 1
    #: Default exchanged part; overridable per run with ``method.exchange=...``.
    default_exchange: ClassVar[str] = "full"
    #: State-dict name prefixes that stay on the client whatever ``exchange`` says
    #: (e.g. ``("key_backbone.", "queue")``: MoCo's key encoder and queue).
    local_only: ClassVar[tuple[str, ...]] = ()
    #: Horizontal-flip probability of the loader's spatial augmentation; None: the
    #: loader's default (CtP's ``GroupFlip(0.5)``). VCOP's pipeline has no flip (0.0).
    train_flip_prob: ClassVar[float | None] = None

    def __init__(self, backbone: nn.Module, exchange: str | None = None, **unused):
        super().__init__()
        if unused:
            raise TypeError(
                f"{type(self).__name__} got unknown parameters {sorted(unused)}; "
                "check the keys under `method:` in your config"
            )
        exchange = exchange or self.default_exchange
        if exchange not in EXCHANGE_CHOICES:
            raise ValueError(f"method.exchange={exchange!r}: expected one of {EXCHANGE_CHOICES}")
        self.exchange = exchange
        self.backbone = backbone

    # --- federation context ------------------------------------------------------------
    def set_client_context(self, client_id: int, num_clients: int) -> None:
        """Called by the runner before local training with the client's partition id in the
        split manifest (0 ≤ client_id < num_clients). Default: nothing; methods whose loss
        depends on the client (e.g. SSD's per-client scaled dimensions) override it."""

    # --- data side (runs in DataLoader workers, two items at once on threads that share
    # this object: keep no per-item state on self; `fedvid check-method` compares) ------
    def sample_frames(
        self, num_frames: int, generator: torch.Generator
    ) -> tuple[list[list[int]], dict[str, torch.Tensor]] | None:
        """Frame indices of this sample's clips and its per-sample targets, or None.

        ``num_frames``: frames in the video; ``generator``: the item's seeded generator (its
        first draws). Return ``(clips, targets)``: ``clips`` a list of clips, each a list of
        frame indices in ``[0, num_frames)`` in playback order (may repeat, may run
        backwards), all of one length; ``targets`` tensors added to the sample as they are
        (e.g. ``{"speed": tensor(3)}``). The loader decodes the union of the frames once,
        applies the spatial augmentation per clip and hands the clips to
        :meth:`sample_transform` as views. Default None: the loader draws ``num_views``
        clips from ``clip.frames`` / ``clip.stride`` itself (today's sampling).
        """
        return None

    def sample_transform(self, views: list[torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample work on the augmented views, each (C, T, H, W) uint8; returns uint8 or
        float in [0, 1] in ``"video"`` (normalised later, in the training process). Keep it
        dtype-preserving where possible (index selection, flips, rot90, permutations,
        stacking). Draw only from ``generator``."""
        if len(views) == 1:
            return {"video": views[0]}
        return {"video": torch.stack(views)}

    # --- training process, per batch ------------------------------------------------
    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Trainer-side work on a whole batch, on the training device, after the loader's
        batch was normalised and before :meth:`training_loss`. Default: the batch as is."""
        return batch

    # --- model side ------------------------------------------------------------------
    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the scalar loss to minimise and a dict of float logs for this batch."""
        raise NotImplementedError

    # --- optimisation -----------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups (torch's format: ``{"params": [...], "lr": ..., ...}``;
        keys other than ``params`` override ``client.optimizer``). Default: one group of
        every trainable parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def after_step(self, step: int) -> None:
        """Called after optimiser step ``step`` (0-based within the round), outside autograd.
        Default: nothing; MoCo updates its key encoder here."""

    # --- federation -------------------------------------------------------------------
    def start_round(
        self,
        global_state: dict[str, torch.Tensor],
        local_state: dict[str, torch.Tensor] | None,
        server_round: int,
    ) -> None:
        """Set the model a client trains from in ``server_round``.

        ``global_state``: the exchanged tensors from the server; ``local_state``: what
        :meth:`local_state` returned at the end of this client's previous round (None in
        its first round; the model then holds the client's seeded initialisation).
        Default: the local tensors, then the global ones on top. FedEMA- or SSD-style
        methods override it (e.g. mix the previous local weights into the global ones).
        """
        if local_state:
            self.load_partial_state(local_state)
        self.load_partial_state(global_state)

    def is_exchanged(self, name: str) -> bool:
        if self.local_only and name.startswith(self.local_only):
            return False
        return self.exchange == "full" or name.startswith("backbone.")

    def overridden_hooks(self) -> list[str]:
        """The names in :data:`HOOKS` this method's class overrides."""
        return [h for h in HOOKS if getattr(type(self), h) is not getattr(SSLMethod, h)]

    def exchanged_state(self) -> dict[str, torch.Tensor]:
        """The tensors sent to the server (state_dict entries, buffers included)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if self.is_exchanged(k)}

    def local_state(self) -> dict[str, torch.Tensor]:
        """The tensors that stay on the client (heads when ``exchange == "backbone"``)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if not self.is_exchanged(k)}

    def load_partial_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a subset of the state dict; unknown names are an error, absent names are kept."""
        own = self.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"{type(self).__name__}: received tensors it does not have: {unknown[:5]}")
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(f"{k}: received shape {tuple(v.shape)}, model has {tuple(own[k].shape)}")
        self.load_state_dict({**own, **state})
