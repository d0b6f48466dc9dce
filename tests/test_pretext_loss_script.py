"""perf/pretext_loss.py's per-chunk verdict (the rule docs/compare.md reports steps with)."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "pretext_loss.py"


@pytest.fixture(scope="module")
def pl():
    spec = importlib.util.spec_from_file_location("pretext_loss", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_loss_rule_is_five_percent_below_chance(pl):
    chance = math.log(7)  # Speed: 7 playback speeds
    below = pl.chunk_row("speed", 3, [0.949 * chance] * 50, [], 8)
    near = pl.chunk_row("speed", 3, [0.951 * chance] * 50, [], 8)
    assert below["chance"] == pytest.approx(1.9459, abs=1e-4)
    assert below["steps"] == "151-200"
    assert below["learned"] and not near["learned"]


def test_accuracy_rule_needs_two_chunks_above_three_standard_errors(pl):
    # Speed, 50 steps x 8 clips = 400 clips: p = 1/7, se = sqrt(p (1 - p) / 400) = 0.017496
    row = pl.chunk_row("speed", 10, [1.94] * 50, [0.2] * 50, 8)
    assert row["acc_z"] == pytest.approx(3.27, abs=0.005)
    assert not row["learned"]  # one chunk alone is not enough
    assert pl.chunk_row("speed", 11, [1.94] * 50, [0.2] * 50, 8, prev_z=3.1)["learned"]
    assert not pl.chunk_row("speed", 11, [1.94] * 50, [0.2] * 50, 8, prev_z=2.9)["learned"]


def test_ctp_has_no_chance_level(pl):
    row = pl.chunk_row("ctp", 0, [0.5] * 50, [], 8)
    assert "chance" not in row and not row["learned"]
