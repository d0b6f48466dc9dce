"""The evaluation feature cache is keyed on the videos' identity, not only their names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmark.evaluation.features import ClipSettings, feature_cache_key

FIXTURES = Path(__file__).parent / "fixtures" / "videos"
CLIP = ClipSettings(num_clips=1, frames=4, stride=2, short_side=64, crop_size=56, backend="auto")


def key(videos):
    return feature_cache_key("model-sha", "synthetic_ucf101", "test", "avg", CLIP, videos)


def test_swapped_or_rewritten_videos_get_a_new_key(tmp_path):
    a, b = tmp_path / "a.avi", tmp_path / "b.avi"
    shutil.copy(FIXTURES / "plain_mpeg4.avi", a)
    shutil.copy(FIXTURES / "packed_xvid.avi", b)
    videos = [(str(a), 0), (str(b), 1)]
    first = key(videos)
    assert key(videos) == first  # unchanged files: the cached features are reused

    # swap the two files' contents (renames, as a re-download or re-extraction would)
    a.rename(tmp_path / "t.avi")
    b.rename(a)
    (tmp_path / "t.avi").rename(b)
    swapped = key(videos)
    assert swapped != first

    # rewrite one in place with another video of any size: new mtime
    stat = os.stat(a)
    a.write_bytes((FIXTURES / "h264_in.avi").read_bytes())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert key(videos) not in (first, swapped)
