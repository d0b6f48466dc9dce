"""`fedvid run` on the Flower simulation engine, resume after SIGKILL, failures, check-method."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from omegaconf import OmegaConf

from benchmark import PROJECT_ROOT
from benchmark.federation.strategy import FedVidStrategy, RoundFailed
from benchmark.federation.training import clients_per_round, derive_seed, sample_clients
from benchmark.registry import build_aggregator
from benchmark.specs import FederationSpec, OptimizerSpec

from _federation_helpers import FAULTY_RUN, FEDVID, TINY, fedvid, final_weights, wait_no_flower_processes

# seed 1, failure prob 0.3: client 1 fails in round 1 and client 0 in round 3 (2 of 3 sampled)
RUN = [*FAULTY_RUN, "seed=1"]
# The killed and resumed run prunes (the sweep's uninterrupted job keeps every checkpoint, which
# test_ray_cluster reads): the newest checkpoint + every 2nd round; round 2 stays, the test rewinds to it.
PRUNED = ["checkpoint.keep_last=1", "checkpoint.keep_every=2"]


@pytest.fixture(scope="module")
def data_root(tiny_data_root):
    return tiny_data_root


# ------------------------------------------------------------------ fast unit tests


def test_client_sampling_is_seeded_by_round_and_counts_or_fractions():
    first = [sample_clients(7, r, list(range(10)), 3) for r in range(1, 6)]
    assert first == [sample_clients(7, r, list(range(10)), 3) for r in range(1, 6)]
    assert all(len(s) == 3 and s == sorted(s) and len(set(s)) == 3 for s in first)
    assert len({tuple(s) for s in first}) > 1  # rounds differ
    assert clients_per_round(0.5, 10) == 5 and clients_per_round(1.0, 3) == 3 and clients_per_round(2, 3) == 2
    with pytest.raises(ValueError, match="federation.clients_per_round=4"):
        clients_per_round(4, 3)
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)


@pytest.fixture
def task_identity(monkeypatch):
    """Messages need the identity a ServerApp process gets from its SuperLink."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _strategy(min_clients: int):
    spec = FederationSpec(
        seed=0,
        rounds=1,
        num_clients=3,
        clients_per_round=3,
        min_clients=min_clients,
        aggregator="fedavg",
        optimizer=OptimizerSpec("sgd", lr=0.1, rounds=1, schedule="constant"),
    )
    strategy = FedVidStrategy(spec, build_aggregator("fedavg"), {0: 100, 1: 101, 2: 102})
    strategy.global_state = {"backbone.w": torch.zeros(2)}
    messages = list(strategy.configure_train(1, ArrayRecord({"backbone.w": torch.zeros(2)}), ConfigRecord(), None))
    assert [m.metadata.dst_node_id for m in messages] == [100, 101, 102]
    for m in messages:  # what the SuperLink would set on delivery
        m.metadata.__dict__["_message_id"] = f"id{m.metadata.dst_node_id}"
    return strategy, messages


def _ok(msg, value, n):
    content = RecordDict(
        {
            "arrays": ArrayRecord({"backbone.w": torch.full((2,), value)}),
            "metrics": MetricRecord({"loss": 1.0, "compute_s": 0.5, "num-examples": n}),
        }
    )
    return Message(content, reply_to=msg)


def test_a_failed_client_is_logged_with_its_traceback_and_the_round_goes_on(task_identity):
    strategy, (m0, m1, m2) = _strategy(min_clients=2)
    replies = [
        _ok(m0, 1.0, 1),
        Message(Error(1001, "RuntimeError: boom\nTraceback (most recent call last): ..."), reply_to=m1),
        _ok(m2, 5.0, 3),
    ]
    assert strategy.aggregate_train(1, replies)[0] is None  # the new global model is strategy.global_state
    assert torch.equal(strategy.global_state["backbone.w"], torch.full((2,), 4.0))  # (1*1 + 3*5) / 4
    record = strategy._round
    assert record["replied_clients"] == [0, 2]
    failure = record["failed_clients"][0]
    assert failure.client_id == 1 and failure.reason == "error" and "Traceback" in failure.error


