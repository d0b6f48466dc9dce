"""A Hydra sweep shares one SuperLink and Ray (benchmark/federation/sweep.py); its jobs stay separate runs."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from benchmark.federation.control import END_OF_LOG
from benchmark.federation.payloads import SHARED_MEMORY
from benchmark.federation.sweep import SHARED_DIR, SharedKey
from benchmark.specs import EngineSpec

from _federation_helpers import rounds_log


def test_a_job_needs_a_new_instance_only_when_its_ray_settings_or_env_set_differ():
    engine = EngineSpec(name="simulation")
    first = SharedKey.of(engine, {"FEDVID_SWEEP_TEST": "a"})
    # client resources and threads are per job (Flower asks Ray per run, the ClientApp sets threads)
    assert (
        SharedKey.of(EngineSpec(name="simulation", client_num_cpus=2, client_num_gpus=0.5), {"FEDVID_SWEEP_TEST": "a"})
        == first
    )
    other = SharedKey.of(EngineSpec(name="simulation", ray_num_cpus=1), {"FEDVID_SWEEP_TEST": "b"})  # hydra.job.env_set
    assert first.differences(other) == ["engine.ray_num_cpus", "$FEDVID_SWEEP_TEST"]
    cluster = SharedKey.of(EngineSpec(name="simulation", ray_address="127.0.0.1:6379"), {})
    assert first.differences(cluster) == ["engine.ray_address", "$FEDVID_SWEEP_TEST"]


def test_the_callback_is_registered_for_every_run_and_compare_keeps_its_table(tmp_path):
    from hydra import compose, initialize_config_dir

    from benchmark import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        callbacks = compose("config", overrides=["experiment=compare"], return_hydra_config=True).hydra.callbacks
    assert callbacks.shared_flower._target_ == "benchmark.federation.sweep.SharedFlowerCallback"
    assert callbacks.compare_table._target_ == "benchmark.commands.compare.CompareTableCallback"


def _record(sweep_dir: Path, job: str) -> dict:
    return json.loads((sweep_dir / job / "result.json").read_text())


@pytest.mark.slow
def test_a_sweep_runs_its_jobs_on_one_superlink_and_ray_each_as_its_own_run(interrupted_sweep):
    sweep = interrupted_sweep.sweep_dir
    first, second = _record(sweep, "0"), _record(sweep, "1")
    # two separate, complete records: own seed, own numbers, own run dir and Flower home
    assert (first["provenance"]["seeds"], second["provenance"]["seeds"]) == ({"seed": 1}, {"seed": 3})
    assert first["record_id"] != second["record_id"]
    assert first["status"] != "failed" and second["status"] != "failed"
    assert (
        [r["round"] for r in rounds_log(sweep / "0")] == [1, 2, 3, 4] == [r["round"] for r in rounds_log(sweep / "1")]
    )
    assert [r["loss"] for r in rounds_log(sweep / "0")] != [r["loss"] for r in rounds_log(sweep / "1")]
    # ... on the same SuperLink (one process) and Ray head, which the run dirs and records name
    flower = first["systems"]["flower"]
    assert flower["shared"] is True and flower["ray_pid"] is not None
    assert flower["flwr_home"] == str(sweep / SHARED_DIR / ".flwr")
    for job in ("0", "1", "2"):
        status = json.loads((sweep / job / "federation_status.json").read_text())
        assert status["flower"] == {k: v for k, v in flower.items() if k != "tensors"}, job
        # the sweep's Ray head is on this machine: the round's tensors travel in shared-memory
        # payload files, as in a single run (the interrupted job 2 may stop before it says so)
        assert status.get("tensors", "shared-memory") == "shared-memory" == flower["tensors"], job
        assert f'address = "{flower["superlink"]}"' in (sweep / job / ".flwr" / "config.toml").read_text()
    assert second["systems"]["flower"] == flower
    # ... as separate Flower runs
    run_ids = [
        next(line for line in (sweep / job / "flower.log").read_text().splitlines() if "started run" in line)
        for job in ("0", "1")
    ]
    assert run_ids[0] != run_ids[1]
    # ... whose logs are whole: the launcher stopped waiting for the stream once the ServerApp's
    # last line had arrived (not before: the last round's line precedes it)
    for job in ("0", "1"):
        log_text = (sweep / job / "flower.log").read_text()
        assert log_text.index("round 4/4: loss") < log_text.index(END_OF_LOG), job
    # job 0 equals the killed-and-resumed single run of seed 1 (test_runner), job 1 the single
    # run of seed 3 on an existing Ray cluster (test_ray_cluster), bit for bit


@pytest.mark.slow
def test_ctrl_c_in_a_later_job_ends_the_sweep_stops_every_process_and_keeps_the_finished_records(interrupted_sweep):
    sweep = interrupted_sweep
    assert sweep.interrupted_status["state"] in ("connecting", "running")  # its simulation was running
    assert sweep.returncode == 130, sweep.output[-3000:]
    assert "interrupted; every Flower/Ray process of the run was stopped" in sweep.output
    assert "the sweep stops here" in sweep.output
    assert sweep.left == [], "processes of the sweep survived Ctrl-C"
    for job in ("0", "1"):
        assert (sweep.sweep_dir / job / "result.json").read_bytes() == sweep.records[job]
    assert not (sweep.sweep_dir / "2" / "result.json").exists()
    # no job's payload directory is left in shared memory, the interrupted job's included:
    # those the finished jobs' ServerApps logged, and any of the run dirs' names
    # (/dev/shm/fedvid-<tag>-<run dir id>-*, benchmark.federation.payloads.payload_directory)
    for job in ("0", "1"):
        logged = re.findall(r"travel through (/dev/shm/\S+) ", (sweep.sweep_dir / job / "flower.log").read_text())
        assert len(logged) == 1 and not Path(logged[0]).exists(), (job, logged)
    for job in ("0", "1", "2"):
        run_id = uuid.uuid5(uuid.NAMESPACE_URL, str((sweep.sweep_dir / job).resolve())).hex[:12]
        assert not list(SHARED_MEMORY.glob(f"fedvid-*-{run_id}-*")), job
    # the Ray head's temporary directory (sockets, session logs) is removed with it
    head_log = (sweep.sweep_dir / SHARED_DIR / "logs" / "ray_head.log").read_text()
    temp_dirs = {Path(d) for d in re.findall(r"saved to: (/tmp/fvray[^/]+)/", head_log)}
    assert temp_dirs and not [d for d in temp_dirs if d.exists()]
