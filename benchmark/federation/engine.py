"""Launch the Flower federation for a run and tear every process down afterwards.

Two engines, one ServerApp/ClientApp pair:

- ``simulation`` (default): a SuperLink in simulation mode on a free 127.0.0.1 port, a
  run submitted from this process (:mod:`benchmark.federation.control`, what ``flwr run``
  does) with ``num-supernodes`` virtual SuperNodes on the Ray backend (client
  CPU/GPU resources from ``engine.client_resources``). ``engine.ray_address`` points the
  simulation at an existing Ray cluster (exported as ``RAY_ADDRESS``).
- ``deployment``: a real ``flower-superlink`` and one ``flower-supernode`` per client
  (node config ``client-id=i manifest=...``), or, with ``engine.superlink=HOST:PORT``, an
  existing SuperLink whose SuperNodes the user started (docs/deployment.md). Over TLS with
  SuperNode authentication (a throwaway CA and registered keys in ``<run_dir>/certs``)
  unless ``engine.insecure=true``, which a non-loopback ``engine.superlink`` refuses
  without ``engine.trusted_network=true``.

Flower's own settings live in ``<run_dir>/.flwr`` (``FLWR_HOME``), never in the user's home.

Process hygiene: every process is started in its own session with a parent-death signal
(so a SIGKILLed ``fedvid run`` takes them down) and with ``FEDVID_RUN_TAG`` in its
environment, which the processes they start (SuperExec, ServerApp/ClientApp, Ray's raylet,
GCS and workers) inherit. :meth:`Processes.stop` terminates the started sessions and then
every process still carrying the tag. It runs on success, failure, Ctrl-C, SIGTERM and
at interpreter exit; after a completed run with its own SuperLink it runs on a thread
while the evaluation starts (:attr:`FederationOutcome.wait_stopped`), and the process
waits for it before it exits.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark import PROJECT_ROOT, __version__, rundir
from benchmark.federation.reaper import LOCAL_RAY_ENV, RUN_TAG_ENV, kill_tagged, send_signal, tagged_processes
from benchmark.federation.security import Layout, make_credentials
from benchmark.io import atomic_write_text

if TYPE_CHECKING:
    from benchmark.specs import EngineSpec

#: PID of `fedvid run`; the ServerApp exits when that process is gone (see server_app).
LAUNCHER_PID_ENV = "FEDVID_LAUNCHER_PID"
FLOWER_APP_DIR = "flower_app"
FLOWER_HOME_DIR = ".flwr"
CONNECTION_NAME = "fedvid"
_PR_SET_PDEATHSIG = 1


class FederationError(RuntimeError):
    """The federation did not complete (the message says why and where the logs are).

    resumable: whether ``resume=true`` can help (False for a diverged model or failures
    that the same config repeats)."""

    def __init__(self, message: str, resumable: bool = True):
        super().__init__(message)
        self.resumable = resumable


# ------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """A console script of this environment (next to the running interpreter), else PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"`{name}` not found: install flwr[simulation] in this environment")
    return found


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


#: Seconds between two samples of the run's memory. A PSS sample walks the page tables of
#: every process of the run in the kernel (Ray actors map gigabytes): sampled on each 0.5 s
#: poll, `fedvid run` itself used as much CPU as a training client on the 2-core machine
#: (perf/RESULTS.md, issue 16 fourth pass C); the peak is a round-scale figure.
MEMORY_SAMPLE_S = 5.0


