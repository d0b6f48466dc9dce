"""The one evaluation code path every method goes through (``evaluate_backbone``).

For each downstream dataset of the :class:`~benchmark.evaluation.spec.EvaluationSpec` (split 1 train/test):
features (cached) -> retrieval Top-k (+ chance level) -> representation metrics ->
linear probe -> fine-tuning (optional) -> perturbation robustness (optional); then the
random-init baseline (optional), PNG plots and a summary table. The returned dict is what
the runner stores under ``evaluations`` in result.json; docs/evaluation.md documents it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.device import resolve_device
from benchmark.evaluation.features import (
    ClipSource,
    SplitFeatures,
    cached_features,
    compute_features,
    feature_threads,
    state_dict_sha256,
)
from benchmark.evaluation.linear_probe import linear_probe
from benchmark.evaluation.representation import representation_metrics
from benchmark.evaluation.retrieval import chance_topk, retrieval_topk, topk_key
from benchmark.evaluation.robustness import check_grid, perturbed_copy, summarize_curve
from benchmark.evaluation.spec import DownstreamDatasetSpec, EvaluationSpec, RobustnessSpec
from benchmark.io import sha256_bytes
from benchmark.models.backbones import with_layout

#: Version of the structure returned by evaluate_backbone (documented in docs/evaluation.md).
EVALUATION_FORMAT = "fedvid-eval/1"


@dataclass
class Downstream:
    """One downstream dataset, resolved: its id (config name), classes and (path, label) lists."""

    id: str
    name: str
    split: str
    classes: list[str]
    train: list
    test: list
    skipped: dict


def load_downstream(
    dataset: DownstreamDatasetSpec,
    *,
    data_root: Path,
    synthetic_size: str = "default",
    allow_missing_videos: bool = False,
) -> Downstream:
    """Annotations of split ``dataset.split`` of a downstream dataset, mapped to files under its root.

    Synthetic sets are generated on first use under ``data_root`` (``ensure_synthetic``, preset
    ``synthetic_size``); missing videos are an error unless ``allow_missing_videos``.
    """
    from benchmark.data.annotations import load_annotations
    from benchmark.data.resolve import resolve_videos

    ds = dataset.config
    if dataset.synthetic and not Path(str(ds["annotations"])).exists():
        # Generated on first use; an existing stamp (e.g. size=tiny in tests) is kept as is.
        from benchmark.data.synthetic import ensure_synthetic

        ensure_synthetic(data_root, size=synthetic_size, seed=0)
    split = load_annotations(ds)
    train = resolve_videos(split.train, dataset.root, allow_missing=allow_missing_videos)
    test = resolve_videos(split.test, dataset.root, allow_missing=allow_missing_videos)
    return Downstream(
        id=dataset.id,
        name=split.dataset,
        split=str(split.split),
        classes=list(split.classes),
        train=[(path, record.label) for record, path in train.present],
        test=[(path, record.label) for record, path in test.present],
        skipped={"train": train.summary(), "test": test.summary()},
    )


def _cache_id(weights_sha256: str, layout: str) -> str:
    """Feature-cache model id: the weights' hash, plus the layout when it is not the pretraining one
    (same weights, other strides, other features)."""
    return weights_sha256 if layout == "pretraining" else sha256_bytes(f"{weights_sha256}|layout={layout}".encode())


def random_init_copy(backbone: nn.Module, seed: int) -> nn.Module:
    """Same architecture, weights re-initialised by each module's ``reset_parameters``.

    The global RNG is forked (and restored afterwards) and seeded with ``seed``, so the
    baseline is reproducible without touching the caller's random state.
    """
    model = copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in model.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
        # honour the backbone's own init scheme (e.g. CtP's Kaiming fan_out) when it has one
        if hasattr(model, "_init_weights"):
            model._init_weights()
    return model


def random_init_model(backbone: nn.Module, spec: EvaluationSpec, device: torch.device) -> tuple[nn.Module, str] | None:
    """The random-init baseline of ``spec`` for ``backbone``'s architecture (in the protocol's
    layout) and its feature-cache id, or None when ``spec`` asks for no baseline. Its weights
    depend on the architecture and ``random_init_seed`` only, not on ``backbone``'s values."""
    if spec.random_init_seed is None:
        return None
    model = random_init_copy(with_layout(backbone, spec.backbone_layout), spec.random_init_seed).to(device)
    return model, _cache_id(state_dict_sha256(model), spec.backbone_layout)


