"""The simulation on an existing Ray cluster (``engine.ray_address``) gives the self-started run's result
(compared with the same job of the sweep in conftest.py, which test_sweep compares with a single run).

The cluster is a real ``ray start --head`` on 127.0.0.1, started in its own session with a
run tag (``benchmark.federation.engine.Processes``) and stopped by that tag: other Ray
instances on the machine are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch

from benchmark.federation.checkpoint import load_checkpoint_file
from benchmark.federation.engine import Processes, _bin, free_port

from _federation_helpers import FAULTY_RUN, fedvid, final_weights, rounds_log, wait_no_flower_processes

#: Ray would replace 127.0.0.1 with the machine's network address; this keeps the cluster on loopback.
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _wait_port(port: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"the Ray head did not listen on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture
def ray_cluster(tmp_path):
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; yields (address, temp dir)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="fvray", dir="/tmp"))  # Ray's socket paths must stay short
    (tmp_path / "cluster").mkdir()
    procs = Processes(tmp_path / "cluster")
    port = free_port()
    head = procs.spawn(
        "ray head",
        [
            _bin("ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        tmp_path / "ray_head.log",
        LOOPBACK_RAY,
    )
    try:
        _wait_port(port, head)
        yield f"127.0.0.1:{port}", temp_dir, head
    finally:
        procs.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert procs.tagged() == [], "processes of the Ray cluster survived"


@pytest.mark.slow
def test_simulation_on_an_existing_ray_cluster_equals_the_sweeps_run_on_its_own_ray(
    ray_cluster, tiny_data_root, interrupted_sweep, tmp_path
):
    """``engine.ray_address`` and the sweep's Ray head give the same numbers for the same config
    and seed (3: the sweep's job 1, whose round 1 this one-round run repeats; test_runner
    compares the sweep's job 0 with a single run on its own Ray). This run trains its round's
    2 clients one at a time (``num_cpus=2`` of the cluster's 2), the sweep's job both at once
    (``num_cpus=1``, the default): which actor runs a client, and when, changes no weight."""
    address, temp_dir, head = ray_cluster
    run_dir = tmp_path / "run"
    result = fedvid(
        ["run", f"hydra.run.dir={run_dir}", f"data_root={tiny_data_root}", "seed=3"]
        + [o for o in FAULTY_RUN if not o.startswith("engine.client_resources")]
        + ["federation.rounds=1", f"engine.ray_address={address}", "engine.client_resources.num_cpus=2"],
        env={**os.environ, **LOOPBACK_RAY},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert wait_no_flower_processes(run_dir) == []
    # the clients ran as actors of that cluster, which fedvid left running
    actor_logs = [p for p in temp_dir.glob("session_*/logs/worker-*.out") if "ClientAppActor" in p.read_text()]
    assert actor_logs, f"no ClientAppActor ran on the cluster ({temp_dir})"
    assert head.poll() is None

    # round 1 does not depend on the number of rounds (constant learning rate, per-round seeds)
    in_sweep = interrupted_sweep.sweep_dir / "1"
    # ... nor on how the tensors travelled: in the messages here (a cluster fedvid did not
    # start), in payload files in the sweep (its own head on this machine)
    tensors = [json.loads((d / "result.json").read_text())["systems"]["flower"]["tensors"] for d in (run_dir, in_sweep)]
    assert tensors == ["messages", "shared-memory"]
    first = load_checkpoint_file(in_sweep / "checkpoints" / "round_0001.pt").global_state
    mine = final_weights(run_dir)
    assert first.keys() == mine.keys() and all(torch.equal(first[k], mine[k]) for k in first)
    key = [(r["round"], r["sampled_clients"], r["replied_clients"], r["loss"]) for r in rounds_log(run_dir)]
    assert (
        key == [(r["round"], r["sampled_clients"], r["replied_clients"], r["loss"]) for r in rounds_log(in_sweep)][:1]
    )
