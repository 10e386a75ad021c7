"""Window assigners: which windows a record belongs to.

Windows are half-open intervals ``[start, end)`` of event time, aligned to the epoch (plus an
optional ``offset``). A window fires when the watermark reaches its end (``watermark >= end``),
i.e. when no record with a time before ``end`` is expected any more.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._duration import Duration, to_millis


@dataclass(frozen=True)
class Tumbling:
    """Fixed-size, non-overlapping windows: each record belongs to exactly one."""

    size_ms: int
    offset_ms: int = 0

    @property
    def every_ms(self) -> int:
        return self.size_ms


@dataclass(frozen=True)
class Sliding:
    """Windows of ``size`` starting every ``every``: each record belongs to size/every windows.

    They are computed from panes of length ``every`` (each record updates one pane; a window
    merges its panes when it fires), so a record costs the same whatever size/every is.
    """

    size_ms: int
    every_ms: int
    offset_ms: int = 0


@dataclass(frozen=True)
class Session:
    """Per key, records closer than ``gap`` (inclusive) share a window; windows merge."""

    gap_ms: int


@dataclass(frozen=True)
class Count:
    """Per key, every ``n`` records in arrival order form a window (the last may be partial)."""

    n: int


WindowAssigner = Tumbling | Sliding | Session | Count


def tumbling(size: Duration, *, offset: Duration = 0) -> Tumbling:
    """Windows ``[k*size + offset, (k+1)*size + offset)``."""
    size_ms = to_millis(size, what="window size")
    if size_ms <= 0:
        raise ValueError("window size must be positive")
    return Tumbling(size_ms, to_millis(offset, what="window offset") % size_ms)


def sliding(size: Duration, every: Duration, *, offset: Duration = 0) -> Sliding:
    """Windows of ``size`` starting every ``every``; ``size`` must be a multiple of ``every``."""
    size_ms, every_ms = to_millis(size, what="window size"), to_millis(every, what="window slide")
    if size_ms <= 0 or every_ms <= 0:
        raise ValueError("window size and slide must be positive")
    if size_ms % every_ms:
        raise ValueError(f"sliding window size ({size}) must be a multiple of its slide ({every})")
    return Sliding(size_ms, every_ms, to_millis(offset, what="window offset") % every_ms)


def session(gap: Duration) -> Session:
    """Session windows that close after ``gap`` without records for the key."""
    gap_ms = to_millis(gap, what="session gap")
    if gap_ms <= 0:
        raise ValueError("session gap must be positive")
    return Session(gap_ms)


def count(n: int) -> Count:
    """Count windows of ``n`` records per key."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"count window size must be a positive integer, got {n!r}")
    return Count(n)
