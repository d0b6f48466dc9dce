"""``fedvid run``: federated pretraining with Flower, then evaluation and the result record.

    fedvid run                                  # the embedded default (CtP, tiny R3D, 5 clients)
    fedvid run method=ctp aggregator=fvssl federation.rounds=20
    fedvid run -m seed=0,1,2                    # Hydra multirun: one run dir per seed
    fedvid run resume=true hydra.run.dir=PATH   # continue a killed run from its last round

Each run has its own directory (Hydra: ``outputs/<date>/<time>``): ``config.yaml`` /
``config.json`` (the resolved config, which is what the Flower apps read),
``split_manifest.json``, ``rounds.jsonl``, ``checkpoints/``, ``flower.log``, ``logs/``,
``result.json`` and the evaluation plots.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark import rundir
from benchmark.config import debug_enabled, error_lines, hydra_entry, to_container
from benchmark.io import atomic_write_json, atomic_write_text, canonical_json_bytes, read_json, sha256_bytes
from leaderboard.record import ResultRecord, utc_now


class RunError(RuntimeError):
    """A user-facing problem (bad config value, missing data); printed without a traceback."""


def main(argv: list[str] | None = None) -> int:
    from benchmark.federation.sweep import SweepInterrupted

    try:
        return hydra_entry("fedvid run", "config", run_task, list(sys.argv[1:] if argv is None else argv))
    except SweepInterrupted:  # the job printed what it stopped; the sweep's instance is stopped at exit
        return 130


def run_task(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console

    console = Console(stderr=False)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = dict(HydraConfig.get().runtime.choices)
    try:
        execute_run(cfg, run_dir, console=console, dataset_choice=choices.get("dataset"))
    except Exception as e:
        if debug_enabled():
            raise
        from rich.text import Text

        # soft_wrap: paths and keys in the message stay whole (copy-pasteable)
        console.print(Text(error_lines("fedvid run", e), style="red"), soft_wrap=True)
        console.print(Text(f"run directory: {run_dir}"), soft_wrap=True)
        if resumable(e):
            console.print(Text(f"continue with: {resume_command(run_dir)}"), soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        from benchmark.federation import sweep

        console.print(
            f"interrupted; every Flower/Ray process of the run was stopped. Continue with: {resume_command(run_dir)}",
            soft_wrap=True,
            markup=False,
        )
        if sweep.active() is not None:  # Ctrl-C ends the whole sweep, not only this job
            console.print("the sweep stops here (its later jobs were not run)", soft_wrap=True, markup=False)
            raise sweep.SweepInterrupted() from None
        return 130
    return 0


def resumable(e: Exception) -> bool:
    """Whether ``resume=true`` can help: a run stopped by something outside its config (a
    crash, a timeout) or an evaluation to redo, not a deterministic failure such as a
    diverged model, a bad value or a refused directory, which a resume would only repeat.
    Errors say so with a ``resumable`` attribute (FederationError, EvaluationFailed)."""
    return bool(getattr(e, "resumable", False))


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: its own overrides (data root, sizes...) plus resume=true."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    return " ".join(
        ["fedvid run", *map(shlex.quote, overrides), "resume=true", f"hydra.run.dir={shlex.quote(str(run_dir))}"]
    )


# ------------------------------------------------------------------------------------
# Preparation: data, manifest, config (nothing is written into the run dir before the checks)
# ------------------------------------------------------------------------------------


def prepare_data(cfg: DictConfig, console=None) -> None:
    """Generate the synthetic datasets when the pretraining set is synthetic and missing."""
    if cfg.dataset.get("synthetic", False) and cfg.dataset.get("modality") == "image":
        from benchmark.data.images import ensure_standin

        ensure_standin(cfg.dataset)
    elif cfg.dataset.get("synthetic", False):
        from benchmark.data.synthetic import ensure_synthetic

        ensure_synthetic(
            cfg.data_root, size=str(cfg.get("synthetic_size", "default")), seed=0, progress=console is not None
        )
    root = Path(str(cfg.dataset.root))
    if not root.is_dir():
        raise RunError(
            f"dataset.root={root} does not exist. Lay the videos out as in datasets/README.md and set "
            "dataset.root=PATH (or data_root=PATH / FEDVID_DATA_ROOT for all datasets)."
        )


def prepare_manifest(cfg: DictConfig, run_dir: Path, annotations, dataset_choice: str | None = None):
    """The run's split manifest, in memory (written by the caller once every check passed).

    Source: ``split_manifest`` (a file), else on resume the run dir's own copy, else made from
    ``partition``. Checks: dataset, client count == ``federation.num_clients``, no empty
    client, every video is in the dataset's train list and present under ``dataset.root``.
    """
    from benchmark.data.resolve import resolve_videos
    from benchmark.splits.format import SplitManifest, load_manifest, validate_manifest_data
    from benchmark.splits.make import input_overrides, make_manifest

    target = run_dir / rundir.MANIFEST
    if cfg.get("split_manifest"):
        source = Path(str(cfg.split_manifest))
        if not source.is_file():
            raise RunError(f"split_manifest={source}: no such file (a fedvid-split/1 manifest, see `fedvid splits`)")
        manifest = load_manifest(source)
    elif target.is_file() and cfg.get("resume", False):
        manifest = load_manifest(target)
    else:
        data = make_manifest(
            annotations,
            cfg.partition,
            int(cfg.seed),
            dataset_choice=dataset_choice,
            inputs=input_overrides(_task_overrides()),
        )
        validate_manifest_data(data, target)
        manifest = SplitManifest(path=target, data=data)
    where = manifest.path
    if manifest.dataset != annotations.dataset:
        raise RunError(
            f"split manifest {where} is for dataset {manifest.dataset!r} but dataset.id={annotations.dataset!r}; "
            "use a manifest made for this dataset (fedvid splits make dataset=...) or change `dataset=`"
        )
    num_clients = int(cfg.federation.num_clients)
    if manifest.num_clients != num_clients:
        raise RunError(
            f"split manifest {where} has {manifest.num_clients} clients but federation.num_clients={num_clients}; "
            f"set partition.num_clients={manifest.num_clients} (federation.num_clients follows it)"
        )
    empty = [c for c in range(num_clients) if not manifest.client_videos(c)]
    if empty:
        raise RunError(
            f"split manifest {where}: clients {empty[:10]} have no videos; every client needs at least one "
            "(fewer clients: partition.num_clients=N)"
        )
    train_paths = {r.path: r for r in annotations.train}
    listed = [(rel, lab) for c in range(num_clients) for rel, lab in manifest.client_videos(c)]
    unknown = [rel for rel, _ in listed if rel not in train_paths]
    if unknown:
        raise RunError(
            f"split manifest {where} names {len(unknown)} videos that are not in the train list of dataset "
            f"{annotations.dataset!r} (e.g. {unknown[:3]}); it does not match this dataset's annotations"
        )
    if cfg.dataset.get("modality") == "image":  # image track: items checked against the dataset files
        from benchmark.data.images import ImageItems

        return manifest, ImageItems([train_paths[rel] for rel, _ in listed], cfg.dataset)
    resolved = resolve_videos(
        [train_paths[rel] for rel, _ in listed],
        cfg.dataset.root,
        allow_missing=bool(cfg.get("allow_missing_videos", False)),
    )
    return manifest, resolved


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def lists_sha256(annotations) -> dict[str, str]:
    """Content hashes of the dataset's train/test lists as read (path, label per video)."""
    return {
        f"{annotations.dataset}/{part}": sha256_bytes(
            canonical_json_bytes([[r.path, int(r.label)] for r in getattr(annotations, part)])
        )
        for part in ("train", "test")
    }


