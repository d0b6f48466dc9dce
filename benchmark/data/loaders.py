"""Training and evaluation clip datasets and their DataLoaders.

Map-style datasets over ``(path, label)`` pairs. Each item opens its video once and
decodes the union of the frame indices of all its clips in one ``get_frames`` call, so
a video is decoded once per sample and only the needed frames are ever in memory.

Randomness of item ``i`` comes from a ``torch.Generator`` seeded from
``(seed, epoch, i)`` alone, so a sample is the same whatever the worker count or the
order in which items are fetched. Draw order per item: the clip start of every view
(or the method's ``sample_frames``, which then chooses the clips), then the augmentation
of every view, then the method's ``sample_transform``.

The short-side resize happens while decoding (``open_video(..., short_side=...)``:
ffmpeg's swscale scales during its YUV to RGB conversion, cheaper than converting the
full frame and resizing afterwards; the transforms' ``ShortSideResize`` then finds the
frames at size and does nothing). Cropping and flipping run on the decoded uint8 frames.

Training clips stay uint8 in the workers: ``sample_transform`` gets uint8 views (C, T, H, W)
and may return them as they are (then a quarter of the bytes cross the process boundary)
or as floats in [0, 1] (a method whose colour steps need floats converts them with
:func:`benchmark.data.transforms.to_unit_float`). The training process normalises the
batch (:meth:`TrainClipDataset.normalize_video`, on the training device): the same
conversion and the same ops as before, so the values are bit-identical to normalising in
the worker. Evaluation clips are converted and normalised in the workers, as before.
For a batch (``__getitems__``, which a DataLoader calls), each sample's video is written
straight into one (B, ...) tensor, allocated in shared memory inside a worker, and
:func:`collate_batch` passes that tensor on instead of copying the samples into a new
one. Items and batches hold the same values; a shipped batch keeps the samples' memory
layout (:func:`dense_strides_like`: uint8 training clips stay channels-last, memory
(B, T, H, W, C)), so writing a slot moves pixel rows instead of transposing every byte.
A worker's batch carries its small entries (label, index, a method's targets) by value in
the pickled message rather than in shared-memory files of their own.
Loader workers decode on one ffmpeg thread each, through decord and PyAV (:func:`_init_worker`),
and prepare ``items_in_flight`` items of a batch at once on threads of their own (default 2:
one item keeps about one core busy, its Python and the decoder's thread taking turns).

Why not ``pytorchvideo.data.LabeledVideoDataset``: it is an ``IterableDataset`` with
time-based clip samplers and global-RNG shuffling, so its samples depend on the worker
count and cannot be seeded per item. Decoding is frame-exact through
:mod:`benchmark.data.decoding` (``backend``: ``auto`` by default).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from .clips import ctp_train_clip_indices, eval_clip_indices, train_clip_indices
from .decoding import open_video, set_decode_threads
from .transforms import Normalize, eval_transform, to_unit_float, train_transform
from .transforms import normalization as make_normalize

SampleTransform = Callable[[list[Tensor], torch.Generator], dict[str, Tensor]]
#: ``SSLMethod.sample_frames``: (num_frames, generator) -> (clips, targets) or None.
FrameSampler = Callable[[int, torch.Generator], "tuple[list[list[int]], dict[str, Tensor]] | None"]


def default_sample_transform(views: list[Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """``{"video": (C, T, H, W)}`` for one view, ``{"video": (V, C, T, H, W)}`` for several
    (dtype kept: uint8 views give a uint8 video).

    The same as :meth:`benchmark.methods.SSLMethod.sample_transform`.
    """
    if len(views) == 1:
        return {"video": views[0]}
    return {"video": torch.stack(views)}


def item_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """A 63-bit seed mixing ``(seed, epoch, index)`` (numpy SeedSequence; no ``hash()``);
    ``repeat`` > 0: the seed of the item's ``repeat``-th extra visit in the epoch (a padded
    batch's copy, :class:`EpochBatchSampler`), so the copy draws its own clip and augmentation."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index), ("repeat", repeat)):
        if value < 0:
            raise ValueError(f"{name}={value}: expected a non-negative integer")
    entropy = [seed, epoch, index] + ([repeat] if repeat else [])  # repeat 0: the seeds as before
    high, low = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)


