"""Build the leaderboard from validated records.

Records are grouped by **track** (protocol, pretraining dataset, split manifest, clients,
clients per round, rounds, local epochs, backbone, input size). The protocol
(:func:`protocol_label`: the record's named, versioned protocol, plus the evaluations' when
they differ) is part of the track, so rows made under different protocols are never ranked
against each other: a reproduced row under another protocol than the reported row of its
setting lands in its own track. Within a track, records of the
same entry (same status, method, pretext, aggregator, parameters and exchanged part)
are aggregated over seeds: mean, sample std (0 for n = 1) and n for every metric.

Ranking (documented in docs/leaderboard.md): the primary metric of every track is
retrieval Top-1 on UCF101 split 1 (``retrieval.ucf101.top1``; on synthetic tracks the
UCF101-style set ``retrieval.synthetic_ucf101.top1``), ties broken by HMDB51 retrieval
Top-1, then by name. Entries without the primary metric are listed unranked after the
ranked ones. Reported (paper), submitted and reproduced entries stand side by side.
``degraded`` run records (clients or videos lost, see docs/leaderboard.md) are listed
unranked, as their own entries; ``failed`` records (a stage did not complete) are left out.

Output is deterministic: same inputs => same bytes (sorted keys and entries, numbers
rounded to 6 decimals, no timestamps).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema

from benchmark.io import atomic_write_json, atomic_write_text, canonical_json_bytes
from leaderboard.record import ResultRecord
from leaderboard.records import load_schema

LEADERBOARD_FORMAT = "fedvid-leaderboard/1"


def _label(proto: dict[str, Any]) -> str:
    """``fedvssl/v1``, ``fedvssl/v1+smoke``, ``fedvssl/v1+modified[eval.pooling=avg]``: a modified
    protocol names what changed, so runs with different overrides never share a track."""
    label = f"{proto['name']}/v{proto['version']}"
    if proto.get("variant"):
        label += f"+{proto['variant']}"
    overridden = proto.get("overridden")
    if isinstance(overridden, dict) and overridden:
        label += (
            "["
            + ",".join(
                f"{k}={v if isinstance(v, str) else canonical_json_bytes(v).decode()}"
                for k, v in sorted(overridden.items())
            )
            + "]"
        )
    return label


def protocol_label(record: dict[str, Any]) -> str:
    """``fedvssl/v1``: the record's protocol (``unnamed`` without one), with
    `` eval:<labels>`` appended when an evaluation ran under a different protocol."""
    own = _label(record["protocol"]) if record.get("protocol") else "unnamed"
    evals = set()
    for per_dataset in record.get("evaluations", {}).values():
        for entry in per_dataset.values() if isinstance(per_dataset, dict) else ():
            proto = entry.get("protocol") if isinstance(entry, dict) else None
            if isinstance(proto, dict) and "name" in proto and "version" in proto:
                evals.add(_label(proto))
    others = sorted(evals - {own})
    return own + (f" eval:{','.join(others)}" if others else "")


def unverified_evaluations(records: list[dict[str, Any]]) -> list[str]:
    """The evaluations whose protocol some record's source does not publish (``protocol.unverified``)."""
    return sorted({e for r in records for e in (r.get("protocol") or {}).get("unverified", [])})


def track_key(track: dict[str, Any]) -> str:
    split = track.get("split_manifest_id") or "nonstandard-split"
    t, h, w = track["input_size"]
    epochs = track.get("local_epochs")
    steps = track.get("local_steps")
    local = f"s{steps}" if steps else f"e{epochs:g}" if epochs is not None else "e?"
    return (
        f"{track['dataset']}/{split}/c{track['num_clients']}-p{track['clients_per_round']:g}-"
        f"r{track['rounds']}-{local}/{track['backbone']}-{t}x{h}x{w}"
    )


def entry_key(record: dict[str, Any]) -> str:
    m = record["method"]
    ident = {k: m[k] for k in ("name", "pretext", "aggregator", "params", "exchange")}
    ident["status"] = record["status"]
    return canonical_json_bytes(ident).decode()


def primary_metrics(dataset_ids: set[str]) -> tuple[str, str]:
    ucf = (
        "ucf101"
        if "ucf101" in dataset_ids or not any("ucf" in d for d in dataset_ids)
        else sorted(d for d in dataset_ids if "ucf" in d)[0]
    )
    hmdb = (
        "hmdb51"
        if "hmdb51" in dataset_ids or not any("hmdb" in d for d in dataset_ids)
        else sorted(d for d in dataset_ids if "hmdb" in d)[0]
    )
    return f"retrieval.{ucf}.top1", f"retrieval.{hmdb}.top1"


def _stats(values: list[float]) -> dict[str, float | int]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": round(mean, 6), "std": round(std, 6), "n": n}


#: Statuses listed but never ranked / never listed.
UNRANKED_STATUSES = ("degraded",)
EXCLUDED_STATUSES = ("failed",)


