"""``fedvid leaderboard validate|build|export``.

fedvid leaderboard validate FILE...                 # exit 1 on any problem
fedvid leaderboard build [DIR|FILE ...] out=DIR     # default: leaderboard/reported leaderboard/records -> leaderboard/
fedvid leaderboard export --format pwc|model-index|eee [DIR|FILE ...] out=FILE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark import PROJECT_ROOT
from benchmark.io import atomic_write_json

LEADERBOARD_DIR = PROJECT_ROOT / "leaderboard"
DEFAULT_INPUTS = [LEADERBOARD_DIR / "reported", LEADERBOARD_DIR / "records"]


def _split_out(args: list[str]) -> tuple[list[str], str | None]:
    out = None
    rest = []
    for a in args:
        if a.startswith("out="):
            out = a[4:]
        else:
            rest.append(a)
    return rest, out


def _load_valid(inputs: list[str]) -> list[dict] | None:
    from leaderboard.records import find_record_files, validate_records

    try:
        files = find_record_files(inputs or [p for p in DEFAULT_INPUTS if p.exists()])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    good, problems = validate_records(files)
    for p in problems:
        print(str(p), file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} record file(s); nothing was written.", file=sys.stderr)
        return None
    return [r for _, r in good]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fedvid leaderboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate result records (schema + semantic checks)")
    v.add_argument("files", nargs="+")
    b = sub.add_parser("build", help="build leaderboard.json and leaderboard.md (args: inputs, out=DIR)")
    b.add_argument("args", nargs="*")
    e = sub.add_parser("export", help="export entries (args: inputs, out=FILE)")
    e.add_argument("--format", required=True, choices=["pwc", "model-index", "eee"])
    e.add_argument("args", nargs="*")
    ns = parser.parse_args(argv)

    if ns.cmd == "validate":
        from leaderboard.records import validate_records

        good, problems = validate_records([Path(f) for f in ns.files])
        for p in problems:
            print(str(p), file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s); {len(good)} of {len(ns.files)} record(s) valid.", file=sys.stderr)
            return 1
        print(f"{len(good)} record(s) valid.")
        return 0

    from leaderboard.build import build_leaderboard, render_markdown, write_leaderboard

    inputs, out = _split_out(ns.args)
    records = _load_valid(inputs)
    if records is None:
        return 1
    board = build_leaderboard(records)
    if ns.cmd == "build":
        json_path, md_path = write_leaderboard(board, Path(out) if out else LEADERBOARD_DIR)
        print(render_markdown(board))
        print(f"wrote {json_path} and {md_path}")
        return 0

    from leaderboard.export import EXPORTERS

    data = EXPORTERS[ns.format](board)
    if out:
        atomic_write_json(out, data)
        print(f"wrote {len(data)} item(s) to {out}")
    else:
        from benchmark.io import dumps_json

        sys.stdout.write(dumps_json(data))
    return 0
