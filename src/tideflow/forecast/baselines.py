"""Baseline forecasters: the yardsticks a model has to beat before it is worth running.

* :class:`SeasonalNaive`: tomorrow at 10:00 is today at 10:00 (the value one ``period`` ago);
* :class:`LastValue`: the next values all equal the last one (seasonal-naive with period 1,
  the "repeat" baseline of the forecasting literature);
* :class:`EWMA`: a flat forecast at an exponentially weighted mean of the past (simple
  exponential smoothing);
* :class:`Holt`: exponential smoothing with a (damped) linear trend.

Their intervals come from their own running h-step errors, like every forecaster's
(see :mod:`tideflow.forecast.intervals`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Forecaster


class SeasonalNaive(Forecaster):
    """Forecast each step by the last observed value at the same phase of the season.

    Step ``h`` after the value at ``t`` is forecast by the value at ``t + h - period * ceil(h / period)``.
    Until a whole season has been seen, the phases not seen yet are taken as the first value
    (a flat past), so the forecaster answers from its first point.
    """

    def __init__(self, period: int = 24, **options: Any) -> None:
        super().__init__(**options)
        if period < 1:
            raise ValueError(f"period must be at least 1, got {period!r}")
        self.period = int(period)
        steps = np.arange(1, self.max_horizon + 1)
        self._offsets = steps - self.period * np.ceil(steps / self.period).astype(np.int64)
        """For step h: the position, relative to the newest value, of the value it repeats (<= 0)."""
        self._history: np.ndarray | None = None
        """The last ``period`` values, oldest first."""

    def _learn_paths(self, values: np.ndarray) -> np.ndarray:
        if self._history is None:
            self._history = np.full(self.period, values[0])
        extended = np.concatenate([self._history, values])
        newest = self.period + np.arange(values.shape[0])  # index of each value in ``extended``
        paths = extended[newest[:, None] + self._offsets[None, :]]
        self._history = extended[-self.period :].copy()
        return paths


class LastValue(SeasonalNaive):
    """Every step is forecast by the last value seen (the naive, "repeat" forecast)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(period=1, **options)


class EWMA(Forecaster):
    """Simple exponential smoothing: a flat forecast at ``level = alpha * y + (1 - alpha) * level``.

    The level starts at the first value. ``alpha`` near 1 follows the last value (naive), near 0
    averages a long past.
    """

    def __init__(self, alpha: float = 0.3, **options: Any) -> None:
        super().__init__(**options)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.level: float | None = None

    def _learn_paths(self, values: np.ndarray) -> np.ndarray:
        # A scalar Python loop: a first-order recurrence has no vector form that is both exact
        # and stable, and at ~0.1 µs per value it is not what limits a stream.
        a, keep = self.alpha, 1.0 - self.alpha
        level = self.level
        levels = np.empty(values.shape[0])
        for j, value in enumerate(values.tolist()):
            level = value if level is None else a * value + keep * level
            levels[j] = level
        self.level = level
        return np.repeat(levels[:, None], self.max_horizon, axis=1)


class Holt(Forecaster):
    """Exponential smoothing with a damped additive trend (Gardner & McKenzie).

    ``level = alpha * y + (1 - alpha) * (level + phi * trend)``,
    ``trend = beta * (level - previous level) + (1 - beta) * phi * trend``; step ``h`` is forecast
    by ``level + (phi + ... + phi^h) * trend``. ``damping`` (``phi``) below 1 flattens the trend
    with the horizon, which long horizons need: an undamped trend extrapolated 96 steps is
    usually worse than none. The level starts at the first value, the trend at 0.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.05, damping: float = 0.98, **options: Any) -> None:
        super().__init__(**options)
        for name, value in (("alpha", alpha), ("beta", beta), ("damping", damping)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        self.alpha, self.beta, self.damping = float(alpha), float(beta), float(damping)
        self._trend_weights = np.cumsum(self.damping ** np.arange(1, self.max_horizon + 1))
        self.level: float | None = None
        self.trend = 0.0

    def _learn_paths(self, values: np.ndarray) -> np.ndarray:
        a, b, phi = self.alpha, self.beta, self.damping
        level, trend = self.level, self.trend
        levels, trends = np.empty(values.shape[0]), np.empty(values.shape[0])
        for j, value in enumerate(values.tolist()):
            if level is None:
                level = value
            else:
                previous = level
                level = a * value + (1.0 - a) * (level + phi * trend)
                trend = b * (level - previous) + (1.0 - b) * phi * trend
            levels[j], trends[j] = level, trend
        self.level, self.trend = level, trend
        return levels[:, None] + trends[:, None] * self._trend_weights[None, :]
