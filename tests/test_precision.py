"""client.precision: bf16 autocast on CPU (the path a GPU user also gets with bf16), fp16's
CPU refusal, and fp32 unchanged."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.synthetic import ensure_synthetic
from benchmark.federation.training import autocast_settings, initial_global_state, run_local_training
from benchmark.specs import LocalTrainingSpec


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision-data")
    ensure_synthetic(root, size="tiny", seed=0, progress=False)
    return [(str(v), 0) for v in sorted((root / "synthetic" / "kinetics" / "train").rglob("*.mp4"))[:6]]


def _cfg(precision: str) -> LocalTrainingSpec:
    return LocalTrainingSpec.from_config(
        {
            "seed": 0,
            "backbone": {"name": "tiny_r3d", "params": {"width": 4}},
            "method": {
                "name": "ctp",
                "exchange": "backbone",
                "params": {"num_frames": 4, "visible_prob": 1.0, "opacity_range": [1.0, 1.0]},
            },
            "federation": {"num_clients": 1, "local_epochs": 1, "local_steps": 2, "rounds": 1},
            "client": {
                "batch_size": 3,
                "num_workers": 0,
                "num_threads": 1,
                "device": "cpu",
                "grad_clip_norm": 40.0,
                "precision": precision,
                "optimizer": {"name": "adam", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0},
            },
            "clip": {"frames": 4, "stride": 1, "size": 32, "short_side": 40, "backend": "decord"},
        }
    )


def test_bf16_autocast_trains_on_cpu_close_to_fp32(tiny_videos):
    saved = torch.get_num_threads()
    try:
        state = initial_global_state(_cfg("fp32").model, 0)
        fp32 = run_local_training(_cfg("fp32"), 0, 1, state, None, tiny_videos, 0.001)
        bf16 = run_local_training(_cfg("bf16"), 0, 1, state, None, tiny_videos, 0.001)
    finally:
        torch.set_num_threads(saved)
    assert bf16.metrics["steps"] == fp32.metrics["steps"] == 2
    # the loss is computed in bf16 (8 bits of mantissa): close to fp32's, not equal
    assert bf16.metrics["loss"] != fp32.metrics["loss"]
    assert bf16.metrics["loss"] == pytest.approx(fp32.metrics["loss"], rel=2e-2)
    # weights stay fp32 and moved from the global model, in about the same direction
    for name, tensor in bf16.exchanged.items():
        assert tensor.dtype == state[name].dtype
    moved = [k for k in state if state[k].is_floating_point() and not torch.equal(bf16.exchanged[k], state[k])]
    assert len(moved) > len(state) // 2
    d32 = torch.cat([(fp32.exchanged[k] - state[k]).flatten() for k in moved])
    d16 = torch.cat([(bf16.exchanged[k] - state[k]).flatten() for k in moved])
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.9


def test_precision_settings_and_refusals():
    cpu = torch.device("cpu")
    assert autocast_settings("fp32", cpu) == (None, False)
    assert autocast_settings("bf16", cpu) == (torch.bfloat16, False)
    assert autocast_settings("fp16", torch.device("cuda")) == (torch.float16, True)
    with pytest.raises(ValueError, match=r"client.precision=fp16 needs a CUDA device"):
        autocast_settings("fp16", cpu)
    with pytest.raises(ValueError, match=r"client.precision='fp8': expected one of"):
        autocast_settings("fp8", cpu)


def test_training_loss_sees_normalised_float_batches_after_prepare_batch(tiny_videos, monkeypatch):
    """Workers ship uint8 (CtP: [0, 1] floats after its colour steps); the training loop
    normalises on the training side, then calls ``prepare_batch``, then ``training_loss``."""
    from benchmark.methods import SSLMethod

    seen = []

    def prepare_batch(self, batch):
        seen.append((batch["video"].dtype, float(batch["video"].min()), float(batch["video"].max())))
        return batch

    monkeypatch.setattr(SSLMethod, "prepare_batch", prepare_batch)
    cfg = _cfg("fp32")
    run_local_training(cfg, 0, 1, initial_global_state(cfg.model, cfg.seed), None, tiny_videos, 0.001)
    assert len(seen) == 2  # one call per step
    # kinetics mean/std: [0, 1] pixels map into about [-1.9, 2.9]; uint8 values would exceed 200
    assert all(dtype == torch.float32 and -2.0 < low < 0.0 < high < 3.0 for dtype, low, high in seen)
