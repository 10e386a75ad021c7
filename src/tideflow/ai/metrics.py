"""Measurements of an ``infer`` step: what a model costs, how full its batches are, where time goes.

Kept as exact counters and fixed log-spaced histograms (not samples), so that quantiles over a
long run cost constant memory and merge trivially when the metrics endpoint exposes them.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np


class LogHistogram:
    """Counts of positive values in log-spaced bins (ratio 1.05: quantiles within ±2.5%)."""

    RATIO = 1.05
    LOW = 1e-6

    def __init__(self, high: float = 3600.0) -> None:
        self._bins = math.ceil(math.log(high / self.LOW) / math.log(self.RATIO)) + 2
        self.counts = np.zeros(self._bins, dtype=np.int64)
        self.total = 0
        self.sum = 0.0
        self.max = 0.0

    def add_one(self, value: float) -> None:
        """Count one value (per model batch: cheaper than the array path)."""
        index = int(math.log(max(value, self.LOW) / self.LOW) / math.log(self.RATIO)) + 1
        self.counts[min(max(index, 0), self._bins - 1)] += 1
        self.total += 1
        self.sum += value
        self.max = max(self.max, value)

    def add(self, values: np.ndarray | float, counts: np.ndarray | None = None) -> None:
        """Count ``values`` (each ``counts[i]`` times when given)."""
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if not array.size:
            return
        index = np.log(np.maximum(array, self.LOW) / self.LOW) / math.log(self.RATIO)
        index = np.clip(index.astype(np.int64) + 1, 0, self._bins - 1)
        weights = None if counts is None else counts.astype(np.float64)
        self.counts += np.bincount(index, weights=weights, minlength=self._bins).astype(np.int64)
        self.total += int(array.size if counts is None else counts.sum())
        self.sum += float(array.sum() if counts is None else (array * counts).sum())
        self.max = max(self.max, float(array.max()))

    def quantile(self, q: float) -> float | None:
        """The value below which a fraction ``q`` of observations fall (bin midpoint)."""
        if self.total == 0:
            return None
        rank = q * (self.total - 1)
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        if index == 0:
            return self.LOW
        upper = self.LOW * self.RATIO**index
        return min(upper / math.sqrt(self.RATIO), self.max)

    def summary_ms(self) -> dict[str, float] | None:
        if self.total == 0:
            return None
        return {
            "mean": round(self.sum / self.total * 1000, 3),
            "p50": round((self.quantile(0.5) or 0.0) * 1000, 3),
            "p99": round((self.quantile(0.99) or 0.0) * 1000, 3),
            "max": round(self.max * 1000, 3),
        }


class InferenceMetrics:
    """Per-step counters, updated by the step's thread and its model workers (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records = 0
        self.batches = 0
        self.errors = 0
        """Rows the model failed on even alone: they went to the dead letters."""
        self.size_splits = 0
        """Batches split in two because they were too big (out of memory, oversize)."""
        self.swaps = 0
        self.batch_sizes: dict[int, int] = {}
        """Model batches by size, in power-of-two buckets (key: the bucket's upper bound)."""
        self.queue_wait = LogHistogram()
        """Per model batch: from its oldest row's arrival to the model starting on it."""
        self.model_time = LogHistogram()
        """Per model batch: the model's own time (including splits and retries)."""
        self.latency = LogHistogram()
        """Per row: from arrival at the step to leaving it."""
        self.first_arrival: float | None = None
        self.last_emit: float | None = None

    def arrived(self, now: float) -> None:
        if self.first_arrival is None:
            self.first_arrival = now

    def model_ready(self, at: float) -> None:
        """Throughput counts from when the model could work: its load is not the stream's pace."""
        if self.first_arrival is not None and at > self.first_arrival:
            self.first_arrival = at

    def batch_done(self, rows: int, queue_wait_s: float, model_s: float, splits: int, errors: int) -> None:
        bucket = 1 << max(0, (rows - 1).bit_length())
        with self._lock:
            self.batches += 1
            self.records += rows
            self.errors += errors
            self.size_splits += splits
            self.batch_sizes[bucket] = self.batch_sizes.get(bucket, 0) + 1
            self.queue_wait.add_one(queue_wait_s)
            self.model_time.add_one(model_s)

    def emitted(self, arrivals: np.ndarray, now: float) -> None:
        """Rows leave at ``now``; ``arrivals`` (non-decreasing: rows leave in arrival order)
        repeat one value per incoming batch, so they are counted as runs, not one by one."""
        if arrivals.size:
            starts = np.flatnonzero(np.diff(arrivals, prepend=arrivals[0] - 1.0))
            counts = np.diff(np.append(starts, arrivals.size))
            self.latency.add(now - arrivals[starts], counts)
        self.last_emit = now

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            span = (self.last_emit or time.monotonic()) - (self.first_arrival or time.monotonic())
            return {
                "records": self.records,
                "batches": self.batches,
                "records_per_s": round(self.records / span, 1) if span > 0 else None,
                "mean_batch_size": round(self.records / self.batches, 2) if self.batches else None,
                "batch_size_histogram": {f"<={k}": v for k, v in sorted(self.batch_sizes.items())},
                "queue_wait_ms": self.queue_wait.summary_ms(),
                "model_ms_per_batch": self.model_time.summary_ms(),
                "latency_ms": self.latency.summary_ms(),
                "errors": self.errors,
                "size_splits": self.size_splits,
                "swaps": self.swaps,
            }
