"""The ServerApp's own work per round at R3D-18 scale, phase by phase, old vs new code.

    .venv/bin/python perf/bench_server_round.py [--old-tree DIR] [--repeats 3]

One process per code tree (this tree, and ``--old-tree`` when given: a checkout of an
older commit, imported through PYTHONPATH), each timing the phases the strategy runs
per round on the same inputs: the R3D-18 state (120 tensors, 33.2 M parameters, float32 +
int64 BN counters, seeded random values) as the global model, 5 client updates (global +
seeded noise) as Flower ``ArrayRecord``s, FedAvg, the update guard, the client-to-global
L2 spread and the checkpoint of the new global model (written to a temporary folder:
fsync + atomic rename included). Each phase: median wall time over ``--repeats``.
The aggregate, norms and checkpoint bytes of both trees are compared bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(repeats: int, clients: int) -> dict:
    import torch
    from flwr.app import ArrayRecord, RecordDict

    from baselines.fedavg import FedAvg
    from benchmark.federation.base import ClientUpdate
    from benchmark.federation.checkpoint import Checkpoint, save_checkpoint
    from benchmark.federation.guard import GuardSpec, check_global, float_norm, screen_updates
    from benchmark.federation.strategy import l2_distance, serialized_size
    from benchmark.models.backbones import R3D18

    torch.manual_seed(0)
    model = R3D18()
    glob = {f"backbone.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    records = []
    for c in range(clients):
        upd = {
            k: (v + 1e-3 * (c + 1) * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v + c
            for k, v in glob.items()
        }
        records.append(ArrayRecord(upd))
    try:  # what the strategy of this tree uses
        from benchmark.federation.wire import record_from_state as to_record
        from benchmark.federation.wire import state_from_record as to_state
    except ImportError:  # the old tree: Flower's conversions
        to_record, to_state = ArrayRecord, ArrayRecord.to_torch_state_dict
    phases: dict[str, list[tuple[float, float]]] = {}

    def timed(name, fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        phases.setdefault(name, []).append((time.perf_counter() - t, time.process_time() - c))
        return out

    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            down = timed("ArrayRecord(global) for the round's messages", lambda: to_record(glob))
            timed(
                "bytes counted (down + up)",
                lambda: [serialized_size(RecordDict({"arrays": r})) for r in [down, *records]],
            )
            received = timed(
                f"{clients} x ArrayRecord -> torch state",
                lambda: [to_state(r) for r in records],
            )
            norms, _ = timed(
                f"update guard ({clients} update norms)",
                lambda: screen_updates(dict(enumerate(received)), glob, [], GuardSpec()),
            )
            updates = [ClientUpdate(arrays=a, num_examples=10 + i, client_id=i) for i, a in enumerate(received)]
            new = timed(f"FedAvg of {clients}", lambda: FedAvg().aggregate(updates, glob, 1))
            wn = timed(
                "global weight norm (divergence check)", lambda: check_global(1, new, 1.0, 1.0, GuardSpec(None, None))
            )
            keys = list(new)
            l2 = timed(f"L2 client-to-global ({clients})", lambda: [l2_distance(u.arrays, new, keys) for u in updates])
            timed(
                "checkpoint (torch.save, sha256, fsync, rename)",
                lambda: save_checkpoint(tmp, Checkpoint(rep + 1, new, {})),
            )
        h = hashlib.sha256()
        for k in keys:
            h.update(k.encode())
            h.update(new[k].numpy().tobytes())
        digests = {
            "aggregate_sha256": h.hexdigest(),
            "update_norms": [norms[i] for i in sorted(norms)],
            "weight_norm": wn,
            "l2": l2,
            "checkpoint_sha256": json.loads((Path(tmp) / "checkpoints" / "latest.json").read_text())["sha256"],
            "down_sha256": hashlib.sha256(b"".join(a.data for a in down.values())).hexdigest(),
            "initial_norm": float_norm(glob),
        }
    return {"phases": {k: sorted(v)[len(v) // 2] for k, v in phases.items()}, "digests": digests}  # by wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-tree", help="checkout of the old commit to compare with (imported via PYTHONPATH)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats, args.clients)))
        return
    trees = [("new", ROOT)] + ([("old", Path(args.old_tree).resolve())] if args.old_tree else [])
    results = {}
    for label, tree in trees:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "perf" / "bench_server_round.py"),
                "--child",
                "--repeats",
                str(args.repeats),
                "--clients",
                str(args.clients),
            ],
            cwd=tree,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    print(f"== server work per round, R3D-18 scale, {args.clients} clients; load average {os.getloadavg()}")
    names = list(results["new"]["phases"])
    head = f"{'phase (wall s / CPU s, median)':<48} {'new':>13}"
    head += f" {'old':>13} {'new/old wall':>12} {'CPU':>5}" if "old" in results else ""
    print(head)

    def get(label, n):
        ph = results[label]["phases"]
        return [sum(v[i] for v in ph.values()) for i in (0, 1)] if n == "total" else ph.get(n, [math.nan] * 2)

    for n in names + ["total"]:
        new = get("new", n)
        line = f"{n:<48} {new[0]:>6.3f}/{new[1]:>6.3f}"
        if "old" in results:
            old = get("old", n)
            line += f" {old[0]:>6.3f}/{old[1]:>6.3f} {new[0] / old[0]:>12.2f} {new[1] / old[1]:>5.2f}"
        print(line)
    if "old" in results:
        a, b = results["new"]["digests"], results["old"]["digests"]
        for k in a:
            print(f"{k:<20} {'identical' if a[k] == b[k] else f'DIFFERENT: new {a[k]} old {b[k]}'}")


if __name__ == "__main__":
    main()
