"""One SuperLink (simulation mode) and one Ray head for all jobs of a Hydra sweep.

Hydra's basic launcher runs the jobs of ``fedvid run -m ...`` and ``experiment=compare`` one
after another in this process. :class:`SharedFlowerCallback` (``hydra.callbacks.shared_flower``
in ``conf/config.yaml``; it acts on multiruns only) makes a :class:`Sweep` the owner of the
Flower/Ray processes of the sweep: the first job on the simulation engine starts a
:class:`SharedFlower` — ``flower-superlink --simulation`` with ``RAY_ADDRESS`` pointing at a
``ray start --head`` on 127.0.0.1 — and every later job submits its own Flower run to it
(a new Flower run id, its own run dir, FLWR_HOME, status file and record). Jobs on the
centralized or deployment engine never ask, so a sweep of them starts nothing.

What stays per job: the simulation process (``flwr-simulation``, one per Flower run) is its
Ray driver, and Ray gives every driver its own worker processes, so the ClientApps of job 2
never run in job 1's workers; threads come from the config (``client.num_threads``) and Ray
sets ``OMP_NUM_THREADS`` per actor from ``engine.client_resources``; Flower passes the
driver's ``PYTHONPATH`` as the job's runtime_env. The rest of the environment reaches the
workers from the processes started first, so a job whose ``hydra.job.env_set``,
``engine.ray_num_cpus``, ``engine.ray_address`` or ``engine.superlink_port`` differs from the
running instance's gets a new instance (the line printed says which key).

Ownership: the instance's processes carry their own ``FEDVID_RUN_TAG`` and reaper
(:class:`benchmark.federation.engine.Processes`). A job that does not complete (error,
Ctrl-C, SIGTERM) stops the instance, since its simulation may still be running; the next
job starts a new one. The sweep's end, an exception leaving Hydra (which then skips
``on_multirun_end``), SIGTERM (turned into SystemExit for the sweep) and interpreter exit
stop it too; a SIGKILLed ``fedvid run`` leaves it to the reaper.

The head started here (not a ``engine.ray_address`` cluster) puts every client on this
machine, so the jobs' round tensors travel in shared-memory payload files as a single run's
do (``FEDVID_LOCAL_RAY``, :mod:`benchmark.federation.payloads`); stopping the instance
removes what a job left there.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from benchmark.federation.engine import (
    FLOWER_HOME_DIR,
    FederationError,
    Processes,
    _bin,
    free_port,
    spawn_superlink,
    wait_for_health,
)
from benchmark.federation.reaper import LOCAL_RAY_ENV

if TYPE_CHECKING:
    from benchmark.specs import EngineSpec

#: The shared instance's directory in the sweep dir (logs/, .flwr/).
SHARED_DIR = "shared_flower"
#: Keep Ray on 127.0.0.1 and quiet (as the per-run simulation's own Ray).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class SharedKey:
    """What a shared instance was started with; a job with another key needs another instance.

    ray_address: the user's Ray cluster (``engine.ray_address``), None: the sweep's own head.
    environment: the job's ``hydra.job.env_set`` (sorted items), the one way jobs of a sweep
    get different environments (comparing all of ``os.environ`` would restart for variables
    that libraries set in this process, such as torch's ``TORCHINDUCTOR_CACHE_DIR``)."""

    ray_address: str | None
    ray_num_cpus: int | None
    superlink_port: int | None
    environment: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, engine: EngineSpec, env_set: Mapping[str, Any]) -> SharedKey:
        env = tuple(sorted((str(k), str(v)) for k, v in env_set.items()))
        return cls(engine.ray_address, engine.ray_num_cpus, engine.superlink_port, env)

    def differences(self, other: SharedKey) -> list[str]:
        """The keys that differ (environment variables by name only: values may be secrets)."""
        out = [
            f"engine.{name}"
            for name in ("ray_address", "ray_num_cpus", "superlink_port")
            if getattr(self, name) != getattr(other, name)
        ]
        mine, theirs = dict(self.environment), dict(other.environment)
        out += [f"${k}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        return out


class SharedFlower:
    """A SuperLink in simulation mode plus, unless ``key.ray_address`` names a cluster, a Ray head.

    root: the directory of its logs and FLWR_HOME (``<sweep_dir>/shared_flower``)."""

    def __init__(self, root: Path, key: SharedKey):
        self.root = root
        self.key = key
        self.procs = Processes(root)
        self.superlink_address = ""
        self.superlink_pid: int | None = None
        self.ray_address = key.ray_address or ""
        self.ray_pid: int | None = None
        self.startup_s = 0.0
        self._ray_temp: Path | None = None

    def start(self, timeout_s: float) -> None:
        """Start both (in parallel) and wait until the SuperLink answers and the Ray head is up."""
        t0 = time.perf_counter()
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs.start_reaper()
        head = None
        if not self.key.ray_address:
            head = self._spawn_ray_head(logs / "ray_head.log")
        port = self.key.superlink_port or free_port()
        self.superlink_address = f"127.0.0.1:{port}"
        env = {"RAY_ADDRESS": self.ray_address, **RAY_ENV}
        if head is not None:  # ours, on 127.0.0.1: the jobs' tensors may travel in payload files
            env[LOCAL_RAY_ENV] = self.ray_address
        superlink = spawn_superlink(self.procs, port, None, True, logs / "superlink.log", env)
        self.superlink_pid = superlink.pid
        if head is not None:
            _wait_for_ray(head, logs / "ray_head.log", timeout_s)
        wait_for_health(self.superlink_address, superlink, timeout_s, logs / "superlink.log", "flower-superlink")
        self.startup_s = time.perf_counter() - t0

    def _spawn_ray_head(self, log_file: Path):
        # Ray's socket paths must stay short (/tmp), and every port is chosen free: other Ray
        # instances on the machine keep their defaults (10001, 8265, ...).
        self._ray_temp = Path(tempfile.mkdtemp(prefix="fvray", dir="/tmp"))
        port = free_port()
        self.ray_address = f"127.0.0.1:{port}"
        cmd = [
            _bin("ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={self._ray_temp}",
            "--disable-usage-stats",
            *(
                f"--{flag}={free_port()}"
                for flag in (
                    "ray-client-server-port",
                    "dashboard-port",
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                    "metrics-export-port",
                )
            ),
        ]
        if self.key.ray_num_cpus:
            cmd.append(f"--num-cpus={self.key.ray_num_cpus}")
        head = self.procs.spawn("ray head", cmd, log_file, RAY_ENV)
        self.ray_pid = head.pid
        return head

    def tagged(self) -> list[int]:
        return self.procs.tagged()

    def stop(self) -> list[int]:
        """End every process of the instance (SuperLink, SuperExec, simulations, Ray); the PIDs
        that needed SIGKILL."""
        killed = self.procs.stop()
        if self._ray_temp is not None:
            shutil.rmtree(self._ray_temp, ignore_errors=True)
        return killed

    def describe(self) -> dict[str, Any]:
        """For the run's status file and record: what the job ran on."""
        return {
            "shared": True,
            "superlink": self.superlink_address,
            "superlink_pid": self.superlink_pid,
            "ray_address": self.ray_address,
            "ray_pid": self.ray_pid,  # None: the user's cluster (engine.ray_address)
            "flwr_home": str(self.root / FLOWER_HOME_DIR),
            "start_s": round(self.startup_s, 3),  # starting both; in startup_s of the job that started them
        }


def _wait_for_ray(head, log_file: Path, timeout_s: float) -> None:
    """Until ``ray start`` says the runtime started (GCS, raylet and agents are up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise FederationError(f"ray start --head exited with code {head.returncode}; see {log_file}")
        try:
            if "Ray runtime started" in log_file.read_text(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise FederationError(
        f"the Ray head did not start within {timeout_s:.0f}s (engine.startup_timeout_s); see {log_file}"
    )


class Sweep:
    """The owner of a sweep's shared instance: started for the first job that asks, replaced
    when a job needs another key, stopped by :meth:`discard`."""

    def __init__(self, sweep_dir: Path):
        self.root = Path(sweep_dir) / SHARED_DIR
        self.current: SharedFlower | None = None

    def flower_for(self, engine: EngineSpec, say=print) -> SharedFlower:
        key = SharedKey.of(engine, _job_env_set())
        if self.current is not None and self.current.key != key:
            say(
                "[fedvid] this job needs its own SuperLink/Ray (it differs from the running one in "
                + ", ".join(self.current.key.differences(key))
                + "); restarting them"
            )
            self.discard()
        if self.current is None:
            shared = SharedFlower(self.root, key)
            self.current = shared
            try:
                shared.start(engine.startup_timeout_s)
            except BaseException:  # a half-started instance is never handed to a job
                self.discard()
                raise
        return self.current

    def discard(self) -> list[int]:
        """Stop the running instance (a job that did not complete may have left its simulation running)."""
        shared, self.current = self.current, None
        return shared.stop() if shared is not None else []


def _job_env_set() -> Mapping[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.env_set if HydraConfig.initialized() else {}


_active: Sweep | None = None


def active() -> Sweep | None:
    """The sweep this process runs (set by :class:`SharedFlowerCallback`), or None for a single run."""
    return _active


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    _HydraCallback = object  # type: ignore[misc,assignment]


class SharedFlowerCallback(_HydraCallback):
    """Hydra callback (``hydra.callbacks.shared_flower``): a :class:`Sweep` for the multirun.

    Single runs (no ``-m``) do not call the multirun hooks: they start and stop their own
    SuperLink and Ray as before."""

    def __init__(self) -> None:
        self._restore_sigterm = None

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        global _active
        _active = Sweep(Path(str(config.hydra.sweep.dir)))
        atexit.register(_close_active)
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _sigterm_to_exit)
            self._restore_sigterm = lambda: signal.signal(signal.SIGTERM, previous)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        _close_active()
        atexit.unregister(_close_active)
        if self._restore_sigterm is not None:
            self._restore_sigterm()


def _sigterm_to_exit(signum, frame):
    raise SystemExit(128 + signum)


def _close_active() -> None:
    global _active
    sweep, _active = _active, None
    if sweep is not None:
        sweep.discard()


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C in a job of a sweep: the job said what it stopped; the sweep ends (exit code 130)."""