def code_version() -> dict[str, Any]:
    from benchmark import __version__
    from leaderboard.record import git_state

    return {"version": __version__, "commit": git_state()[0]}


def save_config(resolved: dict, run_dir: Path) -> None:
    """Save the resolved config (``config.json`` for the engines, ``config.yaml`` to read)."""
    atomic_write_json(run_dir / rundir.CONFIG_JSON, resolved)
    atomic_write_text(run_dir / rundir.CONFIG_YAML, OmegaConf.to_yaml(OmegaConf.create(resolved)))


def _check_legacy_resume(run_dir: Path, resolved: dict) -> None:
    """A run dir from before run_inputs.json: its training config must still match."""
    path = run_dir / rundir.CONFIG_JSON
    if (run_dir / rundir.INPUTS).is_file() or not path.is_file():
        return
    changed = rundir.RunInputs(rundir.training_config(read_json(path)), "", {}, {}).differences(
        rundir.RunInputs(rundir.training_config(resolved), "", {}, {})
    )
    if changed:
        raise RunError(
            f"resume=true refused: the config differs from {path} in "
            + "; ".join(changed)
            + ". Resume with the same overrides as the original run."
        )


# ------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------


def execute_run(
    cfg: DictConfig, run_dir: Path, *, console=None, dataset_choice: str | None = None, evaluate: bool | None = None
) -> dict[str, Any]:
    """Validate, prepare, federate, evaluate and write ``result.json``; returns the result record.

    Order: config check (every problem at once) -> run lock -> data, manifest and resume
    checks (nothing written yet) -> manifest/config/inputs written -> engine -> evaluation.
    """
    from benchmark.specs import RunSpec

    started_at = utc_now()
    t0 = time.perf_counter()
    resolved = to_container(cfg)
    spec = RunSpec.from_config(resolved)  # validates every key first
    from rich.text import Text

    from benchmark.protocols import override_warning

    note = override_warning(resolved)
    if note and console is not None:
        console.print(Text(note, style="yellow"), soft_wrap=True)
    resume = bool(resolved.get("resume"))
    with rundir.RunLock(run_dir):
        if not resume and rundir.has_checkpoint(run_dir):
            raise RunError(
                f"{run_dir} already holds a run; continue it with resume=true or choose another hydra.run.dir"
            )
        from benchmark.data.annotations import load_annotations

        prepare_data(cfg, console)
        annotations = load_annotations(cfg.dataset)
        manifest, videos = prepare_manifest(cfg, run_dir, annotations, dataset_choice)
        inputs = rundir.RunInputs(
            rundir.training_config(resolved), manifest.content_sha256, lists_sha256(annotations), code_version()
        )
        if resume:
            rundir.check_resume(run_dir, inputs)
            _check_legacy_resume(run_dir, resolved)
        from benchmark.splits.format import write_manifest

        write_manifest(manifest.data, run_dir / rundir.MANIFEST)
        save_config(resolved, run_dir)
        inputs.write(run_dir)
        return _federate_and_evaluate(
            cfg,
            resolved,
            spec,
            run_dir,
            manifest,
            videos,
            console=console,
            evaluate=evaluate,
            started_at=started_at,
            t0=t0,
        )


