"""Deployment engine: a real SuperLink and 3 SuperNodes as separate processes on 127.0.0.1, over TLS
with SuperNode authentication; nodes without a registered key, the CA, or TLS are refused."""

import json

import httpx
import pytest

from benchmark.federation.engine import (
    Processes,
    _bin,
    free_port,
    register_supernode,
    superlink_security_args,
    supernode_security_args,
    wait_for_health,
    write_flower_home,
)
from benchmark.federation.security import Layout, make_credentials
from benchmark.federation.training import sample_clients

from _federation_helpers import TINY, fedvid, final_weights, flower_processes, wait_no_flower_processes

DEPLOY = [o for o in TINY if not o.startswith("engine.client_resources")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fedvid-data-deploy")


@pytest.mark.slow
def test_deployment_superlink_and_three_supernodes_run_two_rounds(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    result = fedvid(
        [
            "run",
            "engine=deployment",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *DEPLOY,
            "federation.rounds=2",
            "federation.clients_per_round=2",
            "federation.min_clients=2",
        ]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert wait_no_flower_processes(run_dir) == []
    # one SuperNode per client, each told its manifest and client id through its node config
    for cid in range(3):
        assert (run_dir / "logs" / f"supernode_{cid}.log").is_file()
    # by default over TLS with SuperNode authentication: the run's own CA, one registered key per node
    superlink_log = (run_dir / "logs" / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1" in superlink_log
    assert "SuperNode authentication is disabled" not in superlink_log
    creds = Layout(run_dir / "certs")
    assert all(creds.node_key(f"client-{cid}").stat().st_mode & 0o077 == 0 for cid in range(3))
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    from benchmark.splits.format import load_manifest

    manifest = load_manifest(run_dir / "split_manifest.json")
    for r in rounds:
        assert r["sampled_clients"] == sample_clients(0, r["round"], [0, 1, 2], 2)
        assert r["replied_clients"] == r["sampled_clients"] and r["failed_clients"] == []
        # FedAvg's weight is the client's training-set size, not the 2 samples of its one step
        assert r["bytes_up"] > 0 and all(
            c["num_examples"] == len(manifest.client_videos(c["client_id"])) for c in r["clients"]
        )
    # round 2's clients that trained in round 1 got their CtP heads back from their node state
    seen = set(rounds[0]["replied_clients"])
    assert all(c["restored_local_state"] == (c["client_id"] in seen) for c in rounds[1]["clients"])
    record = json.loads((run_dir / "result.json").read_text())
    assert record["track"]["rounds"] == 2 and record["systems"]["bytes_down"] > 0
    assert record["systems"]["flower"]["tensors"] == "messages"  # SuperNodes may be other machines
    assert all(k.startswith("backbone.") for k in final_weights(run_dir))


def _supernode(procs, name: str, address: str, security: list[str], client_id: int, log_dir):
    return procs.spawn(
        name,
        [
            _bin("flower-supernode"),
            *security,
            "--superlink",
            address,
            "--port",
            str(free_port()),
            "--max-retries",
            "2",
            "--node-config",
            f"client-id={client_id}",
        ],
        log_dir / f"{name}.log",
    )


@pytest.mark.slow
def test_deployment_tls_superlink_refuses_unregistered_untrusted_and_plaintext_supernodes(tmp_path_factory, data_root):
    """The three-institution setup on one machine: a SuperLink over TLS with SuperNode auth,
    started from `fedvid deploy certs` files; the registered SuperNodes run the federation."""
    base = tmp_path_factory.mktemp("secure")
    creds = Layout(base / "creds")
    nodes = ["client-0", "client-1", "rogue"]
    make_credentials(creds.root, ["127.0.0.1", "localhost"], nodes)
    other = Layout(base / "other")
    make_credentials(other.root, ["127.0.0.1"], [])  # a CA the SuperNodes were not told to trust
    link_dir, logs = base / "link", base / "logs"
    logs.mkdir()
    procs = Processes(link_dir)
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        write_flower_home(link_dir, address, insecure=False, root_certificates=str(creds.ca_cert))
        superlink = procs.spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                *superlink_security_args(creds),
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            logs / "superlink.log",
        )
        wait_for_health(address, superlink, 60, logs / "superlink.log", "flower-superlink", creds.ca_cert)
        # a plaintext request to the TLS port gets no answer
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{address}/health", timeout=5)
        for cid in range(2):
            register_supernode(procs, creds.registered_key(nodes[cid]), nodes[cid])
        refused = {
            # a key the SuperLink never registered, claiming a real client id
            "rogue": _supernode(procs, "rogue", address, supernode_security_args(creds, "rogue"), 1, logs),
            # a registered key, but the node trusts another CA: the TLS handshake fails
            "untrusted": _supernode(
                procs,
                "untrusted",
                address,
                [
                    "--root-certificates",
                    str(other.ca_cert),
                    "--auth-supernode-private-key",
                    str(creds.node_key("client-0")),
                ],
                0,
                logs,
            ),
            # no TLS at all
            "plaintext": _supernode(procs, "plaintext", address, ["--insecure"], 1, logs),
        }
        assert all(p.wait(timeout=30) != 0 for p in refused.values())
        for name in refused:  # Flower's "could not connect to the SuperLink"
            assert "Exit Code: 305" in (logs / f"{name}.log").read_text()
        assert "Failed to activate SuperNode" in (logs / "rogue.log").read_text()
        assert "CERTIFICATE_VERIFY_FAILED" in (logs / "untrusted.log").read_text()
        assert "Server disconnected without sending a response" in (logs / "plaintext.log").read_text()
        for cid in range(2):
            _supernode(procs, nodes[cid], address, supernode_security_args(creds, nodes[cid]), cid, logs)

        run_dir = base / "run"
        result = fedvid(
            [
                "run",
                "engine=deployment",
                f"engine.superlink={address}",
                f"engine.root_certificates={creds.ca_cert}",
                "engine.node_wait_timeout_s=60",
                f"hydra.run.dir={run_dir}",
                f"data_root={data_root}",
                *DEPLOY,
                "partition.num_clients=2",
                "federation.rounds=1",
                "federation.clients_per_round=2",
                "federation.min_clients=2",
            ]
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "insecure = false" in (run_dir / ".flwr" / "config.toml").read_text()
        (only_round,) = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
        assert only_round["replied_clients"] == [0, 1] and only_round["failed_clients"] == []
        assert wait_no_flower_processes(run_dir) == []
    finally:
        procs.stop()
    assert procs.tagged() == []
    assert wait_no_flower_processes(link_dir) == []


def test_deployment_plaintext_to_a_non_loopback_superlink_is_refused_before_anything_starts(tmp_path, data_root):
    run_dir = tmp_path / "run"
    # 0.0.0.0 is not a loopback address, and dials this machine should the check ever regress
    result = fedvid(
        [
            "run",
            "engine=deployment",
            "engine.superlink=0.0.0.0:9",
            "engine.insecure=true",
            f"hydra.run.dir={run_dir}",
            f"data_root={data_root}",
            *DEPLOY,
        ],
        timeout=180,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    # one of the config check's problems: reported before data preparation, the fix named
    assert "invalid configuration (1 problem)" in result.stdout, result.stdout
    assert "engine.insecure=true sends model updates unencrypted to engine.superlink=0.0.0.0:9" in result.stdout
    assert "engine.trusted_network=true" in result.stdout
    assert not (run_dir / ".flwr").exists() and flower_processes(run_dir) == []
