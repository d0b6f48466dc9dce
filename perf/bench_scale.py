"""Paper-scale federation shape through the real Flower simulation (issue 16, target 4).

    .venv/bin/python perf/bench_scale.py [--rounds 540] [--clients 100] [--per-round 5]

The FedVSSL Kinetics-400 shape: 100 clients, 5 sampled per round, R3D-18-sized exchanged
weights (the real R3D-18 module, 120 tensors, 33.2 M parameters = 132.7 MB, constant
values) and a CtP-sized local head per client (28.4 MB, kept as client state: Flower
context state + retained files), with near-zero local compute: the bench-only method
``scale_noop`` (perf/scale_plugin/, registered through the ordinary entry-point groups in
a temporary ``.dist-info``) goes through ``fedvid run`` -> SuperLink -> ``flwr run`` ->
Ray simulation -> ClientApp -> ``run_local_training`` (loader, optimizer, one step) and
back through the project's strategy (update guard, FedAvg, checkpoints, retention on:
``checkpoint.keep_last=2 keep_every=100``).

Measured, in one run:
- per-round cycle time: the time between consecutive round completions as the ServerApp
  logs them ("round r/R ... " lines of the streamed log, timestamped by this process when
  read), split into client compute (``compute_s`` of the clients, which includes building
  the model and the one loader batch), aggregation and the rest (Flower messaging,
  serialisation, guard, checkpoint + retention, round log);
  server overhead per round = cycle - the time in which at least one client computes (the
  union of the round's ``run_local_training`` intervals, logged with wall-clock times by
  perf/scale_plugin's sitecustomize): the part of the round in which no client computes.
  Also printed, as before 2026-12-02: cycle - sum of compute_s / Ray actors, which counts as
  overhead the time an actor waits when the clients do not divide evenly among the actors
  (5 clients on 2 actors: 3 waves, of which sum/actors counts 2.5).
- memory over rounds: every 1 s the RSS (every 10 s the PSS) of each process of the run (those whose
  FLWR_HOME is the run's), grouped into server (SuperLink, flwr-simulation = ServerApp +
  Ray driver, SuperExec) and clients (Ray workers/actors, raylet, GCS, ...); per round
  the peak; a least-squares slope of the peak against the round and against the number of
  distinct clients sampled so far, printed as the change over the run in %.
- disk of the run directory at the end; bytes per round (``bytes_up + bytes_down``).
Rounds can be fewer than 540 (``--rounds``); the figures are then extrapolated to 540
rounds with the fitted linear trend.

``--sweep SEEDS`` runs a Hydra sweep of the shape instead (``fedvid run -m seed=SEEDS``: its
jobs share one SuperLink and Ray head) and prints each job's round wall time and how its
round's tensors travelled; with ``--old`` the old tree's sweep first.

Modes: ``--old COMMIT`` runs the same bench first on COMMIT (a temporary ``git worktree``
put first on PYTHONPATH for every process of the run, removed afterwards) and then on this
tree, one after the other, and prints both server overheads and their ratio;
``--phases`` times each phase of a round inside the server and client processes;
``--mallinfo`` logs the ServerApp process's RSS and glibc malloc statistics per round;
``--tracemalloc-every N`` prints the Python allocation sites that grew most (the last
three through the bench-only ``perf/scale_plugin/sitecustomize.py``, inert otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sides import old_tree

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "perf" / "scale_plugin"
ROUND_LINE = re.compile(r"round (\d+)/(\d+): loss")

SERVER_MARKERS = ("flower-superlink", "flwr-simulation", "flower-superexec", "flwr-serverapp", "benchmark.cli")


def plugin_path(tmp: Path) -> str:
    """PYTHONPATH with the plugin module and a ``.dist-info`` declaring its entry points."""
    dist = tmp / "site" / "fedvid_scale_plugin-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedvid-scale-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[fedvid.methods]\nscale_noop = fedvid_scale_plugin:ScaleNoop\n\n"
        "[fedvid.backbones]\nscale_r3d18 = fedvid_scale_plugin:ScaleR3D18\n"
    )
    return os.pathsep.join([str(tmp / "site"), str(PLUGIN)])


def run_processes(run_dir: Path) -> list[tuple[int, str]]:
    needle = f"FLWR_HOME={run_dir / '.flwr'}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append((int(entry), cmd))
    return found


def rss_pss(pid: int, with_pss: bool = True) -> tuple[int, int]:
    """RSS and PSS in bytes; without ``with_pss`` only the RSS (from ``statm``: reading
    ``smaps_rollup`` of the run's large processes every second cost this bench ~20 % of a
    core in kernel time, which the run under test then lacked) and PSS 0."""
    if not with_pss:
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE"), 0
        except (OSError, IndexError, ValueError):
            return 0, 0
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def is_server(cmd: str) -> bool:
    return any(m in cmd for m in SERVER_MARKERS) and "ray::" not in cmd and "raylet" not in cmd


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=540)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray instance (one per client actor)")
    ap.add_argument(
        "--gpu-round-s",
        type=float,
        default=240.0,
        help="assumed GPU time of one FedVSSL round (see RESULTS.md) for the overhead share",
    )
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--keep", help="keep the run directory here instead of a temporary one")
    ap.add_argument(
        "--phases",
        action="store_true",
        help="time each phase of a round in the server and client processes (perf/scale_plugin/sitecustomize.py)",
    )
    ap.add_argument(
        "--tracemalloc-every",
        type=int,
        default=0,
        help="every N rounds, the server process's Python allocations that grew most since round 2",
    )
    ap.add_argument(
        "--mallinfo",
        action="store_true",
        help="per round, the server process's RSS and glibc malloc statistics (in use, free in the heaps, mmap'd)",
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        help="stop the run after this many minutes (fedvid run terminated) and report the rounds done "
        "with their fitted trend",
    )
    ap.add_argument(
        "--old",
        metavar="COMMIT",
        help="first run the same bench on COMMIT (a temporary `git worktree`, imported through PYTHONPATH), "
        "then on this tree, and print the server overhead of both and their ratio",
    )
    ap.add_argument(
        "--sweep",
        metavar="SEEDS",
        help="instead of one run, a Hydra sweep `fedvid run -m seed=SEEDS` (e.g. 0,1) of the shape on one shared "
        "SuperLink and Ray head; prints each job's round wall time and how its tensors travelled",
    )
    args = ap.parse_args()
    if args.sweep:
        unused = [f for f in ("keep", "phases", "mallinfo", "max_minutes", "tracemalloc_every") if getattr(args, f)]
        if unused:
            ap.error("--sweep does not take --" + ", --".join(f.replace("_", "-") for f in unused))
        if args.rounds < 2:
            ap.error("--sweep needs --rounds >= 2 (its round wall time leaves round 1 out)")
    run = run_sweep if args.sweep else run_once
    if not args.old:
        run(args, ROOT, "this tree")
        return
    with old_tree(args.old) as tree:
        # its bytecode compiled first, as this tree's already is: the totals compare code
        subprocess.run([sys.executable, "-m", "compileall", "-q", "benchmark", "baselines"], cwd=tree, check=True)
        old = run(args, tree, f"old: {args.old}")
    new = run(args, ROOT, "new: this tree")
    if args.sweep:
        print(
            f"== old vs new sweeps, one after the other: round wall median {old['round_wall']:.2f} -> "
            f"{new['round_wall']:.2f} s, new/old {new['round_wall'] / old['round_wall']:.3f}; whole sweep "
            f"{old['total']:.1f} -> {new['total']:.1f} s, new/old {new['total'] / old['total']:.3f}"
        )
        return
    print(
        f"== old vs new, {args.rounds} rounds each, one after the other: server overhead median "
        f"{old['overhead']:.2f} -> {new['overhead']:.2f} s/round, new/old {new['overhead'] / old['overhead']:.3f}; "
        f"cycle {old['cycle']:.2f} -> {new['cycle']:.2f} s/round, new/old {new['cycle'] / old['cycle']:.3f}; "
        f"(cycle - sum of compute / actors: {old['overhead_sum_per_actor']:.2f} -> "
        f"{new['overhead_sum_per_actor']:.2f} s/round)"
    )


def scale_overrides(args) -> list[str]:
    """The ``fedvid run`` overrides of the FedVSSL shape with near-zero local compute."""
    return [
        "evaluate=false",
        f"data_root={args.data_root}",
        f"partition.num_clients={args.clients}",
        f"federation.clients_per_round={args.per_round}",
        f"federation.rounds={args.rounds}",
        "federation.local_steps=1",
        "client.batch_size=1",
        "client.num_workers=0",
        "backbone=r3d18",
        "backbone.name=scale_r3d18",
        "method.name=scale_noop",
        "~method.params",
        "+method.params={}",
        "method.exchange=backbone",
        f"engine.ray_num_cpus={args.cpus}",
        "engine.client_resources.num_cpus=1",
        "checkpoint.keep_last=2",
        "checkpoint.keep_every=100",
    ]


def run_sweep(args, tree: Path, label: str) -> dict:
    """One Hydra sweep (``fedvid run -m seed=<--sweep>``) of the scale shape with the code of
    ``tree``, its jobs on one shared SuperLink and Ray head; per job: how the round's tensors
    travelled and the round's wall time (``round_wall_s`` of rounds.jsonl, rounds >= 2)."""
    print(f"== {label} ({tree}), load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedvid-scale-sweep-") as tmp_s:
        tmp = Path(tmp_s)
        sweep_dir = tmp / "multirun"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), plugin_path(tmp)])}
        env["FEDVID_SCALE_COMPUTE"] = str(tmp / "compute.jsonl")
        cmd = [sys.executable, "-m", "benchmark.cli", "run", "-m", f"hydra.sweep.dir={sweep_dir}"]
        cmd += [*scale_overrides(args), "engine.echo_log=false", f"seed={args.sweep}"]
        t_start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        total_s = time.perf_counter() - t_start
        if proc.returncode != 0:
            raise SystemExit(
                f"fedvid run -m failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        walls = []
        for job in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            record = json.loads((job / "result.json").read_text())
            rounds = [json.loads(x) for x in (job / "rounds.jsonl").read_text().splitlines()]
            wall = [r["round_wall_s"] for r in rounds if r["round"] >= 2]
            walls += wall
            print(
                f"  job {job.name}: tensors {record['systems']['flower'].get('tensors', 'messages')}, "
                f"round wall (rounds 2-{len(rounds)}) median {statistics.median(wall):.2f} s "
                f"(min {min(wall):.2f}, max {max(wall):.2f}), bytes per round "
                f"{statistics.median(r['bytes_up'] + r['bytes_down'] for r in rounds) / 1e6:.1f} MB",
                flush=True,
            )
        print(f"  the whole sweep: {total_s:.1f} s", flush=True)
        return {"round_wall": statistics.median(walls), "total": total_s}


def run_once(args, tree: Path, label: str) -> dict:
    """One ``fedvid run`` of the scale shape with the code of ``tree``; prints its report."""
    print(f"== {label} ({tree}), load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedvid-scale-") as tmp_s:
        tmp = Path(tmp_s)
        run_dir = Path(args.keep) / label.split(":")[0].replace(" ", "_") if args.keep else tmp / "run"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), plugin_path(tmp)])}
        aux = run_dir.parent if args.keep else tmp  # diagnostics kept beside a kept run dir
        aux.mkdir(parents=True, exist_ok=True)
        phases_file = aux / "phases.jsonl"
        if args.phases:
            env["FEDVID_SCALE_PHASES"] = str(phases_file)
        if args.mallinfo:
            env["FEDVID_SCALE_MALLINFO"] = str(aux / "mallinfo.jsonl")
        compute_file = aux / "compute.jsonl"
        env["FEDVID_SCALE_COMPUTE"] = str(compute_file)
        if args.tracemalloc_every:
            env["FEDVID_SCALE_TRACEMALLOC"] = f"{args.tracemalloc_every}:{tmp / 'tracemalloc.txt'}"
        cmd = [sys.executable, "-m", "benchmark.cli", "run", f"hydra.run.dir={run_dir}", *scale_overrides(args)]
        t_start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        done_at: dict[int, float] = {}
        tail: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line)
                del tail[:-60]
                m = ROUND_LINE.search(line)
                if m:
                    done_at[int(m.group(1))] = time.time()  # the clients' compute intervals are wall-clock too
                    r = int(m.group(1))
                    if r % 10 == 0:
                        print(f"  round {r} at {time.perf_counter() - t_start:.0f} s", flush=True)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # per round (the round in progress = completed + 1): peak server / client RSS and PSS
        peaks: dict[int, list[int]] = {}
        members: list[tuple[int, str]] = []
        tick = 0
        stopped = False
        try:
            while proc.poll() is None:
                if args.max_minutes and time.perf_counter() - t_start > 60 * args.max_minutes and not stopped:
                    print(f"  --max-minutes {args.max_minutes:g}: stopping after {len(done_at)} rounds", flush=True)
                    proc.terminate()  # fedvid run stops everything it started
                    stopped = True
                current = len(done_at) + 1
                srv = [0, 0]
                cli = [0, 0]
                if tick % 10 == 0:  # the run's processes (scanning /proc's environs is not free)
                    members = run_processes(run_dir)
                for pid, c in members:
                    rss, pss = rss_pss(pid, with_pss=tick % 10 == 0)
                    tgt = srv if is_server(c) else cli
                    tgt[0] += rss
                    tgt[1] += pss
                p = peaks.setdefault(current, [0, 0, 0, 0])
                peaks[current] = [max(p[0], srv[0]), max(p[1], srv[1]), max(p[2], cli[0]), max(p[3], cli[1])]
                tick += 1
                time.sleep(1.0)
        except KeyboardInterrupt:
            proc.terminate()  # fedvid run stops everything it started
            proc.wait(timeout=60)
            raise
        reader.join(timeout=10)
        total_s = time.perf_counter() - t_start
        if proc.returncode != 0 and not stopped:
            raise SystemExit(f"fedvid run failed (rc {proc.returncode}):\n{''.join(tail)}")
        rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
        rounds = [r for r in rounds if r["round"] in done_at]  # a stopped run: the rounds it logged
        summary = report(args, run_dir, rounds, done_at, peaks, total_s, compute_busy(compute_file))
        if args.phases:
            report_phases(phases_file, args.per_round)
        if args.mallinfo and (aux / "mallinfo.jsonl").exists():
            report_mallinfo(aux / "mallinfo.jsonl")
        if args.tracemalloc_every and (tmp / "tracemalloc.txt").exists():
            print((tmp / "tracemalloc.txt").read_text(), end="")
        return summary


