"""State dicts to and from Flower ``ArrayRecord``s with one copy or none.

Flower's own conversions cost a chain of copies per 133 MB R3D-18 state
(``Array.from_torch_tensor``: ``np.save`` into a ``BytesIO`` in chunks, then
``getvalue``; ``ArrayRecord.to_torch_state_dict``: ``np.load`` from a ``BytesIO``).
The two functions here produce the same bytes and the same values:

- :func:`record_from_state`: the ``.npy`` bytes ``np.save`` writes (same header, same
  data), built with a single copy of each tensor's data;
- :func:`state_from_record`: tensors that *view* the message's bytes (no copy). The bytes
  object is immutable and so are these tensors: they are read-only by contract (the
  aggregators only read client updates), and nothing the server keeps aliases them — the
  next global model is a new tensor dict (tests/test_wire.py).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

_NPY_PREFIX = 8  # magic (6 bytes) + version (2 bytes)


def _npy_bytes(array: np.ndarray) -> bytes:
    """``np.save(buf, array, allow_pickle=False)`` bytes of a C-contiguous array, one copy."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return b"".join((header.getvalue(), memoryview(array).cast("B")))


def record_from_state(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state)``, bit for bit, in one copy of the data.

    state: name -> CPU tensor (any shape/dtype numpy knows). Tensors numpy would not save
    as C-order bytes (non-contiguous, 0-size) go through Flower's own conversion.
    """
    arrays: dict[str, Array] = {}
    for name, tensor in state.items():
        array = tensor.detach().cpu().numpy()
        if not array.flags.c_contiguous or array.size == 0 or array.dtype.hasobject:
            arrays[name] = Array.from_numpy_ndarray(array)
            continue
        try:
            data = _npy_bytes(array)
        except ValueError:  # a header numpy writes in format 2.0 (huge structured dtypes)
            arrays[name] = Array.from_numpy_ndarray(array)
            continue
        arrays[name] = Array(dtype=str(array.dtype), shape=tuple(array.shape), stype="numpy.ndarray", data=data)
    return ArrayRecord(arrays)


def _view(array: Array) -> torch.Tensor:
    data = array.data
    buf = io.BytesIO(data[:_NPY_PREFIX])
    version = np.lib.format.read_magic(buf)
    header = io.BytesIO(data)
    header.seek(_NPY_PREFIX)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    count = int(np.prod(shape, dtype=np.int64))
    if fortran or dtype.hasobject or count == 0:
        return torch.from_numpy(array.numpy())
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=header.tell())
    with warnings.catch_warnings():
        # read-only by contract (module docstring): PyTorch warns that it cannot enforce it
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(flat.reshape(shape))


def state_from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Name -> read-only tensor viewing the record's bytes (the values of
    ``record.to_torch_state_dict()``, without copying 133 MB per R3D-18 message)."""
    return {name: _view(array) for name, array in record.items()}