def item_key(key: int | tuple[int, ...], epoch: int) -> tuple[int, int, int]:
    """``(epoch, index, repeat)`` of a dataset key: an index of ``epoch``, or the
    ``(epoch, index)`` / ``(epoch, index, repeat)`` tuples :class:`EpochBatchSampler` hands out."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1]), int(key[2]) if len(key) > 2 else 0
    return int(epoch), int(key), 0


def _check_clip(frames: int, stride: int, short_side: int, crop_size: int) -> None:
    # Config mistakes surface when the dataset is built, not inside a loader worker.
    for name, value in (("frames", frames), ("stride", stride), ("short_side", short_side), ("crop_size", crop_size)):
        if int(value) <= 0:
            raise ValueError(f"{name}={value}: expected a positive integer")
    if crop_size > short_side:
        raise ValueError(f"crop_size={crop_size} is larger than short_side={short_side}: the crop would not fit")


def _as_videos(videos: Sequence[tuple[str | Path, int]]) -> list[tuple[str, int]]:
    out = []
    for k, entry in enumerate(videos):
        try:
            path, label = entry
        except (TypeError, ValueError):
            raise TypeError(f"videos[{k}] = {entry!r}: expected a (path, label) pair") from None
        out.append((str(path), int(label)))
    return out


def _frame_lookup(frames_thwc: Tensor, union: list[int]) -> Callable[[list[int]], Tensor]:
    """Select clips out of the decoded frames (F, H, W, C): clip indices -> uint8 (C, T, H, W)."""
    position = {frame: k for k, frame in enumerate(union)}

    def clip(indices: list[int]) -> Tensor:
        if indices == union:  # one view without repeats: no copy needed
            chosen = frames_thwc
        else:
            chosen = frames_thwc.index_select(0, torch.tensor([position[i] for i in indices]))
        # (T, H, W, C) -> (C, T, H, W) as a permuted view: the memory stays channels-last,
        # which the uint8 resize in transforms.ShortSideResize is fastest on.
        return chosen.permute(3, 0, 1, 2)

    return clip


_to_unit_float = to_unit_float  # the evaluation clips' conversion (transforms.to_unit_float)


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14 (asm-generic/mman-common.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc (macOS, musl)
        return None


def _prefault(storage: torch.UntypedStorage) -> None:
    """Map all pages of ``storage`` with one madvise call instead of one fault per 4 KiB
    page (fresh shared memory; measured ~0.3 ms CPU per clip). No-op where unsupported."""
    libc = _libc()
    if libc is None:
        return
    page = 4096
    start = storage.data_ptr() & ~(page - 1)
    end = storage.data_ptr() + storage.nbytes()
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_POPULATE_WRITE)


# A worker's batch buffers are reused once the training process has let go of them (a
# ring), instead of a fresh shared-memory file per batch: creating, pre-faulting and
# unmapping one cost 4.4 ms of worker CPU per 4.8 MB uint8 batch (0.55 ms per clip,
# perf/RESULTS.md). Each buffer carries a tail after the batch: a marker, then a flag the
# consumer (ClipLoader) sets to 1 when no tensor of its process refers to the buffer any
# more; the worker reuses only buffers whose flag is 1, so a batch a consumer keeps is
# never overwritten (a consumer that never releases gets fresh buffers, as before).
_RING_MARK = b"FVBR"
_RING_TAIL = 8  # marker (4 bytes), released flag (1), padding
_RING_SIZE = 6  # per worker: the batch being filled, prefetched ones, the consumer's, slack
_ring: list[torch.UntypedStorage] = []  # this worker's buffers, oldest first


def _tail(storage: torch.UntypedStorage, batch_bytes: int) -> Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage, batch_bytes, (_RING_TAIL,))


def _ring_buffer(batch_bytes: int) -> torch.UntypedStorage:
    """A shared-memory buffer of ``batch_bytes`` (+ tail) that no consumer uses: a released
    one of this worker's ring, or a new one (which may push the oldest out of the ring)."""
    for storage in _ring:
        if storage.nbytes() == batch_bytes + _RING_TAIL:
            tail = _tail(storage, batch_bytes)
            if tail[4] == 1:
                tail[4] = 0
                return storage
    storage = torch.UntypedStorage._new_shared(batch_bytes + _RING_TAIL)
    _prefault(storage)
    _tail(storage, batch_bytes).copy_(torch.frombuffer(bytearray(_RING_MARK + bytes(4)), dtype=torch.uint8))
    _ring.append(storage)
    del _ring[:-_RING_SIZE]
    return storage


