"""Map annotation records to video files under a dataset root.

Every record of a list is looked up under the user's dataset root. A video that is
missing, has zero bytes, (with ``probe_decode=True``) cannot be decoded to its end, or was
found unusable by a cached ``fedvid data check`` (benchmark.data.check) is reported
with its path; a run goes on with the present subset only when the user allows it
(``allow_missing_videos=true``), and the counts are kept so the result records them.

Paths in lists are relative to the dataset root and can never leave it: absolute paths
and ``..`` components are rejected (:func:`check_relative_path`).

The official UCF101 lists spell one class's files ``HandstandPushups/v_HandStandPushups_*``
while the released files are ``v_HandstandPushups_*``; when an exact path is missing it
is therefore looked up case-insensitively, one path component at a time, using cached
directory listings (one ``os.scandir`` per directory, so the cost is O(files)).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from benchmark.data.records import VideoRecord

#: Reasons that make a video unusable (it is skipped, and a run needs permission to go on).
#: ``unusable``: ``fedvid data check`` found the file (unchanged since) truncated, corrupt or
#: not frame-exact (benchmark.data.check).
SKIP_REASONS = ("missing", "empty", "undecodable", "unusable")
#: Reported for information only: the file was found under a differently cased name.
CASE_RESOLVED = "case-mismatch-resolved"

#: How many problem paths an error message names before summarising the rest.
_SHOWN_IN_ERROR = 5


def check_relative_path(path: str, where: str) -> str:
    """Return ``path`` unchanged if it is a '/'-separated path that stays inside the dataset root.

    ``where`` names the list entry (file and line, or manifest key) for the error.
    Raises ``ValueError`` for empty, absolute (``/x``, ``C:/x``), backslash or ``..`` paths.
    (Plain string checks: this runs once per listed video, 200k+ times for Kinetics.)
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}: empty video path {path!r}; expected a path relative to the dataset root")
    if "\\" in path or "\x00" in path:
        raise ValueError(
            f"{where}: video path {path!r} contains a backslash or NUL byte; "
            "lists must use '/' separators relative to the dataset root"
        )
    if path.startswith("/") or (len(path) > 1 and path[1] == ":" and path[0].isalpha()):
        raise ValueError(
            f"{where}: video path {path!r} is absolute; paths in lists must be relative to the dataset root"
        )
    if ".." in path.split("/"):
        raise ValueError(f"{where}: video path {path!r} contains '..'; paths in lists may not leave the dataset root")
    return path


@dataclass(frozen=True)
class VideoProblem:
    """One listed video that is not usable as listed.

    path: the path as listed (relative to the dataset root).
    reason: ``missing`` | ``empty`` | ``undecodable`` | ``unusable`` (skipped) or
        ``case-mismatch-resolved`` (found under another case; used, for information).
    file: the absolute path that was checked (or found, for a resolved case mismatch).
    detail: decoder error, or the name the file was found under.
    """

    path: str
    reason: str
    file: Path
    detail: str = ""

    @property
    def skipped(self) -> bool:
        return self.reason in SKIP_REASONS

    def describe(self) -> str:
        text = f"{self.path} ({self.reason}: {self.file})"
        return f"{text} {self.detail}" if self.detail else text


@dataclass
class ResolvedVideos:
    """The result of :func:`resolve_videos`.

    present: (record, absolute file path) of every usable video, in list order.
    problems: every video not usable as listed, in list order (see ``VideoProblem``).
    """

    root: Path
    num_records: int
    present: list[tuple[VideoRecord, Path]] = field(default_factory=list)
    problems: list[VideoProblem] = field(default_factory=list)

    def _count(self, reason: str) -> int:
        return sum(1 for p in self.problems if p.reason == reason)

    @property
    def skipped(self) -> list[VideoProblem]:
        return [p for p in self.problems if p.skipped]

    @property
    def num_missing(self) -> int:
        return self._count("missing")

    @property
    def num_empty(self) -> int:
        return self._count("empty")

    @property
    def num_undecodable(self) -> int:
        return self._count("undecodable")

    @property
    def num_unusable(self) -> int:
        return self._count("unusable")

    @property
    def num_case_resolved(self) -> int:
        return self._count(CASE_RESOLVED)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> dict[str, int]:
        """Counts to record in a result: listed, present, skipped and each reason."""
        return {
            "listed": self.num_records,
            "present": len(self.present),
            "skipped": self.num_skipped,
            "missing": self.num_missing,
            "empty": self.num_empty,
            "undecodable": self.num_undecodable,
            "unusable": self.num_unusable,
            "case_mismatch_resolved": self.num_case_resolved,
        }


class MissingVideosError(RuntimeError):
    """Some listed videos are missing, empty or undecodable and a partial run was not allowed."""

    def __init__(self, resolved: ResolvedVideos):
        self.resolved = resolved
        skipped = resolved.skipped
        counts = Counter(p.reason for p in skipped)
        by_reason = ", ".join(f"{counts[r]} {r}" for r in SKIP_REASONS if counts[r])
        shown = "\n".join(f"  - {p.describe()}" for p in skipped[:_SHOWN_IN_ERROR])
        more = f"\n  ... and {len(skipped) - _SHOWN_IN_ERROR} more" if len(skipped) > _SHOWN_IN_ERROR else ""
        checked = (
            " Files marked unusable were found so by `fedvid data check` (its report in the data root says why)."
            if counts["unusable"]
            else ""
        )
        if resolved.present:
            fix = (
                checked[1:]
                + (" " if checked else "")
                + (
                    "Check the dataset root and layout (datasets/README.md), or set allow_missing_videos=true "
                    f"to run on the {len(resolved.present)} present videos (the skipped count is recorded in the result)."
                )
            )
        else:
            fix = "No listed video is usable: check dataset.root and the layout described in datasets/README.md."
        super().__init__(
            f"{len(skipped)} of {resolved.num_records} listed videos are unusable under dataset root "
            f"{resolved.root} ({by_reason}):\n{shown}{more}\n{fix}"
        )