class EvaluationFailed(RunError):
    """Evaluation failed after a completed pretraining: the checkpoint and a failed record are kept."""

    resumable = True


def _federate_and_evaluate(
    cfg: DictConfig,
    resolved: dict,
    spec,
    run_dir: Path,
    manifest,
    videos,
    *,
    console,
    evaluate: bool | None,
    started_at: str,
    t0: float,
) -> dict[str, Any]:
    from benchmark.config import config_sha256
    from benchmark.federation.checkpoint import final_global_state
    from benchmark.federation.engine import FederationOutcome
    from benchmark.federation.training import build_model
    from leaderboard.record import build_result_record, record_protocol

    rounds_planned = spec.federation.rounds
    record_videos: dict[str, Any] = {"pretraining": videos.summary()}

    def write_record(evaluations: dict, outcome, failure: dict | None = None) -> dict:
        record = build_result_record(
            spec,
            manifest,
            rundir.read_round_log(run_dir),
            evaluations,
            dataset_id=str(resolved["dataset"]["id"]),
            method_display_name=resolved["method"].get("display_name"),
            config_sha256=config_sha256(resolved),
            protocol=record_protocol(resolved),
            wall_time_s=time.perf_counter() - t0,
            peak_memory_bytes=outcome.peak_memory_bytes,
            started_at=started_at,
            finished_at=utc_now(),
            method_pretext=method_pretext,
            startup_s=outcome.startup_s,
            flower=outcome.flower,
            videos=record_videos,
            failure=failure,
        )
        atomic_write_json(run_dir / rundir.RESULT, record.to_json())
        if console is not None:
            print_summary(console, record, rundir.read_round_log(run_dir), run_dir)
        return record.to_json()

    method = build_model(spec.model, 0)
    method_pretext = type(method).pretext or spec.model.method
    if console is not None:
        console.print(disk_plan(spec, method, run_dir), soft_wrap=True, markup=False)
    do_eval = cfg.get("evaluate", True) if evaluate is None else evaluate
    if bool(resolved.get("resume")) and (rundir.latest_round(run_dir) or -1) >= rounds_planned:
        # pretraining finished earlier (e.g. its evaluation failed): only evaluate again
        outcome = FederationOutcome(0.0, None, _previous_peak_memory(run_dir), run_dir / rundir.FLOWER_LOG)
        if console is not None:
            console.print(f"pretraining already complete ({rounds_planned} rounds); evaluating the saved model")
    else:
        try:
            outcome = _run_engine(cfg, spec, run_dir, console)
        except Exception as e:
            write_record(
                {},
                FederationOutcome(0.0, None, 0, run_dir / rundir.FLOWER_LOG),
                {"stage": "federation", "message": str(e)},
            )
            raise

    method.load_partial_state(final_global_state(run_dir))
    evaluations: dict = {}
    if do_eval:
        try:
            report = evaluate_global_model(method.backbone, cfg, run_dir, console)
        except Exception as e:
            if debug_enabled():
                raise
            write_record({}, outcome, {"stage": "evaluation", "message": f"{type(e).__name__}: {e}"})
            raise EvaluationFailed(
                f"evaluation failed after a complete pretraining: {e}\nThe checkpoint is kept in "
                f"{run_dir / rundir.CHECKPOINTS}; the record says status=failed (evaluation). Fix the eval settings "
                "or data and finish it with resume=true (no retraining) or `fedvid evaluate`."
            ) from e
        evaluations = report["evaluations"]
        record_videos["evaluation"] = {
            ds: meta["videos"] for ds, meta in report["datasets"].items() if "videos" in meta
        }
    leftovers = outcome.wait_stopped()  # the run's Flower/Ray processes, stopping since the federation ended
    if leftovers and console is not None:
        console.print(f"[fedvid] killed {len(leftovers)} process(es) that did not stop on SIGTERM", markup=False)
    return write_record(evaluations, outcome)


