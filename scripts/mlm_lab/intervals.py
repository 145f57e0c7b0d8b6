"""Confidence intervals for paired comparisons over seeds (the same seed in both arms of an experiment)."""

from __future__ import annotations

import math
import statistics

from scipy import stats

CONFIDENCE = 0.95


def paired_interval(differences: list[float], confidence: float = CONFIDENCE) -> dict:
    """Mean of paired differences and its Student-t confidence interval: mean ± t(n−1) · sd / √n (NaN for n < 2)."""
    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        half = math.nan
    else:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return {"mean": mean, "half_width": half, "low": mean - half, "high": mean + half, "n": n}


def excludes_zero(interval: dict) -> bool:
    """Whether a :func:`paired_interval` lies wholly on one side of 0 (the difference stands above seed noise)."""
    return interval["low"] > 0 or interval["high"] < 0
