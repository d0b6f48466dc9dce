"""``fedvid splits``: make, inspect and verify ``fedvid-split/1`` manifests.

    fedvid splits make dataset=ucf101 partition=dirichlet partition.alpha=0.1 \\
        partition.num_clients=10 seed=0 out=PATH        # Hydra overrides (conf/splits.yaml)
    fedvid splits stats PATH [--png OUT.png]            # per-client table + client x class heat-map
    fedvid splits verify [PATH ...]                     # default: every committed manifest
    fedvid splits make-standard [--only SUBSTRING]      # regenerate datasets/*/splits/
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

USAGE = __doc__ or ""


def compose_splits_config(overrides: Sequence[str]) -> Any:
    """Compose ``conf/splits.yaml`` with Hydra overrides, as ``fedvid splits make`` does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import benchmark.config  # noqa: F401  (registers the ${project_root:} resolver)
    from benchmark import CONF_DIR

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="splits", overrides=list(overrides))


def make_from_overrides(overrides: Sequence[str], cache: dict | None = None) -> dict[str, Any]:
    """Compose the config, read the annotations and make the manifest (``make-standard``, tests)."""
    from benchmark.splits.make import dataset_choice, input_overrides, make_manifest
    from benchmark.splits.verify import annotations_for

    cfg = compose_splits_config(overrides)
    annotations = annotations_for(cfg, cache)
    return make_manifest(
        annotations,
        cfg.partition,
        int(cfg.seed),
        dataset_choice=dataset_choice(overrides),
        inputs=input_overrides(overrides),
    )


def _make_task(cfg: Any) -> int:
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console

    from benchmark.data.annotations import load_annotations
    from benchmark.splits.format import write_manifest
    from benchmark.splits.make import input_overrides, make_manifest

    try:
        annotations = load_annotations(cfg.dataset)
        choice = HydraConfig.get().runtime.choices.get("dataset")
        manifest = make_manifest(
            annotations,
            cfg.partition,
            int(cfg.seed),
            dataset_choice=choice,
            inputs=input_overrides(HydraConfig.get().overrides.task),
        )
        out = Path(cfg.out) if cfg.out else Path(f"{manifest['manifest_id']}.json")
        write_manifest(manifest, out)
    except (ValueError, FileNotFoundError) as e:  # PartitionError, ManifestError, bad lists
        print(f"fedvid splits make: error: {e}", file=sys.stderr)
        return 1
    props = manifest["properties"]
    Console().print(
        f"wrote [bold]{out}[/bold] ({manifest['manifest_id']}): {manifest['num_clients']} clients, "
        f"{props['total_entries']:,} videos, content_sha256 {manifest['content_sha256'][:16]}…"
    )
    return 0


def make_main(argv: list[str]) -> int:
    from benchmark.config import hydra_entry

    return hydra_entry("fedvid splits make", "splits", _make_task, argv)


