"""The demo's figures, computed after the run from what it wrote (so they describe the outputs).

* telemetry: NAB's standard-profile score over the series (raw scores summed, normalised once:
  0 = never alerting, 100 = perfect), precision of alert points and recall of labelled windows,
  from ``points.parquet`` and the labelled windows — labels are read here and nowhere else;
* forecast: MAE and interval coverage over every (forecast, actual) pair of ``forecast.parquet``,
  beside the MAE of repeating the last value (what the forecaster has to beat);
* text: held-out accuracy of ``tweets.parquet``.

A figure with nothing to compute from is None (JSON null): a run stopped early, a series without
labelled windows in the data read, a branch that did not run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from ..eval.nab import STANDARD, FileScore, PointPrecisionRecall, point_precision_recall, score_corpus, score_file
from .text import evaluate


def _number(value: float, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def read_parquet(path: Path) -> pl.DataFrame | None:
    """The table at ``path``; None when the run wrote nothing there."""
    return pl.read_parquet(path) if path.is_file() else None


@dataclass(frozen=True)
class TelemetryFigures:
    alerts: int
    nab_score: float | None
    precision: float | None
    recall: float | None
    windows: int
    detected_windows: int
    false_positives: int
    per_series: dict[str, float | None]


def telemetry_figures(
    points: pl.DataFrame | None, labels: Mapping[str, Sequence[tuple[datetime, datetime]]]
) -> TelemetryFigures:
    """NAB score, precision and recall of the alerts (``is_anomaly``) in ``points``.

    Each series is scored on the points the flow processed, in their order (after cleaning and
    dedupe: the timestamps NAB's windows refer to); a series without labels still counts through
    its false positives, as in NAB.
    """
    if points is None or points.height == 0:
        return TelemetryFigures(0, None, None, None, 0, 0, 0, {})
    scores: dict[str, FileScore] = {}
    counts = PointPrecisionRecall(0, 0, 0, 0)
    for (name,), series in points.partition_by("series", as_dict=True, maintain_order=True).items():
        windows = list(labels.get(str(name), []))
        timestamps, alerts = series.get_column("timestamp"), series.get_column("is_anomaly")
        scores[str(name)] = score_file(timestamps, alerts, windows, STANDARD)
        counts = counts + point_precision_recall(timestamps, alerts, windows)
    corpus = score_corpus(scores)
    return TelemetryFigures(
        alerts=int(points.get_column("is_anomaly").sum()),
        nab_score=_number(corpus.normalised, 1),
        precision=_number(counts.precision, 3),
        recall=_number(counts.recall, 3),
        windows=counts.windows,
        detected_windows=counts.detected_windows,
        false_positives=corpus.false_positives,
        per_series={name: _number(scores[name].normalised, 1) for name in sorted(scores)},
    )


def forecast_figures(pairs: pl.DataFrame | None) -> dict[str, Any]:
    """``mae``, ``coverage`` and ``naive_mae`` over every pair (all horizon steps), and ``pairs``."""
    if pairs is None or pairs.height == 0:
        return {"mae": None, "coverage": None, "naive_mae": None, "pairs": 0}
    # The last value known when a forecast was made is the actual of the pairs that target made_at.
    known = pairs.select(pl.col("series"), pl.col("target_time").alias("made_at"), pl.col("actual").alias("last"))
    naive = pairs.join(known.unique(["series", "made_at"]), on=["series", "made_at"], how="inner")
    naive_mae = naive.select((pl.col("last") - pl.col("actual")).abs().mean()).item() if naive.height else None
    return {
        "mae": _number(pairs.get_column("abs_error").mean(), 3),  # type: ignore[arg-type]
        "coverage": _number(pairs.get_column("covered").mean(), 3),  # type: ignore[arg-type]
        "naive_mae": None if naive_mae is None else _number(naive_mae, 3),
        "pairs": pairs.height,
    }


def text_figures(tweets: pl.DataFrame | None) -> dict[str, Any]:
    """Held-out ``accuracy``, ``macro_f1``, ``majority_baseline`` and the number of ``tweets`` scored."""
    if tweets is None or tweets.height == 0:
        return {"accuracy": None, "macro_f1": None, "majority_baseline": None, "tweets": 0}
    figures = evaluate(tweets)
    return {name: round(value, 3) for name, value in figures.items()} | {"tweets": tweets.height}
