"""experiment=compare: the 21-job sweep composition and the table (mean ± std over seeds)."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from benchmark import CONF_DIR
from benchmark.commands.compare import Cell, build_table, collect_records, main, render_markdown, write_table
from benchmark.io import atomic_write_json

ROWS = ["ctp_fedavg", "ctp_fvssl", "ssd", "align_uniform", "ctp_ldawa", "centralized", "random_init"]


def _record(name: str, seed: int, ucf: tuple, hmdb: tuple, aggregator: str = "fedavg", wall: float = 10.0) -> dict:
    """A result record (evaluation block as in docs/evaluation.md) with the four table metrics
    per dataset: (retrieval top1, top5, linear-probe video top1, k_half)."""
    ev = {"retrieval": {}, "linear_probe": {}, "robustness": {}}
    for ds, values in (("synthetic_hmdb51", hmdb), ("synthetic_ucf101", ucf)):  # sorted keys, as on disk
        top1, top5, lp, k_half = values
        ev["retrieval"][ds] = {"split": "1", "topk": {"1": top1, "5": top5, "10": 1.0}, "chance_top1": 0.1}
        ev["linear_probe"][ds] = {"split": "1", "video_top1": lp, "clip_top1": 0.0}
        ev["robustness"][ds] = {"k_half": k_half, "curve": [], "protocol": {"ks": [0.0, 0.01, 0.03]}}
    return {
        "method": {"name": name, "aggregator": aggregator},
        "provenance": {"seeds": {"seed": seed}},
        "systems": {"wall_time_s": wall},
        "evaluations": ev,
    }


RECORDS = [
    _record("CtP + FedAvg", 0, (0.25, 0.50, 0.30, 0.010), (0.20, 0.60, 0.40, None)),
    _record("CtP + FedAvg", 1, (0.35, 0.60, 0.40, 0.020), (0.30, 0.70, 0.50, 0.02)),
    _record("CtP + FedAvg", 2, (0.30, 0.70, 0.50, 0.030), (0.25, 0.80, 0.60, None)),
    _record("Random init (untrained)", 0, (0.125, 0.5, 0.2, None), (0.1, 0.5, 0.2, None), "none", wall=4.0),
]


def test_table_cells_are_mean_and_sample_std_over_seeds():
    table = build_table(RECORDS, datasets=["synthetic_ucf101", "synthetic_hmdb51"])
    assert build_table(RECORDS).datasets == ["synthetic_hmdb51", "synthetic_ucf101"]  # default: key order
    assert [r.name for r in table.rows] == ["CtP + FedAvg", "Random init (untrained)"]
    ctp, rand = table.rows
    assert ctp.seeds == [0, 1, 2] and ctp.aggregator == "fedavg" and rand.aggregator == "none"
    top1 = ctp.cells["synthetic_ucf101"]["retrieval_top1"]
    assert top1.values == [0.25, 0.35, 0.30]
    assert top1.mean == pytest.approx(0.30)
    assert top1.std == pytest.approx(0.05)  # sqrt(((-.05)^2 + .05^2 + 0) / (3 - 1))
    assert top1.text() == "30.0 ± 5.0"
    assert ctp.cells["synthetic_ucf101"]["retrieval_top5"].text() == "60.0 ± 10.0"
    assert ctp.cells["synthetic_hmdb51"]["linear_probe_top1"].text() == "50.0 ± 10.0"
    assert ctp.cells["synthetic_ucf101"]["k_half"].text() == "0.020 ± 0.010"
    # k½ reached by 1 of 3 seeds: its value, flagged; never reached: "> k_max"
    assert ctp.cells["synthetic_hmdb51"]["k_half"].text() == "0.020 [1/3]"
    assert rand.cells["synthetic_ucf101"]["k_half"].text() == "> 0.03"
    # one seed: no ±
    assert rand.cells["synthetic_ucf101"]["retrieval_top1"].text() == "12.5"
    assert Cell([], True).text() == "-"
    md = render_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| method | aggregator | seeds | synthetic_ucf101 R@1 (%) |")
    assert "| CtP + FedAvg | fedavg | 0,1,2 | 30.0 ± 5.0 | 60.0 ± 10.0 | 40.0 ± 10.0 | 0.020 ± 0.010 |" in md
    assert lines[3].endswith("| 4 |")  # mean wall time per run


def test_missing_metrics_are_dashes_not_zeros_and_first_format_records_are_read():
    rec = _record("SSD", 0, (0.2, 0.4, 0.3, 0.01), (0.2, 0.4, 0.3, 0.01))
    del rec["evaluations"]["linear_probe"]
    table = build_table([rec])
    assert table.rows[0].cells["synthetic_ucf101"]["linear_probe_top1"].text() == "-"
    assert math.isclose(table.rows[0].cells["synthetic_ucf101"]["retrieval_top1"].mean, 0.2)
    # the first evaluation format: retrieval.<ds>.top1/top5, robustness.<ds>.ks
    old = {
        "method": {"name": "X", "aggregator": "fedavg"},
        "evaluations": {
            "retrieval": {"d": {"top1": 0.5, "top5": 0.75}},
            "linear_probe": {"d": {"video_top1": 0.25}},
            "robustness": {"d": {"ks": [0.0, 0.1], "k_half": None}},
        },
    }
    cells = build_table([old]).rows[0].cells["d"]
    assert [cells[k].text() for k in ("retrieval_top1", "retrieval_top5", "linear_probe_top1", "k_half")] == [
        "50.0",
        "75.0",
        "25.0",
        "> 0.1",
    ]


def test_sweep_dir_table_files_and_cli(tmp_path, capsys):
    # job dirs 0..3 and 10: numeric order (10 after 3), a dir without result.json is skipped
    for job, rec in zip([0, 1, 3, 10], RECORDS):
        atomic_write_json(tmp_path / str(job) / "result.json", rec)
    # the columns follow the run's eval.datasets (the record's keys are sorted)
    atomic_write_json(tmp_path / "0" / "config.json", {"eval": {"datasets": ["synthetic_ucf101", "synthetic_hmdb51"]}})
    (tmp_path / "2").mkdir()
    records, dirs = collect_records(tmp_path)
    assert [d.rsplit("/", 1)[1] for d in dirs] == ["0", "1", "3", "10"]
    table = write_table(tmp_path, wall_time_s=123.0)
    assert table.datasets == ["synthetic_ucf101", "synthetic_hmdb51"]
    assert table.rows[1].run_dirs == [str(tmp_path / "10")]
    data = json.loads((tmp_path / "compare_table.json").read_text())
    assert data["format"] == "fedvid-compare/1" and data["wall_time_s"] == 123.0
    cell = data["rows"][0]["cells"]["synthetic_ucf101"]["retrieval_top1"]
    assert cell["values"] == [0.25, 0.35, 0.30] and cell["n"] == 3
    assert "Total wall time of the sweep: 123 s" in (tmp_path / "compare_table.md").read_text()
    # the CLI re-prints it (and keeps the recorded sweep wall time)
    assert main([str(tmp_path)]) == 0
    assert "30.0 ± 5.0" in capsys.readouterr().out
    assert json.loads((tmp_path / "compare_table.json").read_text())["wall_time_s"] == 123.0
    assert main([str(tmp_path / "nope")]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_experiment_compare_composes_21_jobs_rows_by_seeds():
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=compare"], return_hydra_config=True)
        hydra = cfg.hydra
        assert str(hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
        assert hydra.callbacks.compare_table._target_ == "benchmark.commands.compare.CompareTableCallback"
        params = OmegaConf.to_container(hydra.sweeper.params)
        overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        sweeps = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in overrides]
        jobs = list(itertools.product(*sweeps))  # what Hydra's BasicSweeper launches
        assert len(jobs) == 21
        assert jobs[:4] == [
            ("compare_row=ctp_fedavg", "seed=0"),
            ("compare_row=ctp_fedavg", "seed=1"),
            ("compare_row=ctp_fedavg", "seed=2"),
            ("compare_row=ctp_fvssl", "seed=0"),
        ]
        assert [j[0].split("=")[1] for j in jobs[::3]] == ROWS

        expected = {  # row -> (method, aggregator, engine, rounds)
            "ctp_fedavg": ("ctp", "fedavg", "simulation", 3),
            "ctp_fvssl": ("ctp", "fvssl", "simulation", 3),
            "ssd": ("ssd", "fedavg", "simulation", 3),
            "align_uniform": ("align_uniform", "fedavg", "simulation", 3),
            "ctp_ldawa": ("ctp", "ldawa", "simulation", 3),
            "centralized": ("ctp", "fedavg", "centralized", 3),
            "random_init": ("ctp", "fedavg", "centralized", 0),
        }
        names = set()
        for row, seed in [("ctp_fvssl", 1), *((r, 2) for r in ROWS)]:
            job = compose("config", overrides=["experiment=compare", f"compare_row={row}", f"seed={seed}"])
            got = (job.method.name, job.aggregator.name, job.engine.name, int(job.federation.rounds))
            assert got == expected[row], row
            assert job.seed == seed and job.federation.local_steps == 40 and job.clip.size == 64
            assert job.federation.clients_per_round == 2
            if job.method.name == "ctp":  # the CPU-scale CtP: patches always visible
                assert job.method.params.visible_prob == 1.0 and job.method.params.hidden_channels is None
            assert (
                job.eval.random_init_baseline is False
                and list(job.eval.robustness.ks) == [0.0, 0.05]
                and job.eval.clip.num_clips == 1
            )
            names.add(job.method.display_name)
            if row == "ctp_fvssl":
                assert (job.aggregator.params.alpha, job.aggregator.params.beta) == (0.9, 1)
        assert len(names) == 7  # every row has its own display name
