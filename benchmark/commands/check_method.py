"""``fedvid check-method NAME``: a 2-round, 2-client smoke run of a method."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

from benchmark import CONF_DIR
from benchmark.config import TINY_INPUT_OVERRIDES

#: Overrides of the smoke run: 2 clients, 2 rounds, tiny inputs, no evaluation.
SMOKE_OVERRIDES = [
    *TINY_INPUT_OVERRIDES,
    "partition=iid",
    "partition.num_clients=2",
    "federation.rounds=2",
    "federation.clients_per_round=2",
    "federation.min_clients=2",
    "federation.local_steps=2",
    "evaluate=false",
    "engine=simulation",
    "engine.echo_log=false",
]


#: The image-track smoke run (methods whose ``modalities`` include "image"): the generated
#: CIFAR-10-format stand-in, a narrow CIFAR ResNet-18, 2 clients, 2 rounds, no evaluation.
IMAGE_SMOKE_OVERRIDES = [
    "dataset=synthetic_cifar10",
    "dataset.standin.per_class_train=2",
    "dataset.standin.per_class_test=1",
    "backbone=cifar_resnet18",
    "backbone.params.width=8",
    "clip.frames=1",
    "clip.stride=1",
    "clip.size=32",
    "clip.short_side=32",
    "clip.normalization=none",
    "client.batch_size=4",
]


def method_modalities(name: str) -> tuple[str, ...]:
    """The inputs a registered method trains on (class attribute ``modalities``; default video)."""
    from benchmark.registry import METHODS

    return tuple(getattr(METHODS.get(name), "modalities", ("video",)))


def smoke_overrides(name: str) -> list[str]:
    if (CONF_DIR / "method" / f"{name}.yaml").is_file():
        return [f"method={name}", *SMOKE_OVERRIDES]
    return [f"method.name={name}", "method.params={}", "method.exchange=null", *SMOKE_OVERRIDES]


def smoke_data_root(extra: list[str]) -> list[str]:
    """The tiny synthetic sets live in their own data root (``<data_root>/check-method``):
    generating them where the default-size sets are would replace those."""
    if any(o.startswith("data_root=") for o in extra):
        return []
    base = os.environ.get("FEDVID_DATA_ROOT") or str(Path.cwd() / "data")
    return [f"data_root={Path(base) / 'check-method'}"]


def check_method_main(argv: list[str]) -> int:
    """``fedvid check-method NAME [overrides...]``: a 2-round, 2-client smoke run, problems in plain words."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: fedvid check-method NAME [key=value ...]\n\n"
            "Runs a 2-round, 2-client federated smoke run of method NAME on the tiny synthetic data\n"
            "(Flower simulation, tiny inputs) and reports what is wrong in plain words."
        )
        return 0 if argv else 2
    from rich.console import Console

    from benchmark.registry import METHODS

    name, extra = argv[0], argv[1:]
    console = Console()
    if name not in METHODS:
        console.print(
            f"[red]check-method: method {name!r} is not registered.[/] Registered methods: "
            f"{', '.join(METHODS.names())}. Register it with @register_method({name!r}) in a module "
            "that is imported (baselines/ or an entry point in the `fedvid.methods` group), "
            "see docs/adding-a-method.md."
        )
        return 1
    from benchmark.config import hydra_entry

    modalities = method_modalities(name)
    for arg in extra:  # `modality=video|image` checks one of them only
        if arg.startswith("modality="):
            modalities = tuple(m for m in modalities if m == arg.split("=", 1)[1])
    extra = [a for a in extra if not a.startswith("modality=")]
    if not modalities:
        console.print(f"[red]check-method: {name} supports {', '.join(method_modalities(name))} only[/]")
        return 1
    status = 0
    for modality in modalities:
        with tempfile.TemporaryDirectory(prefix=f"fedvid-check-{name}-") as tmp:
            outcome: dict = {}

            # called by hydra_entry within this iteration, so the loop's `outcome` and `tmp` are the current ones
            def task(cfg):
                outcome["problems"] = run_check(cfg, Path(tmp) / "run", console)  # noqa: B023
                return 0

            image = IMAGE_SMOKE_OVERRIDES if modality == "image" else []
            hydra_entry(
                "fedvid check-method",
                "config",
                task,
                [*smoke_overrides(name), *image, *smoke_data_root(extra), *extra, f"hydra.run.dir={tmp}/run"],
            )
        problems = outcome.get("problems")
        if problems is None:
            status = 1
            continue
        if problems:
            console.print(f"[bold red]check-method {name}: {len(problems)} problem(s)[/] ({modality})")
            for p in problems:
                console.print(f"  - {p}")
            status = 1
            continue
        console.print(
            f"[bold green]check-method {name}: OK[/] ({modality}: 2 rounds, 2 clients, finite losses, "
            "weights changed, exchange respected)"
        )
    return status


