"""mlm_lab.intervals: the paired Student-t interval against hand-computed values."""

from __future__ import annotations

import math

import pytest
from mlm_lab.intervals import paired_interval


def test_paired_interval_matches_a_hand_computed_t_interval():
    # differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.290994, se 0.645497; t(0.975, 3 df) = 3.182446 (tables).
    interval = paired_interval([1.0, 2.0, 3.0, 4.0])
    assert interval["mean"] == pytest.approx(2.5)
    assert interval["half_width"] == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)  # 2.054260
    assert (interval["low"], interval["high"]) == (pytest.approx(0.44574, abs=1e-4), pytest.approx(4.55426, abs=1e-4))
    # Two seeds: t(0.975, 1 df) = 12.706205; differences 10 and 20: sd 7.0710678, se 5.
    assert paired_interval([10.0, 20.0])["half_width"] == pytest.approx(12.706205 * 5, rel=1e-6)
    assert math.isnan(paired_interval([3.0])["half_width"])


def test_excludes_zero_only_when_the_interval_is_wholly_on_one_side():
    from mlm_lab.intervals import excludes_zero

    assert not excludes_zero(paired_interval([1.0, 2.0, 3.0]))  # mean 2, half-width 2.48: [-0.48, +4.48]
    assert excludes_zero(paired_interval([2.0, 2.5, 3.0]))  # [+1.26, +3.74]
    assert excludes_zero(paired_interval([-3.0, -2.5, -2.0]))  # [-3.74, -1.26]
