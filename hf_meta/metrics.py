"""Summary statistics reported for episodes and seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t, so it is honest for 3-5 seeds too)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("`values` is empty: no episode or seed to summarise.")
    if values.size == 1:
        return float(values[0]), float("nan")
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean()), float(half)
