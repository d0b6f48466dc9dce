"""Where a message's tensors travel: in the message, or beside it in shared memory.

In the message (deployment, an external Ray cluster): ``content["arrays"]`` is an
``ArrayRecord`` (:mod:`benchmark.federation.wire`).

Beside it (the simulation fedvid starts: SuperLink, ServerApp and every Ray actor on this
machine): Flower hands each ``Message`` to Ray, which pickles it into its object store,
and the actor's reply comes back the same way; at R3D-18 scale that is ~0.7-1.3 s per
133 MB message on 2 cores, and the round's global model is pickled once per sampled
client (perf/RESULTS.md, issue 16 fifth pass). Instead the server writes the round's global
model once into a file of a per-run directory on ``/dev/shm`` and every client's message
carries only its name and layout (``content["arrays-file"]``, a ``ConfigRecord``); a
client maps the file (no copy) and replies the same way in the same directory; the server
maps the replies and unlinks each file once mapped (its pages live until the last view is
dropped). The tensors are the same bytes either way, and :func:`exchange_size` counts the
bytes the message would carry in-band, so the round records are identical.

A payload file is raw tensor data at 64-byte-aligned offsets; its layout (names, numpy
dtypes, shapes, offsets) travels in the ``ConfigRecord``. The server maps only files of its
own directory named for the replying client and round (``PayloadFiles.check_reply``), never
a link or a non-regular file; if ``/dev/shm`` fills up during the run, the tensors of that
message travel in the message instead (logged).
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import shutil
import stat
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from benchmark.federation import reaper
from benchmark.federation.wire import record_from_state, state_from_record

log = logging.getLogger("flwr").getChild("fedvid.payloads")

ARRAYS = "arrays"  # ArrayRecord: the tensors in the message
ARRAYS_FILE = "arrays-file"  # ConfigRecord: the tensors in a payload file on this machine
SHARED_MEMORY = Path(reaper.SHARED_MEMORY)
_ALIGN = 64
_ROUND_PREFIX = "r"


def _npy_header_size(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Length of the ``.npy`` header ``np.save`` writes for a C-order array (what
    :func:`wire.record_from_state` puts before each tensor's data)."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return len(buf.getvalue())


def _as_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    arrays = {name: t.detach().cpu().numpy() for name, t in state.items()}
    # C order, as np.save writes it (np.ascontiguousarray would make 0-dim tensors 1-dim)
    return {name: a if a.flags.c_contiguous else a.copy(order="C") for name, a in arrays.items()}


def write_payload(path: Path, state: Mapping[str, torch.Tensor]) -> ConfigRecord:
    """Write ``state`` (name -> CPU tensor) to the new file ``path``; return the reference
    a message carries. The file must not exist (a name is never reused)."""
    arrays = _as_arrays(state)
    offsets, offset = [], 0
    for a in arrays.values():
        offset = -(-offset // _ALIGN) * _ALIGN
        offsets.append(offset)
        offset += a.nbytes
    try:
        with open(path, "xb") as f:
            for a, start in zip(arrays.values(), offsets):
                f.seek(start)
                if a.nbytes:
                    f.write(memoryview(a).cast("B"))
            f.truncate(offset)
    except BaseException:
        path.unlink(missing_ok=True)  # no partial file (e.g. /dev/shm full) is left behind
        raise
    return ConfigRecord(
        {
            "path": str(path),
            "bytes": offset,
            "names": list(arrays),
            "dtypes": [a.dtype.str for a in arrays.values()],
            "shapes": [",".join(map(str, a.shape)) for a in arrays.values()],
            "offsets": offsets,
        }
    )


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",")) if text else ()


def read_payload(ref: ConfigRecord, *, unlink: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a payload file as read-only views of its mapping (no copy).

    unlink: remove the file once mapped (the receiver that owns it: the server for
    replies); the views keep the pages until they are dropped."""
    path = Path(str(ref["path"]))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # never a link, never block on a FIFO
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RuntimeError(f"payload file {path} is not a regular file")
        if info.st_size != int(ref["bytes"]):
            raise RuntimeError(
                f"payload file {path} has {info.st_size} bytes, its message says {ref['bytes']}: it was cut short "
                "or replaced; the round's tensors are lost (is /dev/shm full? `df -h /dev/shm`)"
            )
        # copy-on-write: a stray in-place write changes this process's pages only (never the file)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if info.st_size else b""
    state: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # read-only by contract, as wire.state_from_record's views: PyTorch cannot enforce it
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, dtype, shape, offset in zip(ref["names"], ref["dtypes"], ref["shapes"], ref["offsets"]):
            dims = _shape(str(shape))
            count = int(np.prod(dims, dtype=np.int64))
            flat = np.frombuffer(mapped, dtype=np.dtype(str(dtype)), count=count, offset=int(offset))
            state[str(name)] = torch.from_numpy(flat.reshape(dims))
    if unlink:  # only once its tensors were read: a file that fails keeps its real error
        path.unlink()
    return state


