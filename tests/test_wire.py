"""The server's one-copy / zero-copy paths (benchmark.federation.wire, chunked float64 passes
in guard.squared_distance and Aggregator.weighted_sum) against the implementations they
replaced (Flower's conversions, whole-tensor float64 copies, a BLAS dot): same bytes, the
aggregate bit for bit, norms as exact as before (last digits differ), and no aliasing
between what the server receives and what it keeps."""

from __future__ import annotations

import io
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from torch import nn

from baselines.fvssl import FVSSL
from benchmark.federation.base import ClientUpdate
from benchmark.federation.guard import CHUNK, float_norm
from benchmark.federation.strategy import l2_distance
from benchmark.federation.training import begin_round
from benchmark.federation.wire import record_from_state, state_from_record
from benchmark.methods import SSLMethod


def _r3d_like(seed: int) -> dict[str, torch.Tensor]:
    """R3D-18's kinds of tensors, smaller: conv weights (5-D, > CHUNK elements, not a
    multiple of it), BN weight/bias/running stats, int64 ``num_batches_tracked`` (0-dim),
    and a float64 and a float16 tensor."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for i, (cout, cin, k) in enumerate(((64, 3, 7), (64, 64, 3), (128, 64, 3))):
        state[f"backbone.layer{i}.conv.weight"] = torch.randn(cout, cin, 3, k, k, generator=g) * 0.05
        state[f"backbone.layer{i}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
        state[f"backbone.layer{i}.bn.bias"] = 0.1 * torch.randn(cout, generator=g)
        state[f"backbone.layer{i}.bn.running_mean"] = torch.randn(cout, generator=g)
        state[f"backbone.layer{i}.bn.running_var"] = torch.rand(cout, generator=g) + 0.5
        state[f"backbone.layer{i}.bn.num_batches_tracked"] = torch.tensor(100 * seed + 7 * i, dtype=torch.int64)
    state["head.fc.weight"] = torch.randn(33, 129, generator=g, dtype=torch.float64)
    state["head.fc.bias"] = torch.randn(33, generator=g).half()
    assert state["backbone.layer2.conv.weight"].numel() > CHUNK and state["backbone.layer2.conv.weight"].numel() % CHUNK
    return state


def _old_squared_distance(a, b=None) -> float:  # ca4cd01's guard.squared_distance
    d = a.detach().to(torch.float64, copy=True).reshape(-1)
    if b is not None:
        d.sub_(b.detach().reshape(-1))
    return float(torch.dot(d, d))


def _old_weighted_sum(updates, weights, keys):  # ca4cd01's Aggregator.weighted_sum
    out = {}
    for key in keys:
        ref = updates[0].arrays[key]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for u, w in zip(updates, weights):
            acc += u.arrays[key].detach().to(torch.float64, copy=True).mul_(float(w))
        out[key] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
    return out


def test_record_from_state_writes_flowers_bytes_and_state_from_record_reads_its_values():
    state = {**_r3d_like(0), "t": torch.randn(5, 7).t(), "empty": torch.zeros(0, 3), "b": torch.tensor([True, False])}
    ours, flowers = record_from_state(state), ArrayRecord(state)
    assert list(ours) == list(flowers)
    for k in state:
        assert (ours[k].dtype, ours[k].shape, ours[k].stype, ours[k].data) == (
            flowers[k].dtype,
            flowers[k].shape,
            flowers[k].stype,
            flowers[k].data,
        ), k
        # and np.save's own bytes (what Flower's Array.numpy() parses)
        buf = io.BytesIO()
        np.save(buf, state[k].numpy(), allow_pickle=False)
        assert ours[k].data == buf.getvalue(), k
    received, reference = state_from_record(ours), flowers.to_torch_state_dict()
    assert list(received) == list(reference)
    for k in state:
        assert received[k].dtype == reference[k].dtype and received[k].shape == reference[k].shape, k
        assert torch.equal(received[k], reference[k]), k


def test_received_views_share_nothing_with_the_state_the_server_keeps():
    glob = _r3d_like(0)
    kept = {k: v.clone() for k, v in glob.items()}
    down = record_from_state(glob)  # the next round's message: its own bytes
    glob["backbone.layer0.conv.weight"].add_(1.0)  # the server's state changing after sending
    assert torch.equal(state_from_record(down)["backbone.layer0.conv.weight"], kept["backbone.layer0.conv.weight"])
    glob = kept

    reply = record_from_state(_r3d_like(1))
    received = state_from_record(reply)
    assert received["backbone.layer1.conv.weight"].data_ptr() != _r3d_like(1)["backbone.layer1.conv.weight"].data_ptr()
    new_global = FVSSL(alpha=0.9, beta=1).aggregate(
        [ClientUpdate(arrays=received, num_examples=3, metrics={"loss": 1.0}, client_id=0)], glob, 2
    )
    before = {k: v.clone() for k, v in new_global.items()}
    for t in received.values():  # what a careless aggregator could do to the views
        t.zero_()
    for k in new_global:
        assert torch.equal(new_global[k], before[k]), k
        assert not new_global[k].untyped_storage().data_ptr() == received[k].untyped_storage().data_ptr()
    # the views are exactly the reply's bytes: zero-copy (no 133 MB copy per R3D-18 reply)
    arr = reply["backbone.layer1.conv.weight"]
    view = state_from_record(reply)["backbone.layer1.conv.weight"]
    base = np.frombuffer(arr.data, dtype=np.uint8).ctypes.data
    assert base <= view.data_ptr() < base + len(arr.data)


def _exact_norm(state, minus=None, keys=None) -> float:
    """The correctly rounded float64 norm (math.fsum of the float64 squares)."""
    keys = keys if keys is not None else list(state)
    squares = []
    for k in keys:
        if state[k].is_floating_point():
            d = state[k].double() - (minus[k].double() if minus is not None else 0)
            squares.extend((d * d).reshape(-1).tolist())
    return math.sqrt(math.fsum(squares))


def test_chunked_norms_are_as_exact_as_the_blas_dot_and_weighted_sum_is_bit_identical():
    states = [_r3d_like(s) for s in range(4)]
    glob = states[0]
    updates = [record_from_state(s) for s in states[1:]]
    received = [state_from_record(r) for r in updates]
    arrays = received[0]
    exact = _exact_norm(arrays, glob)
    old = math.sqrt(sum(_old_squared_distance(v, glob[k]) for k, v in arrays.items() if v.is_floating_point()))
    new = float_norm(arrays, glob)  # the update guard's norm
    # the chunked sums differ from ca4cd01's BLAS dot in the last digits only, and are no
    # further from the exact value than it
    assert abs(new - exact) <= max(abs(old - exact), 1e-15 * exact) * 4, (new, old, exact)
    assert new == float_norm(arrays, glob)  # deterministic
    for arrays in received:
        keys = [k for k in arrays if k.startswith("backbone.")]
        old_l2 = math.sqrt(
            sum(_old_squared_distance(arrays[k], glob[k]) for k in keys if arrays[k].is_floating_point())
        )
        assert l2_distance(arrays, glob, keys) == pytest.approx(old_l2, rel=1e-13)
    assert float_norm(glob) == pytest.approx(
        math.sqrt(sum(_old_squared_distance(v) for v in glob.values() if v.is_floating_point())), rel=1e-13
    )

    cu = [
        ClientUpdate(arrays=a, num_examples=10 + i, metrics={"loss": 2.0 - i}, client_id=i)
        for i, a in enumerate(received)
    ]
    for weights in ([0.2, 0.3, 0.5], [1 / 3] * 3, [10 / 36, 11 / 36, 15 / 36]):
        new, old = FVSSL.weighted_sum(cu, weights, list(glob)), _old_weighted_sum(cu, weights, list(glob))
        for k in glob:
            assert new[k].dtype == old[k].dtype == glob[k].dtype and new[k].shape == old[k].shape, k
            assert torch.equal(new[k], old[k]), k
            # -0.0 and +0.0 compare equal: compare the bits too
            assert new[k].numpy().tobytes() == old[k].numpy().tobytes(), k
    assert new["backbone.layer0.bn.num_batches_tracked"].dtype == torch.int64


def test_update_norm_flags_exactly_the_non_finite_tensors_in_the_norm_pass():
    from benchmark.federation.guard import GuardSpec, is_finite, screen_updates

    glob = _r3d_like(0)
    clean = _r3d_like(1)
    nan = {**clean, "backbone.layer1.bn.bias": clean["backbone.layer1.bn.bias"].clone()}
    nan["backbone.layer1.bn.bias"][3] = float("nan")
    nan["backbone.layer0.conv.weight"] = clean["backbone.layer0.conv.weight"].clone()
    nan["backbone.layer0.conv.weight"].view(-1)[-1] = float("-inf")
    # finite float64 values whose squares overflow: not "non-finite", an infinite norm
    huge = {**clean, "head.fc.weight": torch.full((33, 129), 1e200, dtype=torch.float64)}
    norms, failures = screen_updates({1: clean, 2: nan, 3: huge}, glob, [], GuardSpec())
    assert [(f.client_id, f.reason) for f in failures] == [(2, "non-finite update"), (3, "update norm")]
    assert failures[0].error == "non-finite values in backbone.layer0.conv.weight, backbone.layer1.bn.bias"
    assert not is_finite(nan) and is_finite(huge)
    assert norms == {1: float_norm(clean, glob)}


class _Keeps(SSLMethod):
    """A method whose own start_round keeps the global tensors and changes them in place."""

    def start_round(self, global_state, local_state, server_round):
        self.kept = global_state
        for t in global_state.values():
            t.add_(1.0)
        super().start_round(global_state, local_state, server_round)


def test_a_client_loads_the_global_model_from_the_message_without_aliasing_it():
    glob = {f"backbone.{k}": v for k, v in nn.Linear(300, 200).state_dict().items()}
    message = record_from_state(glob)
    sent = bytes(message["backbone.weight"].data)

    plain = SSLMethod(nn.Linear(300, 200))  # the default hook: copies the views into the model
    begin_round(plain, state_from_record(message), None, 1)
    assert all(torch.equal(plain.state_dict()[k], glob[k]) for k in glob)
    with torch.no_grad():
        plain.backbone.weight.add_(1.0)  # training changes the model, never the message
    assert bytes(message["backbone.weight"].data) == sent

    own = _Keeps(nn.Linear(300, 200))  # an override gets writable tensors of its own, as before
    begin_round(own, state_from_record(message), None, 1)
    assert bytes(message["backbone.weight"].data) == sent
    assert torch.equal(own.kept["backbone.weight"], glob["backbone.weight"] + 1.0)
    assert torch.equal(own.backbone.weight, glob["backbone.weight"] + 1.0)


def test_payload_files_carry_the_messages_tensors_bit_for_bit_and_leave_nothing_behind(tmp_path, monkeypatch):
    """The simulation's shared-memory payloads (benchmark.federation.payloads): the same
    tensors as the in-message ArrayRecord, files removed once read or at the round's end."""
    from flwr.app import ConfigRecord, RecordDict

    from benchmark.federation import payloads, reaper

    state = {
        **_r3d_like(0),  # float32/64/16, 0-dim int64
        "empty": torch.zeros(0, 3),
        "flag": torch.tensor([True, False]),
        "t": torch.ones(4, 3).t(),
        "u8": torch.arange(5, dtype=torch.uint8),
        "z": torch.zeros(3, 0),  # a 0-size tensor last: the file ends at the data before it
    }
    files = payloads.PayloadFiles(tmp_path / "run-payloads")
    content = RecordDict(payloads.pack(state, files=files, server_round=7, what="global"))
    received = payloads.unpack(content)
    in_message = state_from_record(record_from_state(state))
    for k, v in state.items():
        assert received[k].dtype == v.dtype and received[k].shape == v.shape and torch.equal(received[k], v), k
        assert torch.equal(received[k], in_message[k])
    received["backbone.layer1.conv.weight"].add_(1.0)  # copy-on-write: the file (what others read) keeps its bytes
    assert torch.equal(payloads.unpack(content)["backbone.layer1.conv.weight"], state["backbone.layer1.conv.weight"])

    # a client replies beside the global file; the server unlinks a reply once mapped
    directory = payloads.reply_directory(content)
    assert directory == files.directory
    reply = RecordDict(payloads.pack(state, files=directory, server_round=7, what="client3"))
    late = RecordDict(payloads.pack(state, files=directory, server_round=6, what="client1"))  # a round-6 straggler
    kept = RecordDict(payloads.pack(state, files=directory, server_round=8, what="global"))
    views = payloads.unpack(reply, unlink=True)
    assert not Path(reply["arrays-file"]["path"]).exists() and torch.equal(
        views["backbone.layer0.bn.running_var"], state["backbone.layer0.bn.running_var"]
    )
    files.end_round(7)  # the round's global file and the straggler's go; round 8's stays
    assert [p.name for p in files.directory.iterdir()] == [Path(kept["arrays-file"]["path"]).name]
    del late

    # a file cut short is an error naming it, not wrong tensors
    path = Path(kept["arrays-file"]["path"])
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(RuntimeError, match=f"payload file {path} has 100 bytes"):
        payloads.unpack(kept)
    files.close()
    assert not files.directory.exists()

    # the run's directory on /dev/shm, removed by the tag whoever ends the run's processes
    monkeypatch.setattr(reaper, "SHARED_MEMORY", str(tmp_path))
    monkeypatch.setattr(payloads, "SHARED_MEMORY", tmp_path)
    run = payloads.PayloadFiles.for_run("tag0", tmp_path / "run", needed_bytes=1)
    other = payloads.PayloadFiles.for_run("tag1", tmp_path / "run", needed_bytes=1)
    assert run.directory.parent == tmp_path and run.directory.name.startswith("fedvid-tag0-")
    payloads.pack({"x": torch.ones(3)}, files=run, server_round=1, what="global")
    assert payloads.PayloadFiles.for_run("tag0", tmp_path / "run", needed_bytes=10**18) is None  # too little free
    reaper.remove_payloads("tag0")
    assert not run.directory.exists() and other.directory.exists()
    assert isinstance(ConfigRecord(dict(content["arrays-file"])), ConfigRecord)


