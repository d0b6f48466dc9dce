"""Frame-exact decoding of real-format fixtures (tests/fixtures/videos, made by its
make_fixtures.py with the ffmpeg CLI): every backend returns the frames of the sequential
decode or refuses the file by name, also through the train and eval loaders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.clips import train_clip_indices, uniform_clip_indices
from benchmark.data.decoding import VideoDecodeError, _to_rgb, inspect_video, open_video, sequential_frames
from benchmark.data.loaders import EvalClipDataset, TrainClipDataset
from benchmark.data.transforms import VIDEO_MEAN, VIDEO_STD

FIXTURES = Path(__file__).parent / "fixtures" / "videos"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import read_frame_number  # noqa: E402

#: fixture -> (source frame numbers of the sequential decode, hazard substring or "")
EXPECTED = {
    "plain_mpeg4.avi": (list(range(100)), ""),
    "plain_h264.mp4": (list(range(100)), ""),
    # libxvid's packing drops its last two B-frames; the decode is 0..96, 99
    "packed_xvid.avi": ([*range(97), 99], "packed B-frames"),
    "h264_in.avi": (list(range(100)), "H264 in AVI"),
    "vp9.mp4": (list(range(100)), ""),
    "av1.mp4": (list(range(100)), ""),
    "vfr.mp4": (list(range(100)), ""),
    "rotated.mp4": (list(range(100)), ""),
    "rotated270.mp4": (list(range(100)), ""),
    # the edit list starts at 1.2 s: frames 0..29 are decoded but hidden
    "editlist.mp4": (list(range(30, 100)), "edit list"),
}
ROTATION = {"rotated.mp4": 90, "rotated270.mp4": 270}
#: decord 0.6 cannot open AV1 at all
DECORD_CANNOT_OPEN = {"av1.mp4"}


@pytest.fixture(scope="module")
def truth():
    """fixture -> (F, 120, 160, 3) uint8 upright frames of PyAV's sequential decode."""
    out = {}
    for name in EXPECTED:
        path = str(FIXTURES / name)
        rotation = inspect_video(path).rotation
        out[name] = torch.from_numpy(np.stack([_to_rgb(f, rotation, 120, 160) for f in sequential_frames(path)]))
    return out