def test_fewer_than_min_clients_stops_the_run_with_a_clear_message(task_identity):
    strategy, (m0, m1, m2) = _strategy(min_clients=2)
    replies = [_ok(m0, 1.0, 1), Message(Error(1001, "RuntimeError: boom"), reply_to=m1)]
    with pytest.raises(
        RoundFailed,
        match=r"only 1 of 3 sampled clients replied with a usable update, "
        r"federation.min_clients=2",
    ) as info:
        strategy.aggregate_train(1, replies)
    # client 1's error comes back on a resume; client 2 never answered, so a resume may help
    assert "client 1: error: RuntimeError: boom" in str(info.value) and "client 2: timeout" in str(info.value)
    assert info.value.resumable and "resume=true" not in str(info.value)
    strategy, (m0, m1, m2) = _strategy(min_clients=3)
    with pytest.raises(RoundFailed) as info:
        strategy.aggregate_train(1, [_ok(m0, 1.0, 1), _ok(m2, 1.0, 1), Message(Error(1001, "boom"), reply_to=m1)])
    assert not info.value.resumable  # every failure was reported by a client: a resume repeats it


def test_the_update_guard_rejects_non_finite_and_outsized_updates_before_aggregation(task_identity):
    strategy, (m0, m1, m2) = _strategy(min_clients=1)
    replies = [_ok(m0, 1.0, 1), _ok(m1, float("nan"), 1), _ok(m2, 1e6, 1)]
    strategy.aggregate_train(1, replies)
    assert torch.equal(strategy.global_state["backbone.w"], torch.full((2,), 1.0))  # client 0 alone
    failures = {f.client_id: f for f in strategy._round["failed_clients"]}
    assert failures[1].reason == "non-finite update" and "backbone.w" in failures[1].error
    assert failures[2].reason == "update norm" and "update_norm_factor=10" in failures[2].error
    assert strategy._round["replied_clients"] == [0]
    assert strategy._round["clients"][0]["update_norm"] == pytest.approx(2**0.5)
    # the next round measures against this round's accepted norms: a 20x update is rejected
    strategy.global_state = {"backbone.w": torch.zeros(2)}
    messages = list(strategy.configure_train(2, ArrayRecord({"backbone.w": torch.zeros(2)}), ConfigRecord(), None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = f"id{m.metadata.dst_node_id}"
    strategy.aggregate_train(2, [_ok(messages[0], 1.0, 1), _ok(messages[1], 20.0, 1), _ok(messages[2], 1.5, 1)])
    assert [f.client_id for f in strategy._round["failed_clients"]] == [1]


def test_updates_measured_as_they_arrive_give_the_same_round(task_identity):
    """The round loop measures each update for the guard while the others still train
    (FedVidStrategy.exchange): the same aggregate, norms and rejections as measuring them all at the end."""
    direct, (m0, m1, m2) = _strategy(min_clients=1)
    values = {0: (1.0, 1), 1: (float("nan"), 1), 2: (3.0, 2)}
    direct.aggregate_train(1, [_ok(m, *values[i]) for i, m in enumerate((m0, m1, m2))])

    arriving, messages = _strategy(min_clients=1)

    class Grid:  # replies arrive in two pulls, client 1's first
        pulls = [[1], [], [2, 0]]

        def push_messages(self, msgs):
            return [m.metadata.message_id for m in msgs]

        def pull_messages(self, ids):
            return [_ok(messages[i], *values[i]) for i in self.pulls.pop(0)]

    replies = arriving.exchange(Grid(), messages, timeout=60)
    assert len(replies) == 3 and len(arriving._arrived) == 3  # all measured before aggregation
    arriving.aggregate_train(1, replies)
    assert arriving._arrived == {}
    assert torch.equal(arriving.global_state["backbone.w"], direct.global_state["backbone.w"])
    for key in ("replied_clients", "clients", "failed_clients"):
        assert arriving._round[key] == direct._round[key], key


def test_a_reply_naming_a_file_the_server_did_not_hand_out_fails_that_client_and_touches_nothing(
    task_identity, tmp_path
):
    """The server maps and unlinks the payload file a reply names (benchmark.federation.payloads):
    only its own directory's file for that client and round, else the client's failure."""
    from benchmark.federation.payloads import PayloadFiles, pack

    strategy, (m0, m1, m2) = _strategy(min_clients=1)
    victim = tmp_path / "checkpoints" / "latest.json"
    victim.parent.mkdir()
    victim.write_text("{}")

    def reply(msg, value, directory, what):
        arrays = pack({"backbone.w": torch.full((2,), value)}, files=directory, server_round=1, what=what)
        metrics = MetricRecord({"loss": 1.0, "compute_s": 0.5, "num-examples": 1})
        return Message(RecordDict({**arrays, "metrics": metrics}), reply_to=msg)

    strategy.payloads = PayloadFiles(tmp_path / "payloads")
    forged = reply(m1, 2.0, strategy.payloads.directory, "client1")
    forged.content["arrays-file"]["path"] = str(victim)
    forged.content["arrays-file"]["bytes"] = victim.stat().st_size
    replies = [
        reply(m0, 1.0, strategy.payloads.directory, "client0"),
        forged,
        reply(m2, 3.0, strategy.payloads.directory, "client0"),  # client 2 naming client 0's file name
    ]
    strategy.aggregate_train(1, replies)
    assert victim.read_text() == "{}"
    failures = {f.client_id: f.error for f in strategy._round["failed_clients"]}
    assert set(failures) == {1, 2} and all("could not be read: the reply names" in e for e in failures.values())
    assert strategy._round["replied_clients"] == [0] and torch.equal(strategy.global_state["backbone.w"], torch.ones(2))
    # without payload files in this run, a payload reference is refused too
    strategy.payloads = None
    strategy.global_state = {"backbone.w": torch.zeros(2)}
    strategy.aggregate_train(1, [_ok(m0, 1.0, 1), reply(m2, 3.0, tmp_path, "client2")])
    assert [f.client_id for f in strategy._round["failed_clients"]] == [1, 2]
    assert "travel in the messages" in strategy._round["failed_clients"][1].error


def test_a_diverged_global_model_stops_the_run_and_says_resume_would_not_help(task_identity):
    from benchmark.federation.guard import Diverged

    strategy, (m0, m1, m2) = _strategy(min_clients=1)
    strategy.guard = replace(strategy.guard, update_norm_factor=None)
    strategy.initial_norm = 1.0
    with pytest.raises(
        Diverged,
        match=r"round 2: the global model diverged: the global weight norm is 1.414e\+06.*"
        r"max_weight_norm_ratio=100.*last good checkpoint \(round 1\) is kept",
    ) as info:
        strategy.aggregate_train(2, [_ok(m0, 1e6, 1), _ok(m1, 1e6, 1), _ok(m2, 1e6, 1)])
    assert info.value.resumable is False


def test_unknown_config_option_is_hydras_error_listing_the_choices():
    result = fedvid(["run", "dataset=nope"], timeout=120)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Could not find 'dataset/nope'" in out and "synthetic_kinetics" in out


# ------------------------------------------------------------------ end to end (Flower + Ray)


def _ckpt_rounds(run_dir) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("round_*.pt"))


def _client_rounds(run_dir) -> dict[str, list[int]]:
    return {
        d.name: sorted(int(p.stem.split("_")[1]) for p in d.glob("round_*.pt"))
        for d in sorted((run_dir / "client_state").glob("client_*"))
    }


@pytest.mark.slow
def test_simulation_run_then_kill_and_resume_matches_the_uninterrupted_run(tmp_path, data_root, interrupted_sweep):
    # the uninterrupted run of RUN is job 0 of the sweep in conftest.py (`fedvid run -m seed=1,3,4`,
    # one Flower run of its own); the killed and resumed run below is a single run and must equal it
    full, output = interrupted_sweep.sweep_dir / "0", interrupted_sweep.output

    # the run directory
    for name in (
        "config.yaml",
        "config.json",
        "split_manifest.json",
        "rounds.jsonl",
        "result.json",
        "flower.log",
        "checkpoints/latest.json",
        "checkpoints/round_0004.pt",
        ".flwr/config.toml",
    ):
        assert (full / name).is_file(), name
    assert json.loads((full / "config.json").read_text())["fault"]["client_failure_prob"] == 0.3
    rounds = [json.loads(line) for line in (full / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    from benchmark.splits.format import load_manifest

    manifest = load_manifest(full / "split_manifest.json")
    sizes = {c: len(manifest.client_videos(c)) for c in range(manifest.num_clients)}
    for r in rounds:
        assert r["sampled_clients"] == sample_clients(1, r["round"], [0, 1, 2], 2)
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0 and r["round_wall_s"] > 0
        assert r["l2_to_global"]["backbone"]["max"] >= r["l2_to_global"]["backbone"]["min"] >= 0
        assert r["l2_to_global"]["heads"] is None  # CtP exchanges the backbone only
        for c in r["clients"]:
            assert np.isfinite(c["loss"]) and c["compute_s"] > 0 and c["bytes_up"] > 0
            assert (
                c["num_examples"] == sizes[c["client_id"]] > 2
            )  # FedAvg's weight: the training-set size, not the 2 samples of its 1 step
    # injected failures: logged with the traceback, the rounds went on with the other client
    assert [f["client_id"] for f in rounds[0]["failed_clients"]] == [1]
    assert [f["client_id"] for f in rounds[2]["failed_clients"]] == [0]
    assert "injected failure" in rounds[0]["failed_clients"][0]["error"]
    assert "Traceback" in rounds[0]["failed_clients"][0]["error"]
    assert rounds[0]["replied_clients"] == [0] and rounds[1]["replied_clients"] == [1, 2]
    record = json.loads((full / "result.json").read_text())
    assert record["format"] == "fedvid-result/1" and record["track"]["num_clients"] == 3
    assert record["systems"]["bytes_up"] == sum(r["bytes_up"] for r in rounds)
    # the injected failures are in the record, not only in rounds.jsonl: 2 of 8 updates (> 10 %)
    assert record["participation"]["failures"] == [
        {"round": 1, "client_id": 1, "reason": "error"},
        {"round": 3, "client_id": 0, "reason": "error"},
    ]
    assert (record["participation"]["sampled"], record["participation"]["failed"]) == (8, 2)
    assert record["status"] == "degraded" and "2 of 8 sampled client updates failed (> 10%)" in record["status_reasons"]
    assert "status: degraded" in output
    # the embedded default's protocol, at tiny inputs the cpu protocol does not define: recorded as modified
    assert record["protocol"] == {
        "name": "cpu",
        "version": 1,
        "variant": "modified",
        "overridden": {"clip.short_side": 40, "clip.size": 32, "clip.stride": 1},
    }
    # the same run, SIGKILLed after round 2's checkpoint, then resumed
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*FEDVID, "run", "hydra.run.dir=" + str(killed), f"data_root={data_root}", *RUN, *PRUNED],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "round_0002.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before round 2's checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = json.loads((killed / "checkpoints" / "latest.json").read_text())["round"]
    # the reaper's SIGTERM grace + SIGKILL, slower when the machine is loaded
    assert wait_no_flower_processes(killed, timeout=90) == [], "processes survived the SIGKILLed runner"
    time.sleep(2)
    assert _payload_dirs(killed) == [], "the killed run's shared-memory payload files were left behind"
    latest = json.loads((killed / "checkpoints" / "latest.json").read_text())["round"]
    assert latest <= at_kill + 1, "the federation went on after its launcher was killed"  # one round may be in flight
    # Under CPU load the kill can land a round or two later; resume from round 2 whatever it hit,
    # as after a kill right after round 2's checkpoint (the last checkpoint is what resume reads).
    from benchmark.federation.checkpoint import load_checkpoint_file, save_checkpoint

    save_checkpoint(killed, load_checkpoint_file(killed / "checkpoints" / "round_0002.pt"))
    log = (killed / "rounds.jsonl").read_text().splitlines(keepends=True)
    (killed / "rounds.jsonl").write_text("".join(log[:2]))

    result = fedvid(["run", "hydra.run.dir=" + str(killed), f"data_root={data_root}", *RUN, *PRUNED, "resume=true"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert wait_no_flower_processes(killed) == []
    assert _payload_dirs(killed) == [] and _payload_dirs(full) == []
    a, b = final_weights(full), final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    flower = json.loads((killed / "result.json").read_text())["systems"]["flower"]
    assert flower["shared"] is False  # its own SuperLink and Ray
    assert flower["tensors"] == "shared-memory"  # the payload files beside the messages (benchmark.federation.payloads)
    resumed = [json.loads(line) for line in (killed / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["sampled_clients"], r["loss"]) for r in resumed] == [
        (r["round"], r["sampled_clients"], r["loss"]) for r in rounds
    ]
    # retention, planned before round 1: 1 newest + 1 being written + milestones 2 and 4
    assert "disk: at most 4 checkpoints x" in result.stdout and "client-state files" in result.stdout
    assert _ckpt_rounds(killed) == [2, 4]
    # each client keeps its newest file (what a resume loads; CtP's head stays on the client)
    # and its milestone rounds' files
    trained = {c: [r["round"] for r in resumed if c in r["replied_clients"]] for c in range(3)}
    assert _client_rounds(killed) == {
        f"client_{c:04d}": sorted({rs[-1]} | {r for r in rs if r % 2 == 0}) for c, rs in trained.items() if rs
    }

    # what `fedvid evaluate checkpoint=<run dir>` reads in the pruned directory: the latest kept
    # checkpoint; a pruned round is an error listing what is kept (`fedvid evaluate` on a run directory: test_image_track.py)
    from benchmark.federation.checkpoint import resolve_checkpoint_path

    assert resolve_checkpoint_path(killed) == killed / "checkpoints" / "round_0004.pt"
    with pytest.raises(
        FileNotFoundError,
        match=r"round_0003.pt: no such file \(pruned by checkpoint.keep_last/keep_every\?\); "
        r"kept: round_0002.pt, round_0004.pt",
    ):
        resolve_checkpoint_path(killed / "checkpoints" / "round_0003.pt")


def _payload_dirs(run_dir) -> list[str]:
    """The run's shared-memory payload directories still on /dev/shm (benchmark.federation.payloads)."""
    from benchmark.federation.payloads import SHARED_MEMORY, payload_directory

    run_id = payload_directory("tag", run_dir).name.split("-")[2]
    return sorted(str(p) for p in SHARED_MEMORY.glob(f"fedvid-*-{run_id}-*"))


@pytest.mark.slow
def test_check_method_ctp_passes():
    result = fedvid(["check-method", "ctp"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "check-method ctp: OK" in result.stdout
    assert not [p for p in flower_processes_any() if "fedvid-check-ctp" in p]


def flower_processes_any() -> list[str]:
    import os
    from pathlib import Path

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if b"FLWR_HOME=" in env and b"fedvid-check-" in env:
                out.append(entry + " " + env.split(b"FLWR_HOME=")[1].split(b"\0")[0].decode())
    return out


def test_missing_dataset_root_names_the_key_and_the_fix(tmp_path):
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={tmp_path / 'run'}",
            "dataset=ucf101",
            f"data_root={tmp_path / 'nowhere'}",
            "evaluate=false",
        ],
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-2000:]
    assert "dataset.root" in out and str(tmp_path / "nowhere") in out
    assert not (tmp_path / "run" / ".flwr").exists()  # nothing of Flower was started


def test_a_manifest_of_another_dataset_is_rejected(tmp_path, data_root):
    from benchmark.config import CONF_DIR
    from benchmark.data.annotations import load_annotations
    from benchmark.data.synthetic import ensure_synthetic
    from benchmark.splits.format import write_manifest
    from benchmark.splits.make import make_manifest

    ensure_synthetic(data_root, size="tiny", progress=False)
    ucf = OmegaConf.load(CONF_DIR / "dataset" / "synthetic_ucf101.yaml")
    ucf = OmegaConf.merge(OmegaConf.create({"data_root": str(data_root)}), {"d": ucf}).d
    manifest = make_manifest(load_annotations(ucf), {"name": "iid", "num_clients": 3}, 0)
    path = write_manifest(manifest, tmp_path / "ucf_split.json")
    result = fedvid(
        ["run", f"hydra.run.dir={tmp_path / 'run'}", f"data_root={data_root}", f"split_manifest={path}", *TINY],
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-2000:]
    assert "synthetic_ucf101" in out and "dataset.id='synthetic_kinetics'" in out


def test_methods_lists_registered_methods_aggregators_and_backbones():
    result = fedvid(["methods"], timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("ctp", "fedavg", "fvssl", "tiny_r3d", "method=ctp", "aggregator=fedavg"):
        assert name in result.stdout, name
