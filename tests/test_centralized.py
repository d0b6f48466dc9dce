"""engine=centralized: the federated step budget, the pooled training run, rounds=0 (random init)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.federation.centralized import client_steps, federated_step_budget
from benchmark.federation.training import client_last_batch, initial_global_state, run_local_training, sample_clients
from benchmark.specs import FederationSpec, LocalTrainingSpec, ModelSpec, OptimizerSpec, TrainClipSpec

from _federation_helpers import TINY, fedvid


def _cfg(**fed):
    """(federation, training) specs of 4 clients, batch 4, seed 3."""
    f = {"clients_per_round": 2, "rounds": 5, "local_epochs": 2, "local_steps": None, **fed}
    opt = OptimizerSpec("sgd", 0.01, rounds=f["rounds"])
    federation = FederationSpec(
        seed=3,
        rounds=f["rounds"],
        num_clients=4,
        clients_per_round=f["clients_per_round"],
        min_clients=1,
        aggregator="fedavg",
        optimizer=opt,
    )
    training = LocalTrainingSpec(
        seed=3,
        model=ModelSpec("tiny_r3d", "align_uniform"),
        clip=TrainClipSpec(frames=4, stride=1, short_side=40, size=32),
        optimizer=opt,
        batch_size=4,
        num_workers=0,
        num_clients=4,
        local_epochs=f["local_epochs"],
        local_steps=f["local_steps"],
    )
    return federation, training


def test_budget_is_the_sum_over_sampled_clients_of_their_local_steps_partial_participation():
    # videos per client; batch 4, 2 epochs; the ragged last batch is dropped when n > batch:
    # 9 -> 2*2, 4 -> 2*1, 1 -> 2*1 (one short batch), 13 -> 2*3
    sizes = [9, 4, 1, 13]
    per_client = {0: 4, 1: 2, 2: 2, 3: 6}
    budget = federated_step_budget(*_cfg(), sizes)
    assert [b.round for b in budget] == [1, 2, 3, 4, 5]
    for b in budget:
        # the federation's own seeded sampling picks the same 2 of 4 clients
        assert b.sampled_clients == sample_clients(3, b.round, [0, 1, 2, 3], 2) and len(b.sampled_clients) == 2
        assert b.client_steps == {c: per_client[c] for c in b.sampled_clients}
        assert b.total_steps == sum(per_client[c] for c in b.sampled_clients)
    # the rounds sample different pairs, so the totals are not all the same
    assert len({tuple(b.sampled_clients) for b in budget}) > 1
    total = sum(b.total_steps for b in budget)
    assert total == sum(per_client[c] for r in range(1, 6) for c in sample_clients(3, r, [0, 1, 2, 3], 2))

    # local_steps overrides the epochs: 7 steps per sampled client; a fraction of 0.5 = 2 clients
    budget = federated_step_budget(*_cfg(local_steps=7, clients_per_round=0.5), sizes)
    assert [b.total_steps for b in budget] == [14] * 5
    # all clients every round
    budget = federated_step_budget(*_cfg(clients_per_round=1.0, rounds=2), sizes)
    assert [b.total_steps for b in budget] == [14, 14]
    assert federated_step_budget(*_cfg(rounds=0), sizes) == []


def test_budget_rejects_wrong_client_counts_and_empty_clients():
    with pytest.raises(ValueError, match="federation.num_clients=4"):
        federated_step_budget(*_cfg(), [3, 3, 3])
    with pytest.raises(ValueError, match=r"clients \[2\] have no videos"):
        federated_step_budget(*_cfg(), [3, 3, 0, 3])


def test_client_steps_matches_the_local_training_loop(tmp_path):
    """The budget formula (⌊n / batch⌋ per epoch, ragged batch dropped) is what run_local_training does."""
    from benchmark.data.synthetic import ensure_synthetic

    info = ensure_synthetic(tmp_path / "data", size="tiny", seed=0, progress=False)
    videos = sorted((tmp_path / "data" / "synthetic" / "kinetics" / "train").rglob("*.mp4"))[:5]
    assert len(videos) == 5, info
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "backbone": {"name": "tiny_r3d", "params": {"width": 4}},
            "method": {"name": "align_uniform", "exchange": "full", "params": {"hidden_dim": 16}},
            "federation": {"num_clients": 1, "local_epochs": 2, "local_steps": None, "rounds": 1},
            "client": {
                "batch_size": 3,
                "num_workers": 0,
                "num_threads": 1,
                "device": "cpu",
                "grad_clip_norm": None,
                "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
            },
            "clip": {"frames": 4, "stride": 1, "size": 32, "short_side": 40, "backend": "decord"},
        }
    )
    spec = LocalTrainingSpec.from_config(cfg)
    state = initial_global_state(spec.model, spec.seed)
    result = run_local_training(spec, 0, 1, state, None, [(str(v), 0) for v in videos], lr=0.01)
    assert result.metrics["steps"] == client_steps(5, 3, 2, None) == 2 * (5 // 3) == 2
    assert result.metrics["samples_processed"] == 6  # per epoch one full batch of 3; the ragged batch of 2 is dropped
    assert result.num_examples == 5  # the training-set size, what FedAvg weights by
    few = run_local_training(spec, 0, 1, state, None, [(str(v), 0) for v in videos[:2]], lr=0.01)
    assert (
        few.metrics["steps"] == client_steps(2, 3, 2, None) == 2 and few.metrics["samples_processed"] == 4
    )  # n <= batch
    assert few.num_examples == 2
    # client.last_batch=pad (CtP's GroupSampler, the ctp/fedvssl protocols): 5 videos at 3 ->
    # 2 whole batches per epoch, the second padded with the epoch's first video
    cfg.client.last_batch = "pad"
    padded_spec = LocalTrainingSpec.from_config(cfg)
    padded = run_local_training(padded_spec, 0, 1, state, None, [(str(v), 0) for v in videos], lr=0.01)
    assert padded.metrics["steps"] == client_steps(5, 3, 2, None, "pad") == 4
    assert padded.metrics["samples_processed"] == 12 and padded.num_examples == 5
    assert padded.metrics["loader_batches"] == 2 and result.metrics["loader_batches"] == 1
    # federation.client_weight=batches (hc-fang/ssd's server): the client's weight is its loader's batches
    cfg.federation.client_weight = "batches"
    by_batches = run_local_training(
        LocalTrainingSpec.from_config(cfg), 0, 1, state, None, [(str(v), 0) for v in videos], 0.01
    )
    assert by_batches.num_examples == 2 and by_batches.metrics["samples_processed"] == 12
    cfg.federation.client_weight = "examples"
    # client.loss_log_interval: the loss mmcv's log reports (what FedVSSL's client reads back);
    # 2 epochs of 2 steps at interval 2: one entry per epoch, all steps covered
    cfg.client.loss_log_interval = 2
    logged = run_local_training(
        LocalTrainingSpec.from_config(cfg), 0, 1, state, None, [(str(v), 0) for v in videos], 0.01
    )
    assert logged.metrics["loss_log_entries"] == 2 and logged.metrics["steps"] == 4
    assert logged.metrics["loss"] == pytest.approx(logged.metrics["loss_every_step"], abs=1e-5)
    cfg.client.loss_log_interval = 3  # no complete window of 3 in an epoch of 2 steps: the mean of every step
    short = run_local_training(
        LocalTrainingSpec.from_config(cfg), 0, 1, state, None, [(str(v), 0) for v in videos], 0.01
    )
    assert short.metrics["loss_log_entries"] == 0 and short.metrics["loss"] == short.metrics["loss_every_step"]
    cfg.client.loss_log_interval = None
    with pytest.raises(ValueError, match="client.last_batch='ragged': expected one of drop, keep, pad, ssd"):
        client_last_batch("ragged", 5, 3, 1)


def test_loader_batches_count_as_ssds_loader():
    from benchmark.federation.training import loader_batches

    # hc-fang/ssd: len(aug_train_loader); drop_last with <= 10 clients, else every batch,
    # the one-video batch its client skips included
    assert [loader_batches(n, 32, "ssd", 10) for n in (70, 65, 64)] == [2, 2, 2]
    assert [loader_batches(n, 32, "ssd", 50) for n in (70, 65, 64)] == [3, 3, 2]
    assert loader_batches(2255, 4, "pad", 100) == 564 and loader_batches(70, 32, "drop", 5) == 2


def test_logged_loss_is_mmcvs_text_log_as_fedvssl_reads_it():
    from benchmark.federation.training import logged_loss

    # two epochs of 7 steps at interval 3: windows (1, 2, 3), (4, 5, 6) | (10, 20, 30), (40, 50, 60);
    # each epoch's 7th step is left out (ignore_last); entries 2, 5, 20, 50
    losses = [1.0, 2, 3, 4, 5, 6, 7, 10, 20, 30, 40, 50, 60, 70]
    assert logged_loss(losses, 7, 3) == (19.25, 4)
    assert logged_loss([0.123456] * 3, 3, 3) == (0.12346, 1)  # log.json keeps 5 decimals
    assert logged_loss([1.0, 2.0], 2, 3) == (None, 0)
    # FedVSSL's Kinetics clients: 564-579 steps at interval 50 leave out 14-29 steps
    mean, entries = logged_loss([float(k) for k in range(579)], 579, 50)
    assert entries == 11 and mean == sum(range(550)) / 550


def test_epoch_end_rules_hand_examples():
    from benchmark.federation.training import client_last_batch, epoch_batches

    # a FedVSSL Kinetics-400 client (2,255 videos, batch 4): CtP pads to 564 steps, dropping gave 563
    assert epoch_batches(2255, 4, "pad") == 564 and epoch_batches(2255, 4, "drop") == 563
    assert epoch_batches(2256, 4, "pad") == epoch_batches(2256, 4, "drop") == 564
    # hc-fang/ssd: drop_last with <= 10 clients; with more, keep the ragged batch unless it holds one
    assert [client_last_batch("ssd", n, 32, 10) for n in (70, 65)] == ["drop", "drop"]
    assert [client_last_batch("ssd", n, 32, 50) for n in (70, 65, 64)] == ["keep", "drop", "keep"]
    assert [epoch_batches(n, 32, "ssd", 50) for n in (70, 65, 64)] == [3, 2, 2]
    assert epoch_batches(70, 32, "ssd", 10) == 2
    # drop and ssd: a client with at most one batch of videos trains on one batch of all of them;
    # pad pads it (CtP pads from half a batch up and fails its assert below; ours cycles)
    assert {client_last_batch(rule, n, 8, 100) for rule in ("drop", "ssd") for n in (1, 5, 8)} == {"keep"}
    assert client_last_batch("pad", 5, 8, 100) == "pad" and client_last_batch("keep", 70, 32, 5) == "keep"
    assert epoch_batches(1, 8, "ssd", 100) == epoch_batches(5, 8, "pad") == epoch_batches(5, 8, "keep") == 1
    # the centralized engine's pooled client keeps the federation's epoch end: ssd_crosssilo's 10
    # clients drop the ragged batch, although the pooled context counts 11
    from benchmark.federation.centralized import pooled_training_spec

    spec = LocalTrainingSpec(
        seed=0, model=None, clip=None, optimizer=None, batch_size=32, num_workers=0, num_clients=1,
        local_epochs=1, last_batch="ssd",
    )  # fmt: skip
    pooled = pooled_training_spec(spec, 330, 10)
    assert (pooled.num_clients, pooled.last_batch) == (11, "drop")
    assert pooled_training_spec(spec, 330, 50).last_batch == "keep"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fedvid-data")


# engine=centralized has no Flower/Ray settings (engine.client_resources ...)
CENTRAL = [
    *(o for o in TINY if not o.startswith("engine.client_resources")),
    "engine=centralized",
    "seed=2",
    "federation.local_steps=null",
    "federation.local_epochs=1",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "client.batch_size=3",
    "backbone.params.width=4",
    # short side 36 scales the 64x48 tiny videos to width 48, which decord 0.6 cannot copy out
    "clip.short_side=40",
]


@pytest.fixture(scope="module")
def central_run(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("central") / "run"
    result = fedvid(["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *CENTRAL], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_centralized_run_trains_the_federated_budget_on_pooled_data(central_run):
    run_dir = central_run
    manifest = json.loads((run_dir / "split_manifest.json").read_text())
    sizes = [len(c["videos"]) for c in manifest["clients"]]
    assert sum(sizes) == 24 and len(sizes) == 3  # the tiny Kinetics-style train split over 3 clients
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        sampled = sample_clients(2, r["round"], [0, 1, 2], 2)
        expected = sum(sizes[c] // 3 for c in sampled)  # 1 local epoch, batch 3, ragged batch dropped
        assert r["budget"]["federated_sampled_clients"] == sampled
        assert r["steps"] == expected and r["engine"] == "centralized"
        assert r["bytes_up"] == r["bytes_down"] == 0 and math.isfinite(r["loss"])
    assert (run_dir / "checkpoints" / "round_0002.pt").is_file()
    record = json.loads((run_dir / "result.json").read_text())
    assert record["method"]["aggregator"] == "centralized"
    assert record["track"]["rounds"] == 2 and record["systems"]["bytes_up"] == 0


@pytest.mark.slow
def test_centralized_resume_continues_exactly(central_run, tmp_path, data_root):
    """Rewind a copy to round 1 (as after a crash in round 2), resume: same weights and losses."""
    from benchmark.federation.checkpoint import load_checkpoint_file, load_latest, save_checkpoint

    copy = tmp_path / "run"
    shutil.copytree(central_run, copy)
    save_checkpoint(copy, load_checkpoint_file(copy / "checkpoints" / "round_0001.pt"))
    (copy / "checkpoints" / "round_0002.pt").unlink()
    (copy / "result.json").unlink()
    log = (copy / "rounds.jsonl").read_text().splitlines(keepends=True)
    (copy / "rounds.jsonl").write_text(log[0])
    result = fedvid(["run", f"hydra.run.dir={copy}", f"data_root={data_root}", *CENTRAL, "resume=true"], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    a, b = load_latest(central_run), load_latest(copy)
    assert b.round == 2 and a.global_state.keys() == b.global_state.keys()
    assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    # the CtP head (local with exchange=backbone) travels in the checkpoint and resumes too
    assert a.aggregator_state["local_state"] and all(
        torch.equal(a.aggregator_state["local_state"][k], b.aggregator_state["local_state"][k])
        for k in a.aggregator_state["local_state"]
    )
    losses = [
        [json.loads(line)["loss"] for line in (d / "rounds.jsonl").read_text().splitlines()]
        for d in (central_run, copy)
    ]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_rounds_zero_evaluates_the_initial_model(tmp_path, data_root):
    from benchmark.federation.checkpoint import load_latest

    run_dir = tmp_path / "init"
    result = fedvid(
        ["run", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *CENTRAL, "federation.rounds=0"], timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = load_latest(run_dir)
    assert ckpt is not None and ckpt.round == 0
    cfg = OmegaConf.create(json.loads((run_dir / "config.json").read_text()))
    expected = initial_global_state(ModelSpec.from_config(cfg), int(cfg.seed))
    assert ckpt.global_state.keys() == expected.keys()
    assert all(torch.equal(ckpt.global_state[k], expected[k]) for k in expected)
    assert (run_dir / "rounds.jsonl").read_text() == ""
    record = json.loads((run_dir / "result.json").read_text())
    assert record["method"]["aggregator"] == "none" and record["track"]["rounds"] == 0


@pytest.mark.slow
def test_centralized_ssd_gets_its_own_client_context(tmp_path, data_root):
    """SSD needs set_client_context: the pooled model is client K of K + 1 (its own scaled block)."""
    run_dir = tmp_path / "ssd"
    result = fedvid(
        [
            "run",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *CENTRAL,
            "method=ssd",
            "method.params.hidden_dim=16",
            "federation.rounds=1",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 1 and math.isfinite(rounds[0]["loss"])
    assert rounds[0]["steps"] == sum(8 // 3 for _ in sample_clients(2, 1, [0, 1, 2], 2))