def _entropy_bits(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0


def heatmap_png(manifest: Any, out: Path) -> Path:
    """Client x class count matrix as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmark.io import atomic_write_bytes

    data = manifest.data
    counts = np.zeros((data["num_clients"], data["num_classes"]), dtype=np.int64)
    for row in data["statistics"]["clients"]:
        for label, n in row["class_counts"]:
            counts[row["client_id"], label] = n
    fig, ax = plt.subplots(figsize=(min(16, 4 + data["num_classes"] / 25), min(12, 2 + data["num_clients"] / 8)))
    image = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("class label")
    ax.set_ylabel("client id")
    ax.set_title(f"{manifest.manifest_id}: videos per client and class")
    fig.colorbar(image, ax=ax, label="videos")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())


def stats_main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from benchmark.splits.format import ManifestError, load_manifest

    parser = argparse.ArgumentParser(prog="fedvid splits stats", description="per-client sizes and class counts")
    parser.add_argument("path", type=Path, help="manifest (.json or .json.gz)")
    parser.add_argument("--png", type=Path, default=None, help="heat-map output (default: <manifest_id>.png here)")
    parser.add_argument("--top", type=int, default=3, help="largest classes listed per client")
    args = parser.parse_args(argv)
    console = Console()
    try:
        manifest = load_manifest(args.path)
    except ManifestError as e:
        console.print(f"[red]error:[/red] {e}")
        return 1
    data = manifest.data
    table = Table(title=f"{manifest.manifest_id} ({data['partitioner']}, {data['num_clients']} clients)")
    for col in ("client", "videos", "classes", "label entropy (bits)", f"top {args.top} classes (label:count)"):
        table.add_column(col, justify="right" if col != f"top {args.top} classes (label:count)" else "left")
    for row in data["statistics"]["clients"]:
        counts = row["class_counts"]
        top = sorted(counts, key=lambda lc: (-lc[1], lc[0]))[: args.top]
        table.add_row(
            str(row["client_id"]),
            f"{row['num_videos']:,}",
            str(row["num_classes"]),
            f"{_entropy_bits([n for _, n in counts]):.2f}",
            " ".join(f"{label}:{n}" for label, n in top),
        )
    console.print(table)
    console.print(data["properties"]["notes"])
    png = heatmap_png(manifest, args.png or Path(f"{manifest.manifest_id}.png"))
    console.print(f"heat-map: {png}")
    return 0


def verify_main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.progress import track

    from benchmark.splits.standard import committed_manifests
    from benchmark.splits.verify import verify_manifest

    parser = argparse.ArgumentParser(prog="fedvid splits verify", description="check split manifests")
    parser.add_argument("paths", nargs="*", type=Path, help="manifests (default: every committed one)")
    parser.add_argument("--no-regenerate", action="store_true", help="skip the byte-for-byte regeneration check")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    paths = args.paths or committed_manifests()
    if not paths:
        console.print("[red]error:[/red] no manifests to verify")
        return 1
    bad = 0
    cache: dict = {}  # each dataset's lists are read once
    for path in track(paths, description="verifying", console=console, transient=True):
        problems = verify_manifest(path, compose_splits_config, regenerate=not args.no_regenerate, cache=cache)
        if problems:
            bad += 1
            for p in problems:
                console.print(f"[red]FAIL[/red] {p}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]ok[/green]   {path}", highlight=False, soft_wrap=True)
    console.print(f"{len(paths) - bad} of {len(paths)} manifests ok")
    return 1 if bad else 0


def make_standard_main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.progress import track

    from benchmark import PROJECT_ROOT
    from benchmark.splits.format import write_manifest
    from benchmark.splits.standard import STANDARD_SPLITS, standard_manifest_path

    parser = argparse.ArgumentParser(prog="fedvid splits make-standard", description="regenerate datasets/*/splits/")
    parser.add_argument("--only", default=None, help="only specs whose overrides contain this text")
    args = parser.parse_args(argv)
    console = Console()
    specs = [s for s in STANDARD_SPLITS if args.only is None or args.only in " ".join(s.overrides)]
    cache: dict = {}  # each dataset's lists are read once
    for spec in track(specs, description="making standard splits", console=console):
        published = [o.split("=", 1)[1] for o in spec.overrides if o.startswith("partition.path=")]
        if published and not (PROJECT_ROOT / published[0]).exists():
            console.print(
                f"[yellow]skipped[/yellow] {' '.join(spec.overrides)}: {PROJECT_ROOT / published[0]} not found"
            )
            continue
        manifest = make_from_overrides(spec.overrides, cache)
        path = write_manifest(manifest, standard_manifest_path(manifest, spec.compress))
        console.print(f"{path} ({path.stat().st_size:,} bytes)", highlight=False)
    return 0


COMMANDS = {"make": make_main, "stats": stats_main, "verify": verify_main, "make-standard": make_standard_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] not in COMMANDS:
        print(f"fedvid splits: unknown subcommand {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
