"""The Flower ServerApp: identity handshake, resumable rounds, checkpoints and the round log.

The app reads the Hydra-resolved config saved by ``fedvid run`` (run config
``config-path`` = ``<run_dir>/config.json``) and writes into that run directory:

- ``rounds.jsonl``: one JSON object per completed round (see ``FedVidStrategy``),
- ``checkpoints/round_XXXX.pt`` + ``checkpoints/latest.json`` (every round, atomic),
- ``federation_status.json``: ``{"state": "running" | "completed" | "failed", ...}``,
  which ``fedvid run`` reads for progress and for the outcome.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from benchmark.federation.checkpoint import Checkpoint, RoundWrites, save_checkpoint
from benchmark.federation.control import END_OF_LOG
from benchmark.federation.guard import float_norm
from benchmark.federation.payloads import PayloadFiles
from benchmark.federation.strategy import FedVidStrategy
from benchmark.federation.training import clients_per_round, initial_global_state
from benchmark.federation.wire import record_from_state
from benchmark.io import make_durable, read_json
from benchmark.memory import trim_heap
from benchmark.registry import build_aggregator
from benchmark.rundir import (
    CLIENT_STATE,
    local_state_file,
    prune_all_client_state,
    prune_checkpoints,
    resume_point,
    write_round_log,
    write_status,
)
from benchmark.specs import RunSpec

# A child of Flower\'s logger: its lines reach the streamed run log.
log = logging.getLogger("flwr").getChild("fedvid.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config_path = Path(str(context.run_config["config-path"]))
    run_dir = config_path.parent
    _exit_with_launcher()
    try:
        config = read_json(config_path)  # checked by the runner that wrote it
        serve_rounds(
            grid,
            RunSpec.from_config(config, check=False),
            run_dir,
            resume=bool(config.get("resume", False)),
            node_wait_timeout_s=float((config.get("engine") or {}).get("node_wait_timeout_s", 300)),
            tensorboard=bool((config.get("log") or {}).get("tensorboard", False)),
        )
    except Exception as exc:
        write_status(
            run_dir,
            state="failed",
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            resumable=bool(getattr(exc, "resumable", True)),
        )
        log.error("the federation failed:\n%s", traceback.format_exc())
        raise
    finally:
        log.info(END_OF_LOG)  # the launcher's log drain waits for this line


def _exit_with_launcher() -> None:
    """Stop this ServerApp as soon as the `fedvid run` that launched it is gone.

    A killed launcher must not leave a simulation that keeps training and writing
    checkpoints into the run directory (``resume=true`` continues from the last one).
    Runs started against an external SuperLink have no launcher PID and are not watched.
    """
    import os
    import threading

    from benchmark.federation.engine import LAUNCHER_PID_ENV

    pid = os.environ.get(LAUNCHER_PID_ENV)
    if not pid:
        return

    def watch() -> None:
        while True:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                log.error("fedvid run (pid %s) is gone; stopping this run's processes", pid)
                _stop_run_processes()
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(0.1)

    threading.Thread(target=watch, name="fedvid-launcher-watch", daemon=True).start()


def _stop_run_processes() -> None:
    """Do what the dead launcher would have done: end every process of this run (they carry
    its ``FEDVID_RUN_TAG``: SuperLink, SuperExec, Ray GCS/raylet/workers), except this one."""
    import os
    import signal

    from benchmark.federation.reaper import RUN_TAG_ENV, remove_payloads, tagged_processes

    tag = os.environ.get(RUN_TAG_ENV)
    if not tag:
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
        pids = tagged_processes(tag)
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while tagged_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.1)
    remove_payloads(tag)  # after the kill: no client is left to write into them


def identify_clients(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every connected SuperNode for its client id; return client id -> node id.

    Waits (up to ``timeout`` s) until ``num_clients`` nodes are connected.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(node_ids)} of federation.num_clients={num_clients} SuperNodes connected within "
                f"{timeout:.0f}s; start one SuperNode per client (docs/deployment.md)"
            )
        time.sleep(0.2)
    messages = [
        Message(
            RecordDict({"query": ConfigRecord({"what": "client-id"})}), dst_node_id=n, message_type=MessageType.QUERY
        )
        for n in node_ids
    ]
    node_of_client: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(
                f"SuperNode {reply.metadata.src_node_id} could not identify itself: {reply.error.reason}"
            )
        cid = int(reply.content["identity"]["client-id"])
        if cid in node_of_client:
            raise RuntimeError(
                f"two SuperNodes ({node_of_client[cid]} and {reply.metadata.src_node_id}) claim client-id={cid}; "
                "give each SuperNode its own client-id"
            )
        node_of_client[cid] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(node_of_client))
    if missing:
        raise RuntimeError(f"no SuperNode serves client ids {missing[:10]} (federation.num_clients={num_clients})")
    return node_of_client


def serve_rounds(
    grid: Grid,
    spec: RunSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    node_wait_timeout_s: float = 300,
    tensorboard: bool = False,
) -> None:
    """The ServerApp's work: identify the SuperNodes, run the rounds from the resume point, checkpoint each."""
    fed = spec.federation
    num_rounds = fed.rounds
    aggregator = build_aggregator(fed.aggregator, **dict(fed.aggregator_params))

    retention = spec.retention
    ckpt, rounds_log = resume_point(run_dir, resume)
    initial_state = initial_global_state(spec.model, spec.training.seed)
    if ckpt is not None:
        first_round = ckpt.round + 1
        global_state = ckpt.global_state
        if ckpt.aggregator_state and hasattr(aggregator, "load_state_dict"):
            aggregator.load_state_dict(ckpt.aggregator_state)
        log.info("resuming after round %d", ckpt.round)
    else:
        first_round = 1
        global_state = initial_state
    write_round_log(run_dir, rounds_log)
    write_status(run_dir, state="connecting", round=first_round - 1, rounds=num_rounds, first_round=first_round)

    t_connect = time.perf_counter()
    node_of_client = identify_clients(grid, fed.num_clients, node_wait_timeout_s)
    write_status(run_dir, state="running", connect_s=time.perf_counter() - t_connect)

    writer = _tensorboard_writer(run_dir) if tensorboard else None

    state_dir = run_dir / CLIENT_STATE
    sampled_before: list[int] = []  # the previous round's sampled clients (the round writes run in order)

    def write_round(server_round: int, new_state, agg_state: dict, round_record) -> None:
        record = round_record()  # first: it releases the round's client updates
        if strategy.payloads is not None:
            # every sampled client's file of this round (a rejected update's too: a resume reads
            # it) and of the round before (a client that replied too late then), and the folders
            files = [local_state_file(state_dir, c, server_round) for c in record["sampled_clients"]]
            files += [local_state_file(state_dir, c, server_round - 1) for c in sampled_before]
            make_durable([state_dir, *files])
        sampled_before[:] = record["sampled_clients"]
        save_checkpoint(run_dir, Checkpoint(server_round, new_state, agg_state))
        # retention: only after latest.json names the new checkpoint (rundir.Retention)
        prune_checkpoints(run_dir, retention)
        prune_all_client_state(run_dir / CLIENT_STATE, server_round, retention)
        trim_heap()  # the round's freed message buffers back to the OS: RSS stays flat (benchmark.memory)
        rounds_log.append(record)
        write_round_log(run_dir, rounds_log)
        write_status(run_dir, round=server_round)
        log.info(
            "round %d/%d: loss %.4f, %d clients, %.2fs",
            server_round,
            num_rounds,
            record["loss"],
            len(record["replied_clients"]),
            record["round_wall_s"],
        )
        if writer is not None:
            _tensorboard_round(writer, record)

    # Round r's record (its L2 spread) and checkpoint are written while round r+1's clients
    # train (~1 s of the R3D-18 round off the critical path); RoundWrites keeps the inline order and guarantees.
    writes = RoundWrites()

    def on_round_end(server_round: int, new_state, round_record) -> None:
        # the aggregator's state now: it may change in place in the next round's aggregation
        agg_state = aggregator.state_dict() if hasattr(aggregator, "state_dict") else {}
        writes.submit(lambda: write_round(server_round, new_state, agg_state, round_record))

    previous_norms = [c["update_norm"] for c in rounds_log[-1]["clients"] if "update_norm" in c] if rounds_log else []
    strategy = FedVidStrategy(
        fed,
        aggregator,
        node_of_client,
        on_round_end=on_round_end,
        previous_update_norms=previous_norms,
        initial_norm=float_norm(initial_state),
    )
    if first_round <= num_rounds:
        try:
            strategy.payloads = _payload_files(spec, run_dir, global_state)
            write_status(run_dir, tensors="shared-memory" if strategy.payloads is not None else "messages")
            strategy.start(
                grid,
                record_from_state(global_state),
                num_rounds=num_rounds,
                timeout=fed.round_timeout_s,
                first_round=first_round,
            )
        except BaseException as exc:
            # the last complete round's writes finish before the failure is reported
            try:
                writes.join()
            except Exception as write_exc:  # noqa: BLE001 - reported with the round's failure
                exc.add_note(
                    f"and the previous round's checkpoint write failed: {type(write_exc).__name__}: {write_exc}"
                )
            raise
        finally:
            if strategy.payloads is not None:
                strategy.payloads.close()
        writes.join()
    if writer is not None:
        writer.close()
    write_status(run_dir, state="completed", round=num_rounds)


