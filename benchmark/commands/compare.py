"""The comparison table of ``fedvid run experiment=compare`` (methods x seeds on the synthetic data).

Every job of the multirun writes ``<sweep_dir>/<job>/result.json``; this module reads
them, groups them by method (the record's ``method.name``, a display name such as
``CtP + FedAvg``; rows keep the order of their first job), and reports per downstream
dataset the retrieval Top-1 / Top-5, the linear-probe video-level top-1 and the
perturbation k½, as mean ± std over seeds (sample std, ddof = 1; no ± with one seed).

    fedvid run experiment=compare             # runs the sweep; the callback prints the table
    fedvid compare multirun/2026-11-21/23-00-00    # re-print it from the records

Written into the sweep dir: ``compare_table.md`` (markdown) and ``compare_table.json``
(every cell's per-seed values, mean and std).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write_json, atomic_write_text, read_json
from benchmark.rundir import CONFIG_JSON, RESULT
from leaderboard.record import ResultRecord

TABLE_FORMAT = "fedvid-compare/1"
MARKDOWN_NAME = "compare_table.md"
JSON_NAME = "compare_table.json"

#: (column key, header, fraction shown as %?, the record's metric as (kind, name)) per downstream dataset.
METRICS = (
    ("retrieval_top1", "R@1", True, ("retrieval", "top1")),
    ("retrieval_top5", "R@5", True, ("retrieval", "top5")),
    ("linear_probe_top1", "LP", True, ("linear_probe", "video_top1")),
    ("k_half", "k½", False, ("robustness", "k_half")),
)


def metric_value(record: ResultRecord, dataset: str, key: str) -> float | None:
    """One column's metric of a result record for one downstream dataset (None when not
    measured; k½ also when Top-1 never halves on the grid)."""
    for column, _, _, (kind, name) in METRICS:
        if column == key:
            return record.evaluations.metric(kind, dataset, name)
    raise ValueError(f"unknown metric {key!r}; expected one of {[m[0] for m in METRICS]}")


def robustness_k_max(record: ResultRecord, dataset: str) -> float | None:
    """The largest k of the perturbation grid (what ``> k`` refers to when k½ was not reached)."""
    entry = record.evaluations.entry("robustness", dataset)
    ks = (entry.get("protocol") or {}).get("ks") or entry.get("ks") or [c["k"] for c in entry.get("curve") or []]
    return float(max(ks)) if ks else None


@dataclass
class Cell:
    """One (method, dataset, metric): the per-seed values (None = not reached / not measured)."""

    values: list[float | None]
    percent: bool
    k_max: float | None = None  # k½ only: the grid's largest k ("> k_max" when never halved)

    @property
    def measured(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def mean(self) -> float | None:
        m = self.measured
        return sum(m) / len(m) if m else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1) of the measured values; None with fewer than 2."""
        m = self.measured
        if len(m) < 2:
            return None
        mu = sum(m) / len(m)
        return math.sqrt(sum((v - mu) ** 2 for v in m) / (len(m) - 1))

    def text(self) -> str:
        if not self.values:
            return "-"
        scale = 100.0 if self.percent else 1.0
        digits = 1 if self.percent else 3
        m = self.measured
        if not m:
            return f"> {self.k_max:g}" if self.k_max is not None and not self.percent else "-"
        out = f"{scale * self.mean:.{digits}f}"
        if self.std is not None:
            out += f" ± {scale * self.std:.{digits}f}"
        if len(m) < len(self.values):
            out += f" [{len(m)}/{len(self.values)}]"
        return out

    def as_json(self) -> dict:
        return {"values": self.values, "mean": self.mean, "std": self.std, "n": len(self.measured), "k_max": self.k_max}


@dataclass
class Row:
    name: str
    aggregator: str
    seeds: list[int] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)
    wall_time_s: list[float] = field(default_factory=list)
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # dataset -> metric key -> cell


