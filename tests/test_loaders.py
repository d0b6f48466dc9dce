"""Video transforms, clip datasets and DataLoaders on real (tiny) encoded videos."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import benchmark.data.decoding as decoding
import benchmark.data.loaders as loaders
from benchmark.data.clips import train_clip_indices, uniform_clip_indices
from benchmark.data.decoding import VideoDecodeError, open_video
from benchmark.data.loaders import (
    EvalClipDataset,
    TrainClipDataset,
    default_sample_transform,
    make_eval_loader,
    make_train_loader,
)
from benchmark.data.transforms import (
    VIDEO_MEAN,
    VIDEO_STD,
    CenterCrop,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    ShortSideResize,
    eval_transform,
    train_transform,
)
from benchmark.methods import SSLMethod

from _decoding_helpers import LEVEL_OFFSET, LEVEL_STEP, encode_numbered_video

FRAMES, STRIDE, SHORT_SIDE, CROP = 4, 3, 40, 32  # 64x48 videos -> 53x40 -> 32x32
LENGTHS = [40, 36, 30, 8]  # the last one is shorter than a clip (span 10): looped


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    return [(encode_numbered_video(root / f"v_{k}.avi", n, codec="mpeg4"), 10 + k) for k, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def corrupt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corrupt") / "v_Corrupt_g02_c03.avi"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 20)
    return path


def unnormalize(video: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels of a shipped clip: training items are uint8, evaluation items normalised."""
    if video.dtype == torch.uint8:
        return video.float() / 255
    mean = torch.tensor(VIDEO_MEAN).view(-1, 1, 1, 1)
    std = torch.tensor(VIDEO_STD).view(-1, 1, 1, 1)
    return video * std + mean


