"""Isolation Forest (Liu, Ting & Zhou 2008) refitted on a sliding window of recent points.

Why: an isolation forest scores how few random axis-parallel cuts isolate a point; it needs no
distributional assumption and sees combinations of features (a normal value that arrives with an
abnormal jump). It is a batch model, so on a stream it is refitted every ``refit_every`` points on
the features of the last ``train_window`` points, and scores the points that follow with the model
fitted on data strictly before them (no lookahead). Refits happen at fixed positions of the series
(multiples of ``refit_every``) with a fixed seed, so the scores do not depend on the chunking.

Features per point: the value, its change from the previous value, and its deviation from the
mean of the previous ``mean_window`` values. Scores are the paper's ``s(x)`` in ``(0, 1]``
(``-score_samples``): about 0.5 for ordinary points, towards 1 for anomalies. Needs scikit-learn
(``tideflow[ml]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ai._imports import require
from .base import as_float_array, keep_tail, trailing_stats


def _mean(rows: np.ndarray) -> tuple[np.ndarray]:
    return (rows.mean(axis=1),)


@dataclass
class SlidingIsolationForest:
    """scikit-learn's ``IsolationForest`` refitted every ``refit_every`` points; NaN until the first
    fit (at the first multiple of ``refit_every`` with at least ``min_train`` points behind it)."""

    refit_every: int = 288
    train_window: int = 2016
    min_train: int = 288
    mean_window: int = 12
    n_estimators: int = 100
    max_samples: int = 256
    seed: int = 42
    _n: int = field(default=0, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _features: np.ndarray = field(default_factory=lambda: np.empty((0, 3)), init=False, repr=False)
    _tail: np.ndarray = field(default_factory=lambda: np.empty(0), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.refit_every < 1 or self.min_train < 2 or self.train_window < self.min_train:
            raise ValueError("need refit_every >= 1 and 2 <= min_train <= train_window")

    def features(self, x: np.ndarray) -> np.ndarray:
        """The feature rows of a fresh chunk (value, change, deviation from the trailing mean);
        learns the trailing values it needs for the next chunk."""
        combined = np.concatenate([self._tail, x])
        previous = combined[len(self._tail) - 1 : -1] if len(self._tail) else np.concatenate([x[:1], x[:-1]])
        (mean,) = trailing_stats(self._tail, x, self.mean_window, 1, _mean)
        mean = np.where(np.isnan(mean), x, mean)  # the first point of a series: no past, no deviation
        self._tail = keep_tail(self._tail, x, self.mean_window)
        return np.column_stack([x, x - previous, x - mean])

    def _fit(self) -> None:
        ensemble = require("sklearn.ensemble", "ml", what="SlidingIsolationForest")
        train = self._features[-self.train_window :]
        model = ensemble.IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(train)),
            random_state=self.seed,
        )
        self._model = model.fit(train)

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        x = as_float_array(values)
        feats = self.features(x)
        out = np.full(len(x), np.nan)
        start, i = self._n, 0
        while i < len(x):
            position = start + i
            if position % self.refit_every == 0 and position >= self.min_train:
                self._fit()
            j = min(len(x), (position // self.refit_every + 1) * self.refit_every - start)
            if self._model is not None:
                out[i:j] = -self._model.score_samples(feats[i:j])
            self._features = keep_tail(self._features, feats[i:j], self.train_window)
            i = j
        self._n = start + len(x)
        return out
