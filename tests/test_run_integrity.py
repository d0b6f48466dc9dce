"""Run integrity (issue 14): early config validation, the run lock, refused resumes,
truthful records."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmark import PROJECT_ROOT, rundir
from benchmark.config_check import ConfigError, check_run_config, run_config_problems

from _federation_helpers import TINY, fedvid


@pytest.fixture(scope="module")
def default_config() -> dict:
    """The resolved default `fedvid run` config, as the runner validates it."""
    result = fedvid(["run", "--cfg", "job", "--resolve"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import yaml

    return yaml.safe_load(result.stdout)


def _with(cfg: dict, **changes) -> dict:
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        node = out
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return out


# ------------------------------------------------------------------ config validation (cases 6, 8)


def test_the_default_config_is_valid_and_unknown_params_and_groups_pass(default_config):
    assert run_config_problems(default_config) == []
    tolerant = _with(default_config, aggregator__params={"anything": [1, 2]}, protocol={"name": "new"})
    tolerant["engine"]["tls"] = {"certificates": "x"}
    assert run_config_problems(tolerant) == []


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"federation__clients_per_round": 999}, "federation.clients_per_round=999: expected 1..5"),
        ({"federation__clients_per_round": 1.5}, "federation.clients_per_round=1.5"),
        ({"federation__local_steps": 0}, "federation.local_steps=0: expected null or an integer >= 1"),
        ({"federation__min_clients": 3}, "federation.min_clients=3: expected 1..2"),
        ({"client__optimizer__lr": -1.0}, "client.optimizer.lr=-1.0"),
        ({"fault__client_failure_prob": 2.0}, "fault.client_failure_prob=2.0"),
        ({"eval__linear_probe__val_fraction": 0.0}, "eval.linear_probe.val_fraction=0.0"),
        ({"eval__datasets": ["nope"]}, "eval.datasets: 'nope' is not a dataset config"),
        ({"method__name": "nope"}, "method.name='nope': not registered; expected one of"),
        ({"evaluate": "yes"}, "evaluate='yes': expected true or false"),
    ],
)
def test_each_invalid_value_is_named_with_what_is_allowed(default_config, changes, needle):
    problems = run_config_problems(_with(default_config, **changes))
    assert any(needle in p for p in problems), problems


def test_rounds_zero_is_only_valid_for_the_centralized_reference(default_config):
    assert run_config_problems(_with(default_config, federation__rounds=0, engine={"name": "centralized"})) == []
    assert run_config_problems(_with(default_config, federation__rounds=0))


def test_eval_keys_are_not_checked_when_evaluation_is_off(default_config):
    assert run_config_problems(_with(default_config, evaluate=False, eval__retrieval__ks=[0])) == []


def test_a_config_with_several_mistakes_reports_every_one_in_seconds_without_flower(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    result = fedvid(["run", f"hydra.run.dir={run_dir}", "federation.clients_per_round=0", "client.batch_size=0",
                     "federation.rounds=0", "client.optimizer.name=adagrad", "client.device=tpu", "seed=abc",
                     "eval.retrieval.ks=[0]", "federation.local_steps=0"], timeout=120)
    elapsed = time.monotonic() - t0
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "invalid configuration (8 problems)" in out
    for key in ("federation.clients_per_round=0", "client.batch_size=0", "federation.rounds=0",
                "client.optimizer.name='adagrad'", "client.device='tpu'", "seed='abc'", "eval.retrieval.ks=[0]",
                "federation.local_steps=0"):
        assert key in out, key
    assert "Traceback" not in out
    assert elapsed < 15  # < 5 s on an idle machine; slack for a loaded CI runner
    written = sorted(p.name for p in run_dir.iterdir() if p.name not in (".hydra", "config.log"))
    assert written == []  # nothing of the run (no lock, manifest, config, Flower home) was written


def test_check_run_config_raises_one_error_listing_all_problems(default_config):
    bad = _with(default_config, seed=1.5, client__batch_size=0)
    with pytest.raises(ConfigError) as info:
        check_run_config(bad)
    assert len(info.value.problems) == 2 and "seed=1.5" in str(info.value) and "client.batch_size=0" in str(info.value)
