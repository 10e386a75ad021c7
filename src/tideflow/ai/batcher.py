"""Dynamic micro-batching: rows wait here until a model batch is full or its deadline passes.

Rows arrive in the pipeline's batches, whose sizes have nothing to do with what suits the model;
the batcher re-cuts them. A model batch leaves when ``max_size`` rows wait (throughput) or when
its oldest row has waited ``max_wait`` (latency bound), whichever comes first. With length
bucketing, rows queue per bucket of similar length, so that padding to the longest row of a
batch wastes little compute; each bucket is cut and timed on its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from ..record import WATERMARK

SEQ = "_tf_seq"
"""Hidden UInt64 column: the row's arrival order at the step (outputs leave in this order)."""
ARRIVED = "_tf_arrived"
"""Hidden Float64 column: when the row reached the step (monotonic seconds), for latency."""
LENGTH = "_tf_len"
"""Hidden column with the row's length when bucketing."""

SMALLEST_BUCKET = 8
"""Lengths up to this share bucket 0; above it, edges grow by ``bucket_growth``."""


@dataclass
class Chunk:
    """Consecutive rows of one bucket that arrived together."""

    rows: pl.DataFrame
    arrived: float
    first_seq: int
    first_watermark: int | None


@dataclass
class ModelBatch:
    """Rows cut for one model call, and what the step needs to account for them."""

    rows: pl.DataFrame
    oldest_arrival: float
    first_seq: int
    first_watermark: int | None


def _first_watermark(rows: pl.DataFrame) -> int | None:
    return rows.get_column(WATERMARK)[0] if WATERMARK in rows.columns else None


