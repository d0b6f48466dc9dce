"""The ``centralized`` engine: one model trained in-process on the pooled data of all clients.

``engine=centralized`` is the upper-bound reference row of a comparison (and, with
``federation.rounds=0``, the random-init lower bound). It needs no Flower process and
writes what the federated engines write — ``checkpoints/round_XXXX.pt`` (+ ``latest.json``),
``rounds.jsonl``, ``federation_status.json`` — so the runner evaluates it and builds its
result record unchanged.

Step budget. The model makes exactly as many optimizer steps as the federated run with
the same config would make in total: for round r, Σ over the clients that
``sample_clients(seed, r, ...)`` picks of that client's local steps
(``federation.local_steps``, else ``local_epochs`` times the batches of one epoch:
``⌊n_k / client.batch_size⌋`` when ``client.last_batch`` drops a ragged last batch,
``⌈n_k / client.batch_size⌉`` when it keeps or pads it, 1 when ``n_k ≤ batch_size``).
:func:`federated_step_budget` computes it from the manifest sizes without training.

How it trains. Each federated round becomes one call of
:func:`~benchmark.federation.training.run_local_training` on the pooled video list with
the run's :class:`~benchmark.specs.LocalTrainingSpec` set to that round's total steps, the round's learning rate
(``round_learning_rate``, so a cosine schedule steps per round as in the federation) and
the model's full state (exchanged + local tensors) carried from the previous round. The
pooled pseudo-client has id K = ``federation.num_clients`` (an id no real client has) for its
seed streams; to a method with a per-client context (``set_client_context``, e.g. SSD's
scaled subspace) it is client K of K + 1, so it gets its own block of ⌊d/(K+1)⌋
dimensions, disjoint from the real clients' blocks (SSD defines no centralized variant).
What differs from a plain centralized training loop:

- the optimizer (SGD momentum buffers) and the data loader are rebuilt every round, exactly
  as on a federated client; the shuffling order restarts per round (seeded by the round);
- a round's steps continue over epoch boundaries of the pooled set, so a video can be seen
  a different number of times than in the federation, where each client has its own epochs;
- injected client failures (``fault.client_failure_prob``) do not apply: the budget
  counts every sampled client as if it had replied.

Resume: the model's local tensors (e.g. CtP's head with ``exchange=backbone``) are stored
in the checkpoint's ``aggregator_state["local_state"]``, so ``resume=true`` continues
bit-identically from the last complete round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmark.federation.checkpoint import Checkpoint, save_checkpoint
from benchmark.federation.engine import FederationOutcome, memory_bytes
from benchmark.federation.guard import check_global, float_norm
from benchmark.federation.training import (
    client_last_batch,
    client_videos,
    epoch_batches,
    initial_global_state,
    round_learning_rate,
    run_local_training,
    sample_clients,
)
from benchmark.rundir import (
    MANIFEST,
    ROUNDS_LOG,
    RoundRecord,
    prune_checkpoints,
    resume_point,
    write_round_log,
    write_status,
)
from benchmark.specs import FederationSpec, LocalTrainingSpec, RunSpec


def pooled_training_spec(training: LocalTrainingSpec, num_videos: int, num_clients: int) -> LocalTrainingSpec:
    """The spec the pooled pseudo-client trains with: the run's, with the client context K of
    K + 1, no injected failures, and the epoch end that the federation's ``num_clients``
    clients have (``client.last_batch=ssd`` depends on the client count), as a plain rule."""
    return replace(
        training,
        num_clients=num_clients + 1,
        failure_prob=0.0,
        last_batch=client_last_batch(training.last_batch, num_videos, training.batch_size, num_clients),
    )


def client_steps(
    num_videos: int,
    batch_size: int,
    local_epochs: int,
    local_steps: int | None,
    last_batch: str = "drop",
    num_clients: int = 1,
) -> int:
    """Optimizer steps one federated client makes in one round.

    ``local_steps`` when set; else ``local_epochs`` times the batches of one epoch under
    ``client.last_batch`` (:func:`~benchmark.federation.training.epoch_batches`).
    """
    if local_steps:
        return int(local_steps)
    return int(local_epochs) * epoch_batches(num_videos, batch_size, last_batch, num_clients)


@dataclass(frozen=True)
class RoundBudget:
    """The federated counterpart of one round: who would train and how many steps each makes."""

    round: int
    sampled_clients: list[int]
    client_steps: dict[int, int] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return sum(self.client_steps.values())


def federated_step_budget(
    federation: FederationSpec, training: LocalTrainingSpec, client_sizes: Sequence[int]
) -> list[RoundBudget]:
    """Per round, the clients the federated run samples and the steps each would make.

    client_sizes: number of (present) training videos of client 0..K-1 (K = len, must be
    ``federation.num_clients``). Uses the federation's own seeded ``sample_clients`` with
    ``federation.clients_per_round``; nothing is trained. Returns one entry per round
    1..``federation.rounds`` (empty for 0 rounds).
    """
    num_clients = federation.num_clients
    if len(client_sizes) != num_clients:
        raise ValueError(f"got the sizes of {len(client_sizes)} clients but federation.num_clients={num_clients}")
    empty = [c for c, n in enumerate(client_sizes) if int(n) <= 0]
    if empty:
        raise ValueError(f"clients {empty} have no videos in the split manifest; every client needs at least one")
    batch_size = training.batch_size
    if batch_size < 1:
        raise ValueError(f"client.batch_size={batch_size}: expected a positive integer")
    local_steps = training.local_steps
    per_round = federation.clients_per_round
    budget = []
    for server_round in range(1, federation.rounds + 1):
        sampled = sample_clients(federation.seed, server_round, list(range(num_clients)), per_round)
        steps = {
            c: client_steps(
                client_sizes[c], batch_size, training.local_epochs, local_steps, training.last_batch, num_clients
            )
            for c in sampled
        }
        budget.append(RoundBudget(server_round, sampled, steps))
    return budget


def pooled_client_videos(
    run_dir: Path, dataset_root: str, num_clients: int, allow_missing: bool, image: bool = False
) -> list[list[tuple[str, int]]]:
    """Each client's (path, label) list from ``<run_dir>/split_manifest.json``, as its ClientApp
    would see it (``image``: image-track records, as listed)."""
    manifest = str(Path(run_dir) / MANIFEST)
    return [client_videos(manifest, dataset_root, c, allow_missing, image=image) for c in range(num_clients)]


def run_centralized(
    spec: RunSpec,
    run_dir: Path,
    dataset_root: str,
    *,
    resume: bool = False,
    allow_missing_videos: bool = False,
    on_line: Callable[[str], None] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> FederationOutcome:
    """Train one model on the pooled videos for the federated step budget (module docstring).

    Same outcome as :func:`benchmark.federation.engine.run_federation` (the run directory's
    checkpoints, round log and status). ``federation.rounds=0`` writes the round-0 global
    model (``initial_global_state``) as checkpoint 0 and trains nothing.
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    num_rounds = spec.federation.rounds
    num_clients = spec.federation.num_clients

    def say(line: str) -> None:
        if on_line is not None:
            on_line(f"[centralized] {line}")

    # PSS of this process sampled at round ends (ru_maxrss would carry over earlier jobs of a multirun)
    peak = memory_bytes([os.getpid()])
    image = spec.training.image_dataset is not None
    per_client = pooled_client_videos(run_dir, dataset_root, num_clients, allow_missing_videos, image)
    budget = federated_step_budget(spec.federation, spec.training, [len(v) for v in per_client])
    pooled = [video for videos in per_client for video in videos]

    ckpt, rounds_log = resume_point(run_dir, resume)
    guard = spec.federation.guard
    initial_norm = float_norm(initial_global_state(spec.model, spec.training.seed))
    if ckpt is not None:
        first_round = ckpt.round + 1
        global_state = ckpt.global_state
        local_state = dict(ckpt.aggregator_state.get("local_state") or {}) or None
        say(f"resuming after round {ckpt.round}")
    else:
        first_round = 1
        global_state = initial_global_state(spec.model, spec.training.seed)
        local_state = None
        if num_rounds == 0:
            save_checkpoint(run_dir, Checkpoint(0, global_state, {"local_state": {}}))
            say("federation.rounds=0: saved the initial model (round 0), no training")
    write_round_log(run_dir, rounds_log)
    write_status(
        run_dir,
        state="running",
        round=first_round - 1,
        rounds=num_rounds,
        first_round=first_round,
        engine="centralized",
    )
    if on_poll is not None:
        on_poll()

    # Only the step count, the client context and failures differ from a client's round;
    # everything else (optimizer, clipping, clip sampling, method) is the run's.
    pooled_spec = pooled_training_spec(spec.training, len(pooled), num_clients)
    for plan in budget[first_round - 1 :]:
        r = plan.round
        started = time.perf_counter()
        lr = round_learning_rate(spec.training.optimizer, r)
        round_spec = replace(pooled_spec, local_steps=plan.total_steps or None)
        result = run_local_training(round_spec, num_clients, r, global_state, local_state, pooled, lr)
        weight_norm = check_global(r, result.exchanged, float(result.metrics["loss"]), initial_norm, guard)
        global_state, local_state = result.exchanged, result.local
        save_checkpoint(run_dir, Checkpoint(r, global_state, {"local_state": local_state}))
        prune_checkpoints(run_dir, spec.retention)  # after latest.json names round r
        compute_s = float(result.metrics["compute_s"])
        rounds_log.append(
            RoundRecord(
                round=r,
                # The pooled data of every client trains; the federated run's sampled
                # clients only set this round's step budget.
                sampled_clients=list(range(num_clients)),
                replied_clients=list(range(num_clients)),
                failed_clients=[],
                lr=lr,
                loss=float(result.metrics["loss"]),
                num_examples=int(result.num_examples),
                client_compute_s=compute_s,
                round_wall_s=time.perf_counter() - started,
                global_weight_norm=weight_norm,
                extra={
                    "engine": "centralized",
                    "steps": int(result.metrics["steps"]),
                    "budget": {
                        "federated_sampled_clients": plan.sampled_clients,
                        "federated_client_steps": {str(c): s for c, s in plan.client_steps.items()},
                    },
                },
            ).to_json()
        )
        write_round_log(run_dir, rounds_log)
        write_status(run_dir, round=r)
        peak = max(peak, memory_bytes([os.getpid()]))
        say(
            f"round {r}/{num_rounds}: loss {result.metrics['loss']:.4f}, {plan.total_steps} steps "
            f"on {len(pooled)} pooled videos, {compute_s:.1f}s"
        )
        if on_poll is not None:
            on_poll()
    write_status(run_dir, state="completed", round=num_rounds)
    return FederationOutcome(time.perf_counter() - t0, None, peak, run_dir / ROUNDS_LOG)
