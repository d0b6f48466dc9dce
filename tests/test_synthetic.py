"""Synthetic datasets: real layouts, determinism, caching, and motion (not appearance) as class."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from benchmark.commands.data import main as data_cli
from benchmark.data import synthetic
from benchmark.data.synthetic import (
    HMDB_CLASSES,
    KINETICS_CLASSES,
    SIZE_PRESETS,
    STAMP_NAME,
    UCF_CLASSES,
    ensure_synthetic,
    generate_synthetic,
    plan_synthetic,
    render_video,
)

TINY = SIZE_PRESETS["tiny"]


def _np(frames) -> np.ndarray:
    """decord returns NDArrays, or torch tensors once pytorchvideo has set its bridge to torch."""
    return frames.numpy() if hasattr(frames, "numpy") and not hasattr(frames, "asnumpy") else frames.asnumpy()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A data root holding the tiny synthetic sets generated with seed 0."""
    data_root = tmp_path_factory.mktemp("data")
    info = ensure_synthetic(data_root, size="tiny", seed=0, progress=False)
    assert info.generated
    return data_root


def _annotation_bytes(synthetic_root: Path) -> dict[str, bytes]:
    """Every non-video file under the synthetic root (lists, CSVs, stamp) -> its bytes."""
    return {
        str(p.relative_to(synthetic_root)): p.read_bytes()
        for p in sorted(synthetic_root.rglob("*"))
        if p.is_file() and p.suffix not in (".mp4", ".avi")
    }


def _videos(root: Path) -> list[Path]:
    return sorted([*root.rglob("*.mp4"), *root.rglob("*.avi")])


def _first_frame(path: Path) -> np.ndarray:
    return _np(decord.VideoReader(str(path))[0])


def test_kinetics_layout(tiny_root: Path) -> None:
    root = tiny_root / "synthetic" / "kinetics"
    seen = set()
    for name, split, per_class in (
        ("train.csv", "train", TINY.kinetics_train),
        ("validate.csv", "val", TINY.kinetics_val),
    ):
        text = (root / "annotations" / name).read_text()
        assert text.splitlines()[0] == "label,youtube_id,time_start,time_end,split,is_cc"
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == per_class * len(KINETICS_CLASSES)
        for row in rows:
            assert row["label"] in KINETICS_CLASSES
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}", row["youtube_id"])
            start, end = int(row["time_start"]), int(row["time_end"])
            assert end - start == 10 and row["split"] == split and row["is_cc"] == "0"
            video = root / split / row["label"].replace(" ", "_") / f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
            assert video.is_file(), video
            seen.add(video)
    assert (root / "annotations" / "label_map.txt").read_text() == "".join(f"{c}\n" for c in sorted(KINETICS_CLASSES))
    assert any(" " in c for c in KINETICS_CLASSES)  # labels with spaces are exercised
    assert set(_videos(root)) == seen  # no video that no list names


def test_ucf101_layout(tiny_root: Path) -> None:
    root = tiny_root / "synthetic" / "ucf101"
    lists = root / "ucfTrainTestlist"
    raw = {n: (lists / n).read_bytes() for n in ("classInd.txt", "trainlist01.txt", "testlist01.txt")}
    for name, data in raw.items():  # CRLF on every line, like the official files
        assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n"), name
    class_ind = [line.split(" ") for line in raw["classInd.txt"].decode().splitlines()]
    assert class_ind == [[str(i + 1), c] for i, c in enumerate(UCF_CLASSES)]
    assert all(re.fullmatch(r"(?:[A-Z][a-z]+)+", c) for c in UCF_CLASSES)  # CamelCase
    pattern = re.compile(r"(?P<c>[A-Za-z]+)/v_(?P=c)_g(?P<g>\d\d)_c(?P<k>\d\d)\.avi")
    groups: dict[str, set[tuple[str, str]]] = {"train": set(), "test": set()}
    named = set()
    for line in raw["trainlist01.txt"].decode().splitlines():
        rel, label = line.split(" ")
        m = pattern.fullmatch(rel)
        assert m and int(label) == UCF_CLASSES.index(m["c"]) + 1, line
        groups["train"].add((m["c"], m["g"]))
        named.add(root / "UCF-101" / rel)
    for rel in raw["testlist01.txt"].decode().splitlines():
        m = pattern.fullmatch(rel)
        assert m, rel
        groups["test"].add((m["c"], m["g"]))
        named.add(root / "UCF-101" / rel)
    assert not groups["train"] & groups["test"]  # split by group, as UCF101
    assert len(groups["test"]) == TINY.ucf_test_groups * len(UCF_CLASSES)
    assert all(p.is_file() for p in named) and set(_videos(root)) == named