def frame_numbers(clip_cthw: torch.Tensor) -> list[int]:
    """Frame numbers of a [0, 1] clip (C, T, H, W): grey level of the bottom half (no square)."""
    height = clip_cthw.shape[-2]
    levels = clip_cthw[..., height // 2 :, :].mean(dim=(0, 2, 3)) * 255
    return [round((float(v) - LEVEL_OFFSET) / LEVEL_STEP) for v in levels]


def train_dataset(videos, **overrides):
    params = dict(frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=3)
    params.update(overrides)
    return TrainClipDataset(videos, **params)


# --- transforms ------------------------------------------------------------------------


def test_short_side_resize_sizes():
    # CtP's GroupScale(128) and the (171, 128) its recognizers and VCOP's retrieval stretch
    # UCF101's 320 x 240 frames to (pytorchvideo's floor rule gave 170)
    assert ShortSideResize(128).output_size(240, 320) == (128, 171)
    assert ShortSideResize(128).output_size(320, 240) == (171, 128)
    assert [ShortSideResize(s).output_size(240, 320) for s in (112, 144)] == [(112, 149), (144, 192)]
    # a half is rounded to even, as Python 3's round in CtP's code: 341 * 0.5 = 170.5 -> 170
    assert ShortSideResize(128).output_size(256, 341) == (128, 170)
    assert ShortSideResize(40)(torch.rand(3, 2, 48, 64)).shape == (3, 2, 40, 53)


def test_short_side_resize_equals_ctp_group_scale_with_an_int():
    def ctp_out_size(h: int, w: int, scale: int) -> tuple[int, int]:
        # microsoft/CtP @ 847b8fc, pyvrl/datasets/transforms/scale.py:33-37 (returns (w, h))
        short_edge = min(h, w)
        scale_factor = float(scale) / short_edge
        return (int(round(w * scale_factor)), int(round(h * scale_factor)))

    for h, w in [(240, 320), (320, 240), (256, 341), (720, 1280), (1080, 1920), (480, 640), (360, 480), (226, 400)]:
        for scale in (64, 72, 112, 128, 144, 171):
            out_w, out_h = ctp_out_size(h, w, scale)
            assert ShortSideResize(scale).output_size(h, w) == (out_h, out_w), (h, w, scale)


def test_uint8_and_float_paths_agree():
    frames = torch.randint(0, 256, (3, 4, 48, 64), dtype=torch.uint8)
    as_float = ShortSideResize(40)(frames.float() / 255)
    from_uint8 = ShortSideResize(40)(frames).float() / 255
    # torch's uint8 kernel uses fixed-point weights and rounds: about one grey level off
    # (the fixed-point weights can add a fraction of a level on top of the rounding).
    assert (as_float - from_uint8).abs().max() <= 1.5 / 255


def test_random_transforms_reproducible_from_the_generator():
    clip = torch.rand(3, 4, 48, 64)
    transform = train_transform(SHORT_SIDE, CROP)
    a = transform(clip, torch.Generator().manual_seed(5))
    b = transform(clip, torch.Generator().manual_seed(5))
    assert a.shape == (3, 4, CROP, CROP)
    assert torch.equal(a, b)
    others = [transform(clip, torch.Generator().manual_seed(s)) for s in range(6, 12)]
    assert any(not torch.equal(a, o) for o in others)
    with pytest.raises(ValueError, match="RandomCrop is random.*torch.Generator"):
        RandomCrop(CROP)(clip)


def test_crops_flip_and_normalize_hand_checked():
    clip = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)  # C=1, T=2, H=5, W=6
    assert torch.equal(CenterCrop(3)(clip), clip[..., 1:4, 2:5])  # top round(1.0), left round(1.5)=2
    assert torch.equal(CenterCrop(3, round_down=True)(clip), clip[..., 1:4, 1:4])  # left 3 // 2 = 1
    reference = torch.Generator().manual_seed(0)
    top = int(torch.randint(0, 5 - 3 + 1, (1,), generator=reference))  # draws: top, then left
    left = int(torch.randint(0, 6 - 3 + 1, (1,), generator=reference))
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(RandomCrop(3)(clip, generator), clip[..., top : top + 3, left : left + 3])
    assert torch.equal(RandomHorizontalFlip(1.0)(clip, generator), clip.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(clip, generator), clip)
    normalized = Normalize((0.5, 0.25), (0.5, 0.25))(torch.ones(2, 1, 1, 1))
    assert normalized.flatten().tolist() == [1.0, 3.0]
    stacked = Normalize()(torch.full((2, 3, 1, 1, 1), 0.5))  # (V, C, T, H, W)
    assert torch.allclose(stacked[1, :, 0, 0, 0], (0.5 - torch.tensor(VIDEO_MEAN)) / torch.tensor(VIDEO_STD))
    with pytest.raises(ValueError, match=r"RandomCrop\(64\).*48x64"):
        RandomCrop(64)(torch.rand(3, 2, 48, 64), generator)


def test_eval_centre_crop_follows_the_pipeline_the_clips_copy():
    # 171 x 128 (320 x 240 at short side 128) to 112: CtP's GroupCenterCrop starts at
    # ((128 - 112) // 2, (171 - 112) // 2) = (8, 29) (pyvrl/datasets/transforms/crop.py:105-107),
    # torchvision's CenterCrop in VCOP's retrieval script at (8, round(29.5) = 30)
    clip = torch.arange(171, dtype=torch.float32).expand(3, 2, 128, 171)
    assert eval_transform(128, 112, "ctp")(clip)[0, 0, 0, 0] == 29
    assert eval_transform(128, 112, "vcop")(clip)[0, 0, 0, 0] == 30
    assert eval_transform(128, 112, "uniform")(clip)[0, 0, 0, 0] == 30
    rows = torch.arange(128, dtype=torch.float32).view(128, 1).expand(3, 2, 128, 171)
    assert eval_transform(128, 112, "ctp")(rows)[0, 0, 0, 0] == eval_transform(128, 112, "vcop")(rows)[0, 0, 0, 0] == 8


def test_eval_transform_is_deterministic():
    clip = torch.rand(3, 4, 48, 64)
    out = eval_transform(SHORT_SIDE, CROP)(clip)
    assert out.shape == (3, 4, CROP, CROP)
    assert torch.equal(out, eval_transform(SHORT_SIDE, CROP)(clip))


# --- datasets --------------------------------------------------------------------------


