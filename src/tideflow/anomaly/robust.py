"""Robust z-score: how far a point is from the median of the trailing window, in robust sigmas.

Why robust: server metrics have spikes and level shifts, which drag a mean and a standard
deviation along with them and hide the next anomaly. The median and the median absolute
deviation (MAD) of the trailing window barely move under a few outliers, so a genuine excursion
stands out. ``score = |x - median| / (1.4826 MAD)``; 1.4826 makes the MAD a standard deviation
for normal data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import as_float_array, floored, keep_tail, robust_center_scale, trailing_stats


@dataclass
class RobustZScore:
    """``|x - median| / robust sigma`` over the trailing ``window`` points (excluding the point).

    ``window=288`` is one day of 5-minute samples. ``min_spread_ratio`` floors the spread at that
    fraction of ``|median|``, so a flat metric's tiny wiggle is not an alert.
    """

    window: int = 288
    min_history: int = 48
    min_spread_ratio: float = 0.01
    _history: np.ndarray = field(default_factory=lambda: np.empty(0), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.window < 2 or not 1 <= self.min_history <= self.window:
            raise ValueError("need window >= 2 and 1 <= min_history <= window")

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        x = as_float_array(values)
        center, scale = trailing_stats(self._history, x, self.window, self.min_history, robust_center_scale)
        self._history = keep_tail(self._history, x, self.window)
        return np.abs(x - center) / floored(scale, center, self.min_spread_ratio)