def test_hmdb51_layout(tiny_root: Path) -> None:
    root = tiny_root / "synthetic" / "hmdb51"
    split_dir = root / "testTrainMulti_7030_splits"
    assert sorted(p.name for p in split_dir.iterdir()) == sorted(f"{c}_test_split1.txt" for c in HMDB_CLASSES)
    named, marks = set(), []
    for cls in HMDB_CLASSES:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls)
        data = (split_dir / f"{cls}_test_split1.txt").read_bytes()
        assert b"\r" not in data
        for line in data.decode().split("\n")[:-1]:
            m = re.fullmatch(r"(\S+\.avi) ([012]) ", line)  # trailing space as in the real files
            assert m, repr(line)
            marks.append(m[2])
            named.add(root / "hmdb51" / cls / m[1])
    per_class = {"1": TINY.hmdb_train, "2": TINY.hmdb_test, "0": TINY.hmdb_unused}
    assert {k: marks.count(k) for k in "120"} == {k: v * len(HMDB_CLASSES) for k, v in per_class.items()}
    assert marks.count("0") > 0
    assert all(p.is_file() for p in named) and set(_videos(root)) == named


def test_every_video_decodes_with_decord_and_pyav(tiny_root: Path) -> None:
    videos = _videos(tiny_root / "synthetic")
    assert len(videos) == sum(len(pl.videos) for pl in plan_synthetic("tiny", 0))
    for path in videos:
        reader = decord.VideoReader(str(path))
        assert len(reader) == TINY.frames, path
        assert _np(reader.get_batch([0, TINY.frames - 1])).shape == (2, TINY.height, TINY.width, 3)
    for path in (videos[0], videos[-1]):  # one avi (mpeg4) and one mp4 (h264)
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == TINY.frames
        # lossy but faithful: the decoded video is close to what was rendered
        assert np.abs(frames[0].astype(int) - _first_frame(path).astype(int)).mean() < 3


def test_decoded_video_matches_rendering(tiny_root: Path) -> None:
    plan = plan_synthetic("tiny", 0)[0]
    spec = plan.videos[0]
    rendered, _ = render_video(spec)
    decoded = _np(
        decord.VideoReader(str(tiny_root / "synthetic" / "kinetics" / spec.relpath)).get_batch(list(range(TINY.frames)))
    )
    error = np.abs(decoded.astype(float) - rendered.astype(float)).mean()
    assert error < 8, error  # codec error only (noise sigma is 3-9 grey levels)


def test_same_seed_is_identical_and_other_seed_differs(tiny_root: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "same", size="tiny", seed=0, progress=False)
    other = generate_synthetic(tmp_path / "other", size="tiny", seed=1, progress=False)
    first = tiny_root / "synthetic"
    assert _annotation_bytes(first) == _annotation_bytes(again.root)
    ref_videos = _videos(first)
    assert [p.relative_to(first) for p in ref_videos] == [p.relative_to(again.root) for p in _videos(again.root)]
    for path in ref_videos[::7]:
        assert np.array_equal(_first_frame(path), _first_frame(again.root / path.relative_to(first))), path
    other_bytes = _annotation_bytes(other.root)
    assert other_bytes["kinetics/annotations/train.csv"] != _annotation_bytes(first)["kinetics/annotations/train.csv"]
    assert (
        other_bytes["hmdb51/testTrainMulti_7030_splits/fall_test_split1.txt"]
        != _annotation_bytes(first)["hmdb51/testTrainMulti_7030_splits/fall_test_split1.txt"]
    )
    # UCF names are fixed by class/group/clip; the content differs
    ucf = "ucf101/UCF-101/Pulse/v_Pulse_g01_c01.avi"
    assert not np.array_equal(_first_frame(first / ucf), _first_frame(other.root / ucf))


def test_cache_reused_and_regenerated_on_version_change(tmp_path: Path, monkeypatch) -> None:
    first = ensure_synthetic(tmp_path, size="tiny", seed=0, progress=False)
    stamp = first.root / STAMP_NAME
    mtime = stamp.stat().st_mtime_ns
    second = ensure_synthetic(tmp_path, size="tiny", seed=0, progress=False)
    assert first.generated and not second.generated and stamp.stat().st_mtime_ns == mtime

    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", "test-bump")
    third = ensure_synthetic(tmp_path, size="tiny", seed=0, progress=False)
    assert third.generated
    assert synthetic.read_json(stamp)["generator_version"] == "test-bump"
    assert not ensure_synthetic(tmp_path, size="tiny", seed=0, progress=False).generated

    # a different seed, or a missing video, also regenerates
    assert ensure_synthetic(tmp_path, size="tiny", seed=3, progress=False).generated
    next(iter(_videos(tmp_path / "synthetic"))).unlink()
    assert ensure_synthetic(tmp_path, size="tiny", seed=3, progress=False).generated
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", "synthetic"]  # no leftovers