def test_train_sample_decodes_the_drawn_frames(videos):
    dataset = train_dataset(videos)
    for index, (_path, label) in enumerate(videos):
        sample = dataset[index]
        assert sample["video"].shape == (3, FRAMES, CROP, CROP)
        assert sample["video"].dtype == torch.uint8  # shipped as decoded; normalised by the training process
        assert sample["label"].dtype == torch.int64 and int(sample["label"]) == label
        assert int(sample["index"]) == index
        clip = unnormalize(sample["video"])
        assert clip.min() > -0.02 and clip.max() < 1.02
        # The first draws of the item's generator are the clip starts.
        expected = train_clip_indices(LENGTHS[index], FRAMES, STRIDE, dataset.generator_for(index))
        assert frame_numbers(clip) == expected
    assert frame_numbers(unnormalize(dataset[3]["video"])) == [0, 3, 6, 1]  # 8 frames, looped


def test_set_epoch_changes_clips_and_same_epoch_repeats(videos):
    dataset = train_dataset(videos)
    first = dataset[0]["video"]
    assert torch.equal(first, dataset[0]["video"])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0]["video"])
    dataset.set_epoch(0)
    assert torch.equal(first, dataset[0]["video"])


def count_decoding(monkeypatch) -> dict[str, int]:
    """Wrap the loaders' open_video to count opens and get_frames calls (real decoding)."""
    counts = {"open": 0, "get_frames": 0}

    def counting_open(path, backend="decord", **options):
        counts["open"] += 1
        reader = open_video(path, backend, **options)
        real_get_frames = reader.get_frames

        def get_frames(indices):
            counts["get_frames"] += 1
            return real_get_frames(indices)

        reader.get_frames = get_frames
        return reader

    monkeypatch.setattr(loaders, "open_video", counting_open)
    return counts


def test_several_views_decode_the_video_once(videos, monkeypatch):
    counts = count_decoding(monkeypatch)
    dataset = train_dataset(videos, num_views=3)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["video"].shape == (3, 3, FRAMES, CROP, CROP)  # (V, C, T, H, W)
    assert counts == {"open": len(videos), "get_frames": len(videos)}
    generator = dataset.generator_for(0)
    expected = [train_clip_indices(LENGTHS[0], FRAMES, STRIDE, generator) for _ in range(3)]
    assert [frame_numbers(unnormalize(v)) for v in dataset[0]["video"]] == expected


def test_sample_transform_sees_uint8_views(videos):
    seen = []

    def sample_transform(views, generator):
        seen.append([(tuple(v.shape), v.dtype, int(v.max())) for v in views])
        order = torch.randperm(len(views), generator=generator)
        return {"video": torch.stack([views[int(i)] for i in order]), "order": order}

    dataset = train_dataset(videos, num_views=2, sample_transform=sample_transform)
    sample = dataset[1]
    assert set(sample) == {"video", "order", "label", "index"}
    assert sample["video"].shape == (2, 3, FRAMES, CROP, CROP)
    assert [(shape, dtype) for shape, dtype, _ in seen[0]] == [((3, FRAMES, CROP, CROP), torch.uint8)] * 2
    assert max(high for _, _, high in seen[0]) > 1  # 0..255 pixels, not [0, 1]
    assert sample["video"].dtype == torch.uint8  # shipped as is: the training process normalises
    assert torch.equal(
        sample["order"], train_dataset(videos, num_views=2, sample_transform=sample_transform)[1]["order"]
    )


def test_training_side_normalisation_is_the_workers_old_arithmetic(videos):
    """Workers ship uint8 batches; ``normalize_video`` in the training process gives, bit
    for bit, what the workers computed before: ``(x.float() / 255 - mean) / std``. A method
    that returns [0, 1] floats (CtP's colour steps) is normalised the same way."""
    dataset = train_dataset(videos)
    (batch,) = [b for b in make_train_loader(dataset, batch_size=4, num_workers=1, seed=2)]
    assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (4, 3, FRAMES, CROP, CROP)
    mean = torch.tensor(VIDEO_MEAN).view(-1, 1, 1, 1)
    std = torch.tensor(VIDEO_STD).view(-1, 1, 1, 1)
    normalised = dataset.normalize_video(batch["video"])
    assert normalised.dtype == torch.float32
    for k, index in enumerate(batch["index"].tolist()):
        item = dataset[index]["video"]
        assert torch.equal(batch["video"][k], item)
        expected = (item.to(torch.float32).div(255.0) - mean).div(std)
        assert torch.equal(normalised[k], expected)
        assert torch.equal(dataset.normalize_video(item.float() / 255), expected)  # float [0, 1] input
    assert torch.equal(batch["video"], make_train_loader(dataset, 4, 0, seed=2).__iter__().__next__()["video"])


