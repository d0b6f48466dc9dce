"""Bench-only phase timing of perf/bench_scale.py (``--phases``); inert without its env var.

Python imports ``sitecustomize`` at start-up in every process whose PYTHONPATH holds this
folder (the bench puts it there for the whole run: ``fedvid run``, SuperLink, the
flwr-simulation process that runs the ServerApp and the Ray driver, the Ray actors that run
the ClientApps). With ``FEDVID_SCALE_PHASES=<file>`` set, it wraps — after their modules
are imported, without changing them — the functions a round goes through and appends one
JSON line per call to that file: ``{"pid", "round", "phase", "s"}``.

Server process: ``configure_train``, ``send_and_receive`` (Flower: push, Ray, clients, pull),
``RayBackend.process_message`` (one client's message through Ray: argument transfer into
the object store, the actor's work, the reply's transfer back), the strategy's pieces
(reply -> tensors, guard norms, aggregation, divergence check, L2 spread, the new global
``ArrayRecord``, byte counting) and the round end (checkpoint, retention, round log,
status). Client processes: the ClientApp's ``_train`` (whole) and ``run_local_training``
(the compute inside it), so the ClientApp's own message handling is their difference.
"""

from __future__ import annotations

import os

_SINK = os.environ.get("FEDVID_SCALE_PHASES")
#: With ``FEDVID_SCALE_COMPUTE=<file>``: one JSON line per client round,
#: ``{"round", "start", "end"}`` (wall clock) of ``run_local_training``, so the bench can
#: count the time of a round in which no client computes.
_COMPUTE = os.environ.get("FEDVID_SCALE_COMPUTE")

