"""Shared helpers of the federation tests: tiny run overrides, the CLI, leftover-process scans."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmark import PROJECT_ROOT
from benchmark.config import TINY_INPUT_OVERRIDES

FEDVID = [sys.executable, "-m", "benchmark.cli"]

#: A tiny federation: tiny synthetic data, 8x32x32 clips, 1 step per round, no evaluation.
TINY = [
    *TINY_INPUT_OVERRIDES,
    "partition.num_clients=3",
    "federation.local_steps=1",
    "evaluate=false",
    "engine.echo_log=false",
]


#: test_runner's federation (4 rounds, 2 of 3 clients, injected failures) without its seed: the
#: kill/resume (seed 1), the sweep of conftest.py (seeds 1, 3, 4) and the Ray-cluster run (seed 3).
#: Seed 1: client 1 fails in round 1 and client 0 in round 3 (seed 2 would fail: both of round 3).
#: Every checkpoint is kept: the kill/resume test rewinds to round 2 by hand (pruning: test_retention.py).
FAULTY_RUN = [
    *TINY,
    "federation.rounds=4",
    "federation.clients_per_round=2",
    "federation.min_clients=1",
    "fault.client_failure_prob=0.3",
    "checkpoint.keep_every=1",
]


def fedvid(args: list[str], timeout: float = 400, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDVID, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def flower_processes(run_dir: Path) -> list[str]:
    """Live processes (cmdlines) started for ``run_dir``: their FLWR_HOME is ``<run_dir>/.flwr``."""
    needle = f"FLWR_HOME={Path(run_dir) / '.flwr'}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat.rsplit(b")", 1)[1].split()[0] != b"Z" and needle in env.split(b"\0"):
            found.append(f"{entry}: {cmd[:120]}")
    return found


def wait_no_flower_processes(run_dir: Path, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := flower_processes(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from benchmark.federation.checkpoint import final_global_state

    return final_global_state(run_dir)


def rounds_log(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()]
