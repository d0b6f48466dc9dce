"""The torch device a config key names (``client.device``, ``eval.device``)."""

from __future__ import annotations

import torch


def resolve_device(name: str, key: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    key: the config key the name came from (for the error message).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"{key}={name!r}: expected auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{key}={name} but no CUDA device is available; use {key}=auto or cpu")
    return torch.device(name)
