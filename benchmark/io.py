"""Atomic, canonical file I/O shared by results, checkpoints and split manifests.

Everything the benchmark writes goes through here so that a crash never leaves a
half-written file where a complete one used to be (write to a temp file in the same
directory, fsync, then ``os.replace``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (same-directory temp file + ``os.replace``).

    ``mode`` (e.g. ``0o600`` for a private key) is set before any byte is written.
    ``fsync=False``: the data is not flushed to disk before the rename; the caller makes the
    file durable later with :func:`make_durable` (a crash of the process still leaves the old
    or the new file, never a mix; a power loss before ``make_durable`` may leave neither)."""
    return atomic_write_with(path, lambda f: f.write(data), mode=mode, fsync=fsync)


def atomic_write_with(
    path: str | os.PathLike, write: Callable[[BinaryIO], Any], mode: int | None = None, fsync: bool = True
) -> Path:
    """:func:`atomic_write_bytes` with ``write(file)`` writing the content (e.g. ``torch.save``
    straight into the file, without building the bytes in memory first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK if mode is None else mode)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def make_durable(paths: list[Path]) -> None:
    """fsync the files ``paths`` (those that exist) and their directories: what
    ``atomic_write_bytes(..., fsync=False)`` left to be done."""
    directories: set[Path] = set()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        directories.add(Path(path).parent)
    for directory in sorted(directories):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _reject_non_finite(obj: Any, where: str = "$") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number {obj!r} at {where}: JSON results must be finite")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _reject_non_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _reject_non_finite(v, f"{where}[{i}]")


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Deterministic JSON (sorted keys, no NaN/Infinity, trailing newline)."""
    _reject_non_finite(obj)
    return json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def canonical_json_bytes(obj: Any) -> bytes:
    """Canonical serialization used for content hashes: sorted keys, no whitespace, UTF-8."""
    _reject_non_finite(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically; ``.json.gz`` paths are gzip-compressed reproducibly (mtime 0)."""
    path = Path(path)
    data = dumps_json(obj).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    return atomic_write_bytes(path, data)


#: Largest JSON input read (uncompressed): far above any manifest (Kinetics-400: ~30 MB) or
#: record, far below what would exhaust memory.
MAX_JSON_BYTES = 256 * 2**20
#: Deepest nesting accepted; benchmark files nest < 10 levels. Checked on files up to
#: DEPTH_CHECKED_BYTES (records, configs: the walk would double a large manifest's load time,
#: and a manifest's fixed structure is validated on load); deeper than the parser's
#: recursion limit is refused for every file.
MAX_JSON_DEPTH = 64
DEPTH_CHECKED_BYTES = 4 * 2**20


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON or ``.json.gz`` file; errors name the file and what is wrong.

    Inputs larger than ``max_bytes`` (after decompression) are refused before they are
    parsed; inputs nested too deeply (:data:`MAX_JSON_DEPTH`) after.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    too_big = ValueError(f"{path}: larger than {max_bytes / 2**20:.0f} MiB; not a FedVid-Bench JSON file")
    if path.stat().st_size > max_bytes:
        raise too_big
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read(max_bytes + 1)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e})") from e
        if len(raw) > max_bytes:
            raise too_big
    else:
        raw = path.read_bytes()
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except RecursionError:
        obj, depth = None, "more than 900"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    else:
        depth = _depth(obj) if len(raw) <= DEPTH_CHECKED_BYTES else 0
    if obj is None or depth > MAX_JSON_DEPTH:
        raise ValueError(
            f"{path}: JSON nested {depth} levels deep (limit {MAX_JSON_DEPTH}); not a FedVid-Bench JSON file"
        )
    return obj


def _depth(obj: Any) -> int:
    """Deepest list/dict nesting of a parsed JSON value (iterative: no recursion limit)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_JSON_DEPTH:
            break
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed in benchmark JSON")