def memory_bytes(pids: list[int]) -> int:
    """Memory of ``pids`` together (bytes): the sum of their proportional set sizes (PSS),
    which counts shared pages once (plain RSS would count Ray's shared memory per worker)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


@dataclass
class Processes:
    """Processes started for one run; :meth:`stop` ends them and everything they started."""

    run_dir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _stopped: bool = False
    _reaper: subprocess.Popen | None = None

    def start_reaper(self) -> None:
        """A watcher outside every tagged session that kills the tagged processes once this
        process is gone: a SIGKILLed ``fedvid run`` cannot run :meth:`stop`, and Ray's agents
        (children of the raylet, started by the simulation) ignore the parent-death signal."""
        if self._reaper is not None:
            return
        env = {k: v for k, v in os.environ.items() if k not in (RUN_TAG_ENV, "FLWR_HOME")}
        self._reaper = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reaper.py")), str(os.getpid()), self.tag],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(PROJECT_ROOT),
        )

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # only a sweep's own Ray head is marked local (``extra``), never one from the user's shell
        env = {k: v for k, v in os.environ.items() if k != LOCAL_RAY_ENV}
        # Flower starts its helpers (flower-superexec, flwr-simulation, ...) by name.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.update(
            {
                RUN_TAG_ENV: self.tag,
                LAUNCHER_PID_ENV: str(os.getpid()),
                "FLWR_HOME": str(self.run_dir / FLOWER_HOME_DIR),
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def spawn(
        self, name: str, cmd: list[str], log_file: Path | None, env: dict[str, str] | None = None, pipe: bool = False
    ) -> subprocess.Popen:
        out = subprocess.PIPE if pipe else (open(log_file, "ab") if log_file else subprocess.DEVNULL)
        proc = subprocess.Popen(
            cmd,
            env=self.env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            cwd=str(self.run_dir),
        )
        if not pipe and log_file:
            out.close()  # type: ignore[union-attr]
        self.started.append((name, proc))
        return proc

    def tagged(self) -> list[int]:
        return tagged_processes(self.tag)

    def stop(self, grace_s: float = 8.0) -> list[int]:
        """Terminate the started sessions (reverse order), then every tagged process.

        Returns the PIDs that had to be killed with SIGKILL (for the log)."""
        if self._stopped:
            return []
        self._stopped = True
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Whatever the sessions started elsewhere (Ray workers, SuperExec children).
        killed = kill_tagged(self.tag, grace_s)
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.terminate()
            self._reaper.wait(timeout=5)
        return killed

    def stop_in_background(self) -> Callable[[], list[int]]:
        """Run :meth:`stop` on a thread (joined at exit, too); returns a wait for it that
        gives :meth:`stop`'s result."""
        killed: list[int] = []
        thread = threading.Thread(target=lambda: killed.extend(self.stop()), name="fedvid-stop")
        atexit.register(thread.join)
        thread.start()

        def wait() -> list[int]:
            thread.join()
            atexit.unregister(thread.join)
            return killed

        return wait


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        send_signal(pid, sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_health(
    address: str, proc: subprocess.Popen, timeout: float, log_file: Path, what: str, ca_cert: Path | None = None
) -> None:
    """Poll ``/health`` (over TLS verified against ``ca_cert`` when given) until it answers."""
    import httpx

    url = f"https://{address}/health" if ca_cert else f"http://{address}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"{what} exited with code {proc.returncode} while starting; see {log_file}")
        try:
            if httpx.get(url, timeout=0.5, verify=_tls_context(ca_cert)).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise FederationError(f"{what} did not answer on {address} within {timeout:.0f}s; see {log_file}")


def _tls_context(ca_cert: Path | None):
    import ssl

    return ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else True


# ------------------------------------------------------------------------------------
# Flower app + home
# ------------------------------------------------------------------------------------


def flower_app_table() -> dict:
    """The ``[tool.flwr.app]`` table of the project's pyproject.toml (the source of truth)."""
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if pyproject.is_file():
        table = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]
        return table
    return {
        "publisher": "fedvid-bench",
        "components": {
            "serverapp": "benchmark.federation.server_app:app",
            "clientapp": "benchmark.federation.client_app:app",
        },
        "config": {"config-path": ""},
    }


def write_flower_app(run_dir: Path) -> Path:
    """A minimal Flower App directory (``<run_dir>/flower_app/pyproject.toml``).

    ``flwr run`` bundles an app directory into a FAB; this one holds only metadata, so the
    ServerApp/ClientApp code is imported from the installed ``fedvid-bench`` package (the
    version recorded in the result), not from a copy of the repository.
    """
    table = flower_app_table()
    comp = table["components"]
    lines = [
        "[build-system]",
        'requires = ["setuptools>=68"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        'name = "fedvid-bench"',
        f'version = "{__version__}"',
        'description = "FedVid-Bench federated pretraining (generated by fedvid run)"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        f'publisher = "{table.get("publisher", "fedvid-bench")}"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{comp["serverapp"]}"',
        f'clientapp = "{comp["clientapp"]}"',
        "",
        "[tool.flwr.app.config]",
        'config-path = ""',
        "",
    ]
    app_dir = run_dir / FLOWER_APP_DIR
    atomic_write_text(app_dir / "pyproject.toml", "\n".join(lines))
    return app_dir


def write_flower_home(run_dir: Path, address: str, insecure: bool = True, root_certificates: str | None = None) -> Path:
    home = run_dir / FLOWER_HOME_DIR
    lines = [
        "[superlink]",
        f'default = "{CONNECTION_NAME}"',
        "",
        f"[superlink.{CONNECTION_NAME}]",
        f'address = "{address}"',
    ]
    if root_certificates:
        lines.append(f'root-certificates = "{root_certificates}"')
    lines.append(f"insecure = {'true' if insecure else 'false'}")
    atomic_write_text(home / "config.toml", "\n".join(lines) + "\n")
    return home