def disk_plan(spec, method, run_dir: Path) -> str:
    """One line, printed before round 1: the most disk the run's checkpoints and client
    state take at once under ``checkpoint.keep_last`` / ``keep_every`` (sizes from the
    model as built: exchanged tensors per checkpoint, local tensors per client file), and
    a warning when the run directory's file system has less free space."""
    import shutil

    def nbytes(state: dict) -> int:
        return sum(t.numel() * t.element_size() for t in state.values())

    retention = spec.retention
    rounds = spec.federation.rounds
    local = nbytes(method.local_state())
    centralized = spec.engine.name == "centralized"
    ckpt_bytes = nbytes(method.exchanged_state()) + (local if centralized else 0)
    n_ckpt = retention.max_checkpoints(rounds)
    total = n_ckpt * ckpt_bytes
    text = f"disk: at most {n_ckpt} checkpoints x {rundir.format_bytes(ckpt_bytes)}"
    if local and not centralized:
        from benchmark.federation.training import clients_per_round

        num_clients = spec.federation.num_clients
        per_round = clients_per_round(spec.federation.clients_per_round, num_clients)
        n_files = retention.max_client_files(num_clients, per_round, rounds)
        total += n_files * local
        text += f" + {n_files} client-state files x {rundir.format_bytes(local)}"
    text += (
        f" = {rundir.format_bytes(total)} (checkpoint.keep_last={retention.keep_last}, "
        f"keep_every={retention.keep_every})"
    )
    free = shutil.disk_usage(run_dir).free
    if free < total:
        text += (
            f"; WARNING: only {rundir.format_bytes(free)} free under {run_dir}: lower checkpoint.keep_last / "
            "raise checkpoint.keep_every (0: no milestones) or free space"
        )
    return text