def release_batch_buffer(storage: torch.UntypedStorage) -> bool:
    """Mark a received batch buffer free for its worker to reuse; the caller must hold the
    only reference to it. False if ``storage`` is not a worker's ring buffer."""
    batch_bytes = storage.nbytes() - _RING_TAIL
    if batch_bytes <= 0 or not storage.is_shared():
        return False
    tail = _tail(storage, batch_bytes)
    if bytes(tail[:4].tolist()) != _RING_MARK:
        return False
    tail[4] = 1
    return True


def dense_strides_like(sample: Tensor) -> tuple[int, ...]:
    """Strides of a dense tensor of ``sample``'s shape whose axes lie in memory in the order
    of ``sample``'s strides (outermost = largest stride; ties keep the axis order).

    A contiguous sample gives contiguous strides; a training view (C, T, H, W) of decoded
    channels-last frames (T, H, W, C), cropped or flipped, gives the channels-last strides
    ``(1, H*W*C, W*C, C)``, into which copying the view moves whole pixel rows instead of
    transposing every byte (0.02 instead of 0.40 ms per 16 x 112² clip, perf/RESULTS.md).
    """
    order = sorted(range(sample.ndim), key=lambda axis: -sample.stride(axis))
    strides, step = [0] * sample.ndim, 1
    for axis in reversed(order):
        strides[axis] = step
        step *= sample.shape[axis]
    return tuple(strides)


def _new_batch_tensor(
    sample_shape: tuple[int, ...], sample_strides: tuple[int, ...], dtype: torch.dtype, batch_size: int
) -> Tensor:
    """An uninitialised (B, *sample_shape) tensor for a whole batch, each sample's slot
    dense with ``sample_strides`` (:func:`dense_strides_like`).

    In a DataLoader worker it lives in shared memory (a ring buffer, see above), as
    ``default_collate`` would allocate the stacked batch, so the samples are written
    straight into their batch slot and :func:`collate_batch` hands the batch on without
    another copy.
    """
    shape = (batch_size, *sample_shape)
    strides = (math.prod(sample_shape), *sample_strides)
    if get_worker_info() is None:
        return torch.empty_strided(shape, strides, dtype=dtype)
    try:  # what default_collate itself uses (a private API, hence the fallback)
        storage = _ring_buffer(math.prod(shape) * dtype.itemsize)
    except AttributeError:
        return torch.empty_strided(shape, strides, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape, strides)


def _whole_batch(tensors: list[Tensor]) -> Tensor | None:
    """The (B, ...) tensor whose consecutive slots ``tensors`` are, or None."""
    first = tensors[0]
    storage = first.untyped_storage()
    size = first.numel()
    batch_bytes = len(tensors) * size * first.element_size()
    if first.storage_offset() != 0 or storage.nbytes() not in (batch_bytes, batch_bytes + _RING_TAIL):
        return None
    for k, tensor in enumerate(tensors):
        if (
            tensor.untyped_storage().data_ptr() != storage.data_ptr()
            or tensor.storage_offset() != k * size
            or tensor.shape != first.shape
            or tensor.dtype != first.dtype
            or tensor.stride() != dense_strides_like(first)  # dense, in the first slot's layout
        ):
            return None
    return torch.empty(0, dtype=first.dtype).set_(storage, 0, (len(tensors), *first.shape), (size, *first.stride()))


#: In a worker, a batch's small entries ("label", "index", a method's targets) travel by
#: value, as numpy arrays inside the pickled batch, instead of as default_collate's new
#: shared-memory file per entry and batch (created, its descriptor passed over a socket,
#: mapped, unmapped: 0.07-0.12 ms of a 1-worker loader's time per clip, perf/loader_ipc.py and
#: perf/RESULTS.md, "Issue 16, sixth pass"); :class:`ClipLoader` turns them back into tensors.
_BY_VALUE_MAX_BYTES = 64 << 10


def _stacked_by_value(values: list) -> np.ndarray | None:
    """``torch.stack(values)`` as a numpy array if the entry is small and numpy holds its
    dtype, else None (then default_collate ships it)."""
    first = values[0]
    # plain dense tensors only: default_collate keeps a subclass and words its own errors
    if not all(type(v) is Tensor and v.layout == torch.strided and not v.is_nested for v in values):
        return None
    if not all(v.shape == first.shape and v.dtype == first.dtype for v in values):
        return None
    if first.device.type != "cpu" or first.requires_grad or len(values) * first.nbytes > _BY_VALUE_MAX_BYTES:
        return None
    try:
        return torch.stack(values).numpy()
    except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16), a quantized tensor
        return None


