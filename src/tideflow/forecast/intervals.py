"""Prediction intervals from the running h-step forecast errors a forecaster actually made.

Why empirical errors per step ``h`` rather than the model's own variance formula: the textbook
interval of an AR model (``sigma^2 * sum(psi_j^2)`` from its MA(inf) form) is right only when the
model is right. A forecaster on a stream is always somewhat wrong (the process drifts, the order
is too small, a baseline is not a model at all), and the error of a 24-step forecast is not a
known multiple of the one-step error. So every forecaster keeps, for each step ``h``, the
forecasts it made ``h`` points ago, and when a value arrives it scores them: the interval at step
``h`` is built from the errors of earlier step-``h`` forecasts, whatever produced them.

Why a running mean square rather than running quantiles: the mean square is a sum, so it updates
in O(max_horizon) per point, exactly and in order, with exponential forgetting (so the width follows
regime changes), and it is vectorized over steps. It is the *uncentred* second moment, so a
biased forecaster gets wider intervals instead of intervals centred on the wrong value. The price
is a shape assumption: the interval is ``mean ± z * rms`` with ``z`` the normal quantile, so for
heavy-tailed errors the nominal coverage is approximate. Quantile tracking would drop that
assumption but needs either a window of raw errors per step (memory ``window * max_horizon`` and a
sort per forecast) or stochastic-approximation updates that depend on step sizes and ordering.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def normal_quantile(coverage: float) -> float:
    """The ``z`` of a central interval with the given coverage (0.9 -> 1.645)."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    return NormalDist().inv_cdf(0.5 + coverage / 2.0)


class HorizonErrors:
    """Running (exponentially forgotten) mean square of the h-step errors, h = 1..max_horizon.

    ``update(values, paths)`` takes consecutive values and, for each, the forecast path made right
    after it was learned (``paths[j, h-1]`` forecasts the value ``h`` points after ``values[j]``).
    For each arriving value it first scores the paths made ``h`` points earlier (kept from previous
    calls, so the result does not depend on how the series is cut into calls), then stores the new
    path. Each arrival multiplies every step's running sums by ``forgetting``; a step with no error
    scored yet has an infinite rms (an unbounded interval: nothing is known about it yet).
    """

    def __init__(self, max_horizon: int, forgetting: float = 0.999) -> None:
        if max_horizon < 1:
            raise ValueError(f"max_horizon must be at least 1, got {max_horizon!r}")
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting!r}")
        self.max_horizon = max_horizon
        self.forgetting = forgetting
        self._pending = np.full((max_horizon, max_horizon), np.nan)
        """Paths of the last ``max_horizon`` origins, oldest first (NaN: no such origin yet)."""
        self._sums = np.zeros(2 * max_horizon)
        """Decayed sum of squared errors (first half) and decayed count of errors (second half)."""

    @property
    def rms(self) -> np.ndarray:
        """The current root mean square error per step (``inf`` where no error was scored yet)."""
        return self._rms(self._sums[None, :])[0]

    def _rms(self, sums: np.ndarray) -> np.ndarray:
        h = self.max_horizon
        squares, weights = sums[:, :h], sums[:, h:]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(weights > 0, np.sqrt(squares / np.where(weights > 0, weights, 1.0)), np.inf)

    def update(self, values: np.ndarray, paths: np.ndarray) -> np.ndarray:
        """Score and store; returns the rms per step after each value, shape ``(n, max_horizon)``."""
        n, h = values.shape[0], self.max_horizon
        if paths.shape != (n, h):
            raise ValueError(f"paths must have shape {(n, h)}, got {paths.shape}")
        every = np.vstack([self._pending, paths])  # origins -h..n-1, one row each
        rows = h + np.arange(n)[:, None] - np.arange(1, h + 1)[None, :]
        errors = values[:, None] - every[rows, np.arange(h)[None, :]]
        scored = np.isfinite(errors)
        increments = np.hstack([np.where(scored, errors * errors, 0.0), scored.astype(np.float64)])
        sums = decayed_cumsum(increments, self.forgetting, self._sums)
        self._sums = sums[-1].copy()
        self._pending = every[-h:].copy()
        return self._rms(sums)


def decayed_cumsum(increments: np.ndarray, decay: float, initial: np.ndarray) -> np.ndarray:
    """``out[j] = decay * out[j-1] + increments[j]`` along axis 0, from ``out[-1] = initial``.

    A plain loop over rows (each row one vector operation): it performs the same floating-point
    operations in the same order however the rows are split between calls, so running sums are
    bit-for-bit independent of batching. Closed forms (powers of ``decay``) would be faster for
    long inputs but overflow or lose precision for small ``decay``.
    """
    out = np.empty_like(increments)
    acc = np.array(initial, dtype=np.float64, copy=True)
    for j in range(increments.shape[0]):
        acc *= decay
        acc += increments[j]
        out[j] = acc
    return out
