"""Speed of reading the official lists and of mapping records to files.

Prints, in one run (CPU seconds of this process, so a shared machine disturbs them less):
- seconds to read each official list set (UCF101 split 1, HMDB51 split 1, Kinetics-400 default);
- resolve_videos per-file time with exact names vs. with every name in the wrong case
  (the case-insensitive fallback uses one cached listing per directory, so the per-file
  cost stays flat as the folder grows instead of growing with it: O(files), not O(files^2)).

Usage: .venv/bin/python perf/bench_resolve.py [--files-per-class 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmark import DATASETS_DIR
from benchmark.data.annotations import read_hmdb51, read_kinetics, read_ucf101
from benchmark.data.records import VideoRecord
from benchmark.data.resolve import resolve_videos


def timed(fn):
    """(result, CPU seconds of this process): CPU time, because the machine may be shared."""
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def per_file_resolve(root: Path, classes: int, per_class: int) -> tuple[float, float]:
    """(exact, case-mismatched) seconds per file for classes x per_class one-byte files."""
    exact, wrong_case = [], []
    for c in range(classes):
        folder = root / f"Class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"v_Class{c}_g{i:05d}.avi"
            if not (folder / name).exists():
                (folder / name).write_bytes(b"x")
            exact.append(VideoRecord(f"Class{c}/{name}", c, f"Class{c}"))
            wrong_case.append(VideoRecord(f"Class{c}/{name.upper()}", c, f"Class{c}"))
    n = len(exact)
    _, t_exact = timed(lambda: resolve_videos(exact, root, show_progress=False))
    resolved, t_case = timed(lambda: resolve_videos(wrong_case, root, show_progress=False))
    assert resolved.num_case_resolved == n and len(resolved.present) == n
    return t_exact / n, t_case / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files-per-class", type=int, default=2000)
    args = parser.parse_args()

    k400 = DATASETS_DIR / "kinetics400"
    _, t_ucf = timed(lambda: read_ucf101(DATASETS_DIR / "ucf101/ucfTrainTestlist", 1))
    _, t_hmdb = timed(lambda: read_hmdb51(DATASETS_DIR / "hmdb51/testTrainMulti_7030_splits", 1))
    split, t_k400 = timed(
        lambda: read_kinetics(
            k400 / "label_map.txt",
            train=k400 / "fedvssl_splits/train_union_from_iid.txt.gz",
            train_class_index=k400 / "fedvssl_splits/classInd.txt",
            test=k400 / "2017_release/kinetics-400_val.csv",
        )
    )
    print(f"read UCF101 split 1 (13,320 videos):  {t_ucf:.3f} s")
    print(f"read HMDB51 split 1 (153 files):      {t_hmdb:.3f} s")
    print(f"read Kinetics-400 default ({len(split.train) + len(split.test):,} clips): {t_k400:.3f} s")

    big = args.files_per_class
    with tempfile.TemporaryDirectory() as tmp:
        per_file_resolve(Path(tmp) / "warmup", 1, 10)  # imports (rich) outside the timings
        small_exact, small_case = per_file_resolve(Path(tmp) / "small", 4, big // 10)
        large_exact, large_case = per_file_resolve(Path(tmp) / "large", 4, big)
    print(
        f"resolve, {big // 10} files/folder: exact {small_exact * 1e6:.1f} us/file, wrong case {small_case * 1e6:.1f} us/file"
    )
    print(
        f"resolve, {big} files/folder: exact {large_exact * 1e6:.1f} us/file, wrong case {large_case * 1e6:.1f} us/file"
    )
    print(f"ratio wrong-case / exact at {big} files/folder: {large_case / large_exact:.2f}")
    print(
        f"ratio per-file wrong-case cost, {big} vs {big // 10} files/folder (1.0 = O(files)): {large_case / small_case:.2f}"
    )


if __name__ == "__main__":
    main()