def spread(n: int) -> list[int]:
    return [0, n - 1, n // 2, 7, 8, 37 % n, n // 3, 2 * n // 3, 1, 37 % n]  # unsorted, repeated


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_has_its_property(name, truth):
    numbers, hazard = EXPECTED[name]
    assert [read_frame_number(f) for f in truth[name]] == numbers
    info = inspect_video(FIXTURES / name)
    assert (hazard in info.hazard) if hazard else info.hazard == ""
    assert (info.height, info.width) == (120, 160)
    assert info.rotation == ROTATION.get(name, 0)


def test_decord_itself_returns_wrong_frames_on_the_hazards():
    """What the hazard rules protect against (decord 0.6, used directly)."""
    import decord

    def frame(name, i):  # decord's bridge may be numpy-like or torch (our reader sets torch)
        f = decord.VideoReader(str(FIXTURES / name))[i]
        return f.asnumpy() if hasattr(f, "asnumpy") else f.numpy()

    assert read_frame_number(frame("packed_xvid.avi", 37)) != 37
    assert read_frame_number(frame("h264_in.avi", 37)) != 37
    edit = decord.VideoReader(str(FIXTURES / "editlist.mp4"))
    assert len(edit) == 100  # 70 frames decode


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_every_backend_returns_the_sequential_frames_or_refuses_by_name(name, backend, truth):
    path = FIXTURES / name
    numbers, hazard = EXPECTED[name]
    if backend == "decord" and (hazard or name in DECORD_CANNOT_OPEN):
        with pytest.raises(VideoDecodeError) as caught:
            open_video(path, backend)
        assert caught.value.path == str(path)
        if hazard:
            assert hazard in str(caught.value) and "clip.backend=auto" in str(caught.value)
        return
    indices = spread(len(numbers))
    with open_video(path, backend) as video:
        assert video.num_frames == len(numbers)
        assert (video.height, video.width) == (120, 160)
        frames = video.get_frames(indices)
        used = getattr(video, "decoded_by", backend)
    assert [read_frame_number(f) for f in frames] == [numbers[i] for i in indices]
    expected = truth[name][indices]
    if used == "pyav":  # the same decoder as the sequential decode: bit for bit
        assert torch.equal(frames, expected)
    else:  # decord bundles an older ffmpeg
        difference = (frames.int() - expected.int()).abs().float()
        assert difference.mean() < 1.5 and difference.max() <= 40


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pyav_decodes_sequentially_only_in_an_avi_without_presentation_times(name):
    with open_video(FIXTURES / name, "pyav") as video:
        assert video.sequential == (name in ("packed_xvid.avi", "h264_in.avi"))


@pytest.mark.parametrize("name", ["plain_mpeg4.avi", "plain_h264.mp4", "vfr.mp4", "vp9.mp4", "rotated.mp4"])
def test_auto_takes_decord_only_where_it_is_exact(name):
    with open_video(FIXTURES / name, "auto") as video:
        assert video.decoded_by == "decord"
    for hazardous in ("packed_xvid.avi", "h264_in.avi", "editlist.mp4", "av1.mp4"):
        with open_video(FIXTURES / hazardous, "auto") as video:
            assert video.decoded_by == "pyav"


@pytest.mark.parametrize("name", sorted(ROTATION))
@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_rotation_is_applied_before_the_resize(name, backend, truth):
    with open_video(FIXTURES / name, backend, short_side=60) as video:
        assert (video.height, video.width) == (60, 80)
        frames = video.get_frames([0, 50, 99])
    assert frames.shape == (3, 60, 80, 3)
    assert [read_frame_number(f) for f in frames] == [0, 50, 99]
    reference = torch.nn.functional.interpolate(
        truth[name][[0, 50, 99]].permute(0, 3, 1, 2).float(), size=(60, 80), mode="bilinear", antialias=True
    ).permute(0, 2, 3, 1)
    assert (frames.float() - reference).abs().mean() < 3.0


def _unnormalise(video: torch.Tensor) -> torch.Tensor:
    """(..., C, T, H, W) normalised (evaluation items) or uint8 (training items, shipped
    as decoded) -> (..., T, H, W, C) grey levels."""
    if video.dtype == torch.uint8:
        return video.float().movedim(-4, -1)
    mean = torch.tensor(VIDEO_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(VIDEO_STD).view(3, 1, 1, 1)
    return ((video * std + mean) * 255).movedim(-4, -1)


@pytest.mark.parametrize("name", ["packed_xvid.avi", "h264_in.avi", "editlist.mp4", "rotated.mp4", "av1.mp4"])
def test_eval_loader_clips_are_the_sequential_frames(name, truth):
    numbers = EXPECTED[name][0]
    dataset = EvalClipDataset(
        [(FIXTURES / name, 3)], num_clips=2, frames=4, stride=5, short_side=120, crop_size=120, backend="auto"
    )
    clips = _unnormalise(dataset[0]["video"])  # (2, 4, 120, 120, 3)
    for clip, indices in zip(clips, uniform_clip_indices(len(numbers), 2, 4, 5)):
        expected = truth[name][indices][:, :, 20:140].float()
        assert (clip - expected).abs().mean() < 1.5


@pytest.mark.parametrize("name", ["packed_xvid.avi", "editlist.mp4", "rotated.mp4"])
def test_train_loader_clips_are_the_sequential_frames(name, truth):
    numbers = EXPECTED[name][0]
    dataset = TrainClipDataset(
        [(FIXTURES / name, 1)], frames=4, stride=3, short_side=120, crop_size=120, backend="auto", seed=5
    )
    clip = _unnormalise(dataset[0]["video"])  # (4, 120, 120, 3): a random 120-wide crop, maybe flipped
    indices = train_clip_indices(len(numbers), 4, 3, dataset.generator_for(0))
    frames = truth[name][indices].float()
    errors = [
        (candidate - clip).abs().mean().item()
        for x in range(0, 41)
        for candidate in (frames[:, :, x : x + 120], frames[:, :, x : x + 120].flip(2))
    ]
    assert min(errors) < 1.5
    shifted = truth[name][[min(i + 1, len(numbers) - 1) for i in indices]].float()  # one frame off
    assert min(
        (s - clip).abs().mean().item()
        for x in range(41)
        for s in (shifted[:, :, x : x + 120], shifted[:, :, x : x + 120].flip(2))
    ) > 3 * min(errors)


def test_the_memoised_header_check_reads_a_rewritten_file_again(tmp_path):
    """inspect_video is cached per (path, size/mtime/inode): replacing a plain file with a
    packed-B-frame one under the same name must route it to the exact path."""
    import os
    import shutil

    path = tmp_path / "video.avi"
    shutil.copyfile(FIXTURES / "plain_mpeg4.avi", path)
    assert inspect_video(path).hazard == ""
    replacement = tmp_path / "new.avi"
    shutil.copyfile(FIXTURES / "packed_xvid.avi", replacement)
    os.replace(replacement, path)
    assert inspect_video(path).hazard != ""
    with pytest.raises(VideoDecodeError, match="auto or pyav"):  # decord refuses the hazard by name
        open_video(path, "decord")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_the_round_cache_and_one_decode_thread_give_the_decoders_frames_on_every_hazard(name, backend):
    """A client's round reads through ``cached_videos`` (whole videos decoded once) in loader
    workers that decode on one ffmpeg thread (``set_decode_threads(1)``, decord and PyAV): on
    every real-format fixture, the same frames bit for bit as a plain read on ffmpeg's default
    threads, cached or not."""
    import benchmark.data.decoding as decoding

    numbers, hazard = EXPECTED[name]
    if backend == "decord" and (hazard or name in DECORD_CANNOT_OPEN):
        return  # refused by name (test above), cached or not
    indices = spread(len(numbers))
    with open_video(FIXTURES / name, backend, short_side=60) as video:
        plain = video.get_frames(indices)
    try:
        decoding.set_decode_threads(1)
        with open_video(FIXTURES / name, backend, short_side=60) as video:
            single = video.get_frames(indices)
        with decoding.cached_videos(1 << 30, visits=len(numbers)) as cache:
            first = open_video(FIXTURES / name, backend, short_side=60).get_frames(indices)
            again = open_video(FIXTURES / name, backend, short_side=60).get_frames(indices[::-1])
    finally:
        decoding.set_decode_threads(0)
    assert (cache.misses, cache.hits) == (1, 1)  # decoded whole once, then served from memory
    assert torch.equal(single, plain)
    assert torch.equal(first, plain) and torch.equal(again, plain.flip(0))


@pytest.mark.parametrize("name", ["packed_xvid.avi", "av1.mp4", "editlist.mp4"])
def test_pyav_decodes_on_the_threads_the_process_sets(name, monkeypatch):
    """PyAV's decoder (sequential in an AVI with B-frames, seeking in MP4) runs on
    ``set_decode_threads``' count, read from the open decoder: ffmpeg's default here (0: its
    own choice, as a stream opened without the setting gets), 1 in a loader worker."""
    import av

    import benchmark.data.decoding as decoding

    with av.open(str(FIXTURES / name)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next(container.decode(stream))
        ffmpeg_default = stream.codec_context.thread_count
    streams = []
    set_threads = decoding._set_threads

    def recording(stream, frame_threads=True):
        set_threads(stream, frame_threads)
        streams.append(stream)

    monkeypatch.setattr(decoding, "_set_threads", recording)
    for threads, expected in ((0, ffmpeg_default), (1, 1)):
        monkeypatch.setattr(decoding, "_decode_threads", threads)
        streams.clear()
        with open_video(FIXTURES / name, "pyav", short_side=60) as video:
            video.get_frames([0, 5])
            used = [(s.codec_context.is_open, s.codec_context.thread_count) for s in streams]
        assert used and set(used) == {(True, expected)}, (threads, used)