def run_check(cfg, run_dir: Path, console) -> list[str]:
    """Run the smoke federation and return the problems found (empty: the method works)."""
    import torch

    from benchmark.commands.run import execute_run
    from benchmark.federation.checkpoint import final_global_state
    from benchmark.federation.training import build_model, initial_global_state
    from benchmark.rundir import STATUS, read_round_log
    from benchmark.specs import ModelSpec

    problems: list[str] = []
    name = cfg.method.name
    model_spec = ModelSpec.from_config(cfg)
    try:
        model = build_model(model_spec, 0)
    except Exception as e:  # noqa: BLE001 - reported in words
        return [f"building {name} around backbone {cfg.backbone.name} failed: {type(e).__name__}: {e}"]
    exchange = model.exchange
    keys = list(model.exchanged_state())
    if exchange == "backbone":
        stray = [k for k in keys if not k.startswith("backbone.")]
        if stray:
            problems.append(f"exchange=backbone but exchanged_state() also sends {stray[:3]}")
        if not model.local_state():
            problems.append("exchange=backbone but the method has no tensors of its own (no heads to keep locally)")
    if not any(p.requires_grad for p in model.parameters()):
        problems.append("the method has no trainable parameters")
    try:
        execute_run(cfg, run_dir, console=console, evaluate=False)
    except Exception as e:  # noqa: BLE001
        problems.append(f"the federated smoke run failed: {type(e).__name__}: {e}")
        failed = read_round_log(run_dir)
        status = run_dir / STATUS
        if status.is_file():
            import json

            tb = json.loads(status.read_text()).get("traceback")
            if tb:
                problems.append("server traceback:\n" + tb)
        del failed
        return problems
    rounds = read_round_log(run_dir)
    if len(rounds) != 2:
        problems.append(f"expected 2 rounds in rounds.jsonl, found {len(rounds)}")
    for r in rounds:
        for f in r.get("failed_clients", []):
            problems.append(f"round {r['round']}: client {f['client_id']} raised:\n{f['error']}")
        for c in r["clients"]:
            if not math.isfinite(c["loss"]):
                problems.append(f"round {r['round']}: client {c['client_id']} has a non-finite loss {c['loss']}")
            if c["num_examples"] <= 0:
                problems.append(
                    f"round {r['round']}: client {c['client_id']} reported num_examples={c['num_examples']}"
                )
        if exchange == "backbone" and r["round"] >= 2:
            for c in r["clients"]:
                if not c.get("restored_local_state"):
                    problems.append(
                        f"round {r['round']}: client {c['client_id']} did not get its heads back from its local state"
                    )
    try:
        hook_problems, exercised = exercise_hooks(cfg, run_dir)
    except Exception as e:  # noqa: BLE001 - a hook that raises is a finding, reported with the others
        hook_problems, exercised = [f"exercising the method's hooks failed: {type(e).__name__}: {e}"], []
    problems += hook_problems
    if exercised:
        console.print(f"check-method {name}: exercised the hooks it overrides: {', '.join(exercised)}")
    initial = initial_global_state(model_spec, int(cfg.seed))
    final = final_global_state(run_dir)
    if set(initial) != set(final):
        problems.append("the global model's tensor names changed during the run")
    elif all(torch.equal(initial[k], final[k]) for k in initial):
        problems.append("the global weights did not change in 2 rounds (no gradient reaches the exchanged parameters?)")
    return problems


