"""Frame-accurate decoding (decord and PyAV) and clip index sampling."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from benchmark.data.clips import clip_span, train_clip_indices, uniform_clip_indices
from benchmark.data.decoding import VideoDecodeError, open_video
from benchmark.data.transforms import ShortSideResize

from _decoding_helpers import encode_numbered_video, frame_number

NUM_FRAMES = 40


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The same 40 numbered frames as MPEG-4 Part 2 in AVI (UCF101's layout) and as H.264
    (with B-frames, so presentation order differs from decoding order) in MP4."""
    root = tmp_path_factory.mktemp("decoding")
    return {
        "mpeg4": encode_numbered_video(root / "numbered.avi", NUM_FRAMES, codec="mpeg4"),
        "h264": encode_numbered_video(root / "numbered.mp4", NUM_FRAMES, codec="libx264"),
    }


@pytest.fixture(scope="module")
def corrupt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corrupt") / "v_Broken_g01_c01.avi"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 20)
    return path


INDICES = [0, 39, 7, 8, 9, 33, 2, 2, 17, 16, 24]  # unsorted, repeated, across keyframes


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_get_frames_returns_exactly_the_requested_frames(videos, codec, backend):
    with open_video(videos[codec], backend) as video:
        assert video.num_frames == NUM_FRAMES
        assert video.fps == pytest.approx(25.0)
        frames = video.get_frames(INDICES)
    assert frames.dtype == torch.uint8
    assert frames.shape == (len(INDICES), 48, 64, 3)
    assert [frame_number(f) for f in frames] == INDICES


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
def test_decord_and_pyav_decode_the_same_pixels(videos, codec):
    every = list(range(NUM_FRAMES))
    with open_video(videos[codec], "decord") as a, open_video(videos[codec], "pyav") as b:
        difference = (a.get_frames(every).int() - b.get_frames(every).int()).abs()
    # Same decoder library underneath; allow a little for colour-conversion rounding.
    assert difference.max() <= 2


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_short_side_decodes_resized_frames(videos, codec, backend):
    # 64x48 -> short side 40: 40 x round(64 * 40 / 48) = 40 x 53 (ShortSideResize's rule).
    with open_video(videos[codec], backend, short_side=40) as video:
        assert (video.height, video.width) == (40, 53)
        assert video.num_frames == NUM_FRAMES
        frames = video.get_frames(INDICES)
    assert frames.dtype == torch.uint8 and frames.shape == (len(INDICES), 40, 53, 3)
    assert [frame_number(f) for f in frames] == INDICES
    with open_video(videos[codec], backend) as video:
        assert (video.height, video.width) == (48, 64)


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_decoded_size_is_ctp_rounding_and_the_transform_finds_nothing_to_do(videos, backend):
    # 64x48 at 56: 64 * 56 / 48 = 74.67 -> 75 (CtP's GroupScale rounds; rounding down gave 74)
    with open_video(videos["mpeg4"], backend, short_side=56) as video:
        assert (video.height, video.width) == (56, 75)
        frames = video.get_frames(INDICES)
    clip = frames.permute(3, 0, 1, 2)
    assert clip.shape[-2:] == (56, 75)
    assert ShortSideResize(56)(clip) is clip  # already at size: the loaders' transform is a no-op


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
def test_decoded_resize_matches_decord_pyav_and_a_bilinear_resize(videos, codec):
    every = list(range(NUM_FRAMES))
    with open_video(videos[codec], "decord", short_side=40) as a, open_video(videos[codec], "pyav", short_side=40) as b:
        by_decord, by_pyav = a.get_frames(every).float(), b.get_frames(every).float()
    with open_video(videos[codec], "decord") as full:
        frames = full.get_frames(every).permute(0, 3, 1, 2)
    resized = TF.resize(frames, [40, 53], antialias=True).permute(0, 2, 3, 1).float()
    # Both use swscale's bilinear; decord bundles an older ffmpeg, so allow a few levels.
    assert (by_decord - by_pyav).abs().mean() < 1.0
    # Away from the white square's edge (the only detail), a plain bilinear resize agrees.
    flat = (slice(None), slice(20, None), slice(30, None))
    assert (by_decord[flat] - resized[flat]).abs().max() <= 3
    assert (by_decord - resized).abs().mean() < 2.0


