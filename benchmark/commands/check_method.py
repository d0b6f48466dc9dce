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
        print("usage: fedvid check-method NAME [key=value ...]\n\n"
              "Runs a 2-round, 2-client federated smoke run of method NAME on the tiny synthetic data\n"
              "(Flower simulation, tiny inputs) and reports what is wrong in plain words.")
        return 0 if argv else 2
    from rich.console import Console

    from benchmark.registry import METHODS

    name, extra = argv[0], argv[1:]
    console = Console()
    if name not in METHODS:
        console.print(f"[red]check-method: method {name!r} is not registered.[/] Registered methods: "
                      f"{', '.join(METHODS.names())}. Register it with @register_method({name!r}) in a module "
                      "that is imported (baselines/ or an entry point in the `fedvid.methods` group), "
                      "see docs/adding-a-method.md.")
        return 1
    from benchmark.config import hydra_entry

    with tempfile.TemporaryDirectory(prefix=f"fedvid-check-{name}-") as tmp:
        outcome: dict = {}

        def task(cfg):
            outcome["problems"] = run_check(cfg, Path(tmp) / "run", console)
            return 0

        hydra_entry("fedvid check-method", "config", task,
                    [*smoke_overrides(name), *smoke_data_root(extra), *extra, f"hydra.run.dir={tmp}/run"])
    problems = outcome.get("problems")
    if problems is None:
        return 1
    if problems:
        console.print(f"[bold red]check-method {name}: {len(problems)} problem(s)[/]")
        for p in problems:
            console.print(f"  - {p}")
        return 1
    console.print(f"[bold green]check-method {name}: OK[/] (2 rounds, 2 clients, finite losses, "
                  "weights changed, exchange respected)")
    return 0


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
                problems.append(f"round {r['round']}: client {c['client_id']} reported num_examples={c['num_examples']}")
        if exchange == "backbone" and r["round"] >= 2:
            for c in r["clients"]:
                if not c.get("restored_local_state"):
                    problems.append(f"round {r['round']}: client {c['client_id']} did not get its heads back "
                                    "from its local state")
    initial = initial_global_state(model_spec, int(cfg.seed))
    final = final_global_state(run_dir)
    if set(initial) != set(final):
        problems.append("the global model's tensor names changed during the run")
    elif all(torch.equal(initial[k], final[k]) for k in initial):
        problems.append("the global weights did not change in 2 rounds (no gradient reaches the exchanged parameters?)")
    return problems


if __name__ == "__main__":
    sys.exit(check_method_main(sys.argv[1:]))
