"""Checkpoint and client-state retention (checkpoint.keep_last / keep_every) and the disk plan.
A pruned run killed, resumed and evaluated end to end: test_runner.py (its kill/resume run
keeps the newest checkpoint and every 2nd round)."""

from __future__ import annotations

import pytest
import torch

from benchmark.federation.checkpoint import Checkpoint, load_latest, save_checkpoint
from benchmark.rundir import Retention, prune_all_client_state, prune_checkpoints, prune_client_state


def _ckpt_rounds(run_dir) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("round_*.pt"))


def _client_rounds(run_dir) -> dict[str, list[int]]:
    return {
        d.name: sorted(int(p.stem.split("_")[1]) for p in d.glob("round_*.pt"))
        for d in sorted((run_dir / "client_state").glob("client_*"))
    }


# ------------------------------------------------------------------ policy (fast)


def test_retention_keeps_the_newest_and_the_milestones():
    r = Retention(keep_last=2, keep_every=3)
    assert r.kept_rounds([0, 1, 2, 3, 4, 5, 6, 7]) == {3, 6, 7}
    assert Retention(keep_last=1, keep_every=0).kept_rounds([1, 2, 3]) == {3}
    assert Retention(keep_last=5, keep_every=0).kept_rounds([1, 2]) == {1, 2}
    assert not r.milestone(0)  # round 0 (the initial model) is no milestone


def test_default_retention_keeps_the_fedvssl_run_under_5_gb():
    """540 rounds, R3D-18 (33.2 M exchanged parameters = 133 MB per checkpoint), 100
    clients, 5 per round, CtP head of R3D-18 (26.9 MB per client file)."""
    r = Retention()
    assert (r.keep_last, r.keep_every) == (2, 100)
    assert r.max_checkpoints(540) == 8  # newest 2 + 1 being written + rounds 100..500
    assert r.max_client_files(100, 5, 540) == 135  # 1 per client + 2 rounds in flight + 5 milestone rounds
    total = r.max_checkpoints(540) * 133e6 + r.max_client_files(100, 5, 540) * 26.9e6
    assert total < 5e9
    # keeping every round, as before: 540 x 133 MB = 72 GB of checkpoints alone
    assert Retention(keep_last=540, keep_every=0).max_checkpoints(540) * 133e6 > 70e9


def test_bad_retention_settings_name_the_key():
    with pytest.raises(ValueError, match=r"checkpoint.keep_last=0: expected an integer >= 1"):
        Retention(keep_last=0)
    with pytest.raises(ValueError, match=r"checkpoint.keep_every=-1"):
        Retention(keep_every=-1)
    from benchmark.config_check import RUN_RULES

    assert {"checkpoint.keep_last", "checkpoint.keep_every"} <= {rule.key for rule in RUN_RULES}


def test_prune_checkpoints_never_deletes_what_latest_names(tmp_path):
    state = {"w": torch.arange(4.0)}
    for r in range(1, 8):
        save_checkpoint(tmp_path, Checkpoint(r, {"w": state["w"] + r}))
        prune_checkpoints(tmp_path, Retention(keep_last=2, keep_every=3))
    assert _ckpt_rounds(tmp_path) == [3, 6, 7]
    assert load_latest(tmp_path).round == 7 and torch.equal(load_latest(tmp_path).global_state["w"], state["w"] + 7)
    # a latest.json naming an older file (a rewound run): that file is never pruned
    save_checkpoint(tmp_path, Checkpoint(1, state))
    prune_checkpoints(tmp_path, Retention(keep_last=1, keep_every=0))
    assert _ckpt_rounds(tmp_path) == [1, 7]
    assert load_latest(tmp_path).round == 1
    # no latest.json: nothing is touched
    assert prune_checkpoints(tmp_path / "nothing", Retention(keep_last=1, keep_every=0)) == []