def test_short_side_must_be_positive(videos):
    with pytest.raises(ValueError, match="short_side=0"):
        open_video(videos["mpeg4"], "decord", short_side=0)


def test_requested_frames_only_and_bad_indices_name_the_file(videos):
    with open_video(videos["mpeg4"], "decord") as video:
        assert video.get_frames([5]).shape == (1, 48, 64, 3)
        with pytest.raises(ValueError, match=r"numbered\.avi.*\[40\].*outside \[0, 40\)"):
            video.get_frames([3, 40])


def test_auto_falls_back_to_pyav_where_decord_fails(tmp_path):
    # decord 0.6 cannot open animated GIFs; PyAV can: a real fallback case.
    gif = encode_numbered_video(tmp_path / "numbered.gif", 12, codec="gif")
    with pytest.raises(VideoDecodeError, match="numbered.gif"):
        open_video(gif, "decord")
    with open_video(gif, "auto") as video:
        assert video.decoded_by == "pyav"
        assert video.num_frames == 12
        assert [frame_number(f) for f in video.get_frames([11, 0, 5])] == [11, 0, 5]


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
def test_auto_uses_decord_when_it_works(videos, codec):
    with open_video(videos[codec], "auto") as video:
        assert video.decoded_by == "decord"


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_cached_videos_return_the_decoders_frames_bit_for_bit(videos, codec, backend, monkeypatch):
    import benchmark.data.decoding as decoding

    opened = []
    real = dict(decoding._READERS)
    monkeypatch.setitem(decoding._READERS, backend, lambda *a: opened.append(a) or real[backend](*a))
    requests = [[0, 4, 8, 14], [2, 39, 7, 7], [30, 31, 32]]  # 3 visits x span 15 >= 40 frames
    with decoding.cached_videos(1 << 30, visits=3) as cache:
        cached = []
        for indices in requests:
            with open_video(videos[codec], backend, short_side=36) as video:
                assert (video.num_frames, video.height, video.width) == (NUM_FRAMES, 36, 48)
                cached.append(video.get_frames(indices))
        cached[0][:] = 0  # a caller's copy: the cache keeps its own frames
        again = [open_video(videos[codec], backend, short_side=36).get_frames(i) for i in requests[1:]]
    assert len(opened) == 1 and (cache.misses, cache.hits) == (1, 4)  # decoded whole once
    assert cache.bytes == NUM_FRAMES * 36 * 48 * 3
    monkeypatch.setattr(decoding, "_READERS", real)
    for indices, frames in zip(requests[1:] * 2, cached[1:] + again):
        with open_video(videos[codec], backend, short_side=36) as video:  # no cache: the decoder itself
            assert torch.equal(frames, video.get_frames(indices))