def collate_batch(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``default_collate`` for the clip datasets' samples, without copying ``"video"``
    when the samples' videos already are the slots of one batch tensor (as
    ``__getitems__`` makes them). Same result as ``default_collate``; in a DataLoader
    worker, small entries come out as numpy arrays (:data:`_BY_VALUE_MAX_BYTES`), which
    :class:`ClipLoader` makes tensors again."""
    if not samples or not isinstance(samples[0], dict):
        return default_collate(samples)
    in_worker = get_worker_info() is not None
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if key == "video" and isinstance(values[0], Tensor):
            whole = _whole_batch(values)
        else:
            whole = _stacked_by_value(values) if in_worker else None
        batch[key] = whole if whole is not None else default_collate(values)
    return batch


def _tensors_again(batch, pin: bool):
    """A batch from a worker with its by-value entries (numpy arrays) as tensors again,
    pinned if the loader pins (its pin-memory thread passed the arrays on as they were)."""
    if isinstance(batch, dict):
        for key, value in batch.items():
            if isinstance(value, np.ndarray):  # default_collate never leaves one: ours
                tensor = torch.from_numpy(value)
                batch[key] = tensor.pin_memory() if pin else tensor
    return batch


class _ClipDataset(Dataset):
    """Shared item logic: ``_unit_sample(index)`` gives the sample with ``"video"`` not yet
    normalised (uint8, or floats in [0, 1]); with ``normalize_in_worker`` items normalise
    it and batches normalise straight into the batch tensor, otherwise both ship it as it
    is (batches: copied into the batch tensor) and the consumer normalises."""

    normalize: Normalize
    normalize_in_worker: bool = True

    def normalize_video(self, video: Tensor) -> Tensor:
        """Normalise a shipped ``"video"`` (an item's or a batch's, on any device): uint8 ->
        [0, 1] -> ``(x - mean) / std``, floats in [0, 1] -> ``(x - mean) / std``. Returns a
        new tensor; the values equal normalising each sample in the worker."""
        return self.normalize(video)

    def _unit_sample(self, index: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self._unit_sample(index)
        if self.normalize_in_worker:
            sample["video"] = self.normalize(sample["video"])
        return sample

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """Items ``indices`` (what a DataLoader fetches for one batch); each equals
        ``self[i]``, with the videos written into one (B, ...) tensor (see
        :func:`collate_batch`)."""
        samples: list[dict[str, Tensor]] = []
        batch_video: Tensor | None = None
        for sample in _in_flight(self._unit_sample, indices):
            video = sample["video"]
            # what the item ships: normalised float32 (uint8 is converted first) or the video as is
            dtype = torch.float32 if self.normalize_in_worker and video.dtype == torch.uint8 else video.dtype
            if batch_video is None:
                # shipped as is: slots in the clip's own memory layout (uint8 training clips:
                # channels-last, so the copy below moves pixel rows); normalised: contiguous
                layout = torch.empty(video.shape, device="meta") if self.normalize_in_worker else video
                strides = dense_strides_like(layout)
                batch_video = _new_batch_tensor(video.shape, strides, dtype, len(indices))
            if video.shape == batch_video.shape[1:] and dtype == batch_video.dtype:
                slot = batch_video[len(samples)]
                sample["video"] = self.normalize(video, out=slot) if self.normalize_in_worker else slot.copy_(video)
            elif self.normalize_in_worker:  # not stackable: collate will say so, as for separate items
                sample["video"] = self.normalize(video)
            samples.append(sample)
        return samples


class TrainClipDataset(_ClipDataset):
    """Random training clips, ``num_views`` per video.

    Item ``i`` -> dict with
      ``"video"``: *not normalised* (uint8, or floats in [0, 1] if ``sample_transform``
          made floats), (C, T, crop, crop) for one view with the default
          ``sample_transform``, (V, C, T, crop, crop) for several; the training process
          normalises it with :meth:`normalize_video` (``normalization``: kinetics |
          imagenet | none), as ``run_local_training`` and the fine-tuning do;
      any other entries ``sample_transform`` returns;
      ``"label"``: int64 scalar; ``"index"``: int64 scalar (= i).

    ``sample_transform(views, generator)`` receives the augmented views, each uint8
    (C, T, crop, crop) (a permuted view of channels-last frames: not contiguous), and must
    return a dict with a ``"video"`` tensor whose channel axis is dim -4, uint8 or float
    in [0, 1].

    ``stride`` / ``short_side`` may be lists: a per-item draw picks one (CtP's pretraining
    ``strides=[1..5]``, ``GroupScale([112, 128, 144])``); ``temporal_jitter`` shifts each frame
    as CtP's ``RandomFrameSampler``. With one stride, no jitter and one short side the draws
    are the plain ones (clip start, crop, flip).

    ``frame_sampler(num_frames, generator)`` (``SSLMethod.sample_frames``), when given and not
    returning None, replaces that clip sampling: it returns ``(clips, targets)``, the clips'
    frame indices (checked: one length, inside the video) and tensors added to the sample.
    Raises :class:`benchmark.data.decoding.VideoDecodeError` for an undecodable file.
    """

    def __init__(
        self,
        videos: Sequence[tuple[str | Path, int]],
        *,
        frames: int,
        stride: int | Sequence[int],
        short_side: int | Sequence[int],
        crop_size: int,
        num_views: int = 1,
        sample_transform: SampleTransform | None = None,
        backend: str = "auto",
        seed: int = 0,
        temporal_jitter: bool = False,
        flip_prob: float = 0.5,
        normalization: str = "kinetics",
        frame_sampler: FrameSampler | None = None,
    ):
        if num_views <= 0:
            raise ValueError(f"num_views={num_views}: expected at least one view per sample")
        self.strides = [int(x) for x in stride] if isinstance(stride, Sequence) else [int(stride)]
        self.short_sides = [int(x) for x in short_side] if isinstance(short_side, Sequence) else [int(short_side)]
        for st in self.strides:
            for side in self.short_sides:
                _check_clip(frames, st, side, crop_size)
        self.videos = _as_videos(videos)
        self.frames, self.stride = frames, self.strides[0]
        self.temporal_jitter = bool(temporal_jitter)
        self.crop_size, self.flip_prob = crop_size, flip_prob
        self.num_views = num_views
        self.sample_transform = sample_transform or default_sample_transform
        self.frame_sampler = frame_sampler
        self.backend = backend
        self.seed = seed
        self.epoch = 0
        self.short_side = self.short_sides[0]
        self.spatial = train_transform(self.short_side, crop_size, flip_prob)
        self.normalize = make_normalize(normalization)

    normalize_in_worker = False  # uint8 clips cross the process boundary (module docstring)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose clips and augmentations items are drawn from."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: expected a non-negative integer")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def generator_for(self, index: int, epoch: int | None = None, repeat: int = 0) -> torch.Generator:
        """The generator item ``index`` draws from in ``epoch`` (default: the current one;
        first draws: clip starts); ``repeat``: its extra visits in a padded epoch."""
        epoch = self.epoch if epoch is None else epoch
        return torch.Generator().manual_seed(item_seed(self.seed, epoch, index, repeat))

    def _unit_sample(self, key: int | tuple[int, ...]) -> dict[str, Tensor]:
        # key: an index (of the current epoch) or an (epoch, index[, repeat]) tuple, as
        # EpochBatchSampler hands them out, so one loader pass can span epochs without
        # telling the workers
        epoch, index, repeat = item_key(key, self.epoch)
        path, label = self.videos[index]
        generator = self.generator_for(index, epoch, repeat)
        short_side, spatial = self.short_side, self.spatial
        if len(self.short_sides) > 1:
            short_side = self.short_sides[int(torch.randint(0, len(self.short_sides), (1,), generator=generator))]
            spatial = train_transform(short_side, self.crop_size, self.flip_prob)
        with open_video(path, self.backend, short_side=short_side) as video:
            planned = self.frame_sampler(video.num_frames, generator) if self.frame_sampler else None
            if planned is None:
                clips, targets = [self._clip_indices(video.num_frames, generator) for _ in range(self.num_views)], {}
            else:
                clips, targets = _checked_plan(planned, video.num_frames, path)
            union = sorted({i for clip in clips for i in clip})
            decoded = video.get_frames(union)  # (F, H, W, C) uint8, the only decode of this item
        select = _frame_lookup(decoded, union)
        # Crop/flip on uint8 (the frames are already at short_side); the views stay uint8.
        views = [spatial(select(clip), generator) for clip in clips]
        sample = self.sample_transform(views, generator)
        if not isinstance(sample, dict) or not isinstance(sample.get("video"), Tensor):
            raise TypeError(
                f"sample_transform {self.sample_transform!r} must return a dict with a 'video' tensor, "
                f"got {type(sample).__name__}"
            )
        sample = dict(sample)
        for key, value in targets.items():
            if key in sample or key in ("label", "index"):
                raise KeyError(f"sample_frames target {key!r} clashes with a sample entry of the same name; rename it")
            sample[key] = value
        sample["label"] = torch.tensor(label, dtype=torch.int64)
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample

    def _clip_indices(self, num_frames: int, generator: torch.Generator) -> list[int]:
        if len(self.strides) == 1 and not self.temporal_jitter:
            return train_clip_indices(num_frames, self.frames, self.stride, generator)
        return ctp_train_clip_indices(num_frames, self.frames, self.strides, self.temporal_jitter, generator)


def _checked_plan(planned, num_frames: int, path: str) -> tuple[list[list[int]], dict[str, Tensor]]:
    """Validate what ``sample_frames`` returned: (clips of equal length within the video, targets)."""
    try:
        clips, targets = planned
        clips = [[int(i) for i in clip] for clip in clips]
    except (TypeError, ValueError):
        raise TypeError(f"sample_frames must return (clips, targets) or None, got {type(planned).__name__}") from None
    if not clips or len({len(c) for c in clips}) != 1 or not clips[0]:
        raise ValueError(
            f"sample_frames returned clips of lengths {[len(c) for c in clips]}: expected non-empty clips of one length"
        )
    bad = [i for clip in clips for i in clip if not 0 <= i < num_frames]
    if bad:
        raise ValueError(f"sample_frames returned frame {bad[0]} for {path}, which has frames 0..{num_frames - 1}")
    if not isinstance(targets, dict) or not all(isinstance(v, Tensor) for v in targets.values()):
        raise TypeError("sample_frames targets must be a dict of tensors (e.g. {'speed': torch.tensor(3)})")
    return clips, dict(targets)


class EvalClipDataset(_ClipDataset):
    """``num_clips`` uniformly spaced, centre-cropped clips per video.

    Item ``i`` -> ``{"video": (N, C, T, crop, crop) normalised float, "label": int64,
    "index": int64}``; all N clips come from one open and one decode of the file.
    """

    def __init__(
        self,
        videos: Sequence[tuple[str | Path, int]],
        *,
        num_clips: int,
        frames: int,
        stride: int,
        short_side: int,
        crop_size: int,
        backend: str = "auto",
        sampling: str = "uniform",
        normalization: str = "kinetics",
    ):
        if num_clips <= 0:
            raise ValueError(f"num_clips={num_clips}: expected at least one clip per video")
        _check_clip(frames, stride, short_side, crop_size)
        self.videos = _as_videos(videos)
        self.num_clips, self.frames, self.stride = num_clips, frames, stride
        self.backend = backend
        self.short_side = short_side
        self.spatial = eval_transform(short_side, crop_size, sampling)
        self.sampling = sampling
        self.normalize = make_normalize(normalization)

    def __len__(self) -> int:
        return len(self.videos)

    def _unit_sample(self, index: int) -> dict[str, Tensor]:
        index = int(index)
        path, label = self.videos[index]
        with open_video(path, self.backend, short_side=self.short_side) as video:
            clips = eval_clip_indices(self.sampling, video.num_frames, self.num_clips, self.frames, self.stride)
            union = sorted({i for clip in clips for i in clip})
            decoded = video.get_frames(union)
        select = _frame_lookup(decoded, union)
        views = [_to_unit_float(self.spatial(select(clip))) for clip in clips]
        return {
            "video": torch.stack(views),
            "label": torch.tensor(label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


#: what becomes of an epoch's ragged last batch (:class:`EpochBatchSampler`)
LAST_BATCH = ("keep", "drop", "pad")


class EpochBatchSampler(Sampler[list[tuple[int, ...]]]):
    """Shuffled batches of ``(epoch, index)`` items over several epochs, in one pass (a
    padded batch's copies are ``(epoch, index, repeat)``, :func:`item_seed`).

    Epoch ``e`` visits the permutation seeded from ``(seed, e)`` (not from how often the
    loader ran before, so a resumed run sees the same order) in batches of ``batch_size``;
    ``drop_last`` drops each epoch's ragged last batch. The items carry their epoch, so a
    training round that runs over many short epochs needs one loader pass, and its
    workers start once instead of once per epoch.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        epochs: Sequence[int] | Callable[[], int],
        last_batch: str = "keep",
    ):
        # epochs: the epochs of every pass, or a callable giving the one epoch of the next
        # pass when it starts (a loader built once and re-iterated after set_epoch)
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: expected a positive integer")
        self.num_items, self.batch_size, self.seed = int(num_items), int(batch_size), int(seed)
        self.epochs = epochs if callable(epochs) else [int(e) for e in epochs]
        if last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch={last_batch!r}: expected one of {', '.join(LAST_BATCH)}")
        self.last_batch = last_batch

    def _pass_epochs(self) -> list[int]:
        return [int(self.epochs())] if callable(self.epochs) else self.epochs

    def _batches_per_epoch(self) -> int:
        full, ragged = divmod(self.num_items, self.batch_size)
        return full + (0 if self.last_batch == "drop" or ragged == 0 else 1)

    def __len__(self) -> int:
        return (1 if callable(self.epochs) else len(self.epochs)) * self._batches_per_epoch()

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        for epoch in self._pass_epochs():
            generator = torch.Generator().manual_seed(item_seed(self.seed, epoch, 0))
            order = torch.randperm(self.num_items, generator=generator).tolist()
            items = [(epoch, index) for index in order]
            if self.last_batch == "pad":  # CtP: indice += indice[:extra] (cycled if the epoch is shorter than a batch)
                extra = -self.num_items % self.batch_size
                items += [(epoch, order[k % self.num_items], 1 + k // self.num_items) for k in range(extra)]
            for start in range(0, self._batches_per_epoch() * self.batch_size, self.batch_size):
                yield items[start : start + self.batch_size]


def _recycle_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB instead of unmapping them.

    Every sample allocates a few MiB-sized tensors (decoded frames, float clip); with
    glibc's defaults each is a fresh mmap whose pages fault in again, which measured
    ~1.5 ms of CPU per 16-frame clip on the 2-core CI VM (perf/RESULTS.md). Workers
    live as long as their loader (one client's round, one fine-tuning), so holding on to
    that memory is harmless.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): keep the allocator's defaults
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)  # 32 MiB is glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 64 << 20)


#: Items of a batch each loader worker prepares at once by default (``items_in_flight``).
ITEMS_IN_FLIGHT = 2
#: This process's count (:func:`_in_flight`): a worker's init sets it, the training process keeps 1.
_items_in_flight = 1
_item_threads: ThreadPoolExecutor | None = None  # created in the worker, on its first batch


def _in_flight(make_item: Callable[[int], dict], keys: Sequence) -> Iterator[dict]:
    """``make_item(key)`` for ``keys``, in order, at most ``_items_in_flight`` made or held
    at once (the next is started when the oldest is taken, so a slow item does not let the
    others run ahead and pile up).

    One item alternates between its thread (opening the file, Python, the crop) and the
    decoder's own thread, so one item in flight keeps about one core busy; two keep two
    busy: one worker delivered 1.6-1.9x the clips/s of one item at a time (perf/RESULTS.md,
    issue 16 tenth pass). Every item draws from its own generator, so the items are the
    same whatever runs at once (the methods' per-sample hooks must not share mutable state:
    ``SSLMethod.sample_transform``); the batch keeps the keys' order."""
    global _item_threads
    if _items_in_flight <= 1 or len(keys) <= 1:
        yield from map(make_item, keys)
        return
    if _item_threads is None:
        _item_threads = ThreadPoolExecutor(_items_in_flight, thread_name_prefix="fedvid-item")
    remaining = iter(keys)
    pending = collections.deque(
        _item_threads.submit(make_item, k) for k in itertools.islice(remaining, _items_in_flight)
    )
    try:
        while pending:
            item = pending.popleft().result()
            for key in itertools.islice(remaining, 1):
                pending.append(_item_threads.submit(make_item, key))
            yield item
    finally:
        for future in pending:  # an item failed or the batch was abandoned: start no more
            future.cancel()


def _init_worker(worker_id: int, items_in_flight: int = 1) -> None:
    # Each worker is one decode pipeline; torch's intra-op threads and ffmpeg's frame
    # threads would only fight the other workers (and the training process) for the cores.
    global _items_in_flight
    torch.set_num_threads(1)
    set_decode_threads(1)
    _recycle_freed_memory()
    _items_in_flight = items_in_flight


def _loader_kwargs(num_workers: int, persistent: bool = False, items_in_flight: int = ITEMS_IN_FLIGHT) -> dict:
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers}: expected 0 or more")
    if items_in_flight < 1:
        raise ValueError(f"items_in_flight={items_in_flight}: expected 1 or more")
    return {
        "num_workers": num_workers,
        "persistent_workers": persistent and num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "worker_init_fn": functools.partial(_init_worker, items_in_flight=items_in_flight) if num_workers > 0 else None,
        "collate_fn": collate_batch,
    }


