"""``fedvid data``: generate the synthetic datasets; check a dataset's videos.

    fedvid data generate [--size tiny|default] [--seed N] [--root DIR] [--force] [--workers N]
    fedvid data check dataset=NAME [data_root=DIR] [allow_missing_videos=true] [workers=N]

``--root`` defaults to ``$FEDVID_DATA_ROOT`` or ``./data`` (the same default as
``data_root`` in ``conf/config.yaml``). Without ``--force`` a matching cached generation
is reused (see docs/synthetic-data.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmark.data.synthetic import GENERATOR_VERSION, SIZE_PRESETS, ensure_synthetic, generate_synthetic


def default_data_root() -> Path:
    return Path(os.environ.get("FEDVID_DATA_ROOT") or Path.cwd() / "data")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedvid data",
        description="Synthetic dataset tools; the dataset doctor.",
        epilog="fedvid data check dataset=NAME [data_root=DIR] ...: see `fedvid data check --help`",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check a dataset's videos (key=value arguments; see `fedvid data check --help`)")
    gen = sub.add_parser(
        "generate",
        help="generate the synthetic Kinetics/UCF101/HMDB51-style sets",
        description="Generate the synthetic sets under ROOT/synthetic (reused when cached).",
    )
    gen.add_argument("--size", choices=sorted(SIZE_PRESETS), default="default", help="size preset (default: default)")
    gen.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    gen.add_argument("--root", type=Path, default=None, help="data root (default: $FEDVID_DATA_ROOT or ./data)")
    gen.add_argument("--force", action="store_true", help="regenerate even if a matching cache exists")
    gen.add_argument(
        "--workers", type=int, default=None, help="render processes (default: 2; output does not depend on it)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "check":
        return check_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.seed < 0:
        raise SystemExit(f"fedvid data generate: --seed must be >= 0, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"fedvid data generate: --workers must be >= 1, got {args.workers}")
    root = args.root if args.root is not None else default_data_root()
    if args.force:
        info = generate_synthetic(root, size=args.size, seed=args.seed, workers=args.workers)
    else:
        info = ensure_synthetic(root, size=args.size, seed=args.seed, workers=args.workers)

    from rich.console import Console
    from rich.table import Table

    what = f"generated in {info.seconds:.1f} s" if info.generated else "up to date (cached; --force regenerates)"
    table = Table(title=f"synthetic data ({info.size}, seed {info.seed}, generator v{GENERATOR_VERSION}): {what}")
    for column in ("set", "classes", "videos", "train", "test/val", "path"):
        table.add_column(column)
    for s in info.sets.values():
        table.add_row(s.name, str(len(s.classes)), str(s.num_videos), str(s.num_train), str(s.num_test), str(s.root))
    Console().print(table)
    return 0


# --- fedvid data check ------------------------------------------------------------------------

CHECK_USAGE = """usage: fedvid data check dataset=NAME [data_root=DIR] [split_manifest=PATH] [allow_missing_videos=true] [workers=N]