# ------------------------------------------------------------------------------------
# Running a federation
# ------------------------------------------------------------------------------------


@dataclass
class FederationOutcome:
    wall_time_s: float
    startup_s: float | None
    peak_memory_bytes: int
    flower_log: Path
    #: the SuperLink (and Ray) the run used: ``{"shared": bool, "superlink": address, ...}``
    flower: dict | None = None
    #: waits until the run's processes are stopped; returns the PIDs that needed SIGKILL
    wait_stopped: Callable[[], list[int]] = list


def run_federation(
    engine: EngineSpec,
    num_clients: int,
    dataset_root: str,
    run_dir: Path,
    config_path: Path,
    on_line: Callable[[str], None] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> FederationOutcome:
    """Start ``engine`` (simulation or deployment) with ``num_clients`` clients reading their videos
    under ``dataset_root``, run the apps on ``config_path`` to the end, stop everything.

    Raises :class:`FederationError` when the ServerApp did not report completion.

    In a Hydra sweep (:mod:`benchmark.federation.sweep`) a simulation run submits its
    run to the sweep's SuperLink and Ray instead of starting its own.
    """
    from benchmark.federation import control, sweep

    if engine.name == "simulation":  # overlaps the SuperLink's start and health wait
        threading.Thread(target=control.import_flower_api, name="import-flower", daemon=True).start()
    run_dir = Path(run_dir)
    logs = run_dir / rundir.LOGS
    logs.mkdir(parents=True, exist_ok=True)
    check_connection_security(engine)
    procs = Processes(run_dir)
    procs.start_reaper()
    atexit.register(procs.stop)
    restore = _install_sigterm()
    t0 = time.perf_counter()
    peak = 0
    next_memory_sample = 0.0
    startup_s = None
    flower_log = run_dir / rundir.FLOWER_LOG
    owner = sweep.active() if engine.name == "simulation" else None
    shared = None
    completed = False
    try:
        rundir.clear_status(run_dir)
        app_dir = write_flower_app(run_dir)
        extra_env: dict[str, str] = {}
        if engine.name == "simulation" and engine.ray_address:
            extra_env["RAY_ADDRESS"] = engine.ray_address
        external = engine.name == "deployment" and engine.superlink
        if owner is not None:
            shared = owner.flower_for(engine, say=on_line or print)
            address = shared.superlink_address
            write_flower_home(run_dir, address)
            flower = shared.describe()
            # the shared Ray is an existing cluster to this run: no init-args-num-cpus
            engine = replace(engine, ray_address=shared.ray_address)
        elif external:
            address = engine.superlink
            write_flower_home(run_dir, address, engine.insecure, engine.root_certificates)
            flower = {"shared": False, "superlink": address, "superlink_pid": None}
        else:
            port = engine.superlink_port or free_port()
            address = f"127.0.0.1:{port}"
            creds = _local_credentials(run_dir, num_clients) if _secure_local(engine) else None
            write_flower_home(run_dir, address, creds is None, str(creds.ca_cert) if creds else None)
            superlink = spawn_superlink(
                procs, port, creds, engine.name == "simulation", logs / "superlink.log", extra_env
            )
            wait_for_health(
                address,
                superlink,
                engine.startup_timeout_s,
                logs / "superlink.log",
                "flower-superlink",
                creds.ca_cert if creds else None,
            )
            flower = {"shared": False, "superlink": address, "superlink_pid": superlink.pid}
            if engine.name == "deployment":
                _start_supernodes(procs, num_clients, dataset_root, run_dir, address, logs, creds)
        rundir.write_status(run_dir, flower=flower)
        if engine.name == "simulation":  # our own SuperLink: submitted from this process
            flower_run = _InProcessRun(
                control.submit(
                    address,
                    app_dir,
                    {"config-path": str(config_path)},
                    _simulation_config(engine, num_clients),
                    flower_log,
                    on_line,
                )
            )
        else:  # `flwr run` reads the user's `flwr login` credentials from FLWR_HOME
            run_cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION_NAME, "--stream"]
            run_cmd += ["--run-config", f"config-path='{config_path}'"]
            flower_run = _CliRun(procs.spawn("flwr run", run_cmd, None, extra_env, pipe=True), flower_log, on_line)
        while not flower_run.wait(0.5):
            if time.monotonic() >= next_memory_sample:
                peak = max(peak, memory_bytes(procs.tagged() + (shared.tagged() if shared else [])))
                next_memory_sample = time.monotonic() + MEMORY_SAMPLE_S
            if startup_s is None:
                status = rundir.read_status(run_dir)
                if status.get("state") in ("running", "completed", "failed"):
                    startup_s = time.perf_counter() - t0
            if on_poll is not None:
                on_poll()
            status = rundir.read_status(run_dir)
            if status.get("state") in ("completed", "failed"):
                flower_run.drain()  # the ServerApp is done and its files are written
                break
        flower_run.close()
        wall = time.perf_counter() - t0
        status = rundir.read_status(run_dir)
        if status.get("state") != "completed":
            why = status.get("message") or f"{flower_run.ended()} before the run completed"
            raise FederationError(
                f"the federation failed: {why}\nFull log: {flower_log} (and {logs}/)",
                resumable=bool(status.get("resumable", True)),
            )
        # how the round's tensors travelled (benchmark.federation.payloads): shared-memory | messages
        flower = {**flower, "tensors": status.get("tensors", "messages")}
        outcome = FederationOutcome(wall, startup_s, peak, flower_log, flower)
        completed = True
        return outcome
    finally:
        atexit.unregister(procs.stop)
        if completed and shared is None:
            # nothing after a completed run needs these processes: the evaluation starts
            # while they wind down (a few seconds: Ray's actors, the SuperLink)
            outcome.wait_stopped = procs.stop_in_background()
        else:
            leftovers = procs.stop()
            if shared is not None and not completed:  # its simulation may still be running
                leftovers += owner.discard()
            if leftovers and on_line is not None:
                on_line(f"[fedvid] killed {len(leftovers)} process(es) that did not stop on SIGTERM")
        restore()


