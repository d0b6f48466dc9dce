"""``fedvid data check``: per-file classification of the real-format fixtures, the cached
report, and its use by resolve_videos (so by run/evaluate)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmark.commands.data import main as data_main
from benchmark.data.check import check_video, load_cache
from benchmark.data.records import VideoRecord
from benchmark.data.resolve import MissingVideosError, resolve_videos
from benchmark.io import read_json

FIXTURES = Path(__file__).parent / "fixtures" / "videos"

#: fixture -> (status, decoder auto uses, raw decord's random access, frames by full decode)
EXPECTED = {
    "plain_mpeg4.avi": ("ok", "decord", "exact", 100),
    "plain_h264.mp4": ("ok", "decord", "exact", 100),
    "packed_xvid.avi": ("ok", "pyav", "wrong frames", 98),
    "h264_in.avi": ("ok", "pyav", "wrong frames", 100),
    "vp9.mp4": ("ok", "decord", "exact", 100),
    "av1.mp4": ("ok", "pyav", "fails", 100),
    "vfr.mp4": ("ok", "decord", "exact", 100),
    "rotated.mp4": ("ok", "decord", "exact", 100),
    "rotated270.mp4": ("ok", "decord", "exact", 100),
    "editlist.mp4": ("ok", "pyav", "frame count 100", 70),
    "truncated.avi": ("unusable", "decord", "exact", 57),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_video_classifies_each_fixture(name):
    status, decoder, decord_alone, frames = EXPECTED[name]
    result = check_video(FIXTURES / name)
    assert result["status"] == status
    assert result["frames"] == frames
    assert result["auto_decoder"] == decoder
    assert result["random_access"]["auto"] == "exact" and result["random_access"]["pyav"] == "exact"
    if name == "vp9.mp4":  # decord alone (default threads) fails now and then on VP9 under load
        assert result["random_access"]["decord"].startswith(("exact", "fails"))
    else:
        assert result["random_access"]["decord"].startswith(decord_alone)
    assert result["rotation"] == {"rotated.mp4": 90, "rotated270.mp4": 270}.get(name, 0)
    assert (result["width"], result["height"]) == (160, 120)
    assert result["truncated"] == (name == "truncated.avi")
    if name == "truncated.avi":
        assert result["decode_errors"] > 0 and "truncated" in result["problems"][0]
    else:
        assert result["problems"] == [] and result["decode_errors"] == 0


def test_missing_and_empty_files(tmp_path):
    assert check_video(tmp_path / "absent.avi")["status"] == "missing"
    (tmp_path / "empty.avi").write_bytes(b"")
    assert check_video(tmp_path / "empty.avi")["status"] == "empty"


CLASS = "ApplyEyeMakeup"
TRAIN = [f"{CLASS}/v_{CLASS}_g08_c0{k}.avi" for k in (1, 2, 3)]
TEST = [f"{CLASS}/v_{CLASS}_g01_c01.avi"]


@pytest.fixture
def data_root(tmp_path):
    """A UCF101-layout set under the synthetic_ucf101 config's paths: three real-format
    files and a truncated one."""
    base = tmp_path / "synthetic" / "ucf101"
    lists = base / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text(f"1 {CLASS}\r\n")
    (lists / "trainlist01.txt").write_text("".join(f"{p} 1\r\n" for p in TRAIN))
    (lists / "testlist01.txt").write_text("".join(f"{p}\r\n" for p in TEST))
    videos = base / "UCF-101"
    (videos / CLASS).mkdir(parents=True)
    for rel, fixture in zip([*TRAIN, *TEST], ["plain_mpeg4.avi", "packed_xvid.avi", "truncated.avi", "h264_in.avi"]):
        shutil.copy(FIXTURES / fixture, videos / rel)
    return tmp_path


def test_data_check_reports_caches_and_feeds_resolve(data_root, capsys):
    args = ["check", "dataset=synthetic_ucf101", f"data_root={data_root}", "workers=1"]
    assert data_main(args) == 1  # the truncated file is unusable
    out = capsys.readouterr().out
    assert "4 listed videos: 3 ok, 1 unusable, 0 missing, 0 empty (0 results from the cache)" in out
    assert f"{TRAIN[2]} (unusable): truncated" in out
    report = read_json(data_root / "fedvid-check-synthetic_ucf101.json")
    assert report["counts"] == {"listed": 4, "ok": 3, "unusable": 1, "missing": 0, "empty": 0, "from_cache": 0}
    assert report["codecs"] == {"avi/h264": 1, "avi/mpeg4": 3}
    assert report["problems"] == {"truncated": 1}
    assert [f["status"] for f in report["files"]] == ["ok", "ok", "unusable", "ok"]
    assert (
        (data_root / "fedvid-check-synthetic_ucf101.txt").read_text().startswith("fedvid data check: synthetic_ucf101")
    )

    # run/evaluate resolve their lists: the checked-unusable file is refused by name, or skipped and counted
    root = data_root / "synthetic" / "ucf101" / "UCF-101"
    records = [VideoRecord(p, 0, CLASS) for p in TRAIN]
    with pytest.raises(
        MissingVideosError, match=r"(?s)1 unusable.*v_ApplyEyeMakeup_g08_c03\.avi.*truncated.*fedvid data check"
    ):
        resolve_videos(records, root)
    resolved = resolve_videos(records, root, allow_missing=True)
    assert [r.path for r, _ in resolved.present] == TRAIN[:2]
    assert resolved.summary()["unusable"] == 1 and resolved.summary()["skipped"] == 1

    # a second check reads the cache; allow_missing_videos=true exits 0
    assert data_main([*args, "allow_missing_videos=true"]) == 0
    assert "(4 results from the cache)" in capsys.readouterr().out

    # replacing the broken file (new size, mtime and inode) makes it checked again, and usable
    broken = root / TRAIN[2]
    broken.unlink()
    shutil.copy(FIXTURES / "plain_h264.mp4", broken)
    os.utime(broken, ns=(1, 1))
    assert data_main(args) == 0
    assert "4 listed videos: 4 ok, 0 unusable, 0 missing, 0 empty (3 results from the cache)" in capsys.readouterr().out
    assert len(load_cache(data_root)) == 4
    assert [r.path for r, _ in resolve_videos(records, root).present] == TRAIN


def test_data_check_covers_a_split_manifest(data_root, capsys):
    from benchmark.commands.data import dataset_config
    from benchmark.data.annotations import load_annotations
    from benchmark.splits.format import write_manifest
    from benchmark.splits.make import make_manifest

    manifest = make_manifest(
        load_annotations(dataset_config("synthetic_ucf101", data_root)), {"name": "iid", "num_clients": 2}, 0
    )
    path = write_manifest(manifest, data_root / "split.json")
    # the lists no longer name the truncated video; the manifest still gives it to a client
    lists = data_root / "synthetic" / "ucf101" / "ucfTrainTestlist"
    (lists / "trainlist01.txt").write_text("".join(f"{p} 1\r\n" for p in TRAIN[:2]))
    assert data_main(["check", "dataset=synthetic_ucf101", f"data_root={data_root}", "workers=1"]) == 0
    assert "3 listed videos: 3 ok" in capsys.readouterr().out
    args = ["check", "dataset=synthetic_ucf101", f"data_root={data_root}", "workers=1", f"split_manifest={path}"]
    assert data_main(args) == 1
    assert "4 listed videos: 3 ok, 1 unusable" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="split_manifest=.*absent.json"):
        data_main([*args[:-1], f"split_manifest={data_root / 'absent.json'}"])


def test_data_check_arguments_are_checked(data_root):
    with pytest.raises(SystemExit, match="dataset=NAME is required"):
        data_main(["check", f"data_root={data_root}"])
    with pytest.raises(SystemExit, match="unexpected argument 'datset=ucf101'"):
        data_main(["check", "datset=ucf101"])
    with pytest.raises(SystemExit, match="workers='0'"):
        data_main(["check", "dataset=ucf101", "workers=0"])
    with pytest.raises(SystemExit, match=r"dataset='nope': expected one of .*synthetic_ucf101.*ucf101"):
        data_main(["check", "dataset=nope", f"data_root={data_root}"])
    with pytest.raises(SystemExit, match=r"dataset root .*absent/hmdb51/hmdb51 does not exist"):
        data_main(["check", "dataset=hmdb51", f"data_root={data_root / 'absent'}"])


def test_a_frame_off_by_one_is_caught_in_a_slow_scene(tmp_path):
    """Neighbouring frames one grey level apart: within the decoder tolerance, yet a frame
    returned one position late is not 'exact' (it is closer to the next frame)."""
    import av
    import numpy as np

    from benchmark.data.check import SAME_FRAME_TOLERANCE, _difference, _sequential_truth
    from benchmark.data.decoding import inspect_video, open_video

    path = tmp_path / "slow.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 64, 48, "yuv420p", 4_000_000
        stream.codec_context.qmax = 2
        for k in range(30):
            image = np.full((48, 64, 3), 100 + k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    indices = [3, 10, 20]
    truth = _sequential_truth(str(path), indices, inspect_video(path), 30)
    with open_video(path, "pyav") as video:
        right, late = video.get_frames(indices), video.get_frames([i + 1 for i in indices])
    assert truth.matches(right)
    assert all(_difference(a, b) < SAME_FRAME_TOLERANCE for a, b in zip(late, truth.frames))
    assert not truth.matches(late)
