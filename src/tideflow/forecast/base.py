"""The forecaster protocol: learn from consecutive values, forecast ``1..horizon`` steps ahead.

A forecaster follows one series, point after point, online: it never sees a value before it has
forecast it. The protocol is River-like and small:

* ``learn(values)`` takes the next consecutive values of the series (one or many at once:
  learning a chunk is vectorized where the model allows it);
* ``forecast(horizon)`` returns a :class:`Forecast` for the next ``horizon`` points, with a central
  prediction interval at the forecaster's ``coverage``;
* ``predict_learn(values, horizon)`` is prequential evaluation in one call: for each value, the
  forecast made *before* it arrived, then it is learned. ``learn_forecast`` is the same shifted by
  one: the forecast made right *after* each value (what a stream emits when a point arrives).

Both results are independent of how the series is cut into calls: everything a forecaster does
with a chunk is a fold over its values in order, with state carried between calls.

Subclasses implement one method, ``_learn_paths(values)``: learn the values in order and return,
for each, the mean forecast path made right after it (``max_horizon`` steps). The base class
scores those paths against the values that follow (:class:`HorizonErrors`) to give the intervals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from .intervals import HorizonErrors, normal_quantile


@dataclass(frozen=True)
class Forecast:
    """Point forecasts and a central prediction interval; the last axis is the step (1..horizon).

    From ``forecast(h)`` the arrays have shape ``(h,)``; from ``predict_learn``/``learn_forecast``
    on ``n`` values, ``(n, h)``. Before a forecaster has seen any value, everything is NaN; a step
    whose error was never scored yet has an unbounded interval (``-inf``, ``+inf``).
    """

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    coverage: float

    @property
    def horizon(self) -> int:
        return int(self.mean.shape[-1])


def as_series(values: Any) -> np.ndarray:
    """Consecutive values as a 1-D float array; missing or infinite values are refused, because
    a forecaster cannot skip a point without shifting every lag it keeps."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"a forecaster learns a 1-D series of consecutive values, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"values must be finite numbers; value {bad} is {array[bad]!r}")
    return array


class Forecaster(ABC):
    """Base class: the prequential bookkeeping and the intervals; subclasses bring the model.

    ``max_horizon`` is the furthest step whose errors are tracked (so the furthest step it can
    forecast with an interval); ``coverage`` the nominal coverage of the central interval;
    ``error_forgetting`` how fast old errors are forgotten (0.999: about the last 1,000 points).
    """

    def __init__(self, *, max_horizon: int = 24, coverage: float = 0.9, error_forgetting: float = 0.999) -> None:
        self.max_horizon = int(max_horizon)
        self.coverage = float(coverage)
        self._z = normal_quantile(self.coverage)
        self._errors = HorizonErrors(self.max_horizon, error_forgetting)
        self._path = np.full(self.max_horizon, np.nan)
        """Mean forecast path made after the last value learned."""
        self._rms = np.full(self.max_horizon, np.inf)
        """Running rms error per step after the last value learned."""
        self.n_seen = 0
        """How many values have been learned."""

    # -- the model ----------------------------------------------------------------------------
    @abstractmethod
    def _learn_paths(self, values: np.ndarray) -> np.ndarray:
        """Learn ``values`` (1-D, finite, at least one) in order; return the mean forecast path
        made right after each, shape ``(len(values), max_horizon)``."""

    # -- the protocol -------------------------------------------------------------------------
    def learn(self, values: Any) -> None:
        """Learn the next consecutive values of the series."""
        self._advance(as_series(values))

    def forecast(self, horizon: int = 1) -> Forecast:
        """Forecast the next ``horizon`` values (steps 1..horizon after the last value learned)."""
        self._check_horizon(horizon)
        return self._make(self._path[:horizon], self._rms[:horizon])

    def learn_forecast(self, values: Any, horizon: int = 1) -> Forecast:
        """Learn each value, and after each, forecast the ``horizon`` values that follow it.

        Row ``j`` of the result is what ``forecast(horizon)`` would return right after
        ``learn(values[: j + 1])``."""
        self._check_horizon(horizon)
        paths, rms = self._advance(as_series(values))
        return self._make(paths[:, :horizon], rms[:, :horizon])

    def predict_learn(self, values: Any, horizon: int = 1) -> Forecast:
        """Prequential: for each value, the forecast made before it arrived; then learn it.

        Row ``j`` forecasts ``values[j]`` at step 1 (and the values after it at steps 2..horizon)
        from everything before ``values[j]``: no value is used before it is forecast."""
        self._check_horizon(horizon)
        series = as_series(values)
        before_path, before_rms = self._path.copy(), self._rms.copy()
        paths, rms = self._advance(series)
        paths = np.vstack([before_path[None, :], paths[:-1]]) if len(series) else paths
        rms = np.vstack([before_rms[None, :], rms[:-1]]) if len(series) else rms
        return self._make(paths[:, :horizon], rms[:, :horizon])

    # -- helpers ------------------------------------------------------------------------------
    def _advance(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if values.shape[0] == 0:
            empty = np.empty((0, self.max_horizon))
            return empty, empty.copy()
        paths = self._learn_paths(values)
        rms = self._errors.update(values, paths)
        self._path, self._rms = paths[-1].copy(), rms[-1].copy()
        self.n_seen += values.shape[0]
        return paths, rms

    def _make(self, mean: np.ndarray, rms: np.ndarray) -> Forecast:
        half = self._z * rms
        with np.errstate(invalid="ignore"):
            return Forecast(mean=mean.copy(), lower=mean - half, upper=mean + half, coverage=self.coverage)

    def _check_horizon(self, horizon: int) -> None:
        if not 1 <= horizon <= self.max_horizon:
            raise ValueError(
                f"horizon must be between 1 and max_horizon={self.max_horizon}, got {horizon!r}; "
                "intervals need the errors of every step, so raise max_horizon when creating the forecaster"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_horizon={self.max_horizon}, coverage={self.coverage}, seen={self.n_seen})"