if _SINK or _COMPUTE or os.environ.get("FEDVID_SCALE_TRACEMALLOC") or os.environ.get("FEDVID_SCALE_MALLINFO"):
    import functools
    import importlib.abc
    import json
    import sys
    import threading
    import time

    _lock = threading.Lock()
    _round = [0]

    def _append(path: str, row: dict) -> None:
        with _lock, open(path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _emit(phase: str, seconds: float, server_round: int | None = None) -> None:
        if _SINK:
            _append(_SINK, {"pid": os.getpid(), "round": server_round or _round[0], "phase": phase, "s": seconds})

    def _around(fn, after):
        """``fn``, calling ``after(perf_counter start, wall-clock start, args, kwargs)`` when it
        returns or raises."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            started, wall = time.perf_counter(), time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                after(started, wall, args, kwargs)

        return wrapper

    def _timed(phase: str, fn, round_of=None):
        def after(started, _wall, args, kwargs):
            _emit(phase, time.perf_counter() - started, round_of(*args, **kwargs) if round_of else None)

        return _around(fn, after)

    def _wrap(obj, name: str, phase: str, round_of=None) -> None:
        if hasattr(obj, name):
            setattr(obj, name, _timed(phase, getattr(obj, name), round_of))

    def _patch_strategy(mod) -> None:
        cls = mod.FedVidStrategy
        configure = cls.configure_train

        def configure_train(self, server_round, *args, **kwargs):
            _round[0] = server_round
            return configure(self, server_round, *args, **kwargs)

        cls.configure_train = _timed("server: configure_train (sample, byte count, messages)", configure_train)
        _wrap(cls, "aggregate_train", "server: aggregate_train (all of it)")
        _wrap(mod, "screen_updates", "server: update guard (norms)")
        _wrap(mod, "check_global", "server: divergence check (global norm)")
        _wrap(mod, "l2_distance", "server: L2 client-to-global")
        _wrap(mod, "serialized_size", "server: byte counting")  # before 2026-12-02
        _wrap(mod, "exchange_size", "server: byte counting")
        _wrap(cls, "exchange", "server: exchange (push, Flower + Ray + clients, pull, norms on arrival)")
        _wrap(mod, "update_norm", "server: guard norm of one update (on arrival)")
        _wrap(mod, "unpack", "server: replies -> tensors (views)")
        _wrap(mod, "state_from_record", "server: replies -> tensors")
        _wrap(mod, "record_from_state", "server: new global -> ArrayRecord")

    def _tracemalloc_round_log(write_round_log):
        """FEDVID_SCALE_TRACEMALLOC=N:<file>: every N rounds (at the round log write, once per
        round), the 15 allocation sites of this process that grew most since round 2."""
        every_s, _, out = os.environ["FEDVID_SCALE_TRACEMALLOC"].partition(":")
        every = int(every_s)
        import tracemalloc

        tracemalloc.start(8)
        base = []

        @functools.wraps(write_round_log)
        def wrapper(run_dir, records):
            write_round_log(run_dir, records)
            r = len(records)
            if r == 2:
                base.append(tracemalloc.take_snapshot())
            elif base and r % every == 0:
                snap = tracemalloc.take_snapshot()
                stats = snap.compare_to(base[0], "traceback")[:15]
                total = sum(s.size for s in snap.statistics("filename")) / 2**20
                with open(out, "a") as f:
                    f.write(f"tracemalloc, server process, round {r}: {total:.1f} MiB traced; growth since round 2:\n")
                    for st in stats:
                        where = " <- ".join(f"{fr.filename.rsplit('/', 3)[-1]}:{fr.lineno}" for fr in st.traceback[:4])
                        f.write(f"  {st.size_diff / 2**20:+8.2f} MiB {st.count_diff:+7d} blocks  {where}\n")

        return wrapper

    def _mallinfo_round_log(write_round_log):
        """FEDVID_SCALE_MALLINFO=<file>: per round (at the round log write), this process's RSS
        and glibc's malloc statistics (mallinfo2: bytes in use on the heaps, free inside
        them, in mmap'd blocks), and every 10 rounds the number of Python objects the
        collector tracks: growth of RSS with flat in-use bytes is the allocator, not a leak."""
        import ctypes
        import gc

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (n, ctypes.c_size_t)
                for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
                + ("fordblks", "keepcost")
            ]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        out = os.environ["FEDVID_SCALE_MALLINFO"]
        page = os.sysconf("SC_PAGE_SIZE")

        @functools.wraps(write_round_log)
        def wrapper(run_dir, records):
            write_round_log(run_dir, records)
            r = len(records)
            m = libc.mallinfo2()
            with open(f"/proc/{os.getpid()}/statm") as f:
                rss = int(f.read().split()[1]) * page
            row = {
                "round": r,
                "rss": rss,
                "heap": m.arena,
                "in_use": m.uordblks,
                "free_in_heap": m.fordblks,
                "mmapped": m.hblkhd,
                "objects": len(gc.get_objects()) if r % 10 == 0 else None,
            }
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")

        return wrapper

    def _patch_server_app(mod) -> None:
        if os.environ.get("FEDVID_SCALE_MALLINFO"):
            mod.write_round_log = _mallinfo_round_log(mod.write_round_log)
        if os.environ.get("FEDVID_SCALE_TRACEMALLOC"):
            mod.write_round_log = _tracemalloc_round_log(mod.write_round_log)
        _wrap(mod, "save_checkpoint", "server: checkpoint (torch.save, sha256, fsync, rename)")
        _wrap(mod, "prune_checkpoints", "server: retention (checkpoints)")
        _wrap(mod, "prune_all_client_state", "server: retention (client state)")
        _wrap(mod, "write_round_log", "server: round log")
        _wrap(mod, "write_status", "server: status file")

    def _patch_arrayrecord(mod) -> None:
        # the old tree converts with Flower's own methods: time them where the strategy calls them
        _wrap(mod.ArrayRecord, "to_torch_state_dict", "flower: ArrayRecord.to_torch_state_dict")

    def _patch_fedavg(mod) -> None:
        _wrap(mod.FedAvg, "aggregate", "server: FedAvg")

    def _patch_grid(mod) -> None:
        _wrap(mod.InMemoryGrid, "send_and_receive", "server: send_and_receive (Flower + Ray + clients)")

    def _patch_ray(mod) -> None:
        def round_of(self, message, context):
            try:
                return int(message.content["config"]["server-round"])
            except Exception:  # noqa: BLE001 - the identity query has no round
                return -1

        _wrap(mod.RayBackend, "process_message", "server: one client's message through Ray", round_of)

    def _patch_client_app(mod) -> None:
        def round_of(msg, context):
            try:
                return int(msg.content["config"]["server-round"])
            except Exception:  # noqa: BLE001
                return -1

        train = mod._train

        def _train(msg, context):
            _round[0] = round_of(msg, context)
            return train(msg, context)

        mod._train = _timed("client: ClientApp _train (all of it)", _train, round_of)
        _wrap(mod, "run_local_training", "client: run_local_training")
        for name, phase in (
            ("unpack", "client: global model from the message (views)"),
            ("_restore_local_state", "client: own heads from the state file"),
            ("client_videos", "client: manifest + video paths"),
            ("atomic_write_bytes", "client: heads -> state file (write, fsync, rename)"),  # before 2026-12-02
            (
                "atomic_write_with",
                "client: heads -> state file (torch.save, write, rename; fsync unless the server does)",
            ),
            ("prune_client_state", "client: prune own state files"),
            ("pack", "client: update -> message (or payload file)"),
            ("trim_heap", "client: malloc_trim"),
        ):
            _wrap(mod, name, phase, round_of=lambda *a, **k: _round[0])
        if _COMPUTE:

            def computed(_started, wall, _args, kwargs):
                _append(_COMPUTE, {"round": kwargs.get("server_round", -1), "start": wall, "end": time.time()})

            mod.run_local_training = _around(mod.run_local_training, computed)

    _PATCHES = {
        "benchmark.federation.strategy": _patch_strategy,
        "benchmark.federation.server_app": _patch_server_app,
        "benchmark.federation.client_app": _patch_client_app,
        "flwr.app.message.arrayrecord": _patch_arrayrecord,
        "baselines.fedavg": _patch_fedavg,
        "flwr.superlink.grid.inmemory_grid": _patch_grid,
        "flwr.server.superlink.fleet.vce.backend.raybackend": _patch_ray,
    }

    class _AfterImport(importlib.abc.MetaPathFinder):
        """Runs the patch of a module right after the module is executed."""

        def find_spec(self, name, path, target=None):
            if name not in _PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _PATCHES[name](module)

            spec.loader.exec_module = exec_and_patch
            return spec

    import importlib.util

    sys.meta_path.insert(0, _AfterImport())