@dataclass
class CompareTable:
    datasets: list[str]
    rows: list[Row]
    wall_time_s: float | None = None  # the whole sweep, when known

    def as_json(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "datasets": self.datasets,
            "metrics": {key: header for key, header, _, _ in METRICS},
            "std": "sample standard deviation over seeds (ddof=1)",
            "wall_time_s": self.wall_time_s,
            "rows": [
                {
                    "name": r.name,
                    "aggregator": r.aggregator,
                    "seeds": r.seeds,
                    "run_dirs": r.run_dirs,
                    "wall_time_s": r.wall_time_s,
                    "cells": {ds: {k: c.as_json() for k, c in cells.items()} for ds, cells in r.cells.items()},
                }
                for r in self.rows
            ],
        }


def build_table(
    records: list[dict | ResultRecord], datasets: list[str] | None = None, run_dirs: list[str] | None = None
) -> CompareTable:
    """Group result records by ``method.name`` (first-seen order) and fill the cells.

    datasets: downstream dataset ids (columns); default: the retrieval datasets of the first
    record that has any, in its order. run_dirs: the records' directories (same order).
    """
    records = [r if isinstance(r, ResultRecord) else ResultRecord.from_json(r) for r in records]
    if datasets is None:
        datasets = []
        for rec in records:
            found = rec.evaluations.datasets("retrieval")
            if found:
                datasets = found
                break
    rows: dict[str, Row] = {}
    for i, rec in enumerate(records):
        name = rec.name
        row = rows.setdefault(name, Row(name=name, aggregator=(rec.method or {}).get("aggregator", "")))
        row.seeds.append(-1 if rec.seed is None else rec.seed)
        if run_dirs is not None:
            row.run_dirs.append(run_dirs[i])
        if rec.wall_time_s is not None:
            row.wall_time_s.append(rec.wall_time_s)
        for ds in datasets:
            cells = row.cells.setdefault(ds, {})
            for key, _, percent, _ in METRICS:
                cell = cells.setdefault(key, Cell([], percent))
                cell.values.append(metric_value(rec, ds, key))
                if key == "k_half" and cell.k_max is None:
                    cell.k_max = robustness_k_max(rec, ds)
    return CompareTable(datasets=list(datasets), rows=list(rows.values()))