def test_client_state_keeps_what_a_resume_reads(tmp_path):
    client = tmp_path / "client_0003"
    client.mkdir()
    for r in (1, 4, 6, 9, 10):
        (client / f"round_{r:04d}.pt").write_bytes(b"x")
    (client / "notes.txt").write_text("not ours")
    removed = prune_client_state(client, 9, Retention(keep_last=2, keep_every=4))
    # rounds <= 9 (checkpointed): the newest (9) and the milestone 4; round 10 is in flight
    assert sorted(p.name for p in removed) == ["round_0001.pt", "round_0006.pt"]
    assert sorted(p.name for p in client.iterdir()) == ["notes.txt", "round_0004.pt", "round_0009.pt", "round_0010.pt"]
    assert prune_all_client_state(tmp_path, 10, Retention(keep_last=2, keep_every=0)) == 2
    assert sorted(p.name for p in client.glob("round_*")) == ["round_0010.pt"]


def test_evaluate_accepts_a_run_dir_and_names_pruned_rounds(tmp_path):
    from benchmark.federation.checkpoint import resolve_checkpoint_path

    for r in range(1, 5):
        save_checkpoint(tmp_path, Checkpoint(r, {"w": torch.zeros(2)}))
        prune_checkpoints(tmp_path, Retention(keep_last=1, keep_every=2))
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "checkpoints" / "round_0004.pt"
    assert resolve_checkpoint_path(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "round_0004.pt"
    assert resolve_checkpoint_path(tmp_path / "checkpoints" / "round_0002.pt").is_file()  # a milestone
    with pytest.raises(
        FileNotFoundError,
        match=r"round_0003.pt: no such file \(pruned by checkpoint.keep_last/"
        r"keep_every\?\); kept: round_0002.pt, round_0004.pt",
    ):
        resolve_checkpoint_path(tmp_path / "checkpoints" / "round_0003.pt")
    with pytest.raises(FileNotFoundError, match="a directory without checkpoints/latest.json"):
        (tmp_path / "empty").mkdir()
        resolve_checkpoint_path(tmp_path / "empty")


# ------------------------------------------------------------------ background round writes (fast)


def test_round_writes_run_in_order_one_at_a_time_and_surface_failures(tmp_path):
    import threading

    from benchmark.federation.checkpoint import RoundWrites

    events, release = [], threading.Event()

    def write(r: int, wait: bool = False):
        def run():
            events.append(("start", r))
            if wait:
                release.wait(5)
            save_checkpoint(tmp_path, Checkpoint(r, {"w": torch.full((3,), float(r))}))
            events.append(("end", r))

        return run

    writes = RoundWrites()
    writes.submit(write(1, wait=True))
    # round 2's writes wait for round 1's, which the main thread does not (the next round trains)
    waiter = threading.Thread(target=writes.submit, args=(write(2),))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and events == [("start", 1)] and load_latest(tmp_path) is None
    release.set()
    waiter.join(5)
    writes.join()
    assert events == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert load_latest(tmp_path).round == 2 and _ckpt_rounds(tmp_path) == [1, 2]

    def broken():
        raise OSError(28, "No space left on device")

    writes.submit(broken)
    with pytest.raises(OSError, match="No space left"):  # by the next round's submit ...
        writes.submit(write(4))
    assert load_latest(tmp_path).round == 2  # ... which did not start
    writes.submit(broken)
    with pytest.raises(OSError, match="No space left"):  # ... or by the run's end
        writes.join()
    writes.join()  # raised once


def test_a_state_file_left_unsynced_by_a_client_is_synced_with_its_directory_by_make_durable(tmp_path, monkeypatch):
    """Simulation clients write their state files without fsync; the server's round writes
    fsync them (and their directories) before checkpointing the round (server_app.write_round)."""
    import os

    from benchmark.io import atomic_write_bytes, make_durable
    from benchmark.rundir import local_state_file

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    path = local_state_file(tmp_path, 3, 7)
    assert path == tmp_path / "client_0003" / "round_0007.pt"
    atomic_write_bytes(path, b"heads", fsync=False)
    assert synced == [] and path.read_bytes() == b"heads"
    make_durable([path, local_state_file(tmp_path, 4, 7)])  # client 4 keeps no state: nothing to sync
    assert synced == [str(path), str(path.parent)]
    atomic_write_bytes(path, b"heads 2")  # the default: synced before the rename
    assert len(synced) == 3 and synced[2].startswith(str(path.parent / ".round_0007.pt."))
