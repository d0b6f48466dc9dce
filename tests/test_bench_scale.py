"""perf/bench_scale.py's bench-only components: registered through the ordinary entry
points, the exchanged state has exactly R3D-18's tensors, the local head CtP's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmark import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "perf"))
import bench_scale  # noqa: E402


def test_scale_components_have_r3d18_and_ctp_head_shapes_through_the_registry(tmp_path):
    code = """
import json
from benchmark.registry import build_backbone, build_method
from benchmark.federation.training import build_model
from benchmark.specs import ModelSpec
from omegaconf import OmegaConf
# `params: {}` as Hydra hands it over (an empty DictConfig), through the spec the runner builds
spec = ModelSpec.from_config(OmegaConf.create({"backbone": {"name": "r3d18", "params": {}},
                                               "method": {"name": "ctp", "exchange": "backbone", "params": {}}}))
real = build_model(spec, 0)
fake = build_method("scale_noop", build_backbone("scale_r3d18"))
shapes = lambda d: {k: list(v.shape) for k, v in d.items()}
nbytes = lambda d: sum(v.numel() * v.element_size() for v in d.values())
before = {k: v.clone() for k, v in fake.state_dict().items()}
loss, _ = fake.training_loss({"video": None})
moved = [k for k in before if before[k].is_floating_point() and not bool((fake.state_dict()[k] != before[k]).all())]
print(json.dumps({"same_exchanged": shapes(real.exchanged_state()) == shapes(fake.exchanged_state()),
                  "ex_bytes": nbytes(fake.exchanged_state()), "real_local": nbytes(real.local_state()),
                  "fake_local": nbytes(fake.local_state()), "loss": float(loss), "unmoved": moved}))
"""
    env = {**os.environ, "PYTHONPATH": bench_scale.plugin_path(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["same_exchanged"] and got["ex_bytes"] == 132_703_648  # R3D-18: 120 tensors, 33.2 M parameters
    assert abs(got["fake_local"] - got["real_local"]) <= 4  # CtP's head (+ a 1-element tick)
    # every parameter moved (the update differs from the global model); BN statistics and the tick did not
    assert got["loss"] == 0.0 and all(k == "tick" or ".running_" in k for k in got["unmoved"]), got["unmoved"]


def test_fit_recovers_a_linear_trend():
    slope, intercept = bench_scale.fit([1.0, 2.0, 3.0, 4.0], [10.0, 12.0, 14.0, 16.0])
    assert (slope, intercept) == (2.0, 8.0)
    assert bench_scale.fit([1.0, 1.0], [3.0, 5.0]) == (0.0, 4.0)
