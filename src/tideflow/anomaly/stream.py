"""Anomaly detection as a step of a flow: per-series detectors and thresholds on micro-batches.

Why a ``map_batches`` step with per-key state (not ``stateful_map``): detectors vectorize over
the points of a series within a batch, and a batch holds many points of each series. The step
splits a batch by series, keeps each series in arrival order, hands each run of points to that
series' own detector and calibrator (created on first sight, kept between batches), and puts the
rows back in their original order. A detector's scores do not depend on chunking, so a series
gets the same scores in a flow as from calling its detector on the whole series.

Checkpoints: the scorer's ``snapshot()`` / ``restore()`` (which the ``map_batches`` step calls)
deep-copy every series' detector and calibrator, so a restored flow goes on scoring and
alerting exactly as the uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .base import Detector
from .threshold import ThresholdCalibrator

if TYPE_CHECKING:
    from ..flow import Stream
    from ..ops.base import OnError

_ROW = "__anomaly_row"
_SNAPSHOT_VERSION = 1


@dataclass
class AnomalyScorer:
    """The ``map_batches`` callable behind ``detect_anomalies``; holds one detector and one
    calibrator per series. Rows whose value is null or not finite get a null score and no alert,
    and are not learnt (a gap, not a zero)."""

    detector_factory: Callable[[], Detector]
    calibrator_factory: Callable[[], ThresholdCalibrator] = ThresholdCalibrator
    key: str | None = "series"
    on: str = "value"
    time: str | None = "timestamp"
    score_column: str = "anomaly_score"
    flag_column: str = "is_anomaly"
    detectors: dict[Hashable, Detector] = field(default_factory=dict, init=False, repr=False)
    calibrators: dict[Hashable, ThresholdCalibrator] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        if df.height == 0:
            return df.with_columns(
                pl.lit(None, pl.Float64).alias(self.score_column), pl.lit(False).alias(self.flag_column)
            )
        if self.key is None:
            scores, flags = self._score(None, df)
            return df.with_columns(scores, flags)
        indexed = df.with_row_index(_ROW)
        parts = []
        for part in indexed.partition_by(self.key, maintain_order=True):
            scores, flags = self._score(part.get_column(self.key)[0], part)
            parts.append(part.with_columns(scores, flags))
        return pl.concat(parts).sort(_ROW).drop(_ROW)

    def snapshot(self) -> dict[str, Any]:
        """Every series' detector and calibrator, deep-copied (together, so nothing they share is
        duplicated); the factories are configuration, rebuilt with the flow."""
        detectors, calibrators = copy.deepcopy((self.detectors, self.calibrators))
        return {
            "kind": "anomaly_scorer",
            "version": _SNAPSHOT_VERSION,
            "detectors": detectors,
            "calibrators": calibrators,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "anomaly_scorer" or state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"not an anomaly scorer snapshot (kind {state.get('kind')!r})")
        self.detectors, self.calibrators = copy.deepcopy((state["detectors"], state["calibrators"]))

    def _score(self, series: Hashable, part: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        if series not in self.detectors:
            self.detectors[series] = self.detector_factory()
            self.calibrators[series] = self.calibrator_factory()
        values = part.get_column(self.on).cast(pl.Float64).to_numpy()
        usable = np.isfinite(values)
        times = part.get_column(self.time).to_numpy() if self.time is not None else None
        scores = np.full(len(values), np.nan)
        if usable.all():
            scores = np.asarray(self.detectors[series].score(values, times), dtype=np.float64)
        elif usable.any():
            scores[usable] = self.detectors[series].score(values[usable], None if times is None else times[usable])
        flags = self.calibrators[series].update(scores)
        return (
            pl.Series(self.score_column, scores, dtype=pl.Float64, nan_to_null=True),
            pl.Series(self.flag_column, flags, dtype=pl.Boolean),
        )


def detect_anomalies(
    stream: Stream,
    step: str,
    detector_factory: Callable[[], Detector],
    *,
    key: str | None = "series",
    on: str = "value",
    time: str | None = "timestamp",
    calibrator: Callable[[], ThresholdCalibrator] = ThresholdCalibrator,
    on_error: OnError | None = None,
) -> Stream:
    """Add ``anomaly_score`` (float, null while a series warms up) and ``is_anomaly`` (bool).

    ``detector_factory()`` makes the detector of a new series (``key`` column; ``None``: the whole
    stream is one series), ``calibrator()`` its threshold. ``on`` is the value column, ``time`` the
    timestamp column (for detectors that use the clock; ``None`` if there is none). Rows keep
    their order. Points of a series must arrive in time order: detectors learn as they go, and
    nothing is reordered for them (put it behind a source with ``tdf.Monotonic()`` or sorted
    files).
    """
    return stream.map_batches(
        step,
        AnomalyScorer(detector_factory, calibrator, key=key, on=on, time=time),
        same_rows=True,
        stateful=True,  # detectors learn each row once: a failing batch is not retried in halves
        on_error=on_error,
    )
