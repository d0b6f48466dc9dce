"""The server strategy: our seeded client sampling + a registered aggregator, on Flower's
``flwr.serverapp.strategy.Strategy``.

Per round (``start``):
1. ``configure_train`` samples clients by manifest id with ``numpy.random.default_rng``
   seeded by ``(seed, round)`` and sends each the global exchanged tensors + the round's
   config (``server-round``, ``lr``).
2. ``aggregate_train`` turns the replies into :class:`~benchmark.federation.ClientUpdate`
   objects (sorted by client id, so the float sums are order-independent), logs failed
   clients with their traceback, stops the run when fewer than ``min_clients`` replied,
   and calls the aggregator's ``aggregate(updates, previous, server_round)``.
   Before aggregating, the update guard (``benchmark.federation.guard``) rejects
   non-finite or outsized updates (each counted as that client's failure); after it, a
   diverged global model stops the run before the round is checkpointed.
3. The round's record (``benchmark.rundir.RoundRecord``: sampled clients, failures with
   their reason, each client's loss / num_examples / compute time / update norm / bytes,
   round wall time, client-vs-global L2 distance spread for backbone and heads) is
   appended to ``rounds.jsonl``; the new global model is checkpointed atomically.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from benchmark.federation.base import ClientUpdate
from benchmark.federation.guard import check_global, float_norm, screen_updates, squared_distance, update_norm
from benchmark.federation.payloads import ARRAYS_FILE, PayloadFiles, exchange_size, pack, unpack
from benchmark.federation.training import round_learning_rate, sample_clients
from benchmark.rundir import ClientFailure, RoundRecord
from benchmark.specs import FederationSpec

# A child of Flower\'s logger: its lines reach the streamed run log.
log = logging.getLogger("flwr").getChild("fedvid.server")

#: client metrics a round record keeps when the client sends them
OPTIONAL_CLIENT_METRICS = ("loss_every_step", "loss_log_entries", "loader_batches")
#: How often the round loop asks the grid for replies (Flower's InMemoryGrid: 0.1 s).
PULL_INTERVAL_S = 0.05


class RoundFailed(RuntimeError):
    """Fewer than ``federation.min_clients`` clients replied in a round.

    resumable: a resume can help only when some client did not answer in time; failures
    that the clients reported (errors, rejected updates) come back on a resume.
    """

    def __init__(self, message: str, resumable: bool):
        super().__init__(message)
        self.resumable = resumable


def l2_spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"min": min(values), "mean": mean, "max": max(values), "std": std}


def l2_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str]) -> float:
    return math.sqrt(sum(squared_distance(a[k], b[k]) for k in keys if a[k].is_floating_point()))


class FedVidStrategy(Strategy):
    """Seeded sampling by client id + a registered aggregator (see the module docstring).

    spec: seeded sampling, rounds, minimum clients, update guard, learning-rate schedule.
    node_of_client: manifest client id -> Flower node id (from the identity handshake).
    aggregator: an object with ``aggregate(updates, previous, server_round)``.
    on_round_end: called with (server_round, new global state, round record function) after
        each round (the server app checkpoints and logs there); the function returns the
        round's record (JSON dict), computing its client-to-global L2 spread when called, so
        the server can do that off the critical path (it holds the round's updates until then).
    previous_update_norms: accepted update norms of the round before ``first_round`` (resume).
    initial_norm: weight norm of the round-0 global model (default: of ``start``'s arrays).
    payloads: where the round's tensors travel: None = in the messages; a ``PayloadFiles``
        directory on this machine's shared memory (the simulation: benchmark.federation.payloads).

    The global model is ``global_state``: ``configure_train`` sends it (the ``arrays``
    argument of Flower's signature is not used) and ``aggregate_train`` replaces it, so no
    ``ArrayRecord`` of it is built that nothing sends (133 MB per round at R3D-18 scale).
    """

    def __init__(
        self,
        spec: FederationSpec,
        aggregator,
        node_of_client: dict[int, int],
        on_round_end: Callable[[int, dict[str, torch.Tensor], Callable[[], dict[str, Any]]], None] | None = None,
        previous_update_norms: list[float] | None = None,
        initial_norm: float = 0.0,
        payloads: PayloadFiles | None = None,
    ) -> None:
        self.spec = spec
        self.aggregator = aggregator
        self.node_of_client = dict(node_of_client)
        self.client_of_node = {n: c for c, n in node_of_client.items()}
        self.on_round_end = on_round_end
        self.min_clients = spec.min_clients
        self.guard = spec.guard
        self.previous_update_norms = list(previous_update_norms or [])
        self.initial_norm = initial_norm  # of the round-0 model: the divergence check's scale
        self.global_state: dict[str, torch.Tensor] = {}
        self._round: dict[str, Any] = {}
        self._l2_inputs: tuple | None = None
        self.payloads = payloads
        #: id() of a reply the round holds -> its tensors and guard's update_norm (or why it is
        #: unusable), read on arrival; cleared at the round's end, whatever happened
        self._arrived: dict[int, Any] = {}

    # --- Strategy interface -----------------------------------------------------------
    def summary(self) -> None:
        log.info(
            "FedVidStrategy: aggregator=%s, %s clients, clients_per_round=%s, min_clients=%s",
            self.spec.aggregator,
            len(self.node_of_client),
            self.spec.clients_per_round,
            self.spec.min_clients,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sampled = sample_clients(self.spec.seed, server_round, list(self.node_of_client), self.spec.clients_per_round)
        lr = round_learning_rate(self.spec.optimizer, server_round)
        config["server-round"] = server_round
        config["lr"] = lr
        content = RecordDict(
            {**pack(self.global_state, files=self.payloads, server_round=server_round, what="global"), "config": config}
        )
        down = exchange_size(content)
        self._round = {"round": server_round, "sampled_clients": sampled, "lr": lr, "bytes_down_per_client": down}
        log.info("round %d: sampled clients %s", server_round, sampled)
        return [
            Message(content=content, dst_node_id=self.node_of_client[cid], message_type=MessageType.TRAIN)
            for cid in sampled
        ]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[None, MetricRecord | None]:
        """Screen and aggregate the replies into ``global_state`` (see the class docstring)."""
        replies = list(replies)
        sampled = self._round["sampled_clients"]
        received: dict[int, tuple[dict[str, torch.Tensor], int, dict[str, Any], int]] = {}
        failures: list[ClientFailure] = []
        answered: set[int] = set()
        measured: dict[int, tuple[float, list[str]]] = {}
        for msg in replies:
            cid = self.client_of_node.get(msg.metadata.src_node_id, -1)
            answered.add(cid)
            if msg.has_error():
                reason = msg.error.reason or f"error code {msg.error.code}"
                log.error("round %d: client %d failed:\n%s", server_round, cid, reason)
                failures.append(ClientFailure(cid, "error", reason))
                continue
            arrived = self._arrived.pop(id(msg), None) or self._read_update(msg, cid, server_round)
            if isinstance(arrived, Exception):
                log.error("round %d: client %d's update could not be read: %s", server_round, cid, arrived)
                failures.append(ClientFailure(cid, "error", f"its update could not be read: {arrived}"))
                continue
            arrays = arrived[0]  # read-only views of the reply's bytes (or payload file)
            if arrived[1] is not None:
                measured[cid] = arrived[1]
            metrics = dict(msg.content["metrics"])
            num_examples = int(metrics.pop("num-examples"))
            metrics.pop("client-id", None)
            received[cid] = (arrays, num_examples, metrics, exchange_size(msg.content))
        for cid in sampled:
            if cid not in answered:
                failures.append(ClientFailure(cid, "timeout", "no reply before the round timeout"))
        # the update guard: non-finite or outsized updates never reach the aggregator
        norms, rejected = screen_updates(
            {c: r[0] for c, r in received.items()}, self.global_state, self.previous_update_norms, self.guard, measured
        )
        for f in rejected:
            log.error("round %d: client %d's update rejected (%s): %s", server_round, f.client_id, f.reason, f.error)
        failures += rejected
        failures.sort(key=lambda f: f.client_id)
        self._round["failed_clients"] = failures
        updates = [
            ClientUpdate(arrays=received[c][0], num_examples=received[c][1], metrics=received[c][2], client_id=c)
            for c in sorted(norms)
        ]
        clients = [
            {
                "client_id": u.client_id,
                "loss": float(u.metrics["loss"]),
                "num_examples": u.num_examples,
                "compute_s": float(u.metrics.get("compute_s", 0.0)),
                "cpu_s": float(u.metrics.get("cpu_s", 0.0)),
                "steps": int(u.metrics.get("steps", 0)),
                "restored_local_state": bool(u.metrics.get("restored_local_state", 0.0)),
                "update_norm": norms[u.client_id],
                "bytes_down": self._round["bytes_down_per_client"],
                "bytes_up": received[u.client_id][3],
                # present when the run sets them: client.loss_log_interval's two figures, the loader's batches
                **{k: float(u.metrics[k]) for k in OPTIONAL_CLIENT_METRICS if k in u.metrics},
            }
            for u in updates
        ]
        if len(updates) < self.min_clients:
            raise RoundFailed(
                f"round {server_round}: only {len(updates)} of {len(sampled)} sampled clients replied with a usable "
                f"update, federation.min_clients={self.min_clients}. The run stops here; the last complete "
                "checkpoint is intact. Failures: "
                + "; ".join(
                    f"client {f.client_id}: {f.reason}: {f.error.splitlines()[0] if f.error else ''}" for f in failures
                ),
                resumable=any(f.reason == "timeout" for f in failures),
            )
        t0 = time.perf_counter()
        new_state = self.aggregator.aggregate(updates, self.global_state or None, server_round)
        aggregate_s = time.perf_counter() - t0
        total = sum(u.num_examples for u in updates)
        loss = sum(u.metrics["loss"] * u.num_examples for u in updates) / max(1, total)
        weight_norm = check_global(server_round, new_state, loss, self.initial_norm, self.guard)

        backbone_keys = [k for k in new_state if k.startswith("backbone.")]
        head_keys = [k for k in new_state if not k.startswith("backbone.")]
        self._round.update(
            {
                "clients": clients,
                "replied_clients": [u.client_id for u in updates],
                "aggregate_s": aggregate_s,
                "loss": loss,
                "num_examples": total,
                "client_compute_s": sum(c["compute_s"] for c in clients),
                "bytes_down": self._round["bytes_down_per_client"] * len(sampled),
                "bytes_up": sum(c["bytes_up"] for c in clients),
                "global_weight_norm": weight_norm,
            }
        )
        # the client-to-global L2 spread is a log figure: computed when the record is
        # (``on_round_end``'s record function, off the round's critical path)
        self._l2_inputs = ([u.arrays for u in updates], new_state, backbone_keys, head_keys)
        self.previous_update_norms = list(norms.values())
        self.global_state = new_state
        metrics = MetricRecord({"loss": float(loss), "num-clients": len(updates)})
        return None, metrics

    @staticmethod
    def l2_to_global(
        arrays: list[dict[str, torch.Tensor]], new_state: dict[str, torch.Tensor], backbone_keys, head_keys
    ) -> dict[str, Any]:
        """Spread of the accepted updates' L2 distances to the new global model, backbone
        and heads (heads travel only with exchange=full; with exchange=backbone they stay local)."""
        return {
            "backbone": l2_spread([l2_distance(a, new_state, backbone_keys) for a in arrays]),
            "heads": l2_spread([l2_distance(a, new_state, head_keys) for a in arrays]) if head_keys else None,
        }

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the global model is evaluated centrally after the run (benchmark.evaluation)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # --- the round loop (resumable) ---------------------------------------------------
    def exchange(self, grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
        """``grid.send_and_receive(messages, timeout=timeout)``, measuring each update for the
        guard as it arrives: of the guard's norms only the last reply's stays on the round's
        critical path (~0.08 s per R3D-18 update; the other clients are still training)."""
        # the simulation's in-memory grid answers at once; a deployment grid asks the SuperLink
        # over the network (Flower's own interval: GrpcGrid/HttpGrid's pull_interval)
        interval = PULL_INTERVAL_S if self.payloads is not None else float(getattr(grid, "pull_interval", 3.0))
        pending = set(grid.push_messages(messages))
        del messages
        end = time.time() + timeout
        replies: list[Message] = []
        while pending and time.time() < end:
            for msg in grid.pull_messages(pending):
                pending.discard(msg.metadata.reply_to_message_id)
                replies.append(msg)
                cid = self.client_of_node.get(msg.metadata.src_node_id, -1)
                if not msg.has_error() and cid >= 0:
                    self._arrived[id(msg)] = self._read_update(msg, cid, self._round["round"], measure=True)
            if pending:
                time.sleep(interval)
        return replies

    def _read_update(
        self, msg: Message, cid: int, server_round: int, measure: bool = False
    ) -> tuple[dict[str, torch.Tensor], tuple[float, list[str]] | None] | Exception:
        """A reply's tensors (read-only views) and, with ``measure``, the guard's update_norm
        of them; or the exception that makes the update unusable (the client's failure)."""
        try:
            if ARRAYS_FILE in msg.content:
                if self.payloads is None:
                    raise RuntimeError("it names a payload file, but this run's tensors travel in the messages")
                self.payloads.check_reply(msg.content[ARRAYS_FILE], server_round, cid)
            arrays = unpack(msg.content, unlink=True)
            return arrays, update_norm(arrays, self.global_state) if measure else None
        except Exception as exc:  # noqa: BLE001 - a bad update fails its client, not the run
            return exc

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn=None,
        first_round: int = 1,
    ) -> Result:
        """Run rounds ``first_round..num_rounds`` (``first_round > 1`` continues a resumed run)."""
        self.summary()
        result = Result()
        self.global_state = initial_arrays.to_torch_state_dict()
        self.initial_norm = self.initial_norm or float_norm(self.global_state)
        for server_round in range(first_round, num_rounds + 1):
            t0 = time.perf_counter()
            try:
                replies = self.exchange(
                    grid,
                    self.configure_train(server_round, None, ConfigRecord(dict(train_config or {})), grid),
                    timeout,
                )
                _, metrics = self.aggregate_train(server_round, replies)
            finally:
                self._arrived.clear()  # a failed round's measured replies
                if self.payloads is not None:  # the global model's file, replies nobody read
                    self.payloads.end_round(server_round)
            del replies  # 5 x 133 MB at R3D-18 scale: not held through the next round
            if metrics is not None:
                result.train_metrics_clientapp[server_round] = metrics
            fields = dict(self._round)
            fields.pop("bytes_down_per_client", None)
            wall_s = time.perf_counter() - t0
            pending, self._l2_inputs = [self._l2_inputs], None

            def round_record(fields=fields, wall_s=wall_s, pending=pending) -> dict[str, Any]:
                # once: the round's updates (5 x 133 MB at R3D-18 scale) are released here
                l2 = self.l2_to_global(*pending.pop())
                return RoundRecord(**fields, l2_to_global=l2, round_wall_s=wall_s).to_json()

            if self.on_round_end is not None:
                self.on_round_end(server_round, self.global_state, round_record)
        return result