def test_interrupted_generation_never_looks_complete(tmp_path: Path, monkeypatch) -> None:
    ensure_synthetic(tmp_path, size="tiny", seed=0, progress=False)
    before = _annotation_bytes(tmp_path / "synthetic")
    real_write, calls = synthetic.write_video, []

    def failing_write(*args, **kwargs):  # the disk fills up after a few videos
        calls.append(1)
        if len(calls) > 5:
            raise OSError("No space left on device")
        real_write(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_video", failing_write)
    with pytest.raises(OSError, match="No space"):
        generate_synthetic(tmp_path, size="tiny", seed=1, progress=False, workers=1)
    # the previous complete generation is untouched and still valid; no partial dir left
    assert _annotation_bytes(tmp_path / "synthetic") == before
    assert synthetic.stamp_matches(tmp_path, "tiny", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", "synthetic"]

    # a process killed mid-generation leaves its temp dir: never taken as data, removed later
    killed = tmp_path / ".synthetic.tmp-999-1"
    shutil.copytree(tmp_path / "synthetic", killed)
    shutil.rmtree(tmp_path / "synthetic")
    assert not synthetic.stamp_matches(tmp_path, "tiny", 0)
    monkeypatch.setattr(synthetic, "write_video", real_write)
    assert ensure_synthetic(tmp_path, size="tiny", seed=0, progress=False).generated
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", "synthetic"]


def _loo_nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-class-mean accuracy of standardised (N, D) features."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-9)
    correct = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        centroids = np.stack([x[keep & (labels == c)].mean(0) for c in np.unique(labels)])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == labels[i])
    return correct / len(x)


def test_class_is_in_the_motion_not_the_appearance() -> None:
    per_class = 16
    colour, motion, labels = [], [], []
    for ci, cls in enumerate(KINETICS_CLASSES):
        for k in range(per_class):
            spec = synthetic.VideoSpec(
                "x.mp4", cls, (7, 0, ci, k), None, TINY.width, TINY.height, TINY.frames, TINY.fps, "libx264"
            )
            frames, trajectories = render_video(spec, frame_indices=np.array([0]))
            colour.append(frames[0].reshape(-1, 3).mean(0))
            tr = trajectories[0]
            steps = np.hypot(np.diff(tr.x), np.diff(tr.y))
            motion.append(
                [
                    tr.x[-1] - tr.x[0],
                    tr.y[-1] - tr.y[0],
                    tr.angle[-1] - tr.angle[0],
                    np.log(tr.scale[-1] / tr.scale[0]),
                    steps.sum(),
                    np.abs(np.diff(steps)).sum(),
                ]
            )
            labels.append(ci)
    labels_arr = np.array(labels)
    chance = 1 / len(KINETICS_CLASSES)
    colour_acc = _loo_nearest_centroid_accuracy(np.array(colour), labels_arr)
    motion_acc = _loo_nearest_centroid_accuracy(np.array(motion), labels_arr)
    assert colour_acc < chance + 0.1, colour_acc
    assert motion_acc > 0.8, motion_acc

    mean = {cls: np.array(motion)[labels_arr == i].mean(0) for i, cls in enumerate(KINETICS_CLASSES)}
    assert mean["move left"][0] < -0.3 * TINY.width < 0.3 * TINY.width < mean["move right"][0]
    assert mean["move up"][1] < -0.3 * TINY.height < 0.3 * TINY.height < mean["move down"][1]
    assert mean["rotate clockwise"][2] > 0.5 > -0.5 > mean["rotate counterclockwise"][2]
    assert mean["grow"][3] > np.log(1.5) and mean["shrink"][3] < -np.log(1.5)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown synthetic size preset 'huge'.*default.*tiny"):
        plan_synthetic("huge", 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        plan_synthetic("tiny", -1)


def test_cli_generate_reports_sets(tiny_root: Path, capsys) -> None:
    assert data_cli(["generate", "--size", "tiny", "--seed", "0", "--root", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    for name, n_classes, n_videos in (("kinetics", 12, 36), ("ucf101", 8, 24), ("hmdb51", 6, 24)):
        assert re.search(rf"{name}\s*│\s*{n_classes}\s*│\s*{n_videos}\s*│", out), out


@pytest.mark.parametrize("dataset", ["synthetic_kinetics", "synthetic_ucf101", "synthetic_hmdb51"])
def test_project_readers_find_every_video(tiny_root: Path, dataset: str) -> None:
    """The real datasets' readers and resolver run unchanged on the synthetic layouts."""
    from omegaconf import OmegaConf

    from benchmark import CONF_DIR
    from benchmark.data.annotations import load_annotations
    from benchmark.data.resolve import resolve_videos

    cfg = OmegaConf.create(
        {"data_root": str(tiny_root), "dataset": OmegaConf.load(CONF_DIR / "dataset" / f"{dataset}.yaml")}
    )
    dataset_cfg = OmegaConf.to_container(cfg, resolve=True)["dataset"]
    split = load_annotations(dataset_cfg)
    plan = {p.name: p for p in plan_synthetic("tiny", 0)}[
        {"synthetic_kinetics": "kinetics", "synthetic_ucf101": "ucf101", "synthetic_hmdb51": "hmdb51"}[dataset]
    ]
    assert split.classes == sorted(plan.classes) == list(plan.classes)
    assert (len(split.train), len(split.test)) == (plan.num_train, plan.num_test)
    resolved = resolve_videos([*split.train, *split.test], dataset_cfg["root"], probe_decode=True, show_progress=False)
    assert resolved.summary()["present"] == plan.num_train + plan.num_test and resolved.num_skipped == 0
    for record, path in resolved.present:  # the label is the motion the video was rendered with
        assert path.parent.name == record.class_name.replace(" ", "_")
