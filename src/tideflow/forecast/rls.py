"""An online autoregressive forecaster fitted by recursive least squares (RLS).

Why RLS: an AR model is linear in its coefficients, so least squares has an exact recursive form
that costs O(p^2) per point (``p`` coefficients) and needs no pass over the past, no learning rate
and no batches. With a forgetting factor ``lambda`` the fit is the weighted least squares over the
whole past with weights ``lambda^age``: it follows a drifting process, remembering roughly the last
``1 / (1 - lambda)`` points (0.999: about 1,000).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Forecaster

_BLOCK = 1024
"""Origins whose forecast paths are iterated together (bounds the working memory)."""


class RLSAutoRegressive(Forecaster):
    """AR(``order``) model with an intercept and optional seasonal lags, updated by RLS.

    The one-step model is ``y[t+1] = c + sum_k a_k * y[t+1-k]`` over the lags
    ``k in 1..order`` plus ``seasonal_lags`` (e.g. ``(24, 168)`` for hourly data with daily and
    weekly cycles: two coefficients instead of an AR(168)). Multi-step forecasts iterate the
    one-step model, feeding forecasts back as lags (the "recursive" strategy: one model for every
    horizon, with the compounding of errors that the empirical intervals then measure).

    Fitting: exponentially weighted least squares, updated per point by the standard RLS
    recursion (gain ``g = P x / (lambda + x' P x)``, ``theta += g * error``,
    ``P = (P - g x' P) / lambda``). The prior is ``theta = random walk`` (coefficient 1 on lag 1,
    0 elsewhere) with covariance ``delta * I``: before it has learned anything the model forecasts
    the last value, and a large ``delta`` (a weak prior) lets the data take over within a few
    points; the fitted coefficients forecast only after ``warmup`` updates (default: twice the
    number of parameters), the prior before. ``delta`` is on the scale of the coefficients; the
    series itself should be on a moderate scale (standardise it if its values are huge or tiny).
    The model learns only from points whose lags are all real values (from point ``max_lag`` on);
    before that its forecasts use the first value for the missing past.

    Intervals: per step ``h``, from the running mean square of its own h-step errors (see
    :mod:`tideflow.forecast.intervals` for why empirical per-step errors rather than the AR
    variance formula). ``frozen = True`` stops the coefficient updates (the lags and the error
    statistics still follow the data): a model fitted on a training period and then only applied.

    Windup: with ``forgetting < 1``, ``P`` grows by ``1 / lambda`` per point in every direction the
    data do not excite (a constant stretch of the series makes the intercept and the lags
    collinear), and overflows after some thousands of points. Its trace is therefore capped at the
    prior's, ``delta * p``: the model never becomes more uncertain than before it saw any data.
    """

    def __init__(
        self,
        order: int = 24,
        *,
        forgetting: float = 0.999,
        seasonal_lags: Iterable[int] = (),
        delta: float = 100.0,
        warmup: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order!r}")
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting!r}")
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta!r}")
        extra = [int(k) for k in seasonal_lags]
        if any(k < 1 for k in extra):
            raise ValueError(f"seasonal lags must be positive, got {extra!r}")
        self.order = int(order)
        self.forgetting = float(forgetting)
        self.delta = float(delta)
        self.lags = np.array(sorted(set(range(1, self.order + 1)) | set(extra)), dtype=np.int64)
        """The lags of the model, ascending; ``coef[i]`` multiplies the value ``lags[i]`` back."""
        self.max_lag = int(self.lags[-1])
        size = 1 + self.lags.shape[0]
        self.theta = np.zeros(size)
        """``[intercept, coef...]``."""
        self.theta[1] = 1.0  # lags[0] == 1: the random-walk prior
        self.P = self.delta * np.eye(size)
        """The (scaled) inverse of the weighted Gram matrix: the RLS state beside ``theta``."""
        self.prior = self.theta.copy()
        self.warmup = 2 * size if warmup is None else int(warmup)
        """Updates before the fitted coefficients are used: with fewer points than parameters
        the least-squares solution is underdetermined, and iterating it 12 steps once forecast
        2.5e7 for a CPU series around 40. Until then forecasts use the prior (the last value)."""
        self.updates = 0
        self.frozen = False
        self._history: np.ndarray | None = None
        """The last ``max_lag`` values, oldest first."""

    @property
    def intercept(self) -> float:
        return float(self.theta[0])

    @property
    def coef(self) -> np.ndarray:
        """The AR coefficients, aligned with ``lags``."""
        return self.theta[1:].copy()

    def _learn_paths(self, values: np.ndarray) -> np.ndarray:
        if self._history is None:
            self._history = np.full(self.max_lag, values[0])
        extended = np.concatenate([self._history, values])
        thetas = self._fit(extended, values)
        paths = self._iterate(extended, thetas)
        self._history = extended[-self.max_lag :].copy()
        return paths

    def _fit(self, extended: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Update the coefficients value by value; return them after each value, ``(n, p)``."""
        n, m = values.shape[0], self.max_lag
        thetas = np.empty((n, self.theta.shape[0]))
        first = max(0, m - self.n_seen)  # the first value whose lags are all real values
        if self.frozen or first >= n:
            thetas[:] = self.theta
            return thetas
        thetas[:first] = self.theta
        positions = m + np.arange(first, n)  # where each learned value sits in ``extended``
        design = np.empty((n - first, thetas.shape[1]))
        design[:, 0] = 1.0
        design[:, 1:] = extended[positions[:, None] - self.lags[None, :]]
        targets = values[first:]
        theta, p, lam = self.theta.copy(), self.P.copy(), self.forgetting
        cap = self.delta * theta.shape[0]
        updates, warmup, prior = self.updates, self.warmup, self.prior
        for i in range(targets.shape[0]):
            x = design[i]
            px = p @ x
            gain = px / (lam + x @ px)
            theta += gain * (targets[i] - x @ theta)
            p -= np.outer(gain, px)
            if lam != 1.0:
                p /= lam
            p = 0.5 * (p + p.T)  # rounding makes P drift from symmetric, and then from positive definite
            trace = np.trace(p)
            if trace > cap:  # windup: see the class docstring
                p *= cap / trace
            updates += 1
            thetas[first + i] = theta if updates >= warmup else prior
        self.theta, self.P, self.updates = theta, p, updates
        return thetas

    def _iterate(self, extended: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """The forecast path after each value: the one-step model iterated ``max_horizon`` times
        with the coefficients of that moment, for a block of origins at once."""
        n, m, horizon = thetas.shape[0], self.max_lag, self.max_horizon
        windows = sliding_window_view(extended, m)[1 : n + 1]  # row j: the last m values up to value j
        paths = np.empty((n, horizon))
        for start in range(0, n, _BLOCK):
            stop = min(n, start + _BLOCK)
            work = np.empty((stop - start, m + horizon))
            work[:, :m] = windows[start:stop]
            intercept, coef = thetas[start:stop, 0], thetas[start:stop, 1:]
            for step in range(horizon):
                column = m + step
                work[:, column] = intercept + np.einsum("ij,ij->i", coef, work[:, column - self.lags])
            paths[start:stop] = work[:, m:]
        return paths