def test_default_sample_transform_matches_the_method_contract():
    views = [torch.rand(3, 2, 4, 4), torch.rand(3, 2, 4, 4)]
    generator = torch.Generator()
    for n in (1, 2):
        ours = default_sample_transform(views[:n], generator)["video"]
        assert torch.equal(ours, SSLMethod.sample_transform(None, views[:n], generator)["video"])


def test_eval_dataset_uniform_clips_from_one_decode(videos, monkeypatch):
    counts = count_decoding(monkeypatch)
    dataset = EvalClipDataset(videos, num_clips=3, frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP)
    sample = dataset[0]
    assert sample["video"].shape == (3, 3, FRAMES, CROP, CROP)  # (N, C, T, H, W)
    assert counts == {"open": 1, "get_frames": 1}
    expected = uniform_clip_indices(LENGTHS[0], 3, FRAMES, STRIDE)
    assert [frame_numbers(unnormalize(clip)) for clip in sample["video"]] == expected
    assert torch.equal(sample["video"], dataset[0]["video"])


def test_bad_parameters_fail_at_construction(videos):
    with pytest.raises(ValueError, match="crop_size=48 is larger than short_side=40"):
        train_dataset(videos, crop_size=48)
    with pytest.raises(ValueError, match="stride=0"):
        train_dataset(videos, stride=0)
    with pytest.raises(ValueError, match="num_views=0"):
        train_dataset(videos, num_views=0)
    with pytest.raises(TypeError, match=r"videos\[1\].*\(path, label\) pair"):
        train_dataset([videos[0], "v_1.avi"])
    with pytest.raises(ValueError, match="num_clips=0"):
        EvalClipDataset(videos, num_clips=0, frames=4, stride=1, short_side=40, crop_size=32)


def test_corrupt_file_raises_naming_it(videos, corrupt_file):
    dataset = train_dataset([videos[0], (corrupt_file, 1)])
    with pytest.raises(VideoDecodeError, match="v_Corrupt_g02_c03.avi") as caught:
        dataset[1]
    assert caught.value.path == str(corrupt_file)


# --- loaders ---------------------------------------------------------------------------


def collect(loader) -> list[dict[str, torch.Tensor]]:
    return [batch for batch in loader]


def test_two_workers_give_the_same_batches_as_none(videos):
    dataset = train_dataset(videos * 2, num_views=2)
    dataset.set_epoch(4)
    in_process = collect(make_train_loader(dataset, batch_size=3, num_workers=0, seed=11))
    with_workers = collect(make_train_loader(dataset, batch_size=3, num_workers=2, seed=11))
    assert [b["video"].shape for b in in_process] == [(3, 2, 3, FRAMES, CROP, CROP)] * 2 + [
        (2, 2, 3, FRAMES, CROP, CROP)
    ]
    for a, b in zip(in_process, with_workers, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["video"], b["video"])
        assert torch.equal(a["label"], b["label"])
    order = torch.cat([b["index"] for b in in_process]).tolist()
    assert sorted(order) == list(range(8))
    dataset.set_epoch(5)
    assert torch.cat([b["index"] for b in collect(make_train_loader(dataset, 3, 0, seed=11))]).tolist() != order


def _views_and_targets(views, generator):
    """The default sample_transform plus targets of several dtypes, one too large to go by value."""
    draw = torch.randint(0, 100, (3,), generator=generator)
    return {
        "video": views[0],
        "speed": draw[0],
        "mask": torch.arange(4) < draw[1] % 4,
        "weights": draw[:2].to(torch.bfloat16),  # numpy has no bfloat16: default_collate ships it
        "large": torch.full((10000,), float(draw[2])),  # 40 KB x 2 or 3 > 64 KiB: default_collate ships it
    }


