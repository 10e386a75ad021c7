"""What every anomaly detector is: a small online estimator for one series.

Why this shape (River's, not scikit-learn's): a stream has no "training set". A detector scores
each point against what it has seen *before* that point, then learns it, and keeps its state
between calls. ``score(values, timestamps)`` takes a chunk of consecutive points of one series so
that the work inside a chunk can be vectorized; the scores must not depend on where the series
was cut into chunks (each detector's tests check chunked == whole, bit for bit), which is what
makes a streaming run reproduce an offline one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MIN_SCALE = 1e-9
"""Smallest spread a detector divides by: keeps a perfectly flat history from dividing by zero."""


@runtime_checkable
class Detector(Protocol):
    """Scores a chunk of consecutive points of one series, then learns them.

    ``values``: float64, finite; ``timestamps``: ``datetime64`` or integer epoch milliseconds,
    the same length (only detectors that use time need them). Returns one float per point, higher
    meaning more anomalous, NaN where the detector has not seen enough history to score.
    """

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray: ...


def as_float_array(values: object) -> np.ndarray:
    """``values`` as a 1-D float64 array (no copy when it already is one)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"a detector scores a 1-D chunk of one series, got shape {array.shape}")
    return array


def epoch_ms(timestamps: object) -> np.ndarray:
    """Timestamps as int64 epoch milliseconds (``datetime64`` of any unit, or integers as given)."""
    array = np.asarray(timestamps)
    if array.dtype.kind == "M":
        return array.astype("datetime64[ms]").astype(np.int64)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    return np.asarray(array, dtype="datetime64[ms]").astype(np.int64)


_BLOCK = 2048
"""Rows per vectorized block: bounds the (rows x window) temporary arrays to a few MB."""


def trailing_stats(
    history: np.ndarray,
    fresh: np.ndarray,
    window: int,
    min_history: int,
    stats: Callable[[np.ndarray], tuple[np.ndarray, ...]],
) -> tuple[np.ndarray, ...]:
    """Statistics of the (at most ``window``) values before each fresh value.

    ``history`` holds the series' last ``min(seen, window)`` values. ``stats`` maps a C-contiguous
    ``(rows, width)`` array to per-row arrays (for instance the median and a spread); the result
    is NaN where fewer than ``min_history`` values precede a point. Points with a full window are
    done in vectorized blocks; the first ``window`` points of a series one by one. Which path a
    point takes depends only on its position in the series, and a row's statistics only on its
    values, so the results are the same whatever the chunking.
    """
    combined = np.concatenate([history, fresh])
    positions = len(history) + np.arange(len(fresh))
    full = positions >= window
    out: list[np.ndarray] | None = None

    def put(at: np.ndarray | int, values: tuple[np.ndarray, ...]) -> None:
        nonlocal out
        if out is None:
            out = [np.full(len(fresh), np.nan) for _ in values]
        for target, value in zip(out, values, strict=True):
            target[at] = value

    at = np.flatnonzero(full)
    if len(at):
        views = sliding_window_view(combined[:-1], window)
        first = int(positions[at[0]]) - window
        for lo in range(0, len(at), _BLOCK):
            block = np.ascontiguousarray(views[first + lo : first + min(lo + _BLOCK, len(at))])
            put(at[lo : lo + _BLOCK], stats(block))
    for j in np.flatnonzero(~full).tolist():
        seen = int(positions[j])
        if seen >= min_history:
            put(j, tuple(v[0] for v in stats(np.ascontiguousarray(combined[None, :seen]))))
    if out is None:
        probe = stats(np.zeros((1, 1)))
        return tuple(np.full(len(fresh), np.nan) for _ in probe)
    return tuple(out)


def robust_center_scale(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust sigma of each row: ``1.4826 MAD``, or ``1.2533 x`` the mean absolute
    deviation when the MAD is 0 (over half the values equal, as in quantized or idle metrics),
    so that a series that barely moves still gets a usable, non-zero spread when it does move."""
    median = np.median(rows, axis=1)
    deviation = np.abs(rows - median[:, None])
    mad = np.median(deviation, axis=1) * 1.4826
    mean_ad = deviation.mean(axis=1) * 1.2533
    return median, np.where(mad > 0, mad, mean_ad)


def floored(scale: np.ndarray, center: np.ndarray, min_spread_ratio: float) -> np.ndarray:
    """``scale``, but at least ``min_spread_ratio x |center|`` (and ``MIN_SCALE``): a 0.1% wiggle
    of a metric that sat perfectly still is not worth an alert."""
    return np.maximum(scale, np.maximum(np.abs(center) * min_spread_ratio, MIN_SCALE))


def keep_tail(history: np.ndarray, fresh: np.ndarray, size: int) -> np.ndarray:
    """The last ``size`` values of ``history`` followed by ``fresh`` (a detector's memory)."""
    if len(fresh) >= size:
        return fresh[len(fresh) - size :].copy()
    return np.concatenate([history, fresh])[-size:]
