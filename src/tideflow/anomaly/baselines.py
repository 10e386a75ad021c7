"""Baseline detectors to measure the others against: a windowed Gaussian and random scores.

Why baselines: a score on a benchmark means little alone. NAB's scoreboard lists a "windowed
Gaussian" and a random detector beside the real ones; running the same kind of baselines on the
same files, through the same thresholding, says how much a detector actually adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import MIN_SCALE, as_float_array, keep_tail, trailing_stats


@dataclass
class WindowedGaussian:
    """``|x - mean| / std`` over the trailing ``window`` points (excluding the point).

    The plain, non-robust z-score: outliers inflate the mean and standard deviation they are
    compared against, which is what the robust z-score fixes.
    """

    window: int = 288
    min_history: int = 48
    _history: np.ndarray = field(default_factory=lambda: np.empty(0), init=False, repr=False)

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        x = as_float_array(values)
        mean, std = trailing_stats(self._history, x, self.window, self.min_history, _mean_std)
        self._history = keep_tail(self._history, x, self.window)
        return np.abs(x - mean) / np.maximum(std, MIN_SCALE)


def _mean_std(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows.mean(axis=1), rows.std(axis=1)


@dataclass
class RandomScores:
    """Uniform random scores from a seeded generator: a detector that knows nothing.

    Through a ``ThresholdCalibrator`` it alerts at random at the calibrated rate, which is the
    score any detector must beat. Draws are sequential, so chunking does not change them.
    """

    seed: int = 0
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng.random(len(as_float_array(values)))
