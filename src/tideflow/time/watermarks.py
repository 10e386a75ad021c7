"""Watermark strategies: how far event time has provably advanced at a source.

The watermark of a source is ``max event time seen - allowed out-of-orderness``: a promise that
no record older than it is still expected (records that break it are late). The running maximum
is computed per row, vectorized, so the result does not depend on how input is cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .._duration import Duration, to_millis
from ..record import WATERMARK as WATERMARK_COLUMN

NO_WATERMARK = -(2**63)
"""The watermark before any record: minus infinity."""
END_OF_TIME = 2**63 - 1
"""The watermark after a bounded input ends: plus infinity, which fires everything."""


def event_time_ms(column: pl.Series) -> pl.Series:
    """Event times as Int64 epoch milliseconds (from Datetime/Date or integer epoch ms)."""
    dtype = column.dtype
    if dtype == pl.Datetime or dtype == pl.Date:
        return column.cast(pl.Datetime("ms")).dt.epoch("ms")
    if dtype.is_integer():
        return column.cast(pl.Int64)
    raise TypeError(f"event-time column {column.name!r} must hold datetimes or integer epoch ms, not {dtype}")


@dataclass(frozen=True)
class WatermarkStrategy:
    """Base: ``delay_ms`` of tolerated disorder and an optional idleness timeout."""

    delay_ms: int = 0
    idle_ms: int | None = None

    def per_row(self, current: int, times_ms: pl.Series) -> tuple[pl.Series, int]:
        """The watermark before each row, and after the last one, starting from ``current``.

        ``before[i] = max(current, max(t[0..i-1]) - delay)``: vectorized as a shifted running
        maximum, so it equals advancing the watermark after every single record.
        """
        after = (times_ms - self.delay_ms).cum_max().clip(lower_bound=current)
        before = after.shift(1, fill_value=current)
        last = int(after[-1]) if after.len() else current
        return before.alias(WATERMARK_COLUMN), last

    def advance(self, current: int, times_ms: pl.Series) -> int:
        """The watermark after a batch with event times ``times_ms``, starting from ``current``."""
        if times_ms.len() == 0:
            return current
        newest = times_ms.max()
        if newest is None:
            return current
        return max(current, int(newest) - self.delay_ms)


class BoundedOutOfOrder(WatermarkStrategy):
    """Allows records up to ``delay`` older than the newest seen; ``idle`` releases a quiet input."""

    def __init__(self, delay: Duration, idle: Duration | None = None) -> None:
        object.__setattr__(self, "delay_ms", to_millis(delay, what="watermark delay"))
        object.__setattr__(self, "idle_ms", None if idle is None else to_millis(idle, what="idle timeout"))

    def __repr__(self) -> str:
        return f"BoundedOutOfOrder(delay_ms={self.delay_ms}, idle_ms={self.idle_ms})"


class Monotonic(WatermarkStrategy):
    """For inputs ordered by event time: the watermark is the newest event time seen."""

    def __init__(self, idle: Duration | None = None) -> None:
        object.__setattr__(self, "delay_ms", 0)
        object.__setattr__(self, "idle_ms", None if idle is None else to_millis(idle, what="idle timeout"))

    def __repr__(self) -> str:
        return f"Monotonic(idle_ms={self.idle_ms})"
