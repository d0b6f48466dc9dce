"""Old vs new in one benchmark run (perf/RESULTS.md compares only within a run): the old
commit's source tree and the order in which the two sides alternate."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: the tests' tiny federation (3 clients, 2 per round, 1 step, 1 round, no evaluation), after
#: ``benchmark.config.TINY_INPUT_OVERRIDES``: the runs of bench_sweep.py and startup_timeline.py
TINY_FEDERATION = ["partition.num_clients=3", "federation.local_steps=1", "federation.rounds=1", "evaluate=false"]


@contextmanager
def old_tree(ref: str) -> Iterator[Path]:
    """Commit ``ref`` checked out in a temporary ``git worktree`` (detached), removed afterwards.
    Run its code with ``cwd`` and ``PYTHONPATH`` set to the yielded path; the project's
    ``.venv`` serves both sides, so only code differs."""
    with tempfile.TemporaryDirectory(prefix="fedvid-old-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def alternating(repeats: int) -> list[str]:
    """``"old"``/``"new"`` in ABBA order over ``repeats`` repetitions, so that a drift in the
    machine's load falls on both sides alike."""
    order: list[str] = []
    for rep in range(repeats):
        order += ["old", "new"] if rep % 2 == 0 else ["new", "old"]
    return order
