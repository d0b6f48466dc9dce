"""`fedvid reproduce`: table definitions, commands, comparison; one smoke table end to end."""

from __future__ import annotations

import json

import pytest

from benchmark import PROJECT_ROOT
from benchmark.commands.reproduce import TABLES, compare, main, reproduced_metric, row_command


def test_every_reported_row_has_its_record():
    for table in TABLES.values():
        for row in table.rows:
            if row.reported_record:
                assert (PROJECT_ROOT / "leaderboard" / "reported" / f"{row.reported_record}.json").is_file()


def test_fedvssl_table_covers_the_alpha_beta_grid():
    rows = TABLES["fedvssl-k400-noniid"].rows
    grid = {tuple(o.split("=")[1] for o in r.overrides[1:]) for r in rows}
    assert grid == {(a, b) for a in ("0", "0.9", "1") for b in ("0", "1")}
    assert all(r.overrides[0] == "experiment=fvssl_k400_noniid" for r in rows)


def test_smoke_rows_keep_the_paper_protocol_at_tiny_size(tmp_path):
    from test_protocols import compose

    t = TABLES["fedvssl-k400-noniid"]
    cmd = row_command(t, t.rows[0], "smoke", tmp_path / "r", [])
    overrides = [c for c in cmd if "=" in c and not c.startswith(("data_root=", "hydra."))]
    overrides = overrides[overrides.index(next(c for c in overrides if c.startswith("experiment="))) :]
    cfg = compose(overrides)
    assert (cfg.protocol.name, cfg.protocol.variant) == ("fedvssl", "smoke")
    assert (cfg.eval.backbone_layout, cfg.eval.pooling, cfg.eval.retrieval.clip.sampling) == (
        "downstream",
        "vcop",
        "vcop",
    )
    assert (cfg.clip.normalization, cfg.client.optimizer.momentum, cfg.eval.finetune.flip_prob) == (
        "imagenet",
        0.0,
        0.35,
    )
    assert (cfg.eval.clip.crop_size, cfg.eval.finetune.epochs, cfg.clip.size) == (32, 1, 32)


def test_smoke_command_uses_synthetic_data_in_its_own_root(tmp_path):
    t = TABLES["fedvssl-ucf101-crosssilo"]
    cmd = row_command(t, t.rows[0], "smoke", tmp_path / "r", [])
    assert "experiment=fvssl_ucf101_crosssilo" in cmd and "synthetic_size=tiny" in cmd
    assert any(c.startswith("data_root=") and c.endswith("smoke") for c in cmd)
    full = row_command(t, t.rows[0], "full", tmp_path / "r", [])
    assert "synthetic_size=tiny" not in full


def test_compare_reports_gap_against_published_numbers():
    t = TABLES["fedvssl-k400-noniid"]
    label = "alpha=0.9, beta=1"
    rows = compare(t, {label: {"retrieval.ucf101.top1": 0.36}})
    ucf = next(r for r in rows if r["row"] == label and r["metric"] == "retrieval.ucf101.top1")
    assert ucf["reported"] == pytest.approx(0.3534) and ucf["gap"] == pytest.approx(0.0066)
    hmdb = next(r for r in rows if r["row"] == label and r["metric"] == "retrieval.hmdb51.top1")
    assert hmdb["reproduced"] is None and hmdb["gap"] is None
    assert reproduced_metric("retrieval.ucf101.top1", "smoke") == "retrieval.synthetic_ucf101.top1"


def test_list_prints_tables(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "fedvssl-k400-noniid" in out and "35.34" in out


@pytest.mark.slow
def test_reproduce_smoke_end_to_end(tmp_path, monkeypatch):
    """The 1-row cross-silo table on the synthetic data: runs Flower, evaluates, compares."""
    monkeypatch.setenv("FEDVID_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert main(["fedvssl-ucf101-crosssilo", "scale=smoke", f"out={tmp_path / 'out'}"]) == 0
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["failed"] == []
    ft = {r["metric"]: r for r in comparison["rows"]}
    for metric, reported in (("finetune.ucf101.video_top1", 0.6632), ("finetune.ucf101.video_top5", 0.8657)):
        assert ft[metric]["reported"] == pytest.approx(reported)
        assert 0.0 <= ft[metric]["reproduced"] <= 1.0
        assert ft[metric]["gap"] == pytest.approx(ft[metric]["reproduced"] - reported)
    result = tmp_path / "out" / "row0" / "result.json"
    from leaderboard.records import validate_records

    good, problems = validate_records([result])
    assert problems == [], [str(p) for p in problems]  # a run's record is schema-valid as written
    record = json.loads(result.read_text())
    assert record["nonstandard"] is True  # the smoke split is made for the run, not a committed one
    assert record["method"]["aggregator"] == "fvssl" and record["method"]["params"]["aggregator"] == {
        "alpha": 0.9,
        "beta": 1,
    }
    assert record["method"]["name"] == "ctp + fvssl (alpha=0.9, beta=1)"
    # the paper protocol at smoke size: named as such in the record and in every evaluation
    assert record["protocol"] == {"name": "ctp", "version": 3, "variant": "smoke"}
    retrieval = record["evaluations"]["retrieval"]["synthetic_ucf101"]["protocol"]
    assert (retrieval["name"], retrieval["variant"], retrieval["pooling"], retrieval["backbone_layout"]) == (
        "ctp",
        "smoke",
        "vcop",
        "downstream",
    )
    assert (retrieval["sampling"], retrieval["normalization"], retrieval["stride"]) == ("vcop", "none", 1)
    finetune = record["evaluations"]["finetune"]["synthetic_ucf101"]["protocol"]
    assert (finetune["sampling"], finetune["normalization"], finetune["flip_prob"], finetune["grad_clip_norm"]) == (
        "ctp",
        "imagenet",
        0.35,
        40.0,
    )


def test_every_table_names_a_protocol_its_experiments_use():
    from test_protocols import compose

    for table in TABLES.values():
        assert (PROJECT_ROOT / "docs" / "protocols" / f"{table.protocol}.md").is_file()
        for row in table.rows:
            assert compose(list(row.overrides)).protocol.name == table.protocol, (table.name, row.label)