def test_small_entries_travel_by_value_and_arrive_as_the_same_tensors(videos):
    # label, index and small targets come from a worker inside the pickled batch (no
    # shared-memory file each), and arrive as the tensors default_collate makes in-process
    dataset = train_dataset(videos * 2, sample_transform=_views_and_targets)
    loader = make_train_loader(dataset, batch_size=3, num_workers=1, seed=4)
    with_worker = collect(loader)
    in_process = collect(make_train_loader(dataset, batch_size=3, num_workers=0, seed=4))
    assert len(with_worker) == len(in_process) == 3  # 3 + 3 + 2 items
    for a, b in zip(with_worker, in_process, strict=True):
        assert a.keys() == b.keys() == {"video", "speed", "mask", "weights", "large", "label", "index"}
        for key in a:
            assert isinstance(a[key], torch.Tensor), key
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key
        assert a["label"].dtype == torch.int64 and a["mask"].dtype == torch.bool
        if loader.pin_memory:  # CUDA: every entry arrives as a pinned copy
            assert all(a[key].is_pinned() for key in a)
        else:
            assert {key for key in a if a[key].is_shared()} == {"video", "weights", "large"}
    loader.close()


def _shm_inode(video: torch.Tensor) -> int:
    fd, _ = video.untyped_storage()._share_fd_cpu_()  # the received buffer's own fd
    return os.fstat(fd).st_ino


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_persistent_worker_gives_every_pass_a_fresh_loaders_batches(videos):
    # one worker for all passes, batch buffers reused once released, never while a batch is kept
    dataset = train_dataset(videos * 2)  # 8 items, batches of 3: a ragged last batch of 2
    expected = {}
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        expected[epoch] = collect(make_train_loader(dataset, batch_size=3, num_workers=0, seed=5))
    inodes, pids = set(), set()
    with make_train_loader(dataset, batch_size=3, num_workers=1, seed=5) as loader:
        dataset.set_epoch(0)
        for batch in loader:  # the first batch only: the next pass must start clean
            assert torch.equal(batch["video"], expected[0][0]["video"])
            break
        kept = []
        for epoch in (0, 1, 2):
            dataset.set_epoch(epoch)
            for k, batch in enumerate(loader):
                pids.update(w.pid for w in loader._iterator._workers)
                inodes.add(_shm_inode(batch["video"]))
                assert torch.equal(batch["index"], expected[epoch][k]["index"])
                assert torch.equal(batch["video"], expected[epoch][k]["video"]), (epoch, k)
                if epoch == 1:
                    kept.append(batch["video"])  # held: its buffer must not be reused
                batch = dataset.normalize_video(batch.pop("video"))  # as training does: the uint8 batch is let go
        for k, video in enumerate(kept):  # intact after the next pass
            assert torch.equal(video, expected[1][k]["video"])
    assert len(pids) == 1
    assert len(inodes) <= 8  # 10 batches in the released passes, 3 kept ones, from a handful of buffers
    assert not _alive(pids.pop())


def test_training_loader_stops_its_worker_on_error_and_leaks_no_shared_memory(videos):
    dataset = train_dataset(videos * 2)

    def ours() -> set[str]:  # torch names shared memory torch_<pid>_...; other processes share the machine
        return {name for name in os.listdir("/dev/shm") if name.startswith(f"torch_{os.getpid()}_")}

    shm_before = ours()
    with pytest.raises(RuntimeError, match="a training step failed"):
        with make_train_loader(dataset, batch_size=3, num_workers=1, seed=5) as loader:
            for _ in loader:
                pid = loader._iterator._workers[0].pid
                raise RuntimeError("a training step failed")
    assert not _alive(pid)
    assert loader._iterator is None
    loader.close()  # idempotent
    assert ours() <= shm_before
    assert not {name for name in os.listdir("/dev/shm") if name.startswith(f"torch_{pid}_")}


