"""``fedvid data``: generate the synthetic datasets.

    fedvid data generate [--size tiny|default] [--seed N] [--root DIR] [--force] [--workers N]

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
    parser = argparse.ArgumentParser(prog="fedvid data", description="Synthetic dataset tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate the synthetic Kinetics/UCF101/HMDB51-style sets",
                         description="Generate the synthetic sets under ROOT/synthetic (reused when cached).")
    gen.add_argument("--size", choices=sorted(SIZE_PRESETS), default="default", help="size preset (default: default)")
    gen.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    gen.add_argument("--root", type=Path, default=None,
                     help="data root (default: $FEDVID_DATA_ROOT or ./data)")
    gen.add_argument("--force", action="store_true", help="regenerate even if a matching cache exists")
    gen.add_argument("--workers", type=int, default=None, help="render processes (default: 2; output does not depend on it)")
    return parser


def main(argv: list[str] | None = None) -> int:
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