def test_payload_files_only_where_fedvid_started_the_ray_every_client_runs_on(tmp_path, monkeypatch):
    """A run's own simulation and a sweep's job on the Ray head the sweep started here
    (``FEDVID_LOCAL_RAY``) use payload files; a Ray cluster fedvid did not start, deployment,
    or a process without the run tag keep the tensors in the messages."""
    from types import SimpleNamespace

    from benchmark.federation import reaper
    from benchmark.federation.server_app import _payload_files

    def spec(engine: str = "simulation", ray_address: str | None = None):
        return SimpleNamespace(
            engine=SimpleNamespace(name=engine, ray_address=ray_address),
            federation=SimpleNamespace(clients_per_round=2, num_clients=3),
        )

    def transport(spec_, **env) -> str:
        for key in ("RAY_ADDRESS", reaper.LOCAL_RAY_ENV, reaper.RUN_TAG_ENV):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        files = _payload_files(spec_, tmp_path / "run", {"w": torch.zeros(4)})
        if files is None:
            return "messages"
        assert files.directory.name.startswith(f"fedvid-{env[reaper.RUN_TAG_ENV]}-")
        files.close()
        return "shared-memory"

    tag = {reaper.RUN_TAG_ENV: f"t{uuid.uuid4().hex[:8]}"}
    local = {"RAY_ADDRESS": "127.0.0.1:6390", reaper.LOCAL_RAY_ENV: "127.0.0.1:6390"}
    assert transport(spec(), **tag) == "shared-memory"  # the run's own Ray
    assert transport(spec(), **tag, **local) == "shared-memory"  # the sweep's head on this machine
    assert transport(spec(), **tag, RAY_ADDRESS="10.0.0.5:6379") == "messages"  # someone's cluster
    assert transport(spec(), **tag, **{**local, "RAY_ADDRESS": "10.0.0.5:6379"}) == "messages"
    assert transport(spec(ray_address="10.0.0.5:6379"), **tag, **local) == "messages"  # engine.ray_address
    assert transport(spec(ray_address="10.0.0.5:6379"), **tag) == "messages"
    assert transport(spec("deployment"), **tag) == "messages"
    assert transport(spec()) == "messages"  # no run tag: nobody would remove the files
