"""Export leaderboard entries where researchers look.

- ``pwc``: Papers-with-Code style result rows (task, dataset, model, metrics in %, paper).
- ``model-index``: the Hugging Face model-card ``model-index`` block (one model per entry).
- ``eee``: Every Eval Ever records (schema 0.2.1 of evaleval/every_eval_ever's
  ``eval.schema.json``), one per entry.

Every exporter reads the built leaderboard (``build_leaderboard``), so exported numbers
are exactly the leaderboard's (mean over seeds), with n and std carried where the target
format has room for them.
"""

from __future__ import annotations

from typing import Any

import benchmark

DATASET_NAMES = {
    "ucf101": "UCF101",
    "hmdb51": "HMDB51",
    "kinetics400": "Kinetics-400",
    "synthetic_ucf101": "FedVid synthetic UCF101-style",
    "synthetic_hmdb51": "FedVid synthetic HMDB51-style",
    "synthetic_kinetics": "FedVid synthetic Kinetics-style",
}

# metric path pattern (kind) -> (task type, task name, metric type, metric display name)
_KINDS = {
    "retrieval": ("video-retrieval", "Video Retrieval", "top{k}", "Top-{k} retrieval accuracy"),
    "linear_probe": ("action-recognition", "Action Recognition (linear probe)", "{m}", "{m} (linear probe)"),
    "finetune": ("action-recognition", "Action Recognition (fine-tuned)", "{m}", "{m} (fine-tuned)"),
}


def _metric_rows(entry: dict[str, Any]):
    """Yield (kind, dataset id, metric key, stat) for exportable metrics."""
    for path, stat in entry["metrics"].items():
        parts = path.split(".")
        if len(parts) != 3 or parts[0] not in _KINDS:
            continue
        kind, ds, key = parts
        if kind == "retrieval" and not key.startswith("top"):
            continue
        yield kind, ds, key, stat


def _model_id(track: dict, entry: dict) -> str:
    agg_params = entry["params"].get("aggregator", entry["params"])
    params = ",".join(f"{k}={v}" for k, v in sorted(agg_params.items()) if not isinstance(v, dict))
    return f"{entry['pretext']}-{entry['aggregator']}" + (f"({params})" if params else "") + f"@{track['track_id']}"


def to_pwc(board: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for t in board["tracks"]:
        for e in t["entries"]:
            per_task: dict[tuple[str, str], dict[str, float]] = {}
            for kind, ds, key, stat in _metric_rows(e):
                task = _KINDS[kind][1]
                name = f"Top-{key[3:]}" if kind == "retrieval" else key
                per_task.setdefault((task, ds), {})[name] = round(100 * stat["mean"], 2)
            for (task, ds), metrics in sorted(per_task.items()):
                rows.append(
                    {
                        "task": task,
                        "dataset": DATASET_NAMES.get(ds, ds),
                        "model_name": e["method"],
                        "metrics": metrics,
                        "paper_url": e["sources"][0] if e["sources"] else None,
                        "status": e["status"],
                        "pretraining": f"{t['dataset']} ({t['split_manifest_id'] or 'nonstandard split'}, "
                        f"{t['num_clients']} clients, {t['rounds']} rounds)",
                        "uses_additional_data": t["dataset"] not in (ds,),
                    }
                )
    return rows


def to_model_index(board: dict[str, Any]) -> list[dict[str, Any]]:
    models = []
    for t in board["tracks"]:
        for e in t["entries"]:
            results: dict[tuple, list] = {}
            for kind, ds, key, stat in _metric_rows(e):
                ttype, tname, mtype, mname = _KINDS[kind]
                k = key[3:] if kind == "retrieval" else key
                results.setdefault((ttype, tname, ds), []).append(
                    {
                        "type": mtype.format(k=k, m=key),
                        "name": mname.format(k=k, m=key),
                        "value": round(100 * stat["mean"], 2),
                        "verified": False,
                    }
                )
            model = {"name": _model_id(t, e), "results": []}
            for (ttype, tname, ds), metrics in sorted(results.items()):
                res = {
                    "task": {"type": ttype, "name": tname},
                    "dataset": {"type": ds, "name": DATASET_NAMES.get(ds, ds), "split": "test", "config": "split1"},
                    "metrics": metrics,
                }
                if e["sources"]:
                    res["source"] = {"name": "reported", "url": e["sources"][0]}
                model["results"].append(res)
            models.append(model)
    return [{"model-index": models}]


def to_eee(board: dict[str, Any], retrieved_timestamp: str = "0") -> list[dict[str, Any]]:
    """Every Eval Ever 0.2.1 records. ``retrieved_timestamp`` is a parameter (not now())
    so that exports stay deterministic."""
    out = []
    for t in board["tracks"]:
        for e in t["entries"]:
            mid = _model_id(t, e)
            results = []
            for kind, ds, key, stat in _metric_rows(e):
                unc = {"num_samples": stat["n"]}
                if stat["n"] > 1:
                    unc["standard_deviation"] = stat["std"]
                results.append(
                    {
                        "evaluation_name": f"{kind}.{ds}.{key}",
                        "source_data": {
                            "dataset_name": DATASET_NAMES.get(ds, ds),
                            "source_type": "other",
                            "additional_details": {"split": "1", "protocol": "fedvid-bench"},
                        },
                        "metric_config": {
                            "evaluation_description": f"{_KINDS[kind][1]} {key} on {DATASET_NAMES.get(ds, ds)} split 1",
                            "lower_is_better": False,
                            "score_type": "continuous",
                            "min_score": 0,
                            "max_score": 1,
                        },
                        "score_details": {"score": stat["mean"], "uncertainty": unc},
                    }
                )
            out.append(
                {
                    "schema_version": "0.2.1",
                    "evaluation_id": f"fedvid-bench/{mid}/{retrieved_timestamp}",
                    "retrieved_timestamp": retrieved_timestamp,
                    "source_metadata": {
                        "source_name": "FedVid-Bench leaderboard",
                        "source_type": "documentation" if e["status"] == "reported" else "evaluation_run",
                        "source_organization_name": "FedVid-Bench",
                        "evaluator_relationship": "third_party" if e["status"] == "reported" else "first_party",
                        "additional_details": {
                            "status": e["status"],
                            "track": t["track_id"],
                            "records": ",".join(e["record_ids"]),
                        },
                    },
                    "model_info": {
                        "name": e["method"],
                        "id": mid,
                        "developer": "see sources",
                        "additional_details": {
                            "pretext": e["pretext"],
                            "aggregator": e["aggregator"],
                            "exchange": e["exchange"],
                            "backbone": t["backbone"],
                        },
                    },
                    "eval_library": {"name": "fedvid-bench", "version": benchmark.__version__},
                    "evaluation_results": results,
                }
            )
    return out


EXPORTERS = {"pwc": to_pwc, "model-index": to_model_index, "eee": to_eee}