def test_one_pass_over_several_epochs_equals_one_pass_per_epoch(videos):
    # run_local_training iterates a round's epochs in one loader pass (workers start once);
    # that must give exactly the batches of the old epoch-by-epoch loop, ragged ends dropped
    dataset = train_dataset(videos * 2)
    multi = collect(make_train_loader(dataset, batch_size=3, num_workers=1, seed=7, last_batch="drop", epochs=[3, 4]))
    single = []
    for epoch in (3, 4):
        dataset.set_epoch(epoch)
        single += collect(make_train_loader(dataset, batch_size=3, num_workers=0, seed=7, last_batch="drop"))
    assert len(multi) == len(single) == 4  # 8 videos: 2 full batches of 3 per epoch
    for a, b in zip(multi, single, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["video"], b["video"])
    first, second = (torch.cat([b["index"] for b in multi[k : k + 2]]).tolist() for k in (0, 2))
    assert len(set(first)) == len(set(second)) == 6 and first != second
    # a loader built once follows set_epoch on every pass (the fine-tuning loop relies on it)
    reused = make_train_loader(dataset, batch_size=3, num_workers=0, seed=7, last_batch="drop")
    for epoch, expected in ((3, single[:2]), (4, single[2:])):
        dataset.set_epoch(epoch)
        for a, b in zip(collect(reused), expected, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


def test_batches_equal_the_stacked_items_without_a_collate_copy(videos):
    train = train_dataset(videos, num_views=2)
    evaluation = EvalClipDataset(
        videos, num_clips=2, frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP
    )
    for dataset in (train, evaluation):
        indices = [2, 0, 3]
        samples = dataset.__getitems__(indices)
        for index, sample in zip(indices, samples, strict=True):
            expected = dataset[index]
            assert set(sample) == set(expected)
            assert all(torch.equal(sample[key], expected[key]) for key in expected)
        batch = loaders.collate_batch(samples)
        # The videos were normalised into one batch tensor: collating them copies nothing.
        assert batch["video"].data_ptr() == samples[0]["video"].data_ptr()
        reference = torch.utils.data.default_collate([dataset[i] for i in indices])
        assert set(batch) == set(reference)
        assert all(torch.equal(batch[key], reference[key]) for key in reference)
        # Separate items (not slots of one tensor) are stacked as default_collate does.
        separate = loaders.collate_batch([dataset[i] for i in indices])
        assert torch.equal(separate["video"], reference["video"])


def _views_and_decode_threads(views, generator):
    """The default sample_transform plus the decode threads of the process that decoded it."""
    return {"video": views[0], "decode_threads": torch.tensor(decoding._decode_threads)}


def test_workers_decode_on_one_thread_into_channels_last_batches_of_the_same_values(videos):
    # a worker decodes with 1 decord thread (this process: ffmpeg's default) and ships the
    # uint8 clips in the decoder's channels-last layout (no transposing copy); values as before
    dataset = train_dataset(videos * 2, sample_transform=_views_and_decode_threads)
    with_worker = collect(make_train_loader(dataset, batch_size=4, num_workers=1, seed=6))
    in_process = collect(make_train_loader(dataset, batch_size=4, num_workers=0, seed=6))
    assert decoding._decode_threads == 0
    for a, b in zip(with_worker, in_process, strict=True):
        assert a["decode_threads"].tolist() == [1] * 4 and b["decode_threads"].tolist() == [0] * 4
        video = a["video"]
        assert video.shape == (4, 3, FRAMES, CROP, CROP)
        assert video.stride() == (3 * FRAMES * CROP * CROP, 1, CROP * CROP * 3, CROP * 3, 3)  # (B, T, H, W, C) memory
        assert torch.equal(video, b["video"]) and video.stride() == b["video"].stride()
        expected = torch.stack([dataset[int(i)]["video"].contiguous() for i in a["index"]])
        assert torch.equal(video, expected)
        normalised = dataset.normalize_video(video)
        assert normalised.is_contiguous() and torch.equal(normalised, dataset.normalize_video(expected))


def test_worker_batches_equal_the_stacked_items(videos):
    dataset = train_dataset(videos)
    batches = collect(make_train_loader(dataset, batch_size=2, num_workers=1, seed=5))
    for batch in batches:
        expected = torch.stack([dataset[int(i)]["video"] for i in batch["index"]])
        assert torch.equal(batch["video"], expected)


class _ItemsAtOnce:
    """The default sample_transform, holding each item 50 ms and recording how many items
    of its process were inside it at once (a worker's items in flight)."""

    def __init__(self):
        self.inside, self.lock = 0, threading.Lock()

    def __call__(self, views, generator):
        with self.lock:
            self.inside += 1
            seen = self.inside
        time.sleep(0.05)
        with self.lock:
            seen = max(seen, self.inside)
            self.inside -= 1
        return {"video": views[0], "items_at_once": torch.tensor(seen)}


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_worker_prepares_its_items_in_flight_at_once_and_they_equal_the_serial_ones(videos, in_flight):
    # a batch's items are made on `items_in_flight` threads of the worker; each draws from
    # its own generator, so the batches equal the in-process ones; also with the decoded-video
    # cache on and one video twice in a batch (both threads may decode it whole at once)
    dataset = train_dataset(videos * 3, sample_transform=_ItemsAtOnce())
    in_process = collect(make_train_loader(dataset, batch_size=6, num_workers=0, seed=6))
    assert torch.cat([b["items_at_once"] for b in in_process]).max() == 1
    for cache in (False, True):
        with decoding.cached_videos(1 << 30, visits=3) if cache else contextlib.nullcontext():
            loader = make_train_loader(dataset, batch_size=6, num_workers=1, seed=6, items_in_flight=in_flight)
            with loader:
                with_worker = collect(loader)
        assert torch.cat([b["items_at_once"] for b in with_worker]).max() == in_flight
        for a, b in zip(with_worker, in_process, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    with pytest.raises(ValueError, match="items_in_flight=0"):
        make_train_loader(dataset, batch_size=6, num_workers=1, seed=6, items_in_flight=0)


def test_items_in_flight_do_not_run_ahead_of_a_slow_item(monkeypatch):
    # the next item starts when the oldest is taken: while item 0 takes long, the other
    # thread makes item 1 and waits, instead of making (and holding) the whole batch
    monkeypatch.setattr(loaders, "_items_in_flight", 2)
    monkeypatch.setattr(loaders, "_item_threads", None)
    started = []

    def make(key):
        started.append(key)
        time.sleep(0.3 if key == 0 else 0.01)
        return {"key": key}

    alive = []  # items started and not taken before this one, when each is taken
    try:
        for taken, item in enumerate(loaders._in_flight(make, list(range(8)))):
            assert item["key"] == taken
            alive.append(len(started) - taken)
    finally:
        loaders._item_threads.shutdown()
    assert sorted(started) == list(range(8))
    assert max(alive) <= 3  # the one taken, the one made meanwhile, the next one started (unbounded: 8)


class _ScratchOnSelf:
    """A sample_transform that keeps its per-item result on itself: right one item at a
    time, wrong when two items run at once."""

    def __call__(self, views, generator):
        self.scratch = views[0].clone()
        time.sleep(0.02)
        return {"video": self.scratch}


def test_check_method_finds_a_hook_that_is_wrong_when_two_items_run_at_once(videos):
    from benchmark.commands.check_method import items_differ_at_once

    assert items_differ_at_once(train_dataset(videos), [0, 1, 2, 3]) is None
    differs = items_differ_at_once(train_dataset(videos, sample_transform=_ScratchOnSelf()), [0, 1, 2, 3])
    assert differs in {f"item {k}'s 'video'" for k in range(4)}  # whichever thread lost the race


def test_decord_readers_open_one_at_a_time_and_decode_at_once(videos, monkeypatch):
    # decord's FFmpeg 4.1 builds the MPEG-4 decoder's static tables on the first open without
    # a lock (two opens at once aborted ~1 % of fresh processes): opens take turns, decodes not
    import decord

    inside = {"open": 0, "decode": 0}
    most = {"open": 0, "decode": 0}
    lock = threading.Lock()

    def timed(kind, call):
        with lock:
            inside[kind] += 1
            most[kind] = max(most[kind], inside[kind])
        time.sleep(0.05)
        try:
            return call()
        finally:
            with lock:
                inside[kind] -= 1

    class SlowReader(decord.VideoReader):
        def __init__(self, *args, **kwargs):
            timed("open", lambda: super(SlowReader, self).__init__(*args, **kwargs))

        def get_batch(self, indices):
            return timed("decode", lambda: super(SlowReader, self).get_batch(indices))

    monkeypatch.setattr(decord, "VideoReader", SlowReader)

    def read(path):
        with open_video(path, "decord", short_side=SHORT_SIDE) as video:
            return video.get_frames([0, 1])

    with ThreadPoolExecutor(2) as pool:
        frames = list(pool.map(read, [path for path, _ in videos]))
    assert most == {"open": 1, "decode": 2}
    monkeypatch.undo()
    for (path, _), got in zip(videos, frames, strict=True):
        assert torch.equal(got, read(path))


def test_a_process_forked_while_a_thread_opens_a_decord_reader_can_open_readers():
    held, release = threading.Event(), threading.Event()

    def hold():
        with decoding._DECORD_OPEN:
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    try:
        pid = os.fork()
        if pid == 0:  # the child: the holder thread does not exist here
            os._exit(0 if decoding._DECORD_OPEN.acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_decoded_video_cache_counts_a_video_stored_twice_once():
    cache = decoding.DecodedVideoCache(max_bytes=1000, visits=2)
    frames = torch.zeros(4, 5, 5, 3, dtype=torch.uint8)  # 300 bytes
    cache.put(("a",), frames, 25.0)
    cache.put(("a",), frames.clone(), 25.0)  # two threads decoded it at once
    cache.put(("b",), frames, 25.0)
    assert cache.bytes == 600 and cache.get(("a",)) is not None
    cache.put(("c",), frames, 25.0)
    cache.put(("d",), frames, 25.0)  # 1200 > 1000: the least recently used ("b") goes
    assert cache.bytes == 900 and cache.get(("b",)) is None


def test_an_undecodable_file_among_items_in_flight_names_that_file(videos, corrupt_file):
    dataset = train_dataset([videos[0], (corrupt_file, 0), videos[1], videos[2]])
    with pytest.raises(VideoDecodeError, match="v_Corrupt_g02_c03.avi") as caught:
        collect(make_train_loader(dataset, batch_size=4, num_workers=1, seed=0, items_in_flight=2))
    assert caught.value.path == str(corrupt_file)


def test_undecodable_file_in_a_worker_raises_video_decode_error(videos, corrupt_file):
    dataset = train_dataset([(corrupt_file, 0)])
    with pytest.raises(VideoDecodeError, match="v_Corrupt_g02_c03.avi") as caught:
        collect(make_train_loader(dataset, batch_size=1, num_workers=1, seed=0))
    assert caught.value.path == str(corrupt_file)


def test_eval_loader_in_order(videos):
    dataset = EvalClipDataset(videos, num_clips=2, frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP)
    batches = collect(make_eval_loader(dataset, batch_size=3, num_workers=0))
    assert [b["video"].shape for b in batches] == [(3, 2, 3, FRAMES, CROP, CROP), (1, 2, 3, FRAMES, CROP, CROP)]
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3]
    assert torch.cat([b["label"] for b in batches]).tolist() == [10, 11, 12, 13]


def test_worker_side_normalisation_of_uint8_clips_fills_a_float_batch(videos):
    """A dataset that normalises in the worker (as evaluation does) gets float32 batch slots
    even when its clips are uint8; values equal the training side's normalisation."""

    class InWorker(TrainClipDataset):
        normalize_in_worker = True

    params = dict(frames=FRAMES, stride=STRIDE, short_side=SHORT_SIDE, crop_size=CROP, seed=3)
    shipped = TrainClipDataset(videos, **params)
    in_worker = InWorker(videos, **params)
    (a,) = list(make_train_loader(in_worker, batch_size=4, num_workers=1, seed=2))
    (b,) = list(make_train_loader(shipped, batch_size=4, num_workers=1, seed=2))
    assert a["video"].dtype == torch.float32 and b["video"].dtype == torch.uint8
    assert torch.equal(a["video"], shipped.normalize_video(b["video"]))
