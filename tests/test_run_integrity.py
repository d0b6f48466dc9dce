"""Run integrity (issue 14): early config validation, the run lock, refused resumes,
truthful records."""

from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
import sys

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


def test_the_default_config_is_valid_and_unknown_groups_pass(default_config):
    assert run_config_problems(default_config) == []
    tolerant = _with(default_config, protocol={"name": "new"})
    tolerant["engine"]["tls"] = {"certificates": "x"}
    assert run_config_problems(tolerant) == []
    # an aggregator parameter its constructor does not take would fail the server after
    # Flower has started: it is a problem now
    stray = _with(default_config, aggregator__params={"anything": [1, 2]})
    assert run_config_problems(stray) == [
        "aggregator.params: anything not taken by aggregator=fedavg (it takes no parameters); "
        "remove them, or choose the aggregator they belong to"
    ]


PAPER_CONFIGS = [
    ["protocol=ctp"],
    ["protocol=fedvssl"],
    ["protocol=ssd"],
    ["experiment=fvssl_k400_noniid"],
    ["experiment=fvssl_ucf101_crosssilo"],
    ["experiment=ssd_crosssilo"],
    ["experiment=ssd_crossdevice"],
    ["experiment=ssd_k400_noniid"],
    ["experiment=compare"],
]