def spawn_superlink(
    procs: Processes,
    port: int,
    creds: Layout | None,
    simulation: bool,
    log_file: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``flower-superlink`` on 127.0.0.1:``port`` (``--simulation``: runs on Ray); wait with :func:`wait_for_health`."""
    cmd = [
        _bin("flower-superlink"),
        *superlink_security_args(creds),
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if simulation:
        cmd.append("--simulation")
    return procs.spawn("superlink", cmd, log_file, env)


def _start_supernodes(
    procs: Processes, num_clients: int, dataset_root: str, run_dir: Path, address: str, logs: Path, creds: Layout | None
) -> None:
    manifest = run_dir / rundir.MANIFEST
    if creds is not None:  # a SuperNode whose key is not registered is refused
        for cid in range(num_clients):
            register_supernode(procs, creds.registered_key(local_node_name(cid)), local_node_name(cid))
    for cid in range(num_clients):
        node_config = f"client-id={cid} manifest='{manifest}' dataset-root='{dataset_root}'"
        procs.spawn(
            f"supernode {cid}",
            [
                _bin("flower-supernode"),
                *supernode_security_args(creds, local_node_name(cid)),
                "--superlink",
                address,
                "--port",
                str(free_port()),
                "--node-config",
                node_config,
            ],
            logs / f"supernode_{cid}.log",
        )


# ------------------------------------------------------------------------------------
# Connection security: TLS + SuperNode authentication (docs/deployment.md)
# ------------------------------------------------------------------------------------

#: Credentials of a self-started deployment: a throwaway CA and keys per run (loopback only).
LOCAL_CREDENTIALS_DIR = "certs"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and 127.0.0.0/8 / ::1 addresses (a name is resolved by no one)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(address: str) -> str:
    """The host of ``HOST:PORT`` / ``[IPv6]:PORT``."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0]


def check_connection_security(engine: EngineSpec) -> None:
    """Refuse plaintext to a non-loopback SuperLink unless the network is declared trusted,
    and a missing CA file; runs before any process is started."""
    if engine.name != "deployment" or not engine.superlink:
        return  # self-started SuperLinks listen on 127.0.0.1 only
    address = engine.superlink
    if engine.insecure:
        if not is_loopback(split_host(address)) and not engine.trusted_network:
            raise FederationError(
                f"engine.insecure=true sends model updates unencrypted to engine.superlink={address}, which is not a "
                "loopback address. Use TLS (engine.insecure=false engine.root_certificates=CA.crt; `fedvid deploy "
                "certs` makes them), or add engine.trusted_network=true if this network is private and trusted."
            )
        return
    ca = engine.root_certificates
    if ca and not Path(ca).is_file():
        raise FederationError(
            f"engine.root_certificates={ca}: no such file; give the CA certificate (PEM) that signed the "
            "SuperLink's certificate (ca.crt from `fedvid deploy certs`)"
        )


def _secure_local(engine: EngineSpec) -> bool:
    """A self-started deployment uses TLS + SuperNode auth unless engine.insecure=true;
    the simulation's SuperLink has no SuperNodes and listens on 127.0.0.1 only."""
    return engine.name == "deployment" and not engine.insecure


def local_node_name(cid: int) -> str:
    return f"client-{cid}"


def _local_credentials(run_dir: Path, num_clients: int) -> Layout:
    """Fresh CA, 127.0.0.1 certificate and one key per SuperNode for this launch (replaced on resume)."""
    layout = Layout(run_dir / LOCAL_CREDENTIALS_DIR)
    make_credentials(
        layout.root,
        ["127.0.0.1", "localhost"],
        [local_node_name(c) for c in range(num_clients)],
        days=30,
        overwrite=True,
    )
    return layout


def superlink_security_args(creds: Layout | None) -> list[str]:
    if creds is None:
        return ["--insecure"]
    return [
        "--ssl-certfile",
        str(creds.server_cert),
        "--ssl-keyfile",
        str(creds.server_key),
        "--ssl-ca-certfile",
        str(creds.superlink_ca),
        "--enable-supernode-auth",
    ]


def supernode_security_args(creds: Layout | None, node: str) -> list[str]:
    if creds is None:
        return ["--insecure"]
    return ["--root-certificates", str(creds.node_ca(node)), "--auth-supernode-private-key", str(creds.node_key(node))]


def register_supernode(procs: Processes, public_key: Path, name: str, timeout: float = 60) -> None:
    """``flwr supernode register`` against the run's SuperLink (its FLWR_HOME connection)."""
    try:
        done = subprocess.run(
            [_bin("flwr"), "supernode", "register", str(public_key), CONNECTION_NAME, "--name", name],
            env=procs.env(),
            cwd=str(procs.run_dir),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise FederationError(f"registering SuperNode {name} ({public_key}) took over {timeout:.0f}s") from e
    if done.returncode != 0:
        raise FederationError(
            f"registering SuperNode {name} ({public_key}) failed: {done.stdout[-500:]}{done.stderr[-500:]}"
        )


def _simulation_config(engine: EngineSpec, num_clients: int) -> str:
    parts = [
        f"num-supernodes={num_clients}",
        f"client-resources-num-cpus={engine.client_num_cpus}",
        f"client-resources-num-gpus={engine.client_num_gpus}",
    ]
    if engine.ray_num_cpus and not engine.ray_address:
        parts.append(f"init-args-num-cpus={engine.ray_num_cpus}")
    return " ".join(parts)


class _InProcessRun:
    """A run submitted through the Control API from this process (:mod:`benchmark.federation.control`)."""

    def __init__(self, run):
        self.run = run

    def wait(self, timeout: float) -> bool:
        return self.run.wait(timeout)

    def drain(self) -> None:
        # The ServerApp wrote its files and status; its log ends with END_OF_LOG, which arrives
        # within about a second. The stream itself ends only after the simulation tore Ray
        # down (6-12 s), which the stop that follows does for a single run, and which a sweep
        # job's simulation finishes in the background (its own driver, actors and run id).
        from benchmark.federation.control import END_OF_LOG

        self.run.wait_for(END_OF_LOG, cap_s=10.0)

    def close(self) -> None:
        self.run.close()

    def ended(self) -> str:
        why = f" ({self.run.error})" if self.run.error else ""
        return f"the log stream of Flower run {self.run.run_id} ended{why}"


class _CliRun:
    """``flwr run --stream`` as a process; a thread copies its output to the log."""

    def __init__(self, proc: subprocess.Popen, log_file: Path, on_line: Callable[[str], None] | None):
        self.proc = proc
        self.reader = threading.Thread(target=_pump, args=(proc, log_file, on_line), daemon=True)
        self.reader.start()

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def drain(self) -> None:
        self.wait(15)  # give `flwr run` a moment to drain the log stream

    def close(self) -> None:
        self.reader.join(timeout=5)

    def ended(self) -> str:
        return f"`flwr run` exited with code {self.proc.returncode}"


def _pump(proc: subprocess.Popen, log_file: Path, on_line: Callable[[str], None] | None) -> None:
    assert proc.stdout is not None
    with open(log_file, "ab") as f:
        for raw in iter(proc.stdout.readline, b""):
            f.write(raw)
            f.flush()
            if on_line is not None:
                try:
                    on_line(raw.decode("utf-8", "replace").rstrip("\n"))
                except Exception:  # noqa: BLE001 - the console must never stop the log
                    pass


def _install_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into SystemExit (so ``finally`` blocks stop the processes); returns an undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