def compute_busy(path: Path) -> dict[int, float]:
    """Round -> seconds in which at least one of its clients ran ``run_local_training``."""
    spans: dict[int, list[tuple[float, float]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            spans.setdefault(int(row["round"]), []).append((row["start"], row["end"]))
    busy = {}
    for r, intervals in spans.items():
        total, end = 0.0, float("-inf")
        for a, b in sorted(intervals):
            if b > end:
                total += b - max(a, end)
                end = b
        busy[r] = total
    return busy


def report(
    args, run_dir: Path, rounds: list[dict], done_at: dict[int, float], peaks: dict, total_s: float, busy: dict
) -> dict:
    n = len(rounds)
    mib = 2**20
    print(
        f"== scale simulation: {args.clients} clients, {args.per_round} per round, {n} rounds, "
        f"{args.cpus} Ray CPUs (one client actor per CPU), load average {os.getloadavg()}"
    )
    cycles = {r: done_at[r] - done_at[r - 1] for r in range(2, n + 1) if r in done_at and r - 1 in done_at}
    rows = []
    for rec in rounds:
        r = rec["round"]
        if r not in cycles:
            continue
        compute = [c["compute_s"] for c in rec["clients"]]
        critical = busy.get(r, sum(compute) / args.cpus)
        rows.append(
            (
                r,
                cycles[r],
                rec["round_wall_s"],
                sum(compute),
                critical,
                rec["aggregate_s"],
                cycles[r] - critical,
                rec["bytes_up"] + rec["bytes_down"],
                cycles[r] - sum(compute) / args.cpus,
            )
        )
    print(
        f"{'round':>5} {'cycle s':>8} {'round_wall':>10} {'sum compute':>11} {'computing':>9} {'aggregate':>9} "
        f"{'overhead':>8} {'MB moved':>9} {'cycle-sum/actors':>16}"
    )
    for row in rows[:3] + rows[-3:] if len(rows) > 6 else rows:
        print(
            f"{row[0]:>5} {row[1]:>8.2f} {row[2]:>10.2f} {row[3]:>11.2f} {row[4]:>9.2f} {row[5]:>9.2f} "
            f"{row[6]:>8.2f} {row[7] / 1e6:>9.1f} {row[8]:>16.2f}"
        )
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    over = [x[6] for x in rows]
    cyc = [x[1] for x in rows]
    s_o, i_o = fit([x[0] for x in rows], over)
    print(f"cycle per round: median {med(cyc):.2f} s, mean {sum(cyc) / len(cyc):.2f} s")
    print(
        f"server overhead per round: median {med(over):.2f} s, mean {sum(over) / len(over):.2f} s, "
        f"max {max(over):.2f} s; trend {s_o * 1000:+.2f} ms/round -> {i_o + s_o * 540:.2f} s at round 540 "
        f"(target <= 2 s)"
    )
    print(
        f"  (the time of the cycle in which no client computes; cycle - sum of compute / {args.cpus} actors, "
        f"the definition before 2026-12-02: median {med([x[8] for x in rows]):.2f} s)"
    )
    print(f"  share of a {args.gpu_round_s:.0f} s GPU round: {med(over) / (args.gpu_round_s + med(over)) * 100:.2f} %")
    print(
        f"  aggregation (FedAvg of {args.per_round} x 33 M): median {med([x[5] for x in rows]):.2f} s; "
        f"client compute per client: median {med([x[3] / args.per_round for x in rows]):.2f} s"
    )
    bytes_round = [x[7] for x in rows]
    print(
        f"bytes per round: {med(bytes_round) / 1e6:.1f} MB (up + down, {args.per_round} clients), "
        f"{med(bytes_round) * 540 / 1e9:.1f} GB over 540 rounds"
    )

    distinct: list[int] = []
    seen: set[int] = set()
    for rec in rounds:
        seen.update(rec["sampled_clients"])
        distinct.append(len(seen))
    # memory: the completed rounds' peaks; skip round 1 (start-up, first allocations)
    all_rounds = [r for r in range(2, n + 1) if r in peaks]
    for label, idx in (("server RSS", 0), ("server PSS", 1), ("client-side RSS", 2), ("client-side PSS", 3)):
        mem_rounds = [r for r in all_rounds if peaks[r][idx] > 0]  # PSS: sampled every 10 s only
        if len(mem_rounds) < 2:
            continue
        ys = [peaks[r][idx] / mib for r in mem_rounds]
        s, i = fit([float(r) for r in mem_rounds], ys)
        first, last = i + s * mem_rounds[0], i + s * mem_rounds[-1]
        at540 = i + s * 540
        sd, idd = fit([float(distinct[r - 1]) for r in mem_rounds], ys)
        print(
            f"{label:>16}: peak {min(ys):.0f}-{max(ys):.0f} MiB; slope {s:+.3f} MiB/round = "
            f"{(last - first) / first * 100:+.2f} % over rounds {mem_rounds[0]}-{mem_rounds[-1]}, "
            f"{(at540 - first) / first * 100:+.2f} % extrapolated to 540; "
            f"{sd:+.3f} MiB per distinct client ({distinct[mem_rounds[0] - 1]} -> {distinct[mem_rounds[-1] - 1]})"
        )
    ck = du(run_dir / "checkpoints") if (run_dir / "checkpoints").exists() else 0
    cs = du(run_dir / "client_state") if (run_dir / "client_state").exists() else 0
    print(
        f"disk at the end: run dir {du(run_dir) / 1e9:.2f} GB (checkpoints {ck / 1e9:.2f} GB in "
        f"{len(list((run_dir / 'checkpoints').glob('*.pt')))} files, client state {cs / 1e9:.2f} GB in "
        f"{len(list((run_dir / 'client_state').rglob('*.pt')))} files)"
    )
    print(f"whole run: {total_s:.0f} s for {n} rounds incl. start-up and teardown")
    return {"overhead": med(over), "cycle": med(cyc), "overhead_sum_per_actor": med([x[8] for x in rows])}


def report_mallinfo(path: Path) -> None:
    """Slopes over rounds >= 3 of the ServerApp process's RSS and malloc figures (MiB/round)."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["round"] >= 3]
    if len(rows) < 2:
        return
    xs = [float(r["round"]) for r in rows]
    print(f"server process (ServerApp + Ray driver), rounds {rows[0]['round']}-{rows[-1]['round']}:")
    for key in ("rss", "in_use", "mmapped", "heap", "free_in_heap"):
        ys = [r[key] / 2**20 for r in rows]
        slope, _ = fit(xs, ys)
        print(
            f"  {key:<13} {ys[0]:8.1f} -> {ys[-1]:8.1f} MiB (min {min(ys):.1f}, max {max(ys):.1f}), {slope:+.3f} MiB/round"
        )
    objs = [(r["round"], r["objects"]) for r in rows if r.get("objects")]
    if objs:
        print("  Python objects tracked by gc: " + ", ".join(f"round {r}: {n}" for r, n in objs[:3] + objs[-3:]))


def report_phases(path: Path, per_round: int) -> None:
    """Per phase: calls per round and the median over rounds >= 2 of its seconds per round
    (the sum of its calls in that round), server process and client processes apart."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    server_pids = {r["pid"] for r in rows if r["phase"].startswith("server: configure_train")}
    per: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        if r["round"] is None or r["round"] < 2:
            continue
        where = "server" if r["pid"] in server_pids else "client"
        per.setdefault((where, r["phase"]), {}).setdefault(r["round"], []).append(r["s"])
    print(f"phases (median over rounds >= 2; one Ray actor per CPU, {per_round} clients per round):")
    print(f"{'process':<7} {'phase':<62} {'calls':>5} {'s/round':>8} {'s/call':>7}")
    for (where, phase), by_round in sorted(per.items()):
        sums = sorted(sum(v) for v in by_round.values())
        calls = sorted(len(v) for v in by_round.values())
        med_sum, med_calls = sums[len(sums) // 2], calls[len(calls) // 2]
        print(f"{where:<7} {phase[:62]:<62} {med_calls:>5} {med_sum:>8.3f} {med_sum / max(1, med_calls):>7.3f}")


if __name__ == "__main__":
    main()
