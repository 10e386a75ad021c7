"""Replay in event time: release rows when their event time is due, scaled by a speed factor.

``replay=1.0`` plays a recording at its real pace; ``replay=60`` plays an hour in a minute;
``replay=None`` (the default) reads as fast as possible. Rows are released in chunks so pacing
costs one sleep per due time, not one per row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import polars as pl

from ..time.watermarks import event_time_ms

MIN_SLEEP_S = 0.005


class ReplayPacer:
    """Splits batches into chunks released at ``start + (event_time - first) / speed``."""

    def __init__(self, speed: float, time_column: str, stop: threading.Event | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"replay speed must be positive, got {speed}")
        self.speed = speed
        self.column = time_column
        self.stop = stop or threading.Event()
        self._wall0: float | None = None
        self._event0: int | None = None

    def pace(self, df: pl.DataFrame) -> Iterator[pl.DataFrame]:
        if df.height == 0:
            return
        times = event_time_ms(df.get_column(self.column)).cum_max()
        if self._wall0 is None:
            self._wall0 = time.monotonic()
            self._event0 = int(times[0])
        assert self._event0 is not None
        due = ((times - self._event0) / self.speed / 1000.0 + self._wall0).to_list()
        start = 0
        while start < len(due):
            now = time.monotonic()
            wait = due[start] - now
            if wait > MIN_SLEEP_S and self.stop.wait(wait):
                yield df.slice(start)
                return
            now = time.monotonic()
            end = start
            while end < len(due) and due[end] <= now + MIN_SLEEP_S:
                end += 1
            end = max(end, start + 1)
            yield df.slice(start, end - start)
            start = end