def _only_reference(storage: torch.UntypedStorage) -> bool:
    """Whether ``storage`` (a Python handle) is the last reference to its memory in this process."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it, nothing is released
    return use_count is not None and use_count(storage._cdata) == 1


class ClipLoader(DataLoader):
    """A DataLoader that gives its workers' batch buffers back (``release_batch_buffer``)
    as soon as no tensor of this process refers to a batch's ``"video"`` any more, checked
    each time the next batch is asked for; the batches themselves are the DataLoader's.

    It keeps its own handle on the last few buffers so that a buffer coming back is not
    mapped again (torch finds the live mapping in its shared-memory cache)."""

    def __iter__(self) -> Iterator:
        batches = super().__iter__()
        held = self.__dict__.setdefault("_held_buffers", {})  # data_ptr -> our one handle, oldest first
        pending = self.__dict__.setdefault("_pending_buffers", set())  # handed out, not released yet
        cap = _RING_SIZE * max(1, self.num_workers)  # more than every worker's ring holds
        while True:
            for ptr in [ptr for ptr in pending if _only_reference(held[ptr])]:
                release_batch_buffer(held[ptr])
                pending.discard(ptr)
            for ptr in list(held)[: max(0, len(held) - cap)]:
                del held[ptr]
                pending.discard(ptr)
            try:
                batch = _tensors_again(next(batches), self.pin_memory)
            except StopIteration:
                if not self.persistent_workers:  # nobody will reuse them: unmap now, not when the loader dies
                    held.clear()
                    pending.clear()
                return
            video = batch.get("video") if isinstance(batch, dict) else None
            if isinstance(video, Tensor) and video.is_shared():
                storage = video.untyped_storage()
                held.setdefault(storage.data_ptr(), storage)
                pending.add(storage.data_ptr())
                del storage
            yield batch
            del batch, video  # this frame's references would keep the batch from being released


class TrainLoader(ClipLoader):
    """A DataLoader whose workers persist from pass to pass (``persistent_workers``) until
    :meth:`close`, which a ``with`` block calls on exit, error included.

    A persistent worker keeps its process, its decoder caches (``inspect_video``'s
    per-file header) and its allocator's memory; what it loads is unchanged, because every
    item key carries its epoch (:class:`EpochBatchSampler`): the worker's copy of the
    dataset never needs the ``set_epoch`` the main process made after forking it.
    """

    def close(self) -> None:
        """Stop the workers now (idempotent; the next pass would start new ones)."""
        iterator, self._iterator = getattr(self, "_iterator", None), None
        self.__dict__.pop("_held_buffers", None)
        self.__dict__.pop("_pending_buffers", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own shutdown path
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    last_batch: str = "keep",
    epochs: Sequence[int] | None = None,
    items_in_flight: int = ITEMS_IN_FLIGHT,
) -> TrainLoader:
    """Shuffled loader over ``epochs`` (default: one epoch, the dataset's current one when
    iteration starts, so ``dataset.set_epoch(e)`` before each pass works as usual).

    Epoch ``e``'s order and augmentations are a function of ``(seed, e)``
    (:class:`EpochBatchSampler`), so iterating epochs 0..E-1 in one pass gives the batches
    that E passes with ``dataset.set_epoch(e)`` would. Batches are dicts of stacked
    tensors, e.g. ``"video"`` (B, C, T, H, W) or (B, V, C, T, H, W). The workers persist
    across passes: use the loader in a ``with`` block (or call ``close()``) so they stop
    when training ends or fails. Each worker prepares ``items_in_flight`` items of a batch
    at once (threads; the values do not depend on it).
    """
    if epochs is None:
        epochs = lambda: getattr(dataset, "epoch", 0)  # noqa: E731
    return TrainLoader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), batch_size, seed, epochs, last_batch),
        generator=torch.Generator().manual_seed(seed),
        **_loader_kwargs(num_workers, persistent=True, items_in_flight=items_in_flight),
    )


def make_eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, items_in_flight: int = ITEMS_IN_FLIGHT
) -> ClipLoader:
    """In-order loader over every item (no shuffling, no dropped batch)."""
    return ClipLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        **_loader_kwargs(num_workers, items_in_flight=items_in_flight),
    )
