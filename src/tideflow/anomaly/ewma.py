"""EWMA control chart: a smoothed statistic watched against limits learnt from the series.

Why EWMA: Roberts' (1959) exponentially weighted moving average chart reacts to small,
persistent shifts that a point-by-point z-score misses, at the cost of some delay on a lone
spike, and it needs only a few numbers of state per series. The fast statistic
``s_t = lam x_t + (1 - lam) s_{t-1}`` is compared with a slowly learnt mean ``mu`` and standard
deviation ``sigma`` of the series: ``score = |s_t - mu| / (sigma sqrt(lam / (2 - lam)))``, the
chart's distance to its centre line in units of its own standard deviation.

The slow estimates are exponentially weighted too (rate ``alpha``, with ``1 / n`` instead of
``alpha`` for the first points so they start as plain averages) and learn *winsorized* values:
a point further than ``clip`` sigmas from the mean moves them as if it were at ``clip`` sigmas,
so an anomaly does not widen the limits that should catch the next one, while a lasting level
shift is still absorbed, a bounded step at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .base import MIN_SCALE, as_float_array


@dataclass
class EWMAChart:
    """EWMA control chart score per point; NaN for the first ``min_history`` points."""

    lam: float = 0.3
    """Weight of the newest point in the charted statistic (small: smoother, slower)."""
    alpha: float = 0.01
    """Learning rate of the centre line and sigma (about 1 / (100 points) of memory)."""
    clip: float = 4.0
    min_history: int = 48
    min_spread_ratio: float = 0.01
    _n: int = field(default=0, init=False, repr=False)
    _stat: float = field(default=0.0, init=False, repr=False)
    _mean: float = field(default=0.0, init=False, repr=False)
    _var: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.lam <= 1 or not 0 < self.alpha <= 1:
            raise ValueError("lam and alpha must be in (0, 1]")

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        x = as_float_array(values)
        out = np.full(len(x), np.nan)
        lam, alpha, clip, ratio = self.lam, self.alpha, self.clip, self.min_spread_ratio
        chart_width = math.sqrt(lam / (2.0 - lam))
        n, stat, mean, var = self._n, self._stat, self._mean, self._var
        # A scalar recurrence: each point depends on the previous state, so it is a loop (about
        # a microsecond per point); the state is four floats, so chunking cannot change a result.
        for i, value in enumerate(x.tolist()):
            if n == 0:
                stat = mean = value
                n = 1
                continue
            stat = lam * value + (1.0 - lam) * stat
            sigma = max(math.sqrt(var), abs(mean) * ratio, MIN_SCALE)
            if n >= self.min_history:
                out[i] = abs(stat - mean) / (sigma * chart_width)
            n += 1
            rate = max(alpha, 1.0 / n)
            residual = value - mean
            if n > self.min_history:
                bound = clip * sigma
                residual = min(max(residual, -bound), bound)
            mean += rate * residual
            var = (1.0 - rate) * (var + rate * residual * residual)
        self._n, self._stat, self._mean, self._var = n, stat, mean, var
        return out
