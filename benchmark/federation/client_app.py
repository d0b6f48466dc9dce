"""The Flower ClientApp: one client of the federation (Message API).

Identity: a SuperNode's node config names its client. Deployment SuperNodes are started
with ``--node-config "client-id=3 manifest='/path/split.json' dataset-root='/data/k400'"``;
virtual SuperNodes of the simulation engine carry ``partition-id``, which is the client
id (the simulation has exactly ``num_clients`` SuperNodes).

Messages:
- ``query``: reply with the client id, so the server samples clients by manifest id.
- ``train``: load the global exchanged weights (+ this client's own heads from its
  newest state file when ``exchange=backbone``), train locally, reply with the exchanged
  weights (in the message, or in a payload file beside the one the global model came in:
  :mod:`benchmark.federation.payloads`), ``num-examples`` and metrics. A failure is logged with its traceback and
  returned as an error reply carrying the traceback.
"""

from __future__ import annotations

import logging
import traceback
from functools import lru_cache, partial
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from benchmark.federation.payloads import pack, reply_directory, unpack
from benchmark.federation.training import client_videos, run_local_training
from benchmark.io import atomic_write_with, read_json
from benchmark.memory import trim_heap
from benchmark.rundir import CLIENT_STATE, MANIFEST, Retention, local_state_file, prune_client_state
from benchmark.specs import LocalTrainingSpec

# A child of Flower\'s logger: its lines reach the streamed run log.
log = logging.getLogger("flwr").getChild("fedvid.client")

#: Context-state key the client's own tensors once used; they now live only in its state
#: file (see ``_train``), and tests check that the context stays free of them.
LOCAL_STATE_KEY = "fedvid.local"
#: Error code of a ClientApp that raised (the reason carries the traceback).
CLIENT_FAILED = 1001

app = ClientApp()


@lru_cache(maxsize=2)
def _load_run_config(path: str) -> tuple[dict, LocalTrainingSpec]:
    """The run's resolved config (checked by the runner that wrote it) and its training spec."""
    if not path:
        raise ValueError("run config `config-path` is empty: start runs with `fedvid run`, which sets it")
    config = read_json(path)
    return config, LocalTrainingSpec.from_config(config)


def client_identity(node_config: dict, num_clients: int) -> int:
    if "client-id" in node_config:
        cid = int(node_config["client-id"])
    elif "partition-id" in node_config:
        cid = int(node_config["partition-id"])
    else:
        raise ValueError(
            'the SuperNode\'s node config names no client: start it with --node-config "client-id=N manifest=PATH"'
        )
    if not 0 <= cid < num_clients:
        raise ValueError(f"node config client-id={cid}: the run has clients 0..{num_clients - 1}")
    return cid


def run_state_dir(context: Context) -> Path:
    """The run directory's client-state folder (the server's view of the clients' state files)."""
    return Path(str(context.run_config["config-path"])).parent / CLIENT_STATE


def _paths(cfg, context: Context) -> tuple[str, str, Path]:
    """(manifest, dataset root, client state dir) — the node config overrides the run's paths."""
    nc = context.node_config
    run_dir = Path(str(context.run_config["config-path"])).parent
    manifest = str(nc.get("manifest") or run_dir / MANIFEST)
    dataset_root = str(nc.get("dataset-root") or cfg["dataset"]["root"])
    state_dir = Path(str(nc.get("state-dir") or run_dir / CLIENT_STATE))
    return manifest, dataset_root, state_dir


@app.query()
def identify(msg: Message, context: Context) -> Message:
    _, spec = _load_run_config(str(context.run_config["config-path"]))
    cid = client_identity(dict(context.node_config), spec.num_clients)
    return Message(RecordDict({"identity": ConfigRecord({"client-id": cid})}), reply_to=msg)


def _local_state_file(state_dir: Path, cid: int, server_round: int) -> Path:
    return local_state_file(state_dir, cid, server_round)


def _restore_local_state(state_dir: Path, cid: int, server_round: int):
    """This client's own tensors: the newest file it wrote in a round before ``server_round``."""
    client_dir = state_dir / f"client_{cid:04d}"
    if not client_dir.is_dir():
        return None
    earlier = sorted(p for p in client_dir.glob("round_*.pt") if int(p.stem.split("_")[1]) < server_round)
    if not earlier:
        return None
    return torch.load(earlier[-1], map_location="cpu", weights_only=True)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        return _train(msg, context)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the server
        tb = traceback.format_exc()
        log.error("client training failed:\n%s", tb)
        return Message(Error(code=CLIENT_FAILED, reason=f"{type(exc).__name__}: {exc}\n{tb}"), reply_to=msg)


def _train(msg: Message, context: Context) -> Message:
    cfg, spec = _load_run_config(str(context.run_config["config-path"]))
    cid = client_identity(dict(context.node_config), spec.num_clients)
    conf = msg.content["config"]
    server_round = int(conf["server-round"])
    manifest, dataset_root, state_dir = _paths(cfg, context)

    # read-only views of the message's bytes or payload file: the model copies them in (a
    # method that overrides start_round gets a private copy: run_local_training)
    global_state = unpack(msg.content)
    local_state = _restore_local_state(state_dir, cid, server_round)
    result = run_local_training(
        spec,
        client_id=cid,
        server_round=server_round,
        global_state=global_state,
        local_state=local_state,
        videos=client_videos(
            manifest,
            dataset_root,
            cid,
            bool(cfg.get("allow_missing_videos", False)),
            image=spec.image_dataset is not None,
        ),
        lr=float(conf["lr"]),
    )
    if result.local:
        # The heads stay between rounds (FedVSSL's exchange=backbone) in the client's state
        # file only, which a resumed run (fresh contexts) reads too: in the simulation every
        # client's context lives in one process, and 100 CtP heads of R3D-18 kept there
        # would grow it by 2.8 GB as clients get sampled (perf/bench_scale.py).
        # In the simulation (payload files: this machine) the server fsyncs the run's state
        # files of the round before it checkpoints it (server_app: write_round), off the
        # round's critical path; elsewhere the client does, before it replies.
        server_syncs = reply_directory(msg.content) is not None and state_dir == run_state_dir(context)
        atomic_write_with(
            _local_state_file(state_dir, cid, server_round), partial(torch.save, result.local), fsync=not server_syncs
        )
        # Round server_round - 2 is checkpointed (the server writes round r's checkpoint while
        # round r + 1 trains, after round r - 1's: checkpoint.RoundWrites): of the older files
        # only the newest can still be read by a resume.
        prune_client_state(
            _local_state_file(state_dir, cid, server_round).parent, server_round - 2, Retention.from_config(cfg)
        )
    metrics = {**result.metrics, "num-examples": int(result.num_examples), "client-id": cid}
    # the reply's tensors travel the way the global model came (benchmark.federation.payloads)
    arrays = pack(result.exchanged, files=reply_directory(msg.content), server_round=server_round, what=f"client{cid}")
    content = RecordDict({**arrays, "metrics": MetricRecord(metrics)})
    del global_state, result
    trim_heap()  # the round's model and buffers back to the OS (the actor serves other clients next)
    return Message(content=content, reply_to=msg)
