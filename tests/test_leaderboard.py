"""Result-record validation, leaderboard building and exports."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from leaderboard.build import build_leaderboard, render_markdown, write_leaderboard
from leaderboard.export import to_eee, to_model_index, to_pwc
from leaderboard.record import Evaluations
from leaderboard.records import validate_records

SPLIT_SHA = "a" * 64
HASHES = {SPLIT_SHA: "ucf101-s1-iid-c5-seed0"}


def make_record(record_id: str = "r1", top1: float = 0.30, seed: int = 0, **over) -> dict:
    rec = {
        "format": "fedvid-result/1",
        "record_id": record_id,
        "status": "reproduced",
        "track": {
            "dataset": "ucf101",
            "split_manifest_id": "ucf101-s1-iid-c5-seed0",
            "split_content_sha256": SPLIT_SHA,
            "num_clients": 5,
            "clients_per_round": 5,
            "rounds": 20,
            "local_epochs": 1,
            "backbone": "r3d18",
            "input_size": [16, 112, 112],
        },
        "method": {
            "name": "CtP + FedAvg",
            "pretext": "ctp",
            "aggregator": "fedavg",
            "params": {},
            "exchange": "backbone",
            "code": {"package": "fedvid-bench", "version": "0.1.0"},
        },
        "evaluations": {
            "retrieval": {
                "ucf101": {"split": "1", "topk": {"1": top1, "5": top1 + 0.1, "10": top1 + 0.2}},
                "hmdb51": {"split": "1", "topk": {"1": top1 / 2, "5": top1}},
            },
            "linear_probe": {"ucf101": {"top1": 0.5, "top5": 0.8}},
        },
        "systems": {"wall_time_s": 10.0},
        "provenance": {
            "git_commit": "abc",
            "git_dirty": False,
            "packages": {"torch": "2.14.1"},
            "config_sha256": "b" * 64,
            "seeds": {"seed": seed},
            "started_at": "2026-11-21T00:00:00Z",
            "finished_at": "2026-11-21T00:10:00Z",
        },
    }
    rec.update(over)
    return rec


def write(tmp_path: Path, name: str, obj) -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_valid_record_passes(tmp_path):
    good, problems = validate_records([write(tmp_path, "a.json", make_record())], HASHES)
    assert problems == [] and len(good) == 1


def _bad_records() -> dict[str, tuple[object, str]]:
    """name -> (file content, substring the error must contain)."""
    base = make_record()
    wrong_type = copy.deepcopy(base)
    wrong_type["track"]["num_clients"] = "five"
    missing = copy.deepcopy(base)
    del missing["method"]
    top5_lt_top1 = copy.deepcopy(base)
    top5_lt_top1["evaluations"]["retrieval"]["ucf101"]["topk"]["5"] = 0.1
    unknown_split = copy.deepcopy(base)
    unknown_split["track"]["split_content_sha256"] = "c" * 64
    out_of_range = copy.deepcopy(base)
    out_of_range["evaluations"]["linear_probe"]["ucf101"]["top1"] = 1.5
    reported_no_source = copy.deepcopy(base)
    reported_no_source["status"] = "reported"
    lp_top5_lt_top1 = copy.deepcopy(base)
    lp_top5_lt_top1["evaluations"]["linear_probe"]["ucf101"]["top5"] = 0.1
    nan_text = json.dumps(base).replace('"top1": 0.5', '"top1": NaN')
    inf_text = json.dumps(base).replace('"wall_time_s": 10.0', '"wall_time_s": Infinity')
    return {
        "truncated": (json.dumps(base)[:200], "invalid JSON"),
        "wrong_type": (wrong_type, "$.track.num_clients"),
        "missing_field": (missing, "'method' is a required property"),
        "top5_lt_top1": (top5_lt_top1, "Top-5 (0.1) is lower than Top-1"),
        "unknown_split": (unknown_split, "not one of the committed standardized splits"),
        "out_of_range": (out_of_range, "1.5 is greater than the maximum of 1"),
        "reported_no_source": (reported_no_source, "'source' is a required property"),
        "linear_probe_top5_lt_top1": (lp_top5_lt_top1, "top5 (0.1) is lower than top1"),
        "nan": (nan_text, "NaN"),
        "infinity": (inf_text, "Infinity"),
    }


@pytest.mark.parametrize("name", list(_bad_records()))
def test_malformed_record_rejected_with_specific_message(tmp_path, name):
    content, expected = _bad_records()[name]
    path = write(tmp_path, f"{name}.json", content)
    good, problems = validate_records([path], HASHES)
    assert good == []
    messages = [str(p) for p in problems]
    assert any(expected in m and str(path) in m for m in messages), messages


def test_duplicate_record_id_rejected(tmp_path):
    a = write(tmp_path, "a.json", make_record("same"))
    b = write(tmp_path, "b.json", make_record("same", top1=0.4))
    good, problems = validate_records([a, b], HASHES)
    assert len(good) == 1
    assert any("duplicate record id 'same'" in str(p) and str(b) in str(p) for p in problems)


def test_nonstandard_flag_allows_unknown_split(tmp_path):
    rec = make_record(nonstandard=True)
    rec["track"]["split_content_sha256"] = None
    rec["track"]["split_manifest_id"] = None
    good, problems = validate_records([write(tmp_path, "n.json", rec)], HASHES)
    assert problems == []


def test_flatten_metrics():
    flat = Evaluations.from_json(make_record()["evaluations"]).metrics()
    assert flat["retrieval.ucf101.top1"] == pytest.approx(0.30)
    assert flat["retrieval.hmdb51.top5"] == pytest.approx(0.30)
    assert flat["linear_probe.ucf101.top5"] == 0.8


def test_build_aggregates_seeds_and_ranks(tmp_path):
    recs = [make_record("a0", 0.30, 0), make_record("a1", 0.34, 1), make_record("a2", 0.32, 2)]
    other = make_record("b0", 0.40, 0)
    other["method"] = {
        **other["method"],
        "name": "CtP + FVSSL",
        "aggregator": "fvssl",
        "params": {"alpha": 0.9, "beta": 1},
    }
    no_primary = make_record("c0", 0.1)
    no_primary["method"] = {**no_primary["method"], "name": "LP only", "aggregator": "ldawa"}
    del no_primary["evaluations"]["retrieval"]
    board = build_leaderboard(recs + [other, no_primary])
    (track,) = board["tracks"]
    assert [e["method"] for e in track["entries"]] == ["CtP + FVSSL", "CtP + FedAvg", "LP only"]
    assert [e["rank"] for e in track["entries"]] == [1, 2, None]
    stat = track["entries"][1]["metrics"]["retrieval.ucf101.top1"]
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(0.32) and stat["std"] == pytest.approx(0.02)
    md = render_markdown(board)
    assert "| 2 | CtP + FedAvg | reproduced | 32.00 ± 2.00 |" in md


def test_tiebreak_by_hmdb(tmp_path):
    a = make_record("a", 0.30)
    b = make_record("b", 0.30)
    b["method"] = {**b["method"], "name": "B"}
    b["evaluations"]["retrieval"]["hmdb51"]["topk"]["1"] = 0.2
    board = build_leaderboard([a, b])
    assert [e["method"] for e in board["tracks"][0]["entries"]] == ["B", "CtP + FedAvg"]


def test_build_is_deterministic(tmp_path):
    recs = [make_record("a0", 0.30, 0), make_record("a1", 0.34, 1)]
    write_leaderboard(build_leaderboard(recs), tmp_path / "x")
    write_leaderboard(build_leaderboard(list(reversed(recs))), tmp_path / "y")
    for name in ("leaderboard.json", "leaderboard.md"):
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes()


def test_exports():
    board = build_leaderboard([make_record("a0", 0.30)])
    rows = to_pwc(board)
    ucf = next(r for r in rows if r["dataset"] == "UCF101" and r["task"] == "Video Retrieval")
    assert ucf["metrics"]["Top-1"] == 30.0 and ucf["metrics"]["Top-10"] == 50.0
    mi = to_model_index(board)[0]["model-index"][0]
    ret = next(r for r in mi["results"] if r["task"]["type"] == "video-retrieval" and r["dataset"]["type"] == "ucf101")
    assert {m["type"]: m["value"] for m in ret["metrics"]}["top1"] == 30.0
    (eee,) = to_eee(board)
    assert eee["schema_version"] == "0.2.1"
    names = {r["evaluation_name"]: r["score_details"]["score"] for r in eee["evaluation_results"]}
    assert names["retrieval.ucf101.top1"] == pytest.approx(0.30)
    for r in eee["evaluation_results"]:
        assert {"evaluation_name", "source_data", "metric_config", "score_details"} <= set(r)


# --- committed artefacts ----------------------------------------------------------------
from benchmark import PROJECT_ROOT  # noqa: E402
from benchmark.cli import main as fedvid  # noqa: E402
from leaderboard.records import find_record_files  # noqa: E402


def test_reported_fedvssl_entries_are_exact_and_valid():
    files = find_record_files([PROJECT_ROOT / "leaderboard" / "reported"])
    good, problems = validate_records(files)
    assert problems == []
    by_id = {r["record_id"]: Evaluations.from_json(r["evaluations"]).metrics() for _, r in good}
    expected = {  # (alpha, beta): UCF R@1, HMDB R@1, UCF fine-tune top-1 — README figures
        "a0-b0": (34.34, 15.82, 79.91),
        "a1-b0": (34.23, 16.73, 79.14),
        "a0-b1": (35.61, 16.93, 79.43),
        "a1-b1": (35.66, 16.41, 78.99),
        "a0p9-b0": (35.50, 16.27, 80.62),
        "a0p9-b1": (35.34, 16.93, 79.41),
    }
    for key, (ucf, hmdb, ft) in expected.items():
        m = by_id[f"fedvssl-k400-noniid-{key}"]
        assert round(100 * m["retrieval.ucf101.top1"], 2) == ucf
        assert round(100 * m["retrieval.hmdb51.top1"], 2) == hmdb
        assert round(100 * m["finetune.ucf101.video_top1"], 2) == ft
        assert "retrieval.ucf101.top5" not in m  # not published -> absent, never zero
    records = {r["record_id"]: r for _, r in good}
    for rid, r in records.items():  # every source pinned to a commit and a line
        assert all(re.search(r"/blob/[0-9a-f]{40}/.+#L\d+", src["url"]) for src in r["source"]), rid
        assert r["method"]["code"]["commit"], rid
        # neither CtP nor FEDVSSL publishes a retrieval script: the retrieval protocol is asserted, not checked
        assert r["protocol"].get("unverified", []) == (["retrieval"] if "retrieval" in r["evaluations"] else []), rid
    board = build_leaderboard([r for _, r in good])
    k400 = next(t for t in board["tracks"] if t["dataset"] == "kinetics400")
    assert all(e["unverified"] == ["retrieval"] for e in k400["entries"])
    assert "† retrieval protocol unverified" in render_markdown(board)
    cross = by_id["fedvssl-ucf101-crosssilo-a0p9-b1"]
    assert (
        round(100 * cross["finetune.ucf101.video_top1"], 2),
        round(100 * cross["finetune.ucf101.video_top5"], 2),
    ) == (66.32, 86.57)


def test_committed_leaderboard_is_up_to_date(tmp_path):
    """`fedvid leaderboard build` from the committed records reproduces the committed files byte for byte."""
    assert fedvid(["leaderboard", "build", f"out={tmp_path}"]) == 0
    for name in ("leaderboard.json", "leaderboard.md"):
        committed = PROJECT_ROOT / "leaderboard" / name
        assert (tmp_path / name).read_bytes() == committed.read_bytes(), (
            f"{committed} is out of date: run `fedvid leaderboard build`"
        )


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = write(tmp_path, "good.json", make_record(nonstandard=True))
    bad = write(tmp_path, "bad.json", json.dumps(make_record("x2"))[:50])
    assert fedvid(["leaderboard", "validate", str(good)]) == 0
    assert fedvid(["leaderboard", "validate", str(good), str(bad)]) == 1
    assert "bad.json: $: invalid JSON" in capsys.readouterr().err


def test_cli_build_refuses_invalid_input_and_writes_nothing(tmp_path):
    bad = write(tmp_path / "in", "r.json", make_record()) if (tmp_path / "in").mkdir() is None else None
    out = tmp_path / "out"
    assert fedvid(["leaderboard", "build", str(bad), f"out={out}"]) == 1  # unknown split hash
    assert not out.exists()


def test_cli_export_formats(tmp_path):
    for fmt in ("pwc", "model-index", "eee"):
        out = tmp_path / f"{fmt}.json"
        assert fedvid(["leaderboard", "export", "--format", fmt, f"out={out}"]) == 0
        data = json.loads(out.read_text())
        assert data, fmt
    rows = json.loads((tmp_path / "pwc.json").read_text())
    assert any(r["dataset"] == "UCF101" and r["metrics"].get("Top-1") == 35.66 for r in rows)


def test_rows_are_ranked_together_only_under_one_protocol(tmp_path):
    """A reproduced row under another protocol than the reported row of its setting is a
    separate track, never ranked against it; the same protocol shares the track."""
    fedvssl = {"name": "fedvssl", "version": 1, "variant": None}
    reported = make_record(
        "paper",
        0.35,
        status="reported",
        protocol=fedvssl,
        source=[{"url": "https://github.com/yasar-rehman/FEDVSSL", "reference": "README"}],
    )
    same = make_record("ours", 0.30, protocol=fedvssl)
    cpu = make_record("cpu", 0.50, protocol={"name": "cpu", "version": 1, "variant": None})
    smoke = make_record("smoke", 0.60, protocol={**fedvssl, "variant": "smoke"})
    mixed = make_record("mixed", 0.70, protocol=fedvssl)
    mixed["evaluations"]["retrieval"]["ucf101"]["protocol"] = {"name": "cpu", "version": 1, "pooling": "avg"}
    good, problems = validate_records(
        [write(tmp_path, f"{r['record_id']}.json", r) for r in (reported, same, cpu)], HASHES
    )
    assert problems == [] and len(good) == 3  # the protocol block is schema-valid
    board = build_leaderboard([reported, same, cpu, smoke, mixed])
    tracks = {t["protocol"]: t for t in board["tracks"]}
    assert sorted(tracks) == ["cpu/v1", "fedvssl/v1", "fedvssl/v1 eval:cpu/v1", "fedvssl/v1+smoke"]
    assert [(e["record_ids"], e["rank"]) for e in tracks["fedvssl/v1"]["entries"]] == [(["paper"], 1), (["ours"], 2)]
    assert [e["record_ids"] for e in tracks["cpu/v1"]["entries"]] == [["cpu"]]  # 50% is never ranked above the paper
    assert "protocol `fedvssl/v1`" in render_markdown(board)
    modified = make_record(
        "modified", 0.80, protocol={**fedvssl, "variant": "modified", "overridden": {"eval.pooling": "avg"}}
    )
    good, problems = validate_records([write(tmp_path, "modified.json", modified)], HASHES)
    assert problems == [] and len(good) == 1  # a modified protocol names its overridden keys
    board = build_leaderboard([reported, modified])
    assert sorted(t["protocol"] for t in board["tracks"]) == ["fedvssl/v1", "fedvssl/v1+modified[eval.pooling=avg]"]
    assert all(e["rank"] == 1 for t in board["tracks"] for e in t["entries"])  # never ranked against the paper
    bad = make_record("bad", protocol={"name": "fedvssl"})
    _, problems = validate_records([write(tmp_path, "bad.json", bad)], HASHES)
    assert problems and "version" in str(problems[0])


def test_result_record_round_trips_every_reported_entry():
    from benchmark.io import read_json
    from leaderboard.record import ResultRecord

    paths = sorted((PROJECT_ROOT / "leaderboard" / "reported").glob("*.json"))
    assert paths
    for path in paths:
        data = read_json(path)
        record = ResultRecord.from_json(data)
        assert record.to_json() == data, path
        assert record.systems is None  # reported entries carry no systems section
        # the record's metric names are the leaderboard's
        for ds in record.evaluations.datasets("retrieval"):
            assert (
                record.evaluations.metric("retrieval", ds, "top1") == data["evaluations"]["retrieval"][ds]["topk"]["1"]
            )
