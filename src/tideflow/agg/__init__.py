"""Custom window aggregations: the :class:`Aggregator` protocol and two sketches.

Use them next to polars expressions in a window's ``agg``::

    import tideflow.agg as ta

    stream.key_by("host").window("stats", tdf.windows.tumbling("10s")).agg(
        p99=ta.approx_quantile("latency_ms", 0.99),               # DDSketch, 1% relative error
        quartiles=ta.approx_quantile("latency_ms", [0.25, 0.5, 0.75]),
        users=ta.approx_distinct("user_id"),                      # HyperLogLog, ~0.8% error
        n=pl.len(),
    )

Write your own by subclassing :class:`Aggregator` (see ``tideflow.agg.base`` for the contract
and an example).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from .base import Aggregator
from .ddsketch import ApproxQuantile, DDSketch
from .hll import ApproxDistinct, HashChangedWarning, HyperLogLog

__all__ = [
    "Aggregator",
    "ApproxDistinct",
    "ApproxQuantile",
    "DDSketch",
    "HashChangedWarning",
    "HyperLogLog",
    "approx_distinct",
    "approx_quantile",
    "custom",
]


def custom(column: str | None, aggregator: Aggregator | type[Aggregator]) -> Aggregator:
    """``aggregator`` reading ``column`` (None: the group's rows as a DataFrame).

    ``aggregator`` is an :class:`Aggregator` subclass (created with no arguments besides the
    column) or an instance (copied, the copy reads ``column``), so one definition serves any
    column: ``.agg(spread=custom("latency_ms", Range))``.
    """
    if isinstance(aggregator, type):
        if not issubclass(aggregator, Aggregator):
            raise TypeError(f"custom() needs an Aggregator subclass or instance, got {aggregator.__name__}")
        return aggregator(column)
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"custom() needs an Aggregator subclass or instance, got {type(aggregator).__name__}")
    bound = copy.copy(aggregator)
    bound.column = column
    return bound


def approx_quantile(
    column: str,
    q: float | Sequence[float],
    *,
    relative_accuracy: float = 0.01,
    max_buckets: int = 2048,
) -> ApproxQuantile:
    """Quantile ``q`` (a float, or a list of floats giving a list) of ``column``, within
    ``relative_accuracy`` relative error of the exact value of rank ``floor(q (n - 1))``.

    Backed by a DDSketch of at most ``max_buckets`` buckets per sign (a few KiB per window and
    key). Nulls, NaN and infinities are skipped; a window without a value gives None.
    """
    return ApproxQuantile(column, q, relative_accuracy=relative_accuracy, max_buckets=max_buckets)


def approx_distinct(column: str, *, precision: int = 14) -> ApproxDistinct:
    """Approximate number of distinct non-null values of ``column`` (a HyperLogLog of
    ``2^precision`` registers: standard error ``1.04 / sqrt(2^precision)``, 0.81% at 14;
    exact up to ``2^precision / 8`` distinct values). An all-null window gives 0.
    """
    return ApproxDistinct(column, precision=precision)
