"""From anomaly scores to alerts: a threshold calibrated online to a target false-positive rate.

Why calibrate: a raw score has no universal scale (a robust z of 5 is rare on one metric and
daily on another, an isolation-forest score of 0.6 means nothing by itself). What an operator can
state is a budget: "at most 0.5% of points may alert". If anomalies are rare, the
``1 - target_fpr`` quantile of the scores seen so far is the threshold that spends that budget
on normal data. The quantile is tracked in a DDSketch (bounded memory, relative accuracy), fed
every score of the series, and re-read every ``update_every`` scores.

Rules, per series, all in points of the series (so chunking changes nothing):

* a point alerts when its score is above the threshold in force before it;
* the threshold is re-estimated at fixed positions (every ``update_every`` finite scores), from
  all finite scores before that position;
* no alert during the first ``warmup`` finite scores (the quantile is not known yet);
* after an alert, the next ``cooldown`` points raise none: one alert per excursion, not one per
  point of it (a long anomaly is one incident for whoever is paged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..agg.ddsketch import DDSketch


@dataclass
class ThresholdCalibrator:
    """Turns one series' scores into ``is_anomaly`` flags; state is kept between calls."""

    target_fpr: float = 0.01
    warmup: int = 200
    cooldown: int = 0
    update_every: int = 16
    relative_accuracy: float = 0.005
    _sketch: DDSketch | None = field(default=None, init=False, repr=False)
    _threshold: float | None = field(default=None, init=False, repr=False)
    _scored: int = field(default=0, init=False, repr=False)
    _points: int = field(default=0, init=False, repr=False)
    _last_alert: int = field(default=-(10**18), init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr!r}")
        if self.warmup < 0 or self.cooldown < 0 or self.update_every < 1:
            raise ValueError("warmup and cooldown must be >= 0 and update_every >= 1")

    @property
    def threshold(self) -> float | None:
        """The threshold in force now (None during the first ``update_every`` scores)."""
        return self._threshold

    def update(self, scores: np.ndarray) -> np.ndarray:
        """Flags for a chunk of consecutive scores of the series (NaN: not scored, never alerts),
        then learns the chunk's scores."""
        scores = np.asarray(scores, dtype=np.float64)
        if self._sketch is None:
            self._sketch = DDSketch(self.relative_accuracy, max_buckets=8192)
        over = np.zeros(len(scores), dtype=bool)
        at = np.flatnonzero(np.isfinite(scores))
        finite = scores[at]
        i = 0
        while i < len(finite):
            position = self._scored + i
            j = min(len(finite), (position // self.update_every + 1) * self.update_every - self._scored)
            if self._threshold is not None:
                past_warmup = np.arange(position, position + j - i) >= self.warmup
                over[at[i:j]] = past_warmup & (finite[i:j] > self._threshold)
            self._sketch.add(finite[i:j])
            if (self._scored + j) % self.update_every == 0:
                self._threshold = self._sketch.quantile(1.0 - self.target_fpr)
            i = j
        self._scored += len(finite)
        flags = self._debounce(over)
        self._points += len(scores)
        return flags

    def _debounce(self, over: np.ndarray) -> np.ndarray:
        """Keep an over-threshold point as an alert only past the cooldown of the previous alert."""
        if self.cooldown == 0:
            if over.any():
                self._last_alert = self._points + int(np.flatnonzero(over)[-1])
            return over
        flags = np.zeros(len(over), dtype=bool)
        last = self._last_alert
        for index in np.flatnonzero(over).tolist():  # loops over candidates only, not over points
            if self._points + index - last > self.cooldown:
                flags[index] = True
                last = self._points + index
        self._last_alert = last
        return flags
