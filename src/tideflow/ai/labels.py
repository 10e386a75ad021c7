"""Delayed labels: predictions wait for the truth that arrives later on another stream.

A fraud score is known to be right or wrong days later; a load forecast when the hour has
passed. ``join_labels`` pairs each prediction with its label by id, in event time, within a
horizon (an interval join). Pairs feed evaluation and learning; a prediction whose label does
not come within the horizon leaves on its own stream, so it is counted, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from .._duration import Duration

if TYPE_CHECKING:
    from ..flow import Stream


@dataclass(frozen=True)
class LabelledPredictions:
    matched: Stream
    """Predictions with their label's columns (one row per label that matched)."""
    unlabelled: Stream
    """Predictions whose label did not come within the horizon (label columns null)."""


def join_labels(
    predictions: Stream,
    labels: Stream,
    step: str,
    *,
    on: str | Sequence[str],
    label: str,
    within: Duration,
    before: Duration = 0,
) -> LabelledPredictions:
    """Pair predictions with labels having the same ``on`` key whose event time falls in
    ``[prediction time - before, prediction time + within]``.

    Both streams need event time and a watermark: a prediction is declared unlabelled once the
    labels' watermark passes its time plus ``within``. ``label`` names the labels' column that
    is null exactly when no label matched (use the label value itself).
    """
    joined = predictions.interval_join(step, labels, on=on, lower=before, upper=within, how="left")
    matched, unlabelled = joined.branch(f"{step}-matched", pl.col(label).is_not_null())
    return LabelledPredictions(matched, unlabelled)
