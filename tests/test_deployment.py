"""Deployment engine: a real SuperLink and 3 SuperNodes as separate processes on 127.0.0.1."""

import json

import pytest

from benchmark.federation.training import sample_clients

from _federation_helpers import TINY, fedvid, final_weights, wait_no_flower_processes


@pytest.mark.slow
def test_deployment_superlink_and_three_supernodes_run_two_rounds(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    data_root = tmp_path_factory.mktemp("fedvid-data-deploy")
    result = fedvid(["run", "engine=deployment", f"hydra.run.dir={run_dir}", f"data_root={data_root}", *[o for o in TINY if not o.startswith("engine.client_resources")], "federation.rounds=2", "federation.clients_per_round=2",
                     "federation.min_clients=2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert wait_no_flower_processes(run_dir) == []
    # one SuperNode per client, each told its manifest and client id through its node config
    for cid in range(3):
        assert (run_dir / "logs" / f"supernode_{cid}.log").is_file()
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    from benchmark.splits.manifest import load_manifest

    manifest = load_manifest(run_dir / "split_manifest.json")
    for r in rounds:
        assert r["sampled_clients"] == sample_clients(0, r["round"], [0, 1, 2], 2)
        assert r["replied_clients"] == r["sampled_clients"] and r["failed_clients"] == []
        # FedAvg's weight is the client's training-set size, not the 2 samples of its one step
        assert r["bytes_up"] > 0 and all(c["num_examples"] == len(manifest.client_videos(c["client_id"]))
                                         for c in r["clients"])
    # round 2's clients that trained in round 1 got their CtP heads back from their node state
    seen = set(rounds[0]["replied_clients"])
    assert all(c["restored_local_state"] == (c["client_id"] in seen) for c in rounds[1]["clients"])
    record = json.loads((run_dir / "result.json").read_text())
    assert record["track"]["rounds"] == 2 and record["systems"]["bytes_down"] > 0
    assert all(k.startswith("backbone.") for k in final_weights(run_dir))