def items_differ_at_once(dataset, keys: list[int], repeats: int = 3) -> str | None:
    """Make ``dataset[key]`` for ``keys`` one at a time, then ``repeats`` times on as many
    threads as a loader worker uses (``ITEMS_IN_FLIGHT``); the first entry that differs
    (``"item 1's 'video'"``), or None."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from benchmark.data.loaders import ITEMS_IN_FLIGHT

    serial = [dataset[key] for key in keys]
    with ThreadPoolExecutor(ITEMS_IN_FLIGHT) as pool:
        for _ in range(repeats):
            for key, alone, at_once in zip(keys, serial, pool.map(dataset.__getitem__, keys), strict=True):
                for name, value in alone.items():
                    other = at_once.get(name)
                    if not isinstance(other, torch.Tensor) or not torch.equal(value, other):
                        return f"item {key}'s {name!r}"
    return None


def exercise_hooks(cfg, run_dir: Path) -> tuple[list[str], list[str]]:
    """Call every hook the method overrides (benchmark.methods.HOOKS) directly on client 0's
    first two videos and check what each returns; (problems, hooks exercised)."""
    import torch
    from omegaconf import DictConfig, OmegaConf

    from benchmark.data.loaders import TrainClipDataset, collate_batch
    from benchmark.federation.training import (
        build_model,
        client_init_seed,
        client_videos,
        initial_global_state,
    )
    from benchmark.rundir import MANIFEST
    from benchmark.specs import LocalTrainingSpec

    spec = LocalTrainingSpec.from_config(
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    )
    problems: list[str] = []
    method = build_model(spec.model, client_init_seed(spec.seed, 0))
    hooks = method.overridden_hooks()
    if "set_client_context" in hooks:
        method.set_client_context(0, spec.num_clients)
    glob = initial_global_state(spec.model, spec.seed)
    if "start_round" in hooks:
        method.start_round(glob, None, 1)
        method.start_round(glob, method.local_state(), 2)
        if not method.local_state() and method.exchange == "backbone":
            problems.append("start_round: the method kept no local tensors although exchange=backbone")
    else:
        method.start_round(glob, None, 1)
    videos = client_videos(str(run_dir / MANIFEST), str(cfg["dataset"]["root"]), 0)[:2]
    clip = spec.clip
    dataset = TrainClipDataset(
        videos,
        frames=clip.frames,
        stride=clip.stride,
        short_side=clip.short_side,
        crop_size=clip.size,
        num_views=method.num_views,
        sample_transform=method.sample_transform,
        backend=clip.backend,
        seed=0,
        temporal_jitter=clip.temporal_jitter,
        normalization=clip.normalization,
        frame_sampler=method.sample_frames if "sample_frames" in hooks else None,
        **({} if method.train_flip_prob is None else {"flip_prob": float(method.train_flip_prob)}),
    )
    if "sample_frames" in hooks:
        from benchmark.data.decoding import open_video

        with open_video(videos[0][0], clip.backend) as video:
            planned = method.sample_frames(video.num_frames, dataset.generator_for(0))
        if planned is None:
            problems.append("sample_frames is overridden but returned None (the loader's own sampling)")
    samples = [dataset[i % len(dataset)] for i in range(2)]  # validates plans and sample_transform
    if {"sample_frames", "sample_transform"} & set(hooks):
        differs = items_differ_at_once(dataset, [i % len(dataset) for i in range(4)])
        if differs:
            problems.append(
                f"sample_frames/sample_transform gave other values for {differs} when two items ran at once: a loader "
                "worker prepares two items of a batch at once (threads), so keep no per-item state on the method"
            )
    if "sample_frames" in hooks and planned is not None:
        missing = [k for k in planned[1] if k not in samples[0]]
        if missing:
            problems.append(f"sample_frames targets {missing} are not in the loader's sample")
    batch = collate_batch(samples)
    batch["video"] = dataset.normalize_video(batch["video"])  # as the training loop does
    batch = method.prepare_batch(batch)
    method.train()
    groups = method.parameter_groups()
    listed = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    if len(listed) != len(set(listed)):
        problems.append("parameter_groups lists a parameter twice")
    if not set(listed) <= {id(p) for p in method.parameters()}:
        problems.append("parameter_groups lists tensors that are not parameters of the method")
    if trainable - set(listed):
        problems.append(
            f"parameter_groups leaves {len(trainable - set(listed))} trainable parameters out of the optimiser"
        )
    optimizer = torch.optim.SGD(groups, lr=0.01)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    loss, _ = method.training_loss(batch)
    if not torch.isfinite(loss):
        problems.append(f"training_loss on a batch from the hooks is {float(loss)}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if "after_step" in hooks:
        with torch.no_grad():
            method.after_step(0)
        frozen = [k for k, p in method.named_parameters() if not p.requires_grad]
        if frozen and all(torch.equal(before[k], method.state_dict()[k]) for k in frozen):
            problems.append("after_step changed none of the method's non-trainable parameters")
    return problems, hooks


if __name__ == "__main__":
    sys.exit(check_method_main(sys.argv[1:]))