def build_leaderboard(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_track: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] in EXCLUDED_STATUSES:
            continue
        by_track[f"{protocol_label(r)}/{track_key(r['track'])}"].append(r)

    tracks = []
    for tkey in sorted(by_track):
        recs = by_track[tkey]
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in recs:
            groups[entry_key(r)].append(r)
        dataset_ids = {d for r in recs for d in r["evaluations"].get("retrieval", {})}
        primary, tiebreak = primary_metrics(dataset_ids)
        entries = []
        for members in groups.values():
            members = sorted(members, key=lambda r: r["record_id"])
            per_metric: dict[str, list[float]] = defaultdict(list)
            for r in members:
                for name, value in ResultRecord.from_json(r).evaluations.metrics().items():
                    per_metric[name].append(value)
            first = members[0]
            m = first["method"]
            entries.append(
                {
                    "method": m["name"],
                    "pretext": m["pretext"],
                    "aggregator": m["aggregator"],
                    "params": m["params"],
                    "exchange": m["exchange"],
                    "status": first["status"],
                    "record_ids": [r["record_id"] for r in members],
                    "sources": sorted({s["url"] for r in members for s in r.get("source", [])}),
                    "metrics": {k: _stats(v) for k, v in sorted(per_metric.items())},
                    **({"unverified": unverified} if (unverified := unverified_evaluations(members)) else {}),
                }
            )

        def sort_key(e: dict, primary: str = primary, tiebreak: str = tiebreak) -> tuple:  # bound per track
            p = e["metrics"].get(primary, {}).get("mean")
            t = e["metrics"].get(tiebreak, {}).get("mean", -1.0)
            unranked = p is None or e["status"] in UNRANKED_STATUSES
            return (unranked, -(p or 0.0), -t, e["method"], e["status"])

        entries.sort(key=sort_key)
        rank = 0
        for e in entries:
            if primary in e["metrics"] and e["status"] not in UNRANKED_STATUSES:
                rank += 1
                e["rank"] = rank
            else:
                e["rank"] = None
        t0 = recs[0]["track"]
        tracks.append(
            {
                "track_id": tkey,
                "protocol": protocol_label(recs[0]),
                "dataset": t0["dataset"],
                "split_manifest_id": t0.get("split_manifest_id"),
                "split_content_sha256": t0.get("split_content_sha256"),
                "num_clients": t0["num_clients"],
                "clients_per_round": t0["clients_per_round"],
                "rounds": t0["rounds"],
                "backbone": t0["backbone"],
                "input_size": t0["input_size"],
                "primary_metric": primary,
                "tiebreak_metric": tiebreak,
                "entries": entries,
            }
        )
    board = {"format": LEADERBOARD_FORMAT, "tracks": tracks}
    jsonschema.validate(board, load_schema("leaderboard.schema.json"), cls=jsonschema.Draft202012Validator)
    return board


def _pct(stat: dict | None) -> str:
    if not stat:
        return "–"
    s = f"{100 * stat['mean']:.2f}"
    if stat["n"] > 1:
        s += f" ± {100 * stat['std']:.2f}"
    return s


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: no HTML, no cell breaks, no line breaks."""
    import html

    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def render_markdown(board: dict[str, Any]) -> str:
    lines = [
        "# FedVid-Bench leaderboard",
        "",
        "Retrieval Top-k and accuracies in %, mean ± std over seeds (n = number of records).",
        "Ranked by the primary metric of each track (UCF101 retrieval Top-1, ties by HMDB51 Top-1).",
        "",
    ]
    for t in board["tracks"]:
        ucf = t["primary_metric"].split(".")[1]
        hmdb = t["tiebreak_metric"].split(".")[1]
        lines += [
            f"## {md_cell(t['track_id'])}",
            "",
            f"{md_cell(t['dataset'])}, split `{md_cell(t['split_manifest_id'] or 'nonstandard')}`, {t['num_clients']} clients, "
            f"{t['clients_per_round']:g} per round, {t['rounds']} rounds, {md_cell(t['backbone'])} "
            f"{'x'.join(map(str, t['input_size']))}, protocol `{md_cell(t.get('protocol', 'unnamed'))}` "
            "(docs/protocols/)",
            "",
            f"| # | method | status | {ucf} R@1 | {ucf} R@5 | {hmdb} R@1 | {ucf} FT top-1 | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        notes = sorted({u for e in t["entries"] for u in e.get("unverified", [])})
        for e in t["entries"]:
            m = e["metrics"]
            mark = " †" if e.get("unverified") else ""
            ft = m.get(f"finetune.{ucf}.video_top1") or m.get(f"finetune.{ucf}.top1")
            n = max((s["n"] for s in m.values()), default=0)
            lines.append(
                f"| {e['rank'] or '–'} | {md_cell(e['method'])}{mark} | {md_cell(e['status'])} | {_pct(m.get(f'retrieval.{ucf}.top1'))} | "
                f"{_pct(m.get(f'retrieval.{ucf}.top5'))} | {_pct(m.get(f'retrieval.{hmdb}.top1'))} | {_pct(ft)} | {n} |"
            )
        if notes:
            lines += [
                "",
                f"† {md_cell(', '.join(notes))} protocol unverified: the source publishes no script for it, so "
                "the protocol this row names is asserted by its authors, not checked (docs/protocols/).",
            ]
        lines.append("")
    return "\n".join(lines)


def write_leaderboard(board: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / "leaderboard.json", board)
    md_path = atomic_write_text(out_dir / "leaderboard.md", render_markdown(board))
    return json_path, md_path