def _payload_files(spec: RunSpec, run_dir: Path, global_state) -> PayloadFiles | None:
    """Shared-memory payload files when every client runs on this machine: the simulation on
    a Ray instance fedvid started (the run's own, or its sweep's head on 127.0.0.1; tagged
    with ``FEDVID_RUN_TAG``); otherwise the tensors travel in the messages
    (benchmark.federation.payloads)."""
    import os

    from benchmark.federation.reaper import LOCAL_RAY_ENV, RUN_TAG_ENV

    tag = os.environ.get(RUN_TAG_ENV)
    # an existing Ray cluster (engine.ray_address, or RAY_ADDRESS from the environment) may
    # put clients on other machines; the head a sweep started here does not
    ray_address = spec.engine.ray_address or os.environ.get("RAY_ADDRESS")
    if spec.engine.name != "simulation" or not tag or (ray_address and ray_address != os.environ.get(LOCAL_RAY_ENV)):
        return None
    fed = spec.federation
    per_round = clients_per_round(fed.clients_per_round, fed.num_clients)
    state_bytes = sum(t.numel() * t.element_size() for t in global_state.values())
    # the round's global file + one reply per client, with room for a late reply of the round before
    payloads = PayloadFiles.for_run(tag, run_dir, (per_round + 2) * state_bytes, log=log)
    if payloads is not None:
        log.info("the round's tensors travel through %s (shared memory on this machine)", payloads.directory)
    return payloads


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError("log.tensorboard=true needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(str(run_dir / "tensorboard"))


def _tensorboard_round(writer, record: dict) -> None:
    r = record["round"]
    writer.add_scalar("train/loss", record["loss"], r)
    writer.add_scalar("systems/round_wall_s", record["round_wall_s"], r)
    writer.add_scalar("systems/client_compute_s", record["client_compute_s"], r)
    writer.add_scalar("systems/bytes_up", record["bytes_up"], r)
    writer.add_scalar("systems/bytes_down", record["bytes_down"], r)
    for part, spread in record["l2_to_global"].items():
        if spread:
            writer.add_scalar(f"l2_to_global/{part}_mean", spread["mean"], r)
            writer.add_scalar(f"l2_to_global/{part}_std", spread["std"], r)
    for c in record["clients"]:
        writer.add_scalar(f"client_loss/{c['client_id']}", c["loss"], r)
    writer.flush()