def _retrieval_entry(train: SplitFeatures, test: SplitFeatures, ks: list[int]) -> dict:
    hits = retrieval_topk(test.video_features, test.labels, train.video_features, train.labels, ks)
    chance = chance_topk(test.labels, train.labels, ks)
    return {
        "ks": ks,
        **{topk_key(k): v for k, v in hits.items()},
        "chance": {topk_key(k): v for k, v in chance.items()},
        "chance_top1": chance[ks[0]] if ks[0] == 1 else chance_topk(test.labels, train.labels, (1,))[1],
        "num_queries": int(test.labels.numel()),
        "num_gallery": int(train.labels.numel()),
    }


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )


def evaluate_backbone(
    backbone: nn.Module,
    spec: EvaluationSpec,
    run_dir: Path,
    *,
    checkpoint_sha256: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a pretrained backbone as ``spec`` says (built from ``eval`` by the command).

    backbone: forward (B, 3, T, H, W) -> (B, C, T', H', W'); it is not modified (its
    train/eval mode is restored). run_dir: where plots go. checkpoint_sha256: recorded
    in the report (feature cache entries are keyed by the hash of the backbone's weights).

    Returns the ``evaluations`` block of a ``fedvid-result/1`` record (retrieval,
    linear_probe, finetune, robustness, representation, random_init; each entry with the
    ``protocol`` that produced it). See docs/evaluation.md.
    """
    return evaluate_backbone_report(backbone, spec, run_dir, checkpoint_sha256=checkpoint_sha256, progress=progress)[
        "evaluations"
    ]


def evaluate_backbone_report(
    backbone: nn.Module,
    spec: EvaluationSpec,
    run_dir: Path,
    *,
    checkpoint_sha256: str | None = None,
    progress: bool = True,
) -> dict:
    """As :func:`evaluate_backbone`, plus what does not belong in a result record.

    Returns {"format", "evaluations", "settings", "backbone_sha256", "checkpoint_sha256",
    "datasets" (per-dataset facts and timings), "plots", "wall_time_s"}.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    clip = spec.feature_clip
    device = resolve_device(spec.device, "eval.device")
    ks = list(spec.retrieval_ks)
    pooling = spec.pooling
    # Features are keyed by the backbone's weights themselves, so `fedvid run` and a later
    # `fedvid evaluate` of its checkpoint share cache entries.
    model_sha = state_dict_sha256(backbone)
    layout = spec.backbone_layout
    # Every evaluation sees the backbone in the protocol's layout (CtP: downstream strides, same weights).
    backbone = with_layout(backbone, layout)
    cache_id = _cache_id(model_sha, layout)
    cache_dir = spec.feature_cache_dir
    if spec.robustness.enabled:
        check_grid(list(spec.robustness.ks), list(spec.robustness.seeds))

    settings = copy.deepcopy(dict(spec.settings))
    settings["clip_resolved"] = asdict(clip)
    settings["finetune_clip_resolved"] = asdict(spec.finetune_clip)
    settings["backbone_layout"] = layout
    settings["protocol_id"] = dict(spec.protocol_id)
    out: dict = {
        "format": EVALUATION_FORMAT,
        "settings": settings,
        "backbone_sha256": model_sha,
        "checkpoint_sha256": checkpoint_sha256,
        "datasets": {},
        "retrieval": {},
        "representation": {},
        "linear_probe": {},
    }
    if spec.finetune.enabled:
        out["finetune"] = {}
    if spec.robustness.enabled:
        out["robustness"] = {}
    baseline = random_init_model(backbone, spec, device)  # (model, feature-cache id) or None
    if baseline is not None:
        out["random_init"] = {"seed": spec.random_init_seed, "retrieval": {}, "linear_probe": {}}

    original_device = next(backbone.parameters()).device
    backbone.to(device)
    saved_threads = torch.get_num_threads()
    if spec.num_threads:
        # Small 3-D convolutions on a busy CPU run many times faster on one thread.
        torch.set_num_threads(spec.num_threads)
    parallel = feature_threads(device, spec.num_threads)
    try:
        with _progress(progress) as bar:
            for dataset in spec.datasets:
                ds = load_downstream(
                    dataset,
                    data_root=spec.data_root,
                    synthetic_size=spec.synthetic_size,
                    allow_missing_videos=spec.allow_missing_videos,
                )
                _evaluate_dataset(
                    backbone, baseline, ds, spec, clip, pooling, ks, device, cache_id, cache_dir, bar, out, parallel
                )
    finally:
        backbone.to(original_device)
        torch.set_num_threads(saved_threads)

    from benchmark.evaluation.plots import plot_confusion_matrix, plot_perturbation_curves, plot_retrieval_bars

    plots = {}
    if spec.plots:
        random_bars = out["random_init"]["retrieval"] if baseline is not None else None
        plots["retrieval"] = plot_retrieval_bars(out["retrieval"], run_dir / "retrieval_topk.png", random_bars)
        if out.get("robustness"):
            plots["perturbation"] = plot_perturbation_curves(out["robustness"], run_dir / "perturbation_curves.png")
        for name, lp in out["linear_probe"].items():
            plots[f"confusion_{name}"] = plot_confusion_matrix(
                lp["confusion_matrix"],
                out["datasets"][name]["classes"],
                f"{name} linear probe (video level)",
                run_dir / f"confusion_linear_probe_{name}.png",
            )
    out["plots"] = {k: str(Path(p).relative_to(run_dir)) for k, p in plots.items()}
    out["wall_time_s"] = round(time.perf_counter() - started, 3)
    if progress:
        print_summary(out)
    report = {
        k: out[k]
        for k in ("format", "settings", "backbone_sha256", "checkpoint_sha256", "datasets", "plots", "wall_time_s")
    }
    report["evaluations"] = record_block(out)
    return report


#: eval.finetune keys recorded in each fine-tuning entry's protocol.
FINETUNE_PROTOCOL_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "milestones",
    "gamma",
    "dropout",
    "seed",
    "grad_clip_norm",
    "train_short_sides",
    "flip_prob",
    "color",
    "head_init_std",
)


def record_block(out: dict) -> dict:
    """The internal results -> the ``evaluations`` structure of the result schema.

    Numbers that are metrics stay at the entry's top level (the leaderboard flattens
    numeric leaves); everything describing how they were produced goes under ``protocol``.
    """
    settings = out["settings"]
    clip = settings["clip_resolved"]

    def protocol(ds_id: str, **extra) -> dict:
        meta = out["datasets"][ds_id]
        return {
            **settings["protocol_id"],
            "dataset": meta["name"],
            "split": meta["split"],
            "num_train": meta["num_train"],
            "num_test": meta["num_test"],
            "num_classes": meta["num_classes"],
            "pooling": settings["pooling"],
            "feature_dim": meta["feature_dim"],
            "backbone_sha256": out["backbone_sha256"],
            "backbone_layout": settings["backbone_layout"],
            **clip,
            **extra,
        }

    def retrieval(ds_id: str, r: dict) -> dict:
        return {
            "split": out["datasets"][ds_id]["split"],
            "topk": {str(k): r[topk_key(k)] for k in r["ks"]},
            "chance_top1": r["chance_top1"],
            "chance_topk": {str(k): r["chance"][topk_key(k)] for k in r["ks"]},
            "protocol": protocol(
                ds_id,
                query="test",
                gallery="train",
                similarity="cosine",
                ties="gallery order",
                num_queries=r["num_queries"],
                num_gallery=r["num_gallery"],
            ),
        }

    accuracy_keys = (
        "clip_top1",
        "clip_top5",
        "clip_mean_class_accuracy",
        "video_top1",
        "video_top5",
        "video_mean_class_accuracy",
    )
    lp_cfg = settings["linear_probe"]

    def probe(ds_id: str, lp: dict) -> dict:
        entry = {"split": out["datasets"][ds_id]["split"], **{k: lp[k] for k in accuracy_keys}}
        if "confusion_matrix" in lp:
            entry["confusion_matrix"] = lp["confusion_matrix"]
        entry["protocol"] = protocol(
            ds_id,
            classifier="multinomial logistic regression, L-BFGS, standardised clip features",
            weight_decay=lp["weight_decay"],
            val_top1_by_weight_decay=lp["val_top1_by_weight_decay"],
            weight_decays=lp_cfg["weight_decays"],
            val_fraction=lp_cfg["val_fraction"],
            seed=lp_cfg["seed"],
            max_iter=lp_cfg["max_iter"],
        )
        return entry

    block: dict = {"retrieval": {}, "linear_probe": {}, "representation": {}}
    for ds_id, r in out["retrieval"].items():
        block["retrieval"][ds_id] = retrieval(ds_id, r)
    for ds_id, lp in out["linear_probe"].items():
        block["linear_probe"][ds_id] = probe(ds_id, lp)
    for ds_id, rep in out["representation"].items():
        metrics = {k: v for k, v in rep.items() if k not in ("feature_dim", "num_videos")}
        block["representation"][ds_id] = {
            **metrics,
            "protocol": protocol(
                ds_id,
                features="video features (mean over clips) of train + test",
                num_videos=rep["num_videos"],
                alignment_pairs="clip 0 and clip N-1 of each video",
                uniformity_t=2,
            ),
        }
    if "finetune" in out:
        ft_cfg = settings["finetune"]
        block["finetune"] = {
            ds_id: {
                "split": out["datasets"][ds_id]["split"],
                **{k: ft[k] for k in accuracy_keys},
                "train_loss": ft["train_loss"],
                "protocol": {
                    **protocol(
                        ds_id,
                        **{k: ft_cfg[k] for k in FINETUNE_PROTOCOL_KEYS if k in ft_cfg},
                        lr_per_epoch=ft["lr"],
                        train_clips_per_video_per_epoch=1,
                        pooling="avg (classifier head)",
                    ),
                    **settings["finetune_clip_resolved"],
                },
            }
            for ds_id, ft in out["finetune"].items()
        }
    if "robustness" in out:
        block["robustness"] = {}
        for ds_id, rb in out["robustness"].items():
            curve = [
                {
                    "k": k,
                    "top1_mean": rb["top1_mean"][i],
                    "top1_std": rb["top1_std"][i],
                    "top5_mean": rb["top5_mean"][i],
                    "top5_std": rb["top5_std"][i],
                    "top1_by_seed": [row[i] for row in rb["top1_by_seed"]],
                    "top5_by_seed": [row[i] for row in rb["top5_by_seed"]],
                }
                for i, k in enumerate(rb["ks"])
            ]
            entry = {
                "curve": curve,
                "k_half": rb["k_half"],
                "k_half_text": rb["k_half_text"],
                "clean_top1": rb["clean_top1"],
                "clean_top5": rb["clean_top5"],
            }
            if rb["area_top1_normalized"] is not None:
                entry["auc_norm"] = rb["area_top1_normalized"]
            entry["protocol"] = protocol(
                ds_id,
                direction=rb["direction"],
                seeds=rb["seeds"],
                ks=rb["ks"],
                perturbed="floating-point parameters (not buffers)",
                clips_in_memory=rb["clips_in_memory"],
            )
            block["robustness"][ds_id] = entry
    if "random_init" in out:
        ri = out["random_init"]
        block["random_init"] = {
            "seed": ri["seed"],
            "retrieval": {ds_id: retrieval(ds_id, r) for ds_id, r in ri["retrieval"].items()},
            "linear_probe": {ds_id: probe(ds_id, lp) for ds_id, lp in ri["linear_probe"].items()},
        }
    return block


def _evaluate_dataset(
    backbone,
    baseline: tuple[nn.Module, str] | None,
    ds: Downstream,
    spec: EvaluationSpec,
    clip,
    pooling,
    ks,
    device,
    model_sha,
    cache_dir,
    bar,
    out,
    parallel: int = 1,
) -> None:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    num_classes = len(ds.classes)
    sources = {
        split: ClipSource(
            videos,
            clip,
            batch_size=spec.batch_size,
            num_workers=spec.num_workers,
            max_bytes=spec.clip_cache_max_mib << 20,
            description=f"{ds.id}/{split}",
        )
        for split, videos in (("train", ds.train), ("test", ds.test))
    }

    def features_of(model, sha: str) -> dict[str, tuple]:
        """split -> (features, from cache) of ``model`` on this dataset's decoded clips."""
        return {
            split: cached_features(
                model,
                source,
                model_sha256=sha,
                dataset_id=ds.id,
                split=split,
                pooling=pooling,
                device=device,
                cache_dir=cache_dir,
                progress=bar,
                parallel=parallel,
            )
            for split, source in sources.items()
        }

    trained = features_of(backbone, model_sha)
    feats = {split: f for split, (f, _) in trained.items()}
    cached = {split: hit for split, (_, hit) in trained.items()}
    timings["features"] = time.perf_counter() - t0
    out["datasets"][ds.id] = {
        "name": ds.name,
        "split": ds.split,
        "classes": ds.classes,
        "num_classes": num_classes,
        "num_train": len(ds.train),
        "num_test": len(ds.test),
        "videos": ds.skipped,
        "feature_dim": int(feats["train"].features.shape[-1]),
        "features_from_cache": cached,
    }

    t = time.perf_counter()
    out["retrieval"][ds.id] = _retrieval_entry(feats["train"], feats["test"], ks)
    timings["retrieval"] = time.perf_counter() - t

    t = time.perf_counter()
    both = torch.cat([feats["train"].features, feats["test"].features])
    out["representation"][ds.id] = representation_metrics(both)
    timings["representation"] = time.perf_counter() - t

    lp_kwargs = spec.linear_probe.fit_kwargs()
    if spec.linear_probe.enabled:
        t = time.perf_counter()
        out["linear_probe"][ds.id] = linear_probe(feats["train"], feats["test"], num_classes, **lp_kwargs)
        timings["linear_probe"] = time.perf_counter() - t

    if baseline is not None:
        t = time.perf_counter()
        rfeats = {split: f for split, (f, _) in features_of(*baseline).items()}
        out["random_init"]["retrieval"][ds.id] = _retrieval_entry(rfeats["train"], rfeats["test"], ks)
        if spec.linear_probe.enabled:
            lp = linear_probe(rfeats["train"], rfeats["test"], num_classes, **lp_kwargs)
            lp.pop("confusion_matrix")
            out["random_init"]["linear_probe"][ds.id] = lp
        timings["random_init"] = time.perf_counter() - t

    if spec.finetune.enabled:
        from benchmark.evaluation.finetune import finetune

        t = time.perf_counter()
        out["finetune"][ds.id] = finetune(
            backbone,
            ds,
            spec.finetune,
            spec.finetune_clip,
            device,
            test_batch_size=spec.batch_size,
            test_num_workers=spec.num_workers,
            progress=bar,
        )
        timings["finetune"] = time.perf_counter() - t

    if spec.robustness.enabled:
        t = time.perf_counter()
        out["robustness"][ds.id] = robustness_curve(
            backbone, sources, feats, ks, pooling, device, spec.robustness, bar, parallel
        )
        timings["robustness"] = time.perf_counter() - t
    out["datasets"][ds.id]["seconds"] = {k: round(v, 3) for k, v in timings.items()}


def robustness_curve(
    backbone,
    sources: dict[str, ClipSource],
    clean: dict[str, SplitFeatures],
    ks,
    pooling,
    device,
    robustness: RobustnessSpec,
    bar=None,
    parallel: int = 1,
) -> dict:
    """Retrieval Top-1/Top-5 of perturbed copies over the (k, seed) grid; see robustness.py.

    k = 0 leaves the weights unchanged: its features are the clean ones (bit for bit, the
    same clips through the same weights), so its row is the clean retrieval, not recomputed.
    """
    grid = [float(k) for k in robustness.ks]
    seeds = [int(s) for s in robustness.seeds]
    direction = str(robustness.direction)
    measure_ks = sorted({1, 5} | {k for k in ks if k <= 5})
    clean_hits = retrieval_topk(
        clean["test"].video_features,
        clean["test"].labels,
        clean["train"].video_features,
        clean["train"].labels,
        measure_ks,
    )
    rows = {"top1": [[0.0] * len(grid) for _ in seeds], "top5": [[0.0] * len(grid) for _ in seeds]}
    task = bar.add_task("perturbation", total=len(grid) * len(seeds)) if bar is not None else None
    for j, k in enumerate(grid):
        for i, seed in enumerate(seeds):
            if k == 0:
                hits = clean_hits
            else:
                model = perturbed_copy(backbone, k, seed, direction)
                f = {s: compute_features(model, src, pooling, device, parallel=parallel) for s, src in sources.items()}
                hits = retrieval_topk(
                    f["test"].video_features, f["test"].labels, f["train"].video_features, f["train"].labels, (1, 5)
                )
                del model
            rows["top1"][i][j] = hits[1]
            rows["top5"][i][j] = hits[5]
            if task is not None:
                bar.advance(task)
    if task is not None:
        bar.remove_task(task)
    summary = summarize_curve(grid, rows, clean_hits[1])
    summary.update(
        direction=direction,
        seeds=seeds,
        clean_top5=clean_hits[5],
        clips_in_memory={s: src.in_memory for s, src in sources.items()},
    )
    return summary


def print_summary(out: dict) -> None:
    """Rich table of the headline numbers (percentages)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="FedVid-Bench evaluation", show_lines=False)
    table.add_column("metric")
    names = list(out["datasets"])
    for name in names:
        table.add_column(name, justify="right")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def row(label, fn):
        values = []
        for n in names:
            try:
                values.append(fn(n))
            except (KeyError, TypeError):
                values.append("-")
        table.add_row(label, *values)

    for k in out["retrieval"][names[0]]["ks"] if names else []:
        row(f"retrieval Top-{k} (%)", lambda n, k=k: pct(out["retrieval"][n][topk_key(k)]))
    if "random_init" in out:
        row("  random init Top-1 (%)", lambda n: pct(out["random_init"]["retrieval"][n]["top1"]))
    row("  chance Top-1 (%)", lambda n: pct(out["retrieval"][n]["chance_top1"]))
    row("linear probe video top-1 (%)", lambda n: pct(out["linear_probe"][n]["video_top1"]))
    row("linear probe clip top-1 (%)", lambda n: pct(out["linear_probe"][n]["clip_top1"]))
    if "random_init" in out:
        row("  random init LP video top-1 (%)", lambda n: pct(out["random_init"]["linear_probe"][n]["video_top1"]))
    if "finetune" in out:
        row("fine-tune video top-1 (%)", lambda n: pct(out["finetune"][n]["video_top1"]))
        row("fine-tune clip top-1 (%)", lambda n: pct(out["finetune"][n]["clip_top1"]))
    if "robustness" in out:
        row("perturbation area (Top-1)", lambda n: f"{out['robustness'][n]['area_top1_normalized']:.3f}")
        row("perturbation k½", lambda n: out["robustness"][n]["k_half_text"])
    row("alignment", lambda n: f"{out['representation'][n]['alignment']:.3f}")
    row("uniformity", lambda n: f"{out['representation'][n]['uniformity']:.3f}")
    row("effective rank (centred)", lambda n: f"{out['representation'][n]['effective_rank_centered']:.1f}")
    row(
        "mean dim std (l2) ×√d",
        lambda n: f"{out['representation'][n]['mean_dim_std_l2'] / out['representation'][n]['healthy_dim_std_l2']:.2f}",
    )
    Console().print(table)
