"""Submit a Flower run and stream its log from this process: what ``flwr run APP CONN --stream``
does, through the SuperLink's Control API (Flower's own HTTP client), without starting a
``flwr`` CLI process per run (a Python start that imports Flower: 4-20 s per run on the shared
2-core machine, perf/RESULTS.md).

Used for the SuperLinks that ``fedvid run`` starts itself in simulation mode (a single run's or
a sweep's shared one: insecure, 127.0.0.1, no account login). The deployment engine keeps the
``flwr run`` CLI, which reads the user's ``flwr login`` credentials from its FLWR_HOME.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: The ServerApp's last log line (completed or failed): once it has arrived, the log holds
#: everything the ServerApp logged, and the launcher stops waiting for the stream.
END_OF_LOG = "fedvid ServerApp: end of log"


def import_flower_api() -> None:
    """Import the Flower modules :func:`submit` needs (seconds on a loaded machine): call it in a
    thread while the SuperLink starts, so that the import overlaps the health wait."""
    import flwr.cli.build  # noqa: F401
    import flwr.common.config  # noqa: F401
    import flwr.common.serde  # noqa: F401
    import flwr.supercore.control  # noqa: F401
    import flwr.supercore.utils  # noqa: F401


class SubmittedRun:
    """One Flower run started on a SuperLink; a daemon thread appends its log to ``log_file``
    (and hands each line to ``on_line``) until the SuperLink ends the stream, which it does once
    the run is finished (the simulation process has exited), or until :meth:`close`."""

    def __init__(self, client, run_id: int, log_file: Path, on_line: Callable[[str], None] | None):
        self.client = client
        self.run_id = run_id
        self.error: str | None = None
        self._log_file = log_file
        self._tail = ""
        self._on_line = on_line
        self._thread = threading.Thread(target=self._stream, name=f"flower-log-{run_id}", daemon=True)
        self._write(f"Successfully started run {run_id}\n")
        self._thread.start()

    def finished(self) -> bool:
        """True once the log stream ended (the run finished, failed to stream, or was closed)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return self.finished()

    def wait_for(self, text: str, cap_s: float) -> bool:
        """Until ``text`` arrived in the log (or the stream ended), at most ``cap_s``; whether it arrived."""
        deadline = time.monotonic() + cap_s
        while not self.finished() and not self._seen(text) and time.monotonic() < deadline:
            self.wait(0.05)
        return self._seen(text)

    def _seen(self, text: str) -> bool:
        return text in self._tail

    def close(self) -> None:
        """Stop streaming (the run itself goes on until its processes are stopped)."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing must not mask the run's own outcome
            pass
        self._thread.join(timeout=2)

    def _stream(self) -> None:
        from flwr.proto.control_pb2 import StreamLogsRequest  # pylint: disable=E0611

        try:
            for res in self.client.StreamLogs(StreamLogsRequest(run_id=self.run_id, after_timestamp=0.0)):
                self._write(res.log_output)
        except Exception as exc:  # noqa: BLE001 - a closed client ends the stream this way too
            self.error = f"{type(exc).__name__}: {exc}"

    def _write(self, text: str) -> None:
        self._tail = self._tail[-4096:] + text  # a line split over two chunks is still found
        with open(self._log_file, "a", encoding="utf-8") as f:
            f.write(text)
        if self._on_line is not None:
            for line in text.splitlines():
                try:
                    self._on_line(line)
                except Exception:  # noqa: BLE001 - the console must never stop the log
                    pass


def submit(
    address: str,
    app_dir: Path,
    run_config: dict[str, str],
    federation_config: str,
    log_file: Path,
    on_line: Callable[[str], None] | None = None,
) -> SubmittedRun:
    """Start the Flower app in ``app_dir`` on the (insecure, local) SuperLink at ``address``.

    run_config: the run's config overrides (``--run-config``); federation_config: the
    simulation settings as ``flwr run --federation-config`` takes them
    (``"num-supernodes=3 client-resources-num-cpus=1 ..."``)."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.common.config import parse_config_args
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=E0611
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.fab import Fab
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.utils import simulation_config_from_json

    fab_bytes = build_fab_from_disk(Path(app_dir))
    simulation = {k.replace("-", "_"): v for k, v in parse_config_args([federation_config]).items()}
    client = ControlHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
    )
    try:
        res = client.StartRun(
            StartRunRequest(
                fab=fab_to_proto(Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})),
                override_config=user_config_to_proto(run_config),
                federation="",
                override_federation_config=simulation_config_from_json(simulation),
                app_spec="",
            )
        )
    except BaseException:
        client.close()
        raise
    if not res.HasField("run_id"):
        client.close()
        note = f" ({res.note})" if res.HasField("note") else ""
        raise RuntimeError(f"the SuperLink at {address} did not start the run{note}")
    return SubmittedRun(client, res.run_id, log_file, on_line)
