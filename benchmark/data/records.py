"""Plain records shared by the readers, the split manifests and the loaders."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoRecord:
    """One video of an annotation list.

    path: the video's path exactly as written in the official list, relative to the
        dataset root (e.g. ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi``).
    label: 0-based class index in the dataset's class list.
    class_name: the class name as the dataset spells it.
    """

    path: str
    label: int
    class_name: str


@dataclass
class AnnotationSplit:
    """The train and test records of one dataset split, with the source lists' hashes."""

    dataset: str
    split: str
    classes: list[str]
    train: list[VideoRecord]
    test: list[VideoRecord]
    #: relative path of each source annotation file -> sha256 of its bytes
    source_sha256: dict[str, str] = field(default_factory=dict)