def _run_engine(cfg: DictConfig, spec, run_dir: Path, console):
    from benchmark.federation.centralized import run_centralized
    from benchmark.federation.engine import run_federation

    progress = _RunProgress(console, run_dir, spec.federation.rounds) if console is not None else None
    echo = spec.engine.echo_log and console is not None
    try:
        if progress is not None:
            progress.start()
        on_line = progress.log_line if echo and progress is not None else None
        on_poll = progress.update if progress is not None else None
        if spec.engine.name == "centralized":
            # one in-process model on the pooled data (benchmark/federation/centralized.py)
            return run_centralized(
                spec,
                run_dir,
                str(cfg.dataset.root),
                resume=bool(cfg.get("resume", False)),
                allow_missing_videos=bool(cfg.get("allow_missing_videos", False)),
                on_line=on_line,
                on_poll=on_poll,
            )
        return run_federation(
            spec.engine,
            spec.federation.num_clients,
            str(cfg.dataset.root),
            run_dir,
            run_dir / rundir.CONFIG_JSON,
            on_line=on_line,
            on_poll=on_poll,
        )
    finally:
        if progress is not None:
            progress.stop()


def _previous_peak_memory(run_dir: Path) -> int:
    try:
        return int(ResultRecord.from_json(read_json(run_dir / rundir.RESULT)).systems["peak_memory_bytes"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0


def evaluate_global_model(backbone, cfg: DictConfig, run_dir: Path, console=None) -> dict:
    """The shared evaluation (``benchmark.evaluation``): its report, whose ``evaluations`` go
    into the record and whose ``datasets[...]["videos"]`` give the skipped-video counts."""
    if cfg.dataset.get("modality") == "image":  # image track: SSD's linear_eval.py / semi_eval.py
        import torch

        from benchmark.evaluation.image_eval import evaluate_image_backbone
        from benchmark.protocols import protocol_id

        device = "cuda" if torch.cuda.is_available() and str(cfg.client.get("device", "auto")) != "cpu" else "cpu"
        return evaluate_image_backbone(
            backbone,
            cfg.dataset,
            cfg.eval.image,
            protocol_id(cfg) or {"name": "unnamed", "version": 0, "variant": None},
            device=device,
            progress=console is not None,
        )
    from benchmark.commands.evaluate import evaluation_spec
    from benchmark.evaluation.pipeline import evaluate_backbone_report

    return evaluate_backbone_report(backbone, evaluation_spec(cfg), run_dir, progress=console is not None)


# ------------------------------------------------------------------------------------
# Terminal output
# ------------------------------------------------------------------------------------


class _RunProgress:
    """Rich progress (rounds, clients, ETA) fed from the run dir's status and round log."""

    def __init__(self, console, run_dir: Path, rounds: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.run_dir = run_dir
        self.rounds = rounds
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("starting Flower", total=rounds)

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.update()
        self.progress.stop()

    def log_line(self, line: str) -> None:
        from rich.text import Text

        self.progress.console.print(Text(line, style="dim"))

    def update(self) -> None:
        status = rundir.read_status(self.run_dir)
        if not status:
            return
        done = int(status.get("round", 0))
        state = status.get("state", "")
        if state == "connecting":
            desc = "starting clients"
        elif state in ("running", "completed"):
            first = int(status.get("first_round", 1))
            desc = f"round {min(done + 1, self.rounds)}/{self.rounds}" if state == "running" else "federation done"
            if first > 1 and state == "running":
                desc += f" (resumed after {first - 1})"
        else:
            desc = state
        self.progress.update(self.task, completed=done, description=desc)


def status_line(record: ResultRecord) -> str:
    """The record's status, why, client participation and skipped videos, in plain lines."""
    lines = [f"status: {record.status}" + "".join(f"\n  - {r}" for r in record.status_reasons or [])]
    part = record.participation
    if part:
        by_reason = ", ".join(f"{n} {reason}" for reason, n in sorted(part["failed_by_reason"].items()))
        lines.append(
            f"client updates: {part['sampled']} sampled, {part['replied']} used, {part['failed']} failed"
            + (f" ({by_reason})" if by_reason else "")
            + (f"; clients never used: {part['excluded_clients']}" if part["excluded_clients"] else "")
        )
    videos = record.videos or {}
    counts = [("pretraining", videos["pretraining"])] if videos.get("pretraining") else []
    counts += [
        (f"{ds} {split}", c)
        for ds, splits in sorted((videos.get("evaluation") or {}).items())
        for split, c in sorted(splits.items())
    ]
    if counts:
        lines.append(
            "videos (present/listed, skipped): "
            + "; ".join(
                f"{where} {c['present']}/{c['listed']}" + (f", {c['skipped']} skipped" if c.get("skipped") else "")
                for where, c in counts
            )
        )
    return "\n".join(lines)


def print_summary(console, record: ResultRecord, rounds: list[dict], run_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"FedVid-Bench run: {record.name}")
    table.add_column("round", justify="right")
    table.add_column("clients")
    table.add_column("loss", justify="right")
    table.add_column("wall s", justify="right")
    table.add_column("compute s", justify="right")
    table.add_column("MB up/down", justify="right")
    for r in rounds:
        failed = (
            (
                " (failed: "
                + ", ".join(f"{f['client_id']} {f.get('reason') or 'error'}" for f in r["failed_clients"])
                + ")"
            )
            if r.get("failed_clients")
            else ""
        )
        table.add_row(
            str(r["round"]),
            ",".join(map(str, r["replied_clients"])) + failed,
            f"{r['loss']:.4f}",
            f"{r['round_wall_s']:.1f}",
            f"{r['client_compute_s']:.1f}",
            f"{r['bytes_up'] / 1e6:.2f}/{r['bytes_down'] / 1e6:.2f}",
        )
    console.print(table)
    ev = record.evaluations
    if ev.datasets("retrieval"):
        t = Table(title="Retrieval Top-1 (%) on the downstream sets")
        for col in ("dataset", "pretrained (global model)", "random init", "chance"):
            t.add_column(col, justify="right")
        for name in ev.datasets("retrieval"):
            top1, chance = ev.metric("retrieval", name, "top1"), ev.metric("retrieval", name, "chance_top1")
            rand = ev.random_init.metric("retrieval", name, "top1")
            t.add_row(name, f"{100 * top1:.1f}", "-" if rand is None else f"{100 * rand:.1f}", f"{100 * chance:.1f}")
        console.print(t)
    console.print(status_line(record), soft_wrap=True, markup=False)
    sysd = record.systems
    console.print(
        f"wall time {sysd['wall_time_s']:.1f}s (Flower/Ray start-up {sysd['startup_s'] or 0:.1f}s), "
        f"client compute {sysd['client_compute_s']:.1f}s, peak memory {sysd['peak_memory_bytes'] / 2**20:.0f} MiB"
    )
    console.print("files:")
    for name in (
        rundir.RESULT,
        rundir.ROUNDS_LOG,
        rundir.CONFIG_YAML,
        rundir.MANIFEST,
        f"{rundir.CHECKPOINTS}/{rundir.LATEST}",
        rundir.FLOWER_LOG,
    ):
        console.print(f"  {run_dir / name}", soft_wrap=True, markup=False)