class _Listings:
    """Cached directory listings for case-insensitive lookups (one scandir per directory)."""

    def __init__(self) -> None:
        self._lower: dict[Path, dict[str, list[str]] | None] = {}

    def names(self, directory: Path) -> dict[str, list[str]] | None:
        if directory not in self._lower:
            try:
                with os.scandir(directory) as entries:
                    table: dict[str, list[str]] = {}
                    for entry in entries:
                        table.setdefault(entry.name.casefold(), []).append(entry.name)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                table = None
            self._lower[directory] = table
        return self._lower[directory]

    def find(self, root: Path, rel: PurePosixPath) -> tuple[Path | None, str]:
        """Resolve ``rel`` under ``root`` component by component, exact name first.

        Returns (path, "") or (None, why) when absent or ambiguous.
        """
        current = root
        for part in rel.parts:
            candidate = current / part
            if candidate.exists():
                current = candidate
                continue
            table = self.names(current)
            matches = (table or {}).get(part.casefold(), [])
            if len(matches) > 1:
                return None, f"(several files match case-insensitively: {sorted(matches)})"
            if not matches:
                return None, ""
            current = current / matches[0]
        return current, ""


def probe_video(path: Path) -> str:
    """Return "" when ``path`` decodes, else why: a full sequential decode
    (benchmark.data.check), so a truncated or corrupt file is caught too. (``fedvid data
    check`` also compares random-access frames with that decode.)"""
    from benchmark.data.check import check_video

    result = check_video(path, random_access=False)
    return "" if result["status"] == "ok" else "; ".join(result["problems"])


def _skip_checked_unusable(resolved: ResolvedVideos) -> None:
    """Move the present videos that the cached ``fedvid data check`` found unusable (and that
    have not changed since) to ``problems`` as ``unusable``. Unchecked files stay present."""
    from benchmark.data.check import unusable_in_cache

    found = unusable_in_cache(resolved.root, [file for _, file in resolved.present])
    if not found:
        return
    kept = []
    for record, file in resolved.present:
        if file in found:
            resolved.problems.append(VideoProblem(record.path, "unusable", file, f"({found[file]})"))
        else:
            kept.append((record, file))
    resolved.present = kept


def resolve_videos(
    records: Iterable[VideoRecord],
    root: str | os.PathLike,
    *,
    allow_missing: bool = False,
    probe_decode: bool = False,
    show_progress: bool | None = None,
) -> ResolvedVideos:
    """Find each record's file under ``root``.

    A record whose file is missing, zero bytes, (``probe_decode``) undecodable, or found
    unusable by a cached ``fedvid data check`` (the nearest ``.fedvid-check`` at or above
    ``root``; the file unchanged since) becomes a ``VideoProblem`` and is left out of
    ``present``. When any video is skipped and
    ``allow_missing`` is false, ``MissingVideosError`` is raised (it names the first
    paths, the counts, and how to allow a partial run). ``show_progress`` (default: lists
    of 2,000+ videos, or 50+ when decoding) shows a rich progress bar.

    Raises ``FileNotFoundError`` when ``root`` is not a directory, ``ValueError`` for a
    path that is absolute or contains ``..``, and ``MissingVideosError`` as above (also
    when no listed video is present at all, even if missing videos are allowed).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root} does not exist or is not a directory; set dataset.root (or data_root) "
            "to where the videos are laid out as described in datasets/README.md"
        )
    records = list(records)
    for i, record in enumerate(records):
        check_relative_path(record.path, f"record {i} ({record.path!r})")
    resolved = ResolvedVideos(root=root, num_records=len(records))
    listings = _Listings()
    if show_progress is None:
        show_progress = len(records) >= (50 if probe_decode else 2000)

    from rich.progress import track

    description = f"{'decoding' if probe_decode else 'checking'} videos under {root}"
    for record in track(records, description=description, disable=not show_progress, transient=True):
        exact = root / record.path
        found, why = (exact, "") if exact.is_file() else listings.find(root, PurePosixPath(record.path))
        if found is None or not found.is_file():
            resolved.problems.append(VideoProblem(record.path, "missing", exact, why))
            continue
        if found != exact:
            resolved.problems.append(VideoProblem(record.path, CASE_RESOLVED, found, f"(listed as {record.path!r})"))
        if found.stat().st_size == 0:
            resolved.problems.append(VideoProblem(record.path, "empty", found, "(zero bytes)"))
            continue
        if probe_decode:
            error = probe_video(found)
            if error:
                resolved.problems.append(VideoProblem(record.path, "undecodable", found, f"({error})"))
                continue
        resolved.present.append((record, found))

    _skip_checked_unusable(resolved)
    if resolved.num_skipped and (not allow_missing or not resolved.present):
        raise MissingVideosError(resolved)
    return resolved