Check every video of the dataset's lists (conf/dataset/NAME.yaml) and of the split
manifest if given (fedvid-split/1; its paths are under the same root): exists, non-empty,
container/codec, fps, rotation, frame count by a full decode, truncation, and whether
random access returns the sequential decode's frames. Results are cached per file under
DATA_ROOT/.fedvid-check (a second check only decodes changed files); the report goes to
DATA_ROOT/fedvid-check-<dataset id>.json and .txt. Exits 1 when a video is unusable
(missing, empty, truncated, undecodable, inexact) unless allow_missing_videos=true.
fedvid run / evaluate then refuse (or, with allow_missing_videos=true, skip and count) the
files this check found unusable."""

_CHECK_KEYS = ("dataset", "data_root", "split_manifest", "allow_missing_videos", "workers")


def _check_args(argv: list[str]) -> dict[str, str]:
    if any(a in ("-h", "--help") for a in argv):
        print(CHECK_USAGE)
        raise SystemExit(0)
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in _CHECK_KEYS:
            raise SystemExit(
                f"fedvid data check: unexpected argument {item!r}; expected key=value with key in "
                f"{', '.join(_CHECK_KEYS)}\n\n{CHECK_USAGE}"
            )
        args[key] = value
    if "dataset" not in args:
        raise SystemExit(f"fedvid data check: dataset=NAME is required (a conf/dataset option)\n\n{CHECK_USAGE}")
    if args.get("allow_missing_videos", "false").lower() not in ("true", "false"):
        raise SystemExit(
            f"fedvid data check: allow_missing_videos={args['allow_missing_videos']!r}: expected true or false"
        )
    if not args.get("workers", "2").isdigit() or int(args.get("workers", "2")) < 1:
        raise SystemExit(f"fedvid data check: workers={args['workers']!r}: expected a positive integer")
    return args


def dataset_config(name: str, data_root: Path):
    """conf/dataset/NAME.yaml resolved against ``data_root``; an unknown NAME lists the options."""
    from hydra import compose, initialize_config_dir

    import benchmark.config  # noqa: F401  (registers the ${project_root:} resolver)
    from benchmark import CONF_DIR

    options = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    if name not in options:
        raise SystemExit(f"fedvid data check: dataset={name!r}: expected one of {', '.join(options)} (conf/dataset)")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset={name}", f"data_root={data_root}"])
    return cfg.dataset


def check_main(argv: list[str]) -> int:
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from benchmark.data.annotations import load_annotations
    from benchmark.data.check import check_files, write_report
    from benchmark.data.resolve import MissingVideosError, resolve_videos

    args = _check_args(argv)
    data_root = Path(args.get("data_root") or default_data_root()).expanduser().resolve()
    allow_missing = args.get("allow_missing_videos", "false").lower() == "true"
    dataset = dataset_config(args["dataset"], data_root)
    split = load_annotations(dataset)
    listed = [*split.train, *split.test]
    if args.get("split_manifest"):
        from benchmark.data.records import VideoRecord
        from benchmark.splits.format import ManifestError, load_manifest

        try:
            manifest = load_manifest(args["split_manifest"])
        except ManifestError as e:
            raise SystemExit(f"fedvid data check: split_manifest={args['split_manifest']}: {e}") from None
        listed += [
            VideoRecord(path, int(label), "")
            for client in range(manifest.num_clients)
            for path, label in manifest.client_videos(client)
        ]
    records = list({r.path: r for r in listed}.values())  # each file once, lists first
    try:
        resolved = resolve_videos(
            records, dataset.root, allow_missing=True, show_progress=None if sys.stderr.isatty() else False
        )
    except MissingVideosError as e:  # nothing present at all: report every file as missing
        resolved = e.resolved
    except (FileNotFoundError, ValueError) as e:  # no dataset root; a list path leaving it
        raise SystemExit(f"fedvid data check: {e}") from None
    # files found (and those a previous check found unusable: checked again if changed)
    entries = [(record.path, file) for record, file in resolved.present]
    entries += [(p.path, p.file) for p in resolved.problems if p.reason == "unusable"]

    def check(progress=None):
        return check_files(
            str(dataset.id),
            str(dataset.root),
            entries,
            cache_root=data_root,
            workers=int(args.get("workers", 2)),
            progress=progress,
        )

    if sys.stderr.isatty():
        with Progress(
            TextColumn("checking videos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        ) as bar:
            task = bar.add_task("check", total=len(entries))
            report = check(lambda done, total: bar.update(task, completed=done))
    else:  # piped: no bar, the summary below is the output
        report = check()
    absent = [
        {
            "path": p.path,
            "file": str(p.file),
            "status": p.reason,
            "problems": [p.reason + (f" {p.detail}" if p.detail else "")],
        }
        for p in resolved.problems
        if p.reason in ("missing", "empty")
    ]
    report.results = absent + report.results
    json_path, text_path = write_report(report, data_root)
    print(report.summary_text())
    print(f"report: {json_path} (summary: {text_path})")
    if report.unusable and not allow_missing:
        print(
            f"fedvid data check: {len(report.unusable)} videos are missing, empty or unusable; fix them, or set "
            "allow_missing_videos=true to run on the usable ones (skipped videos are counted in results)",
            file=sys.stderr,
        )
        return 1
    return 0