def collect_records(sweep_dir: str | Path) -> tuple[list[ResultRecord], list[str]]:
    """The ``result.json`` of every job directory under ``sweep_dir`` (Hydra job number order).

    Returns (records, their job directories). Raises FileNotFoundError when there is none.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"{sweep_dir}: no such directory (expected a `fedvid run experiment=compare` sweep dir)"
        )
    paths = sorted(sweep_dir.glob(f"*/{RESULT}"), key=lambda p: (_job_number(p.parent.name), p.parent.name))
    if not paths:
        raise FileNotFoundError(f"{sweep_dir}: no */result.json (did the jobs of the multirun finish?)")
    return [ResultRecord.from_json(read_json(p)) for p in paths], [str(p.parent) for p in paths]


def eval_datasets(run_dir: str | Path, record: ResultRecord) -> list[str] | None:
    """The measured downstream sets in the run's ``eval.datasets`` order (the record's JSON keys
    are sorted); None when the run dir has no ``config.json``."""
    measured = record.evaluations.datasets("retrieval")
    config = Path(run_dir) / CONFIG_JSON
    if not config.is_file():
        return None
    order = [str(d) for d in (read_json(config).get("eval") or {}).get("datasets") or []]
    return [d for d in order if d in measured] + [d for d in measured if d not in order]


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def render_markdown(table: CompareTable) -> str:
    header = ["method", "aggregator", "seeds"]
    for ds in table.datasets:
        header += [f"{ds} {h}" + (" (%)" if percent else "") for _, h, percent, _ in METRICS]
    header.append("wall s / run")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.rows:
        cells = [r.name, r.aggregator, ",".join(map(str, r.seeds))]
        for ds in table.datasets:
            cells += [r.cells[ds][key].text() for key, _, _, _ in METRICS]
        cells.append(f"{sum(r.wall_time_s) / len(r.wall_time_s):.0f}" if r.wall_time_s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Mean ± sample std (ddof=1) over seeds. R@k: retrieval Top-k (test queries, train gallery). "
        "LP: linear-probe video-level top-1. k½: perturbation scale at which retrieval Top-1 halves "
        "(higher = more robust; `> k` = never halved on the grid; `[n/N]` = measured for n of N seeds).",
    ]
    if table.wall_time_s is not None:
        notes.append(f"Total wall time of the sweep: {table.wall_time_s:.0f} s ({table.wall_time_s / 60:.1f} min).")
    return "\n".join(lines + notes) + "\n"


def print_table(table: CompareTable, console=None, title: str = "FedVid-Bench comparison") -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # 8 metric columns do not fit 80 columns; a narrower terminal wraps the lines
    console = console or Console(width=max(Console().width, 160))
    t = Table(
        title=title,
        caption=escape(
            "mean ± std over seeds; R@k retrieval Top-k %, LP linear probe %, k½ "
            "perturbation scale halving Top-1 (> k: never on the grid; [n/N]: n of N seeds)"
        ),
    )
    t.add_column("method")
    t.add_column("seeds", justify="right")
    for ds in table.datasets:
        short = ds.replace("synthetic_", "")
        for _, h, _, _ in METRICS:
            t.add_column(f"{short}\n{h}", justify="right")
    t.add_column("s/run", justify="right")
    for r in table.rows:
        cells = [r.name, str(len(r.seeds))]
        for ds in table.datasets:
            cells += [r.cells[ds][key].text() for key, _, _, _ in METRICS]
        cells.append(f"{sum(r.wall_time_s) / len(r.wall_time_s):.0f}" if r.wall_time_s else "-")
        t.add_row(*(escape(c) for c in cells))
    console.print(t)
    if table.wall_time_s is not None:
        console.print(f"sweep wall time {table.wall_time_s:.0f} s ({table.wall_time_s / 60:.1f} min)")


def write_table(sweep_dir: str | Path, wall_time_s: float | None = None, console=None) -> CompareTable:
    """Collect the sweep's records, print the table, write ``compare_table.md`` / ``.json``."""
    sweep_dir = Path(sweep_dir)
    records, dirs = collect_records(sweep_dir)
    table = build_table(records, datasets=eval_datasets(dirs[0], records[0]), run_dirs=dirs)
    if wall_time_s is None:
        previous = sweep_dir / JSON_NAME
        if previous.is_file():
            wall_time_s = read_json(previous).get("wall_time_s")
    table.wall_time_s = wall_time_s
    atomic_write_text(sweep_dir / MARKDOWN_NAME, render_markdown(table))
    atomic_write_json(sweep_dir / JSON_NAME, table.as_json())
    print_table(table, console)
    from rich.console import Console

    (console or Console()).print(f"table: {sweep_dir / MARKDOWN_NAME} and {sweep_dir / JSON_NAME}")
    return table


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    _HydraCallback = object  # type: ignore[misc,assignment]


class CompareTableCallback(_HydraCallback):
    """Hydra callback (``hydra.callbacks.compare_table``): the table after the last job."""

    def __init__(self) -> None:
        self._started: float | None = None

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        wall = None if self._started is None else time.perf_counter() - self._started
        try:
            write_table(Path(str(config.hydra.sweep.dir)), wall)
        except FileNotFoundError as e:
            print(f"fedvid compare: no table: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedvid compare", description="Print (and rewrite) the comparison table of a multirun directory."
    )
    parser.add_argument("sweep_dir", help="the multirun directory of `fedvid run experiment=compare`")
    args = parser.parse_args(argv)
    try:
        write_table(args.sweep_dir)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"fedvid compare: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