def test_cached_videos_decode_whole_only_when_it_pays_and_fits(videos):
    import benchmark.data.decoding as decoding

    frame_bytes = 48 * 64 * 3
    with decoding.cached_videos(1 << 30, visits=2) as cache:  # 2 visits x span 10 < 40 frames
        open_video(videos["h264"], "auto").get_frames(list(range(10)))
    assert (cache.misses, cache.bytes) == (0, 0)
    with decoding.cached_videos(NUM_FRAMES * frame_bytes - 1, visits=10) as cache:  # does not fit
        open_video(videos["h264"], "auto").get_frames(list(range(10)))
    assert cache.misses == 0
    with decoding.cached_videos(NUM_FRAMES * frame_bytes * 3 // 2, visits=10) as cache:  # room for one video
        for codec in ("h264", "mpeg4", "h264"):
            open_video(videos[codec], "auto").get_frames([0, 20])
    assert (cache.misses, cache.hits, cache.bytes) == (3, 0, NUM_FRAMES * frame_bytes)  # oldest out first
    assert decoding._ACTIVE_CACHE is None  # dropped on exit


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_corrupt_file_raises_video_decode_error_naming_it(corrupt_file, backend):
    with pytest.raises(VideoDecodeError) as caught:
        open_video(corrupt_file, backend)
    assert caught.value.path == str(corrupt_file)
    assert str(corrupt_file) in str(caught.value)
    assert "could not read its header" in str(caught.value)  # refused before any decoder runs


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_missing_and_empty_files_raise_video_decode_error(tmp_path, backend):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path, reason in ((tmp_path / "absent.mp4", "absent.mp4.*no such file"), (empty, "empty.mp4")):
        with pytest.raises(VideoDecodeError, match=reason) as caught:
            open_video(path, backend)
        assert caught.value.path == str(path)


def test_unknown_backend_is_rejected(videos):
    with pytest.raises(ValueError, match=r"'ffmpeg'.*decord.*pyav.*auto"):
        open_video(videos["mpeg4"], "ffmpeg")


def test_video_decode_error_keeps_its_path_when_rebuilt_from_the_message():
    # DataLoader workers re-raise as type(exc)(message); pickling goes the same way.
    original = VideoDecodeError("/data/UCF-101/It's (odd)/v_x.avi", "truncated")
    rebuilt = VideoDecodeError(f"Caught VideoDecodeError in DataLoader worker process 0.\nOriginal {original}")
    assert rebuilt.path == original.path == "/data/UCF-101/It's (odd)/v_x.avi"
    assert pickle.loads(pickle.dumps(original)).path == original.path


# --- clip sampling -------------------------------------------------------------------


def test_train_clip_indices_random_start_fixed_stride():
    starts = set()
    for seed in range(200):
        indices = train_clip_indices(40, frames=8, stride=2, generator=torch.Generator().manual_seed(seed))
        assert len(indices) == 8
        assert all(b - a == 2 for a, b in zip(indices, indices[1:]))
        assert 0 <= indices[0] and indices[-1] <= 39
        starts.add(indices[0])
    assert starts == set(range(40 - clip_span(8, 2) + 1))  # every start 0..25 is drawn


def test_train_clip_indices_reproducible_from_the_generator():
    a = [train_clip_indices(90, 16, 2, g) for g in [torch.Generator().manual_seed(7)] * 3]
    b = [train_clip_indices(90, 16, 2, g) for g in [torch.Generator().manual_seed(7)] * 3]
    assert a == b


def test_short_videos_loop_from_frame_zero():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert train_clip_indices(5, frames=4, stride=2, generator=generator) == [0, 2, 4, 1]
    assert torch.equal(generator.get_state(), state)  # no draw for a looped clip
    assert uniform_clip_indices(5, num_clips=2, frames=4, stride=2) == [[0, 2, 4, 1], [0, 2, 4, 1]]
    assert train_clip_indices(15, frames=8, stride=2, generator=generator)[-1] == 14  # exactly fits


def test_uniform_clip_indices_hand_computed():
    # span 7 -> starts 0..33 (34 of them); 3 segments, centre of each: 34*1//6, 34*3//6, 34*5//6
    assert uniform_clip_indices(40, num_clips=3, frames=4, stride=2) == [
        [5, 7, 9, 11],
        [17, 19, 21, 23],
        [28, 30, 32, 34],
    ]
    assert uniform_clip_indices(40, num_clips=1, frames=4, stride=2) == [[17, 19, 21, 23]]
    ten = uniform_clip_indices(300, num_clips=10, frames=16, stride=2)
    assert [c[0] for c in ten] == [(2 * i + 1) * 270 // 20 for i in range(10)]
    assert ten[-1][-1] <= 299


@pytest.mark.parametrize(
    "args, message",
    [((0, 8, 2), "num_frames=0"), ((40, 0, 2), "frames=0"), ((40, 8, 0), "stride=0")],
)
def test_clip_arguments_are_checked(args, message):
    with pytest.raises(ValueError, match=message):
        train_clip_indices(*args, generator=torch.Generator())
    with pytest.raises(ValueError, match="num_clips=0"):
        uniform_clip_indices(40, 0, 8, 2)
