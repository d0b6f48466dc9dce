"""`fedvid reproduce fedvssl-k400-methods` (FedVSSL Table 1): rows, settings, and the smoke table end to end."""

from __future__ import annotations

import json

import pytest

from benchmark.commands.reproduce import TABLES, main, row_command

NAME = "fedvssl-k400-methods"


def test_rows_are_methods_times_centralized_and_fedavg():
    t = TABLES[NAME]
    assert [r.label for r in t.rows] == [
        f"{m}, {e}" for m in ("VCOP", "Speed", "CtP") for e in ("centralized", "FedAvg")
    ]
    assert all(r.reported_record is None for r in t.rows)  # no citable Table 1 numbers (docs/protocols/fedvssl.md)
    assert "GPU-days" in t.full_compute and t.protocol == "fedvssl"


def test_full_rows_are_the_paper_setting():
    from test_protocols import compose

    for row in TABLES[NAME].rows:
        cfg = compose(list(row.overrides))
        assert (cfg.federation.rounds, cfg.federation.clients_per_round, cfg.federation.local_epochs) == (540, 5, 1)
        assert (cfg.partition.num_clients, cfg.aggregator.name, cfg.method.exchange) == (100, "fedavg", "full")
        assert cfg.split_manifest.endswith("kinetics400-official-fedvssl-noniid-c100.json.gz")
        assert cfg.engine.name == ("centralized" if "centralized" in row.label else "simulation")
        assert cfg.method.name == row.label.split(",")[0].lower()
        assert (cfg.backbone.name, cfg.protocol.name, cfg.client.optimizer.momentum) == ("r3d18", "fedvssl", 0.0)


def test_smoke_rows_keep_their_engine_and_method(tmp_path):
    from test_protocols import compose

    t = TABLES[NAME]
    for row in t.rows:
        cmd = row_command(t, row, "smoke", tmp_path / "r", [])
        overrides = [c for c in cmd if "=" in c and not c.startswith(("data_root=", "hydra."))]
        overrides = overrides[overrides.index(next(c for c in overrides if c.startswith("experiment="))) :]
        cfg = compose(overrides)
        assert cfg.engine.name == ("centralized" if "centralized" in row.label else "simulation")
        assert (cfg.protocol.variant, cfg.backbone.name, cfg.federation.rounds, cfg.clip.frames) == (
            "smoke",
            "tiny_r3d",
            2,
            8,
        )


def test_full_scale_prints_the_compute_estimate(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "GPU-days" in out


@pytest.mark.slow
def test_reproduce_methods_smoke_end_to_end(tmp_path, monkeypatch):
    """Two rows of the table (VCOP centralized, Speed FedAvg) on the synthetic data: Flower or
    the centralized engine, the new methods' hooks, FedVSSL's evaluation, the comparison."""
    monkeypatch.setenv("FEDVID_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert main([NAME, "scale=smoke", "rows=0,3", f"out={tmp_path / 'out'}"]) == 0
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["failed"] == [] and comparison["rows_run"] == ["VCOP, centralized", "Speed, FedAvg"]
    got = {(r["row"], r["metric"]): r for r in comparison["rows"]}
    for row in ("VCOP, centralized", "Speed, FedAvg"):
        for metric in TABLES[NAME].metrics:
            r = got[(row, metric)]
            assert r["reported"] is None and r["gap"] is None and 0.0 <= r["reproduced"] <= 1.0
    for i, (method, _engine) in ((0, ("vcop", "centralized")), (3, ("speed", "simulation"))):
        record = json.loads((tmp_path / "out" / f"row{i}" / "result.json").read_text())
        assert record["method"]["pretext"] == method and record["protocol"]["variant"] == "smoke"
        rounds = [json.loads(line) for line in (tmp_path / "out" / f"row{i}" / "rounds.jsonl").read_text().splitlines()]
        assert len(rounds) == 2 and all(c["steps"] >= 1 for r in rounds for c in r["clients"])
    _check_method_hooks(tmp_path / "out" / "row3")


def test_compare_pretexts_rows_compose():
    from test_protocols import compose

    names = {}
    for row in ("vcop_fedavg", "speed_fedavg", "rot3d_fedavg", "moco_fedavg", "ctp_fedavg", "random_init"):
        cfg = compose(["experiment=compare_pretexts", f"compare_row={row}"])
        assert (cfg.protocol.variant, cfg.federation.local_steps, cfg.federation.rounds) == (
            "compare",
            40,
            0 if row == "random_init" else 3,
        )
        names[row] = cfg.method.name
        if row == "moco_fedavg":
            assert cfg.method.params.queue_size % cfg.client.batch_size == 0
    assert names["vcop_fedavg"] == "vcop" and names["moco_fedavg"] == "moco" and names["ctp_fedavg"] == "ctp"


def _check_method_hooks(run_dir):
    """check-method's hook exercise on a finished run's manifest and data: every overridden hook
    is called, and a method whose parameter groups leave parameters out is reported."""
    from omegaconf import OmegaConf

    from baselines.rot3d import Rot3D
    from benchmark.commands.check_method import exercise_hooks
    from benchmark.registry import register_method

    cfg = OmegaConf.create(json.loads((run_dir / "config.json").read_text()))
    problems, hooks = exercise_hooks(cfg, run_dir)
    expected = {"speed": ["sample_frames"], "vcop": ["sample_frames", "sample_transform"]}[cfg.method.name]
    assert (problems, hooks) == ([], expected)
    cfg.method = {"name": "moco", "exchange": "full", "params": {"num_frames": 8, "queue_size": 8}}
    problems, hooks = exercise_hooks(cfg, run_dir)
    assert (problems, hooks) == ([], ["sample_frames", "after_step", "start_round"])

    @register_method("test_rot3d_head_left_out")
    class HeadLeftOut(Rot3D):
        def parameter_groups(self):
            return [{"params": list(self.backbone.parameters())}]

    cfg.method = {"name": "test_rot3d_head_left_out", "exchange": "full", "params": {"num_frames": 8}}
    try:
        problems, hooks = exercise_hooks(cfg, run_dir)
    finally:
        from benchmark.registry import METHODS

        METHODS._items.pop("test_rot3d_head_left_out")  # other tests list the registered methods
    assert hooks == ["sample_frames", "sample_transform", "parameter_groups"]
    assert problems == ["parameter_groups leaves 2 trainable parameters out of the optimiser"]