class PayloadFiles:
    """A run's directory of payload files on this machine's shared memory (server side).

    directory: created here; :meth:`close` removes it with whatever is left in it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=False)  # the weights: this user's only

    @classmethod
    def for_run(cls, tag: str, run_dir: Path, needed_bytes: int, log=None) -> PayloadFiles | None:
        """The run's payload directory under ``/dev/shm``, or None (tensors travel in the
        messages) when ``/dev/shm`` is missing or has less than ``needed_bytes`` free."""
        if not SHARED_MEMORY.is_dir() or not os.access(SHARED_MEMORY, os.W_OK):
            if log is not None:
                log.warning("%s is missing or not writable: the tensors travel in the messages (slower)", SHARED_MEMORY)
            return None
        stat = os.statvfs(SHARED_MEMORY)
        free = stat.f_bavail * stat.f_frsize
        if free < needed_bytes:
            if log is not None:
                log.warning(
                    "/dev/shm has %.0f MB free, the round's tensors need %.0f MB: they travel in the messages (slower)",
                    free / 1e6,
                    needed_bytes / 1e6,
                )
            return None
        return cls(payload_directory(tag, run_dir))

    def check_reply(self, ref: ConfigRecord, server_round: int, client_id: int) -> None:
        """Refuse a reply's payload reference that is not client ``client_id``'s file of
        ``server_round`` in this directory: the server maps and unlinks what a reply names."""
        path = Path(str(ref["path"]))
        prefix = f"{_ROUND_PREFIX}{server_round:06d}-client{client_id}-"
        if path.parent != self.directory or not path.name.startswith(prefix) or path.suffix != ".bin":
            raise RuntimeError(f"the reply names {path}, not a payload file {self.directory}/{prefix}*.bin")

    def end_round(self, server_round: int) -> None:
        """Remove the files of rounds <= ``server_round`` still here (the global model's, and
        replies that came too late to be read)."""
        for entry in os.scandir(self.directory):
            if _file_round(entry.name) <= server_round:
                Path(entry.path).unlink(missing_ok=True)

    def close(self) -> None:
        for _ in range(3):  # a late client may still be writing into it
            shutil.rmtree(self.directory, ignore_errors=True)
            if not self.directory.exists():
                return


def payload_directory(tag: str, run_dir: Path) -> Path:
    """``/dev/shm/fedvid-<run tag>-<run dir id>-<uuid>``: whoever ends a run's processes
    (the launcher, the reaper of a killed launcher, a ServerApp whose launcher died) removes
    its directories by the tag (:func:`benchmark.federation.reaper.remove_payloads`)."""
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, str(Path(run_dir).resolve())).hex[:12]
    return SHARED_MEMORY / f"fedvid-{tag}-{run_id}-{uuid.uuid4().hex[:8]}"


def payload_name(server_round: int, what: str) -> str:
    return f"{_ROUND_PREFIX}{server_round:06d}-{what}-{uuid.uuid4().hex[:12]}.bin"


def _file_round(name: str) -> int:
    try:
        return int(name[len(_ROUND_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return -1


# --- both forms -------------------------------------------------------------------------
def pack(
    state: Mapping[str, torch.Tensor], *, files: PayloadFiles | Path | None, server_round: int, what: str
) -> dict[str, ArrayRecord | ConfigRecord]:
    """The records that carry ``state``: ``{"arrays": ArrayRecord}`` (files=None) or
    ``{"arrays-file": reference}`` of a new file in ``files`` (a PayloadFiles or a directory)."""
    if files is None:
        return {ARRAYS: record_from_state(state)}
    directory = files.directory if isinstance(files, PayloadFiles) else Path(files)
    try:
        return {ARRAYS_FILE: write_payload(directory / payload_name(server_round, what), state)}
    except OSError as exc:  # /dev/shm filled up since the run started: the message carries them
        log.warning("round %d: %s in the message (payload file: %s)", server_round, what, exc)
        return {ARRAYS: record_from_state(state)}


def unpack(content: RecordDict, *, unlink: bool = False) -> dict[str, torch.Tensor]:
    """The tensors a message carries, as read-only views (of its bytes or of a payload file)."""
    if ARRAYS_FILE in content:
        return read_payload(content[ARRAYS_FILE], unlink=unlink)
    return state_from_record(content[ARRAYS])


def reply_directory(content: RecordDict) -> Path | None:
    """Where a client writes its reply's payload: beside the file it received, or None (in the message)."""
    if ARRAYS_FILE in content:
        return Path(str(content[ARRAYS_FILE]["path"])).parent
    return None


def exchange_size(content: RecordDict) -> int:
    """Bytes of a message's records as serialized on the wire (protobuf) with its tensors in
    the message (a payload file counts as the ``ArrayRecord`` it replaces), without
    serializing the tensors: their ``.npy`` bytes plus the encoding of everything else (the
    records with empty tensor data). Smaller than the exact size by the growth of the
    tensors' length prefixes (at most 10 bytes per tensor: ~1 KB of R3D-18's 133 MB);
    serializing 133 MB per reply only to count it cost ~0.7 CPU s each (perf/bench_scale.py)."""
    light = RecordDict()
    data = 0
    for name, record in content.items():
        if name == ARRAYS_FILE:
            for d, sh in zip(record["dtypes"], record["shapes"]):  # the .npy bytes the ArrayRecord would hold
                dtype, dims = np.dtype(str(d)), _shape(str(sh))
                data += _npy_header_size(dtype, dims) + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            light[ARRAYS] = ArrayRecord(
                {
                    str(k): Array(dtype=np.dtype(str(d)).name, shape=_shape(str(s)), stype="numpy.ndarray", data=b"")
                    for k, d, s in zip(record["names"], record["dtypes"], record["shapes"])
                }
            )
        elif isinstance(record, ArrayRecord):
            data += sum(len(a.data) for a in record.values())
            light[name] = ArrayRecord(
                {k: Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=b"") for k, a in record.items()}
            )
        else:
            light[name] = record
    return data + int(recorddict_to_proto(light).ByteSize())
