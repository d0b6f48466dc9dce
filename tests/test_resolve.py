"""resolve_videos on small real videos (encoded here with PyAV) in the datasets' real layouts."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from benchmark import DATASETS_DIR
from benchmark.data.annotations import read_hmdb51, read_kinetics, read_ucf101
from benchmark.data.records import VideoRecord
from benchmark.data.resolve import (
    CASE_RESOLVED,
    MissingVideosError,
    check_relative_path,
    probe_video,
    resolve_videos,
)


def encode_video(path: Path, frames: int = 8, size: int = 32) -> Path:
    """Write a real ``frames``-frame ``size``x``size`` MPEG-4 video (container from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def corrupt(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    return path


def empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_probe_video_decodes_real_files_and_rejects_random_bytes(tmp_path):
    assert probe_video(encode_video(tmp_path / "ok.avi")) == ""
    assert probe_video(encode_video(tmp_path / "ok.mp4")) == ""
    error = probe_video(corrupt(tmp_path / "bad.avi", seed=0))
    assert "could not read its header" in error


def test_probe_video_catches_truncation():
    fixtures = Path(__file__).parent / "fixtures" / "videos"
    assert probe_video(fixtures / "packed_xvid.avi") == ""
    error = probe_video(fixtures / "truncated.avi")
    assert error.startswith("truncated or corrupt") and "mcbpc damaged" in error


def test_ucf101_layout_case_quirk_missing_empty_corrupt(tmp_path):
    split = read_ucf101(DATASETS_DIR / "ucf101" / "ucfTrainTestlist", 1)
    records = [r for r in split.test if r.path.startswith("HandstandPushups/")][:2] + split.test[:4]
    root = tmp_path / "UCF-101"
    # the released files are spelled v_HandstandPushups_*, the list says v_HandStandPushups_*
    real_quirk = [encode_video(root / r.path.replace("HandStandPushups", "HandstandPushups")) for r in records[:2]]
    encode_video(root / records[2].path)
    # records[3]: missing
    empty(root / records[4].path)
    corrupt(root / records[5].path, seed=1)

    with pytest.raises(MissingVideosError) as err:
        resolve_videos(records, root, probe_decode=True)
    message = str(err.value)
    assert "3 of 6 listed videos are unusable" in message and "1 missing, 1 empty, 1 undecodable" in message
    for record in records[3:]:
        assert record.path in message
    assert "allow_missing_videos=true" in message and "3 present videos" in message

    resolved = resolve_videos(records, root, allow_missing=True, probe_decode=True)
    assert [(r, p) for r, p in resolved.present] == list(zip(records[:3], [*real_quirk, root / records[2].path]))
    assert [(p.path, p.reason) for p in resolved.problems] == [
        (records[0].path, CASE_RESOLVED),
        (records[1].path, CASE_RESOLVED),
        (records[3].path, "missing"),
        (records[4].path, "empty"),
        (records[5].path, "undecodable"),
    ]
    assert resolved.problems[0].file == real_quirk[0]
    assert resolved.problems[2].file == root / records[3].path
    assert resolved.summary() == {
        "listed": 6,
        "present": 3,
        "skipped": 3,
        "missing": 1,
        "empty": 1,
        "undecodable": 1,
        "unusable": 0,
        "case_mismatch_resolved": 2,
    }

    # without decoding, the corrupt file is not detected: only missing and empty are skipped
    unprobed = resolve_videos(records, root, allow_missing=True)
    assert (len(unprobed.present), unprobed.num_missing, unprobed.num_empty, unprobed.num_undecodable) == (4, 1, 1, 0)


def test_hmdb51_layout_missing_and_corrupt(tmp_path):
    split = read_hmdb51(DATASETS_DIR / "hmdb51" / "testTrainMulti_7030_splits", 1)
    records = split.train[:2] + split.test[-2:]  # brush_hair/... and wave/...
    root = tmp_path / "hmdb51"
    for record in records[:3]:
        encode_video(root / record.path)
    corrupt(root / records[2].path, seed=2)
    resolved = resolve_videos(records, root, allow_missing=True, probe_decode=True)
    assert [r.path for r, _ in resolved.present] == [records[0].path, records[1].path]
    assert [(p.path, p.reason) for p in resolved.problems] == [
        (records[2].path, "undecodable"),
        (records[3].path, "missing"),
    ]
    assert records[3].path.startswith("wave/") and resolved.num_skipped == 2
    with pytest.raises(MissingVideosError, match=records[3].path.replace(".", r"\.")):
        resolve_videos(records, root, probe_decode=True)


def test_kinetics_layout_with_special_class_names(tmp_path):
    k400 = DATASETS_DIR / "kinetics400"
    split = read_kinetics(
        k400 / "label_map.txt",
        train=k400 / "2020_release/validate.csv",
        test=k400 / "2017_release/kinetics-400_val.csv",
    )
    wanted = ("hurling (sport)", "massaging person's head", "abseiling")
    records = [next(r for r in split.test if r.class_name == name) for name in wanted]
    assert records[0].path.startswith("val/hurling_(sport)/") and records[1].path.startswith(
        "val/massaging_person's_head/"
    )
    root = tmp_path / "kinetics400"
    encode_video(root / records[0].path)
    encode_video(root / records[1].path)
    empty(root / records[2].path)
    resolved = resolve_videos(records, root, allow_missing=True, probe_decode=True)
    assert [p for _, p in resolved.present] == [root / records[0].path, root / records[1].path]
    assert [(p.path, p.reason, p.file) for p in resolved.problems] == [
        (records[2].path, "empty", root / records[2].path)
    ]


def test_root_must_exist_and_nothing_present_is_an_error_even_when_allowed(tmp_path):
    records = [VideoRecord("a/x.avi", 0, "a"), VideoRecord("a/y.avi", 0, "a")]
    with pytest.raises(FileNotFoundError, match="dataset root .*does not exist"):
        resolve_videos(records, tmp_path / "nowhere")
    with pytest.raises(MissingVideosError, match="No listed video is usable"):
        resolve_videos(records, tmp_path, allow_missing=True)


def test_case_insensitive_lookup_refuses_ambiguous_names(tmp_path):
    encode_video(tmp_path / "Cls" / "v_AB.avi")
    encode_video(tmp_path / "Cls" / "v_ab.avi")
    resolved = resolve_videos(
        [VideoRecord("Cls/v_Ab.avi", 0, "Cls"), VideoRecord("cls/v_AB.avi", 0, "Cls")], tmp_path, allow_missing=True
    )
    assert resolved.problems[0].reason == "missing" and "several files match" in resolved.problems[0].detail
    # a differently cased class folder resolves too
    assert resolved.present == [(VideoRecord("cls/v_AB.avi", 0, "Cls"), tmp_path / "Cls" / "v_AB.avi")]


@pytest.mark.parametrize(
    "path, expected",
    [
        ("../secret.avi", "contains '..'"),
        ("Class/../../secret.avi", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("C:/videos/x.avi", "is absolute"),
        ("Class\\..\\x.avi", "backslash"),
        ("", "empty video path"),
    ],
)
def test_paths_cannot_escape_the_root(tmp_path, path, expected):
    with pytest.raises(ValueError, match=expected) as err:
        resolve_videos([VideoRecord("ok/a.avi", 0, "ok"), VideoRecord(path, 0, "x")], tmp_path)
    assert f"record 1 ({path!r})" in str(err.value)
    assert check_relative_path("Class/..avi/x..y.avi", "entry") == "Class/..avi/x..y.avi"
