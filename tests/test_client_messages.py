"""What leaves a client: the Messages the ClientApp sends, for every registered method.

The ClientApp is called the way a SuperNode calls it (``ClientApp.__call__(message,
context)``) with the train Message the server's strategy builds; its reply is what Flower
serializes onto the wire. docs/deployment.md documents the exact contents asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto

from benchmark import rundir
from benchmark.commands.check_method import smoke_overrides
from benchmark.commands.run import prepare_data, prepare_manifest, save_config
from benchmark.config import to_container
from benchmark.data.annotations import load_annotations
from benchmark.federation.client_app import LOCAL_STATE_KEY, app
from benchmark.federation.payloads import PayloadFiles, unpack
from benchmark.federation.strategy import FedVidStrategy
from benchmark.federation.training import build_model, initial_global_state
from benchmark.methods import EXCHANGE_CHOICES
from benchmark.registry import METHODS
from benchmark.specs import RunSpec
from benchmark.splits.format import write_manifest

#: The metrics of a train reply (docs/deployment.md, "What a client sends").
TRAIN_METRICS = {
    "loss",
    "compute_s",
    "cpu_s",
    "steps",
    "loader_batches",
    "samples_processed",
    "restored_local_state",
    "num-examples",
    "client-id",
}
NODE_OF_CLIENT = {0: 1001, 1: 1002}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import benchmark.config  # noqa: F401  (registers ${project_root:})
    from benchmark import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def _wire_bytes(msg: Message) -> bytes:
    return message_to_proto(msg).SerializeToString()


def _train_message(federation, global_state: dict[str, torch.Tensor], server_round: int, payloads=None) -> Message:
    """The train Message the server sends to client 0 (built by the real strategy; its
    tensors in the message, or in a shared-memory payload file with ``payloads``)."""
    strategy = FedVidStrategy(federation, aggregator=None, node_of_client=NODE_OF_CLIENT, payloads=payloads)
    strategy.global_state = global_state
    messages = strategy.configure_train(server_round, None, ConfigRecord(), grid=None)
    (msg,) = [m for m in messages if m.metadata.dst_node_id == NODE_OF_CLIENT[0]] or [None]
    assert msg is not None, "client 0 must be sampled (clients_per_round = all)"
    msg.metadata.__dict__["_message_id"] = msg.object_id  # what the SuperLink assigns on delivery
    return msg


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps the sender's run/node/task ids on every new Message (set per process by
    Flower's runtime; here the test plays the ServerApp, run 1, on the SuperLink's node 1)."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fedvid-data-messages")


@pytest.mark.parametrize("exchange", EXCHANGE_CHOICES)
@pytest.mark.parametrize("method", METHODS.names())
def test_client_reply_holds_only_the_declared_tensors_and_metrics(method, exchange, data_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = _compose(
        [*smoke_overrides(method), f"data_root={data_root}", f"method.exchange={exchange}", "federation.local_steps=1"]
    )
    if "hidden_dim" in (cfg.method.get("params") or {}):
        cfg.method.params.hidden_dim = 16  # the projector's width does not change what is sent
    prepare_data(cfg)
    manifest, _ = prepare_manifest(cfg, run_dir, load_annotations(cfg.dataset))
    write_manifest(manifest.data, run_dir / rundir.MANIFEST)
    config = to_container(cfg)
    save_config(config, run_dir)
    spec = RunSpec.from_config(config)
    model = build_model(spec.model, 0)
    declared, kept = set(model.exchanged_state()), set(model.local_state())
    non_persistent = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    assert declared and not declared & kept
    # what is exchanged is weights: parameters and normalisation statistics. Any other buffer
    # (a MoCo-style queue of embeddings, a per-client basis) is client state and must not be sent
    norm_stats = {
        f"{m_name}.{b_name}"
        for m_name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._NormBase)
        for b_name, _ in m.named_buffers(recurse=False)
    }
    assert declared <= {n for n, _ in model.named_parameters()} | norm_stats, sorted(
        declared - {n for n, _ in model.named_parameters()} - norm_stats
    )
    if exchange == "backbone":
        assert kept and all(k.startswith("backbone.") for k in declared)

    context = Context(
        run_id=1,
        node_id=NODE_OF_CLIENT[0],
        node_config={"client-id": 0},
        state=RecordDict(),
        run_config={"config-path": str(run_dir / "config.json")},
    )
    # no path, directory or video name of the client's data (names without extension: class/video ids)
    videos = [rel for rel, _ in manifest.client_videos(0)]
    private = [str(data_root), str(run_dir), *videos, *(v.rsplit("/", 1)[-1].rsplit(".", 1)[0] for v in videos)]
    global_state = initial_global_state(spec.model, spec.training.seed)
    # round 2 as in the simulation: the tensors in payload files beside the messages
    payloads = PayloadFiles(tmp_path / "payloads")
    for server_round in (1, 2):
        files = payloads if server_round == 2 else None
        reply = app(_train_message(spec.federation, global_state, server_round, files), context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        content = reply.content
        if files is None:
            assert set(content.keys()) == {"arrays", "metrics"}
            assert isinstance(content["arrays"], ArrayRecord) and isinstance(content["metrics"], MetricRecord)
            sent = content["arrays"].to_torch_state_dict()
        else:  # the reply's tensors in a new file beside the global model's
            assert set(content.keys()) == {"arrays-file", "metrics"}
            assert Path(content["arrays-file"]["path"]).parent == payloads.directory
            sent = {k: v.clone() for k, v in unpack(content, unlink=True).items()}
            payloads.end_round(server_round)
            assert list(payloads.directory.iterdir()) == []
        # exactly the method's declared exchanged tensors, with the model's shapes
        assert set(sent) == declared
        assert all(sent[k].shape == model.state_dict()[k].shape for k in sent)
        assert not set(sent) & (kept | non_persistent)  # no heads (exchange=backbone), no SSD basis
        assert set(content["metrics"]) == TRAIN_METRICS
        assert content["metrics"]["client-id"] == 0 and content["metrics"]["samples_processed"] == 2
        assert content["metrics"]["num-examples"] == len(videos)  # the training-set size: FedAvg's weight
        # kept: heads under exchange=backbone, and a method's local_only state (MoCo's key encoder and queue)
        assert content["metrics"]["restored_local_state"] == float(bool(kept) and server_round == 2)
        # the client's own tensors stay in its state file (not in the node context, which the
        # simulation keeps for every client in one process), never in the reply
        assert LOCAL_STATE_KEY not in context.state
        state_file = run_dir / "client_state" / "client_0000" / f"round_{server_round:04d}.pt"
        if kept:
            assert set(torch.load(state_file, weights_only=True)) == kept
        else:
            assert not state_file.exists()
        wire = _wire_bytes(reply)
        leaked = [s for s in private if s.encode() in wire]
        assert leaked == [], f"the reply carries {leaked}"
        global_state = sent

    # the identity query answers the client id and nothing else
    query = Message(
        RecordDict({"query": ConfigRecord({"what": "client-id"})}),
        dst_node_id=NODE_OF_CLIENT[0],
        message_type=MessageType.QUERY,
    )
    query.metadata.__dict__["_message_id"] = query.object_id
    answer = app(query, context)
    assert {k: dict(v) for k, v in answer.content.items()} == {"identity": {"client-id": 0}}