class Batcher:
    """Queues rows per length bucket and cuts them into model batches."""

    def __init__(
        self, max_size: int, max_wait_s: float, bucket_by: str | pl.Expr | None = None, growth: float = 1.5
    ) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.bucket_by = bucket_by
        self.growth = growth
        self._queues: dict[int, deque[Chunk]] = {}
        self._counts: dict[int, int] = {}
        self.pending = 0

    # -- filling ----------------------------------------------------------------------------
    def add(self, rows: pl.DataFrame, now: float) -> None:
        """Queue ``rows`` (which carry ``SEQ``), all arrived at ``now``."""
        if not rows.height:
            return
        self.pending += rows.height
        if self.bucket_by is None:
            self._enqueue(0, rows, now)
            return
        rows = rows.with_columns(self._length_expr(rows).cast(pl.Int64).alias(LENGTH))
        buckets = rows.select(self._bucket_expr()).to_series()
        if buckets.n_unique() == 1:
            self._enqueue(int(buckets[0]), rows, now)
            return
        for (bucket,), part in rows.with_columns(buckets.alias("_tf_bucket")).partition_by(
            "_tf_bucket", maintain_order=True, as_dict=True
        ).items():
            self._enqueue(int(bucket), part.drop("_tf_bucket"), now)

    def _length_expr(self, rows: pl.DataFrame) -> pl.Expr:
        if isinstance(self.bucket_by, pl.Expr):
            return self.bucket_by
        assert self.bucket_by is not None
        column = rows.schema.get(self.bucket_by)
        if column is None:
            raise KeyError(f"Batching(bucket_by={self.bucket_by!r}): no such column; columns are {rows.columns}")
        if column == pl.String:
            return pl.col(self.bucket_by).str.len_bytes()
        if isinstance(column, pl.List):
            return pl.col(self.bucket_by).list.len()
        return pl.col(self.bucket_by)

    def _bucket_expr(self) -> pl.Expr:
        """Bucket 0 holds lengths ≤ 8; bucket k > 0 holds (8·g^(k-1), 8·g^k]."""
        length = pl.col(LENGTH).clip(lower_bound=1).cast(pl.Float64)
        over = (length / SMALLEST_BUCKET).log() / math.log(self.growth)
        return pl.when(pl.col(LENGTH) <= SMALLEST_BUCKET).then(0).otherwise(over.ceil().cast(pl.Int64)).alias("bucket")

    def _enqueue(self, bucket: int, rows: pl.DataFrame, now: float) -> None:
        queue = self._queues.setdefault(bucket, deque())
        queue.append(Chunk(rows, now, rows.get_column(SEQ)[0], _first_watermark(rows)))
        self._counts[bucket] = self._counts.get(bucket, 0) + rows.height

    # -- cutting ----------------------------------------------------------------------------
    def next_full(self, limit: int | None = None) -> ModelBatch | None:
        """A model batch of ``max_size`` rows (or ``limit``, if lower) from a bucket that holds
        that many; None if none does. One at a time, so the caller can lower ``limit`` between
        batches (after a batch failed for its size)."""
        size = min(self.max_size, limit) if limit else self.max_size
        for bucket, count in self._counts.items():
            if count >= size:
                return self._cut(bucket, size)
        return None

    def next_due(self, now: float, limit: int | None = None) -> ModelBatch | None:
        """Rows of a bucket whose oldest row has waited ``max_wait`` or more; None if none has.

        When that bucket holds fewer than a batch, the batch is topped up from the nearest
        buckets (by length): at moderate rates, buckets that each flushed alone on their
        deadline would make many tiny batches, and small batches cost more per row than a
        little padding does."""
        size = min(self.max_size, limit) if limit else self.max_size
        due = next((b for b, q in self._queues.items() if now - q[0].arrived >= self.max_wait_s), None)
        if due is None:
            return None
        if self._counts[due] >= size or self.bucket_by is None:
            return self._cut(due, min(size, self._counts[due]))
        parts, needed = [], size
        for bucket in sorted(self._queues, key=lambda b: (abs(b - due), b)):
            take = min(needed, self._counts[bucket])
            parts.append(self._cut(bucket, take, sort=False))
            needed -= take
            if not needed:
                break
        rows = pl.concat([p.rows for p in parts], how="vertical", rechunk=False).sort(LENGTH)
        first = min(parts, key=lambda p: p.first_seq)
        return ModelBatch(rows, min(p.oldest_arrival for p in parts), first.first_seq, first.first_watermark)

    def take_all(self, limit: int | None = None) -> Iterator[ModelBatch]:
        """Everything queued, in batches of at most ``max_size`` (end of input)."""
        size = min(self.max_size, limit) if limit else self.max_size
        for bucket in list(self._queues):
            while self._counts.get(bucket, 0):
                yield self._cut(bucket, min(size, self._counts[bucket]))

    def _cut(self, bucket: int, size: int, *, sort: bool = True) -> ModelBatch:
        queue = self._queues[bucket]
        head = queue[0]
        oldest, first_seq, first_watermark = head.arrived, head.first_seq, head.first_watermark
        parts: list[pl.DataFrame] = []
        needed = size
        while needed:
            chunk = queue[0]
            if chunk.rows.height <= needed:
                queue.popleft()
                parts.append(chunk.rows)
                needed -= chunk.rows.height
            else:
                parts.append(chunk.rows.slice(0, needed))
                rest = chunk.rows.slice(needed)
                queue[0] = Chunk(rest, chunk.arrived, rest.get_column(SEQ)[0], _first_watermark(rest))
                needed = 0
        self._counts[bucket] -= size
        self.pending -= size
        if not queue:
            del self._queues[bucket]
            del self._counts[bucket]
        rows = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical", rechunk=False)
        if self.bucket_by is not None and sort:
            rows = rows.sort(LENGTH)  # padding follows the longest row: neighbours in length share it
        return ModelBatch(rows, oldest, first_seq, first_watermark)

    # -- inspection -------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the oldest queued row's ``max_wait`` runs out (monotonic), or None if empty."""
        heads = [queue[0].arrived for queue in self._queues.values() if queue]
        return min(heads) + self.max_wait_s if heads else None

    def oldest(self) -> tuple[int, int | None] | None:
        """``(seq, watermark before it)`` of the earliest queued row, or None if empty."""
        heads = [queue[0] for queue in self._queues.values() if queue]
        if not heads:
            return None
        first = min(heads, key=lambda chunk: chunk.first_seq)
        return first.first_seq, first.first_watermark