def test_every_protocol_and_paper_experiment_passes_the_check():
    """The check follows the protocols' own values (a stride list to draw from, ImageNet
    normalisation, the downstream layout, CtP/VCOP clip sampling)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmark import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in PAPER_CONFIGS:
            cfg = OmegaConf.to_container(compose("config", overrides=[*overrides, "data_root=/nowhere"]), resolve=True)
            assert run_config_problems(cfg) == [], overrides
    assert run_config_problems(_with(cfg, clip__stride=[1, 0])) == [
        "clip.stride=[1, 0]: expected an integer >= 1, or a non-empty list, each item an integer >= 1"
    ]


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
    import resource

    run_dir = tmp_path / "run"
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            "federation.clients_per_round=0",
            "client.batch_size=0",
            "federation.rounds=0",
            "client.optimizer.name=adagrad",
            "client.device=tpu",
            "seed=abc",
            "eval.retrieval.ks=[0]",
            "federation.local_steps=0",
        ],
        timeout=120,
    )
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "invalid configuration (8 problems)" in out
    for key in (
        "federation.clients_per_round=0",
        "client.batch_size=0",
        "federation.rounds=0",
        "client.optimizer.name='adagrad'",
        "client.device='tpu'",
        "seed='abc'",
        "eval.retrieval.ks=[0]",
        "federation.local_steps=0",
    ):
        assert key in out, key
    assert "Traceback" not in out
    # CPU seconds, not wall time (which a loaded runner stretches): 3.4 s measured, under 5 s
    # of wall time on an idle machine; Flower + Ray alone take 15+ s
    assert cpu_s < 8
    written = sorted(p.name for p in run_dir.iterdir() if p.name not in (".hydra", "config.log"))
    assert written == []  # nothing of the run (no lock, manifest, config, Flower home) was written


def test_check_run_config_raises_one_error_listing_all_problems(default_config):
    bad = _with(default_config, seed=1.5, client__batch_size=0, client__last_batch="ragged")
    with pytest.raises(ConfigError) as info:
        check_run_config(bad)
    message = str(info.value)
    assert len(info.value.problems) == 3 and "seed=1.5" in message and "client.batch_size=0" in message
    assert "client.last_batch='ragged'" in message and "pad" in message


# ------------------------------------------------------------------ run directory: lock (case 2), resume (case 1)

# engine=centralized: the run-dir logic is the federated one, without Flower's start-up
CENTRAL = [
    *(o for o in TINY if not o.startswith("engine.client_resources")),
    "engine=centralized",
    "federation.rounds=1",
    "backbone.params.width=4",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from benchmark.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("fedvid-data")
    ensure_synthetic(root, size="tiny", progress=False)
    return root


def _hold_lock(run_dir) -> subprocess.Popen:
    """Another process that holds the run directory's lock until it is killed."""
    code = (
        "import sys, time; from benchmark.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_second_run_in_a_locked_directory_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, data_root):
    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir)
    try:
        result = fedvid(["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *CENTRAL], timeout=120)
        out = result.stdout + result.stderr
        assert result.returncode == 1, out[-3000:]
        assert f"is in use by another run (pid {holder.pid} on" in out and "started 20" in out
        assert not (run_dir / rundir.MANIFEST).exists() and not (run_dir / rundir.CONFIG_JSON).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing anything: its stale lock is taken over
    result = fedvid(["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *CENTRAL], timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((run_dir / rundir.LOCK).read_text())["pid"] != holder.pid
    assert json.loads((run_dir / rundir.RESULT).read_text())["status"] == "reproduced"


@pytest.mark.slow
def test_a_refused_resume_writes_nothing_and_says_what_differs(tmp_path, data_root):
    from benchmark.data.annotations import load_annotations
    from benchmark.splits.format import write_manifest
    from benchmark.splits.make import make_manifest

    run_dir = tmp_path / "run"
    result = fedvid(["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *CENTRAL], timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # the manifest the run made names the overrides that shaped its lists: it verifies (case 7)
    from benchmark.commands.splits import compose_splits_config
    from benchmark.splits.verify import verify_manifest

    assert f"data_root={data_root}" in json.loads((run_dir / rundir.MANIFEST).read_text())["make_command"]
    assert verify_manifest(run_dir / rundir.MANIFEST, compose_splits_config) == []
    before = {
        p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name not in ("config.log", rundir.LOCK)
    }

    # another split of the same dataset (seed 9) and a changed training key
    from omegaconf import OmegaConf

    from benchmark.config import CONF_DIR

    ds = OmegaConf.merge(
        {"data_root": str(data_root)}, {"dataset": OmegaConf.load(CONF_DIR / "dataset" / "synthetic_kinetics.yaml")}
    )
    other = tmp_path / "other.json"
    write_manifest(make_manifest(load_annotations(ds.dataset), {"name": "iid", "num_clients": 3}, 9), other)
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *CENTRAL,
            "resume=true",
            f"split_manifest={other}",
            "client.optimizer.lr=0.5",
        ],
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "resume=true refused" in out and "split manifest content" in out
    assert "config key client.optimizer.lr (0.001 -> 0.5)" in out and "config key split_manifest" in out
    assert "continue with" not in out  # a resume with these inputs cannot help
    after = {
        p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name not in ("config.log", rundir.LOCK)
    }
    assert after == before  # the manifest, config and record are untouched

    # eval settings may change on resume; an ordinary resume of the complete run only re-evaluates
    result = fedvid(
        ["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *CENTRAL, "resume=true", "eval.retrieval.ks=[1]"],
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "pretraining already complete" in result.stdout
    assert (run_dir / rundir.ROUNDS_LOG).read_bytes() == before[rundir.ROUNDS_LOG]


# ------------------------------------------------------------------ skipped videos (case 4), failed evaluation (case 5)


@pytest.mark.slow
def test_skipped_videos_are_recorded_and_make_the_run_degraded(tmp_path, data_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    victim = sorted((root / "synthetic" / "kinetics" / "train").rglob("*.mp4"))[0]
    victim.unlink()
    run_dir = tmp_path / "run"
    # dataset.synthetic=false: treated as a real dataset (a synthetic one would be regenerated)
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            f"data_root={root}",
            *CENTRAL,
            "allow_missing_videos=true",
            "dataset.synthetic=false",
        ],
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    record = json.loads((run_dir / rundir.RESULT).read_text())
    assert record["videos"]["pretraining"] == {
        "listed": 24,
        "present": 23,
        "skipped": 1,
        "missing": 1,
        "empty": 0,
        "undecodable": 0,
        "unusable": 0,
        "case_mismatch_resolved": 0,
    }
    assert record["status"] == "degraded" and record["status_reasons"] == ["1 of 24 pretraining videos skipped"]
    assert "status: degraded" in result.stdout and "pretraining 23/24, 1 skipped" in result.stdout
    from leaderboard.records import validate_records

    assert validate_records([run_dir / rundir.RESULT])[1] == []


@pytest.mark.slow
def test_a_failed_evaluation_keeps_the_pretraining_and_resume_finishes_the_record(tmp_path, data_root):
    run_dir = tmp_path / "run"
    # ucf101 (real videos) is not under this data root: evaluation fails after pretraining
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *CENTRAL,
            "evaluate=true",
            "eval.datasets=[ucf101]",
        ],
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "evaluation failed after a complete pretraining" in out and "Traceback" not in out
    assert "continue with: fedvid run" in out and "resume=true" in out and f"data_root={data_root}" in out
    record = json.loads((run_dir / rundir.RESULT).read_text())
    assert record["status"] == "failed" and record["failure"]["stage"] == "evaluation"
    assert rundir.latest_round(run_dir) == 1
    rounds_before = (run_dir / rundir.ROUNDS_LOG).read_bytes()

    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *CENTRAL,
            "evaluate=true",
            "eval=smoke",
            "eval.finetune.enabled=false",
            "eval.robustness.enabled=false",
            "eval.linear_probe.enabled=false",
            "eval.clip.num_clips=1",
            "eval.clip.frames=8",
            "eval.clip.short_side=40",
            "eval.clip.crop_size=32",
            "eval.clip.stride=1",
            "resume=true",
        ],
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    record = json.loads((run_dir / rundir.RESULT).read_text())
    assert record["status"] == "reproduced" and "failure" not in record
    assert set(record["evaluations"]["retrieval"]) == {"synthetic_ucf101", "synthetic_hmdb51"}
    assert record["videos"]["evaluation"]["synthetic_ucf101"]["test"]["skipped"] == 0
    assert (run_dir / rundir.ROUNDS_LOG).read_bytes() == rounds_before  # nothing was retrained


# ------------------------------------------------------------------ record status (case 3)


def _round(r, sampled, failed=()):
    return {
        "round": r,
        "sampled_clients": sampled,
        "failed_clients": [{"client_id": c, "reason": "error", "error": "boom"} for c in failed],
    }


def test_a_client_that_fails_every_round_makes_the_record_degraded():
    from leaderboard.record import participation, run_status

    rounds = [_round(1, [0, 1]), _round(2, [1, 2], failed=[2]), _round(3, [0, 2], failed=[2])]
    part = participation(rounds)
    assert (part["sampled"], part["replied"], part["failed"]) == (6, 4, 2)
    assert part["excluded_clients"] == [2] and part["failed_by_reason"] == {"error": 2}
    assert part["failures"] == [
        {"round": 2, "client_id": 2, "reason": "error"},
        {"round": 3, "client_id": 2, "reason": "error"},
    ]
    status, reasons = run_status(part, {}, None)
    assert status == "degraded"
    assert reasons == [
        "clients [2] sent no usable update in any round they were sampled",
        "2 of 6 sampled client updates failed (> 10%)",
    ]


def test_a_run_is_reproduced_only_within_the_thresholds_and_failed_when_a_stage_failed():
    from leaderboard.record import participation, run_status

    # 1 failure in 20 sampled updates (5 %), and the client replied in another round
    rounds = [_round(r, [0, 1], failed=[1] if r == 1 else []) for r in range(1, 11)]
    assert run_status(participation(rounds), {"pretraining": {"listed": 4, "present": 4, "skipped": 0}}, None) == (
        "reproduced",
        [],
    )
    assert run_status(participation(rounds), {}, {"stage": "evaluation", "message": "ValueError: x\nmore"}) == (
        "failed",
        ["evaluation failed: ValueError: x"],
    )
    skipped = {"evaluation": {"ucf101": {"test": {"listed": 10, "present": 9, "skipped": 1}}}}
    assert run_status(participation(rounds), skipped, None) == ("degraded", ["1 of 10 ucf101 test videos skipped"])


# ------------------------------------------------------------------ clean errors (cases 8, 9)


def test_json_input_is_depth_and_size_limited_with_a_clear_error(tmp_path, monkeypatch):
    from benchmark import io

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match=r"deep.json: JSON nested more than 900 levels deep \(limit 64\)"):
        io.read_json(deep)
    deep.write_text("[" * 65 + "]" * 65)
    with pytest.raises(ValueError, match=r"nested 65 levels deep"):
        io.read_json(deep)
    big = tmp_path / "big.json.gz"
    io.atomic_write_json(big, {"x": "y" * 2000})
    with pytest.raises(ValueError, match=r"big.json.gz: larger than"):
        io.read_json(big, max_bytes=1000)
    assert io.read_json(big)["x"] == "y" * 2000


def test_leaderboard_validate_of_a_deep_json_is_one_line_not_a_traceback(tmp_path):
    deep = tmp_path / "result.json"
    deep.write_text('{"a": ' * 5000 + "1" + "}" * 5000)
    result = fedvid(["leaderboard", "validate", str(deep)], timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "nested more than 900 levels" in out and "Traceback" not in out


def test_markdown_leaderboard_escapes_table_syntax_and_html():
    from leaderboard.build import md_cell, render_markdown

    board = {
        "tracks": [
            {
                "track_id": "t",
                "dataset": "d",
                "split_manifest_id": None,
                "num_clients": 2,
                "clients_per_round": 2,
                "rounds": 1,
                "backbone": "b",
                "input_size": [8, 32, 32],
                "primary_metric": "retrieval.ucf.top1",
                "tiebreak_metric": "retrieval.hmdb.top1",
                "entries": [
                    {
                        "rank": 1,
                        "method": "evil | <script>alert(1)</script>",
                        "status": "reproduced",
                        "metrics": {"retrieval.ucf.top1": {"mean": 0.5, "std": 0.0, "n": 1}},
                    }
                ],
            }
        ]
    }
    md = render_markdown(board)
    row = next(line for line in md.splitlines() if "evil" in line)
    assert "<script>" not in md and "&lt;script&gt;" in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 9  # 8 cells: the method's escaped | opens none
    assert md_cell("a\nb|c") == "a b\\|c"


def test_fedvid_evaluate_checks_its_eval_keys_and_refuses_nan_weights_in_one_line(tmp_path):
    import torch

    from benchmark.registry import build_backbone

    result = fedvid(
        [
            "evaluate",
            f"checkpoint={tmp_path / 'none.pt'}",
            f"hydra.run.dir={tmp_path / 'e1'}",
            "eval.retrieval.ks=[0]",
            "eval.batch_size=0",
        ],
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "invalid configuration (2 problems)" in out and "Traceback" not in out
    assert "eval.retrieval.ks=[0]" in out and "eval.batch_size=0" in out

    state = build_backbone("tiny_r3d", width=16).state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    result = fedvid(["evaluate", f"checkpoint={tmp_path / 'nan.pt'}", f"hydra.run.dir={tmp_path / 'e2'}"], timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out[-2000:]
    assert f"checkpoint={tmp_path / 'nan.pt'}: non-finite weights in 1 tensors" in out
    assert len([line for line in out.splitlines() if line.strip()]) <= 2


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_failed_record_and_no_resume_advice(tmp_path, data_root):
    run_dir = tmp_path / "run"
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *CENTRAL,
            "federation.rounds=2",
            "client.optimizer.lr=1.0e6",
            "client.grad_clip_norm=null",
        ],
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "the global model diverged" in out and "max_weight_norm_ratio=100" in out
    assert "Traceback" not in out and "continue with" not in out and "resume=true" not in out
    assert rundir.latest_round(run_dir) is None  # the diverged round 1 was never checkpointed
    record = json.loads((run_dir / rundir.RESULT).read_text())
    assert record["status"] == "failed" and record["failure"]["stage"] == "federation"
    assert "diverged" in record["failure"]["message"]


def test_plaintext_to_a_remote_superlink_is_a_config_problem_before_anything_starts():
    from benchmark.config_check import _connection_problems

    remote = {"engine": {"name": "deployment", "superlink": "10.1.2.3:9092", "insecure": True}}
    (problem,) = _connection_problems(remote)
    assert "engine.insecure=true" in problem and "engine.trusted_network=true" in problem
    assert _connection_problems({"engine": {**remote["engine"], "trusted_network": True}}) == []
    assert _connection_problems({"engine": {**remote["engine"], "superlink": "127.0.0.1:9092"}}) == []
