"""End-to-end latency of a flow: stamp each record as its source emits it, measure at the sinks.

Why stamp at the source (not read a step's metrics): a step's metrics see the time a record
spends in that step, but what a user waits for is the whole path — the queues between the
threads, every step on the way, and the write. :class:`Stamped` wraps a source and adds the
column ``ingest_ns`` (``time.perf_counter_ns()`` when the batch leaves the source: after its
replay pacing, before the first queue); :class:`Timed` wraps a sink, and once the sink has
accepted a batch it records ``now - ingest_ns`` for every row, then hands the sink the batch
without that column. Both clocks are the same monotonic clock of the same process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import polars as pl

from ..io.base import Sink, Source, SourceContext
from ..record import Origin

INGEST = "ingest_ns"
"""Column added by :class:`Stamped`: when the record entered the flow (monotonic nanoseconds)."""


class Stamped(Source):
    """A source whose rows carry ``ingest_ns``; everything else is the wrapped source's."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.time = inner.time
        self.bounded = inner.bounded
        self.progress_unit = inner.progress_unit

    def origin(self, step: str) -> Origin:
        return self.inner.origin(step)

    def batches(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        for df in self.inner.batches(ctx):
            yield df.with_columns(pl.lit(time.perf_counter_ns(), dtype=pl.Int64).alias(INGEST))

    def progress(self) -> tuple[int, int | None]:
        return self.inner.progress()

    def close(self) -> None:
        self.inner.close()


class LatencyRecorder:
    """Latencies in milliseconds, grouped by a label (one per branch); safe across sink threads."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def add(self, label: str, milliseconds: np.ndarray) -> None:
        with self._lock:
            self._parts.setdefault(label, []).append(milliseconds)

    def values(self, *labels: str) -> np.ndarray:
        """Every latency recorded under ``labels`` (all labels when none are given)."""
        with self._lock:
            chosen = labels or tuple(self._parts)
            parts = [part for label in chosen for part in self._parts.get(label, [])]
        return np.concatenate(parts) if parts else np.empty(0)

    def labels(self) -> list[str]:
        with self._lock:
            return list(self._parts)

    def percentiles(self, *labels: str) -> dict[str, float] | None:
        """``{"p50", "p99", "max"}`` in milliseconds; None when nothing was measured."""
        values = self.values(*labels)
        if values.size == 0:
            return None
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "max": round(float(values.max()), 1)}


class Timed(Sink):
    """Writes through ``inner`` and records each row's latency under ``label``.

    Rows without ``ingest_ns`` (a stream whose stamp was dropped on the way, such as windowed
    aggregates) are written and not measured.
    """

    def __init__(self, inner: Sink, recorder: LatencyRecorder, label: str) -> None:
        self.inner = inner
        self.recorder = recorder
        self.label = label

    def open(self, step: str) -> None:
        self.inner.open(step)

    def write(self, df: pl.DataFrame) -> None:
        if INGEST not in df.columns:
            self.inner.write(df)
            return
        stamps = df.get_column(INGEST).to_numpy()
        self.inner.write(df.drop(INGEST))
        now = time.perf_counter_ns()
        self.recorder.add(self.label, (now - stamps) / 1e6)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
