"""Parsing a source's event-time column: datetimes, integer epoch milliseconds, or text.

Text is parsed with ``format`` when given, otherwise as ISO-8601 / ``YYYY-MM-DD HH:MM:SS``.
Rows whose time cannot be read are returned as rejects so the source can dead-letter them with
their raw payload; they never enter the flow with a null event time.
"""

from __future__ import annotations

import polars as pl

from ..errors import FlowDefinitionError


def parse_event_time(df: pl.DataFrame, column: str, fmt: str | None = None) -> tuple[pl.DataFrame, pl.Series | None]:
    """Return ``df`` with ``column`` as Datetime or Int64, and a mask of rows that failed (or None)."""
    if column not in df.columns:
        raise FlowDefinitionError(
            f"event-time column {column!r} is not in the data (columns: {df.columns}); fix time=..."
        )
    series = df.get_column(column)
    dtype = series.dtype
    if dtype == pl.Datetime or dtype.is_integer():
        parsed = series if dtype != pl.UInt64 else series.cast(pl.Int64)
    elif dtype == pl.Date:
        parsed = series.cast(pl.Datetime("ms"))
    elif dtype == pl.String:
        if fmt is not None:
            parsed = series.str.strptime(pl.Datetime("us"), fmt, strict=False)
        else:
            parsed = _parse_text_times(series)
    elif dtype.is_float():
        # Whole-number floats are epoch milliseconds that went through a float column.
        parsed = pl.select(pl.when(series == series.floor()).then(series).cast(pl.Int64, strict=False)).to_series()
    else:
        raise FlowDefinitionError(
            f"event-time column {column!r} has type {dtype}; use datetimes, epoch milliseconds or text"
        )
    bad = parsed.is_null()
    out = df.with_columns(parsed.alias(column))
    return out, (bad if bad.any() else None)


def _parse_text_times(series: pl.Series) -> pl.Series:
    """Parse text times, trying the common layouts; unparseable rows become null."""
    candidates = [
        series.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S%.f", strict=False),
        series.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S%.f", strict=False),
        series.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False),
        series.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False),
        series.str.strptime(pl.Datetime("us"), "%Y-%m-%d", strict=False),
    ]
    parsed = candidates[0]
    for other in candidates[1:]:
        parsed = parsed.fill_null(other)
    return parsed
