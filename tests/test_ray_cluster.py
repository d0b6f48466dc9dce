"""The simulation on an existing Ray cluster (``engine.ray_address``) gives the self-started run's result.

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

from benchmark.federation.engine import Processes, _bin, free_port

from _federation_helpers import TINY, fedvid, final_weights, wait_no_flower_processes

#: Ray would replace 127.0.0.1 with the machine's network address; this keeps the cluster on loopback.
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
RUN = [
    *TINY,
    "partition.num_clients=2",
    "federation.rounds=1",
    "federation.clients_per_round=2",
    "federation.min_clients=2",
    "seed=3",
]


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


def _run(run_dir: Path, data_root: Path, *extra: str) -> None:
    result = fedvid(
        ["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *RUN, *extra], env={**os.environ, **LOOPBACK_RAY}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert wait_no_flower_processes(run_dir) == []


@pytest.mark.slow
def test_simulation_on_an_existing_ray_cluster_equals_the_self_started_run(ray_cluster, tmp_path_factory):
    address, temp_dir, head = ray_cluster
    data_root = tmp_path_factory.mktemp("fedvid-data-ray")
    base = tmp_path_factory.mktemp("ray-runs")
    _run(base / "cluster", data_root, f"engine.ray_address={address}")
    # the clients ran as actors of that cluster, which fedvid left running
    actor_logs = [p for p in temp_dir.glob("session_*/logs/worker-*.out") if "ClientAppActor" in p.read_text()]
    assert actor_logs, f"no ClientAppActor ran on the cluster ({temp_dir})"
    assert head.poll() is None
    _run(base / "own", data_root)

    a, b = final_weights(base / "own"), final_weights(base / "cluster")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rounds = [
        [json.loads(line) for line in (base / d / "rounds.jsonl").read_text().splitlines()] for d in ("own", "cluster")
    ]
    assert [(r["round"], r["replied_clients"], r["loss"]) for r in rounds[0]] == [
        (r["round"], r["replied_clients"], r["loss"]) for r in rounds[1]
    ]
    assert len(rounds[0]) == 1 and rounds[0][0]["replied_clients"] == [0, 1]
