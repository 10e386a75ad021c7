"""In-memory and iterable sources, and the memory, null and stdout sinks: for tests and glue."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal

import orjson
import polars as pl
import pyarrow as pa

from .._columns import records_to_frame
from .._duration import Duration, to_seconds
from .._gc import gc_paused
from ..record import POSITION, to_records
from .base import Sink, Source, SourceContext, TransactionalSink
from .eventtime import parse_event_time
from .files_out import check_epochs
from .pacing import ReplayPacer
from .prefetch import Prefetcher

DEFAULT_BATCH_SIZE = 10_000


class IterableSource(Source):
    """Reads records (dicts) or ready-made batches (DataFrames / Arrow) from any iterable.

    Records are gathered into batches of ``batch_size``, or fewer when ``linger`` passes between
    the first record of a batch and the next one to arrive (for slow generators). Positions are
    the 0-based index of each record in the iterable.
    """

    def __init__(
        self,
        items: Iterable[Any],
        *,
        time: str | None = None,
        time_format: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger: Duration = "100ms",
        replay: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if replay is not None and time is None:
            raise ValueError("replay= paces by event time; pass time= too")
        self.items = items
        self.time = time
        self.time_format = time_format
        self.batch_size = batch_size
        self.linger_s = to_seconds(linger, what="linger")
        self.replay = replay
        self._done = 0
        self._total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
        self._types: dict[str, pl.DataType] = {}
        """Column types fixed by the first records; later records must agree."""

    def progress(self) -> tuple[int, int | None]:
        return (self._done, self._total)

    @property
    def replayable(self) -> bool:  # type: ignore[override]
        """A list or tuple is read again identically; any other iterable may not be."""
        return isinstance(self.items, list | tuple)

    def checkpoint_state(self) -> Any:
        """The column types fixed by the first records."""
        return dict(self._types)

    def resume(self, after_position: int, state: Any) -> None:
        if state:
            self._types = dict(state)

    def batches(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        pacer = ReplayPacer(self.replay, self.time, ctx.stop) if self.replay and self.time else None
        for frame in self._frames(ctx):
            frame = self._with_time(frame, ctx)
            if frame is None:
                continue
            if pacer is None:
                yield frame
            else:
                yield from pacer.pace(frame)

    def _frames(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        index = 0
        for chunk in self._chunks(ctx):
            if len(chunk) == 1 and _is_frame(chunk[0]):
                frame = chunk[0]
                yield from self._from_frame(frame, index)
                index += frame.height if isinstance(frame, pl.DataFrame) else frame.num_rows
            else:
                yield self._from_records(chunk, index, ctx)
                index += len(chunk)
            self._done = index
            if ctx.stopping():
                return

    def _chunks(self, ctx: SourceContext) -> Iterator[list[Any]]:
        """Records in batches, ready-made frames alone; a live iterator is read on a thread."""
        if isinstance(self.items, list | tuple):
            pending: list[Any] = []
            for item in self.items:
                if _is_frame(item):
                    if pending:
                        yield pending
                        pending = []
                    yield [item]
                    continue
                pending.append(item)
                if len(pending) >= self.batch_size:
                    yield pending
                    pending = []
            if pending:
                yield pending
            return
        prefetcher = Prefetcher(
            self.items, batch_size=self.batch_size, linger_s=self.linger_s, stop=ctx.stop, whole=_is_frame
        )
        yield from prefetcher.chunks()

    def _from_frame(self, item: pl.DataFrame | pa.Table | pa.RecordBatch, first: int) -> Iterator[pl.DataFrame]:
        frame = item if isinstance(item, pl.DataFrame) else pl.from_arrow(item)
        assert isinstance(frame, pl.DataFrame)
        # One position column for the whole frame, sliced per batch: adding it per batch through
        # an expression cost ~40 µs per 10k rows (polars' lazy machinery); a slice costs ~3 µs.
        positions = pl.Series(POSITION, range(first, first + frame.height), dtype=pl.Int64)
        for offset in range(0, frame.height, self.batch_size):
            part = frame.slice(offset, self.batch_size)
            yield part.hstack([positions.slice(offset, part.height)])

    def _from_records(self, records: list[Any], first: int, ctx: SourceContext) -> pl.DataFrame:
        """Build a batch; records that are not dicts, or break the column types, are rejected."""
        with gc_paused():
            return self._build_batch(records, first, ctx)

    def _build_batch(self, records: list[Any], first: int, ctx: SourceContext) -> pl.DataFrame:
        dicts: list[dict[str, Any]] = []
        positions: list[int] = []
        for offset, record in enumerate(records):
            if isinstance(record, dict):
                dicts.append(record)
                positions.append(first + offset)
            else:
                ctx.reject(TypeError(f"expected a dict record, got {type(record).__name__}"), record, first + offset)
        frame, kept, rejects = records_to_frame(dicts, self._types)
        for index, reason in rejects.items():
            ctx.reject(reason, dicts[index], positions[index])
        return frame.with_columns(pl.Series(POSITION, [positions[i] for i in kept], dtype=pl.Int64))

    def _with_time(self, frame: pl.DataFrame, ctx: SourceContext) -> pl.DataFrame | None:
        if self.time is None or frame.height == 0:
            return frame if frame.height else None
        frame, bad = parse_event_time(frame, self.time, self.time_format)
        if bad is not None:
            rejected = frame.filter(bad)
            positions = rejected.get_column(POSITION).to_list()
            for record, position in zip(to_records(rejected), positions, strict=True):
                ctx.reject(f"cannot read event time from column {self.time!r}", record, position)
            frame = frame.filter(~bad)
        return frame if frame.height else None


def _is_frame(item: object) -> bool:
    return isinstance(item, pl.DataFrame | pa.Table | pa.RecordBatch)


class MemorySource(IterableSource):
    """Records from memory: a list of dicts, any iterable of dicts, a DataFrame or Arrow table."""

    def __init__(self, records: Iterable[dict[str, Any]] | pl.DataFrame | pa.Table, **options: Any) -> None:
        if isinstance(records, pl.DataFrame | pa.Table):
            records = [records]  # one frame, sliced into batches of batch_size
        super().__init__(records, **options)
        if isinstance(self.items, list) and self.items and not isinstance(self.items[0], dict):
            self._total = sum(f.height if isinstance(f, pl.DataFrame) else f.num_rows for f in self.items)


class MemorySink(TransactionalSink):
    """Collects output in memory; ``.records`` (dicts) and ``.frame`` (DataFrame) after a run.

    In a checkpointed run (after ``recover``) batches wait in a pending list until their epoch
    is committed: ``.frame``, ``.records`` and ``len`` show committed rows only, as a reader of
    a real sink would see them. The sink lives in this process, so only an in-process failure
    can be recovered, by a resumed run handed the same object: its ``recover`` makes pending
    epochs up to the checkpoint visible and drops the rest.
    """

    def __init__(self) -> None:
        self._parts: list[pl.DataFrame] = []
        """Visible batches."""
        self._lock = threading.Lock()
        self._epochs = False
        """Whether ``recover`` started epochs: writes then wait for their commit."""
        self._open: list[pl.DataFrame] = []
        """Batches written since the last ``prepare``."""
        self._prepared: list[tuple[int, list[pl.DataFrame]]] = []
        """Prepared epochs not yet committed, in increasing epoch order."""
        self._last_epoch = 0

    def write(self, df: pl.DataFrame) -> None:
        with self._lock:
            (self._open if self._epochs else self._parts).append(df)

    def recover(self, committed: int | None, handle: Any) -> None:
        with self._lock:
            if committed is not None:
                self._commit_locked(committed)
            self._prepared.clear()
            self._open.clear()
            self._epochs = True
            self._last_epoch = committed or 0  # a discarded epoch's number may come again

    def prepare(self, epoch: int) -> Any:
        with self._lock:
            check_epochs(self._epochs, epoch, self._last_epoch, "MemorySink")
            parts, self._open = self._open, []
            if parts:
                self._prepared.append((epoch, parts))
            self._last_epoch = epoch
            return {"epoch": epoch, "rows": sum(part.height for part in parts)}

    def commit(self, epoch: int) -> None:
        with self._lock:
            self._commit_locked(epoch)

    def _commit_locked(self, epoch: int) -> None:
        while self._prepared and self._prepared[0][0] <= epoch:
            self._parts.extend(self._prepared.pop(0)[1])

    @property
    def frame(self) -> pl.DataFrame:
        with self._lock:
            parts = list(self._parts)
        if not parts:
            return pl.DataFrame()
        return pl.concat(parts, how="diagonal_relaxed")

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.frame.to_dicts()

    def __len__(self) -> int:
        with self._lock:
            return sum(part.height for part in self._parts)


class NullSink(Sink):
    """Counts and discards: for benchmarks, where the sink must cost nothing."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, df: pl.DataFrame) -> None:
        self.count += df.height


class StdoutSink(Sink):
    """Prints batches: ``format="pretty"`` (a table per batch) or ``"jsonl"`` (one JSON per line)."""

    def __init__(self, format: Literal["pretty", "jsonl"] = "jsonl", stream: IO[str] | None = None) -> None:
        if format not in ("pretty", "jsonl"):
            raise ValueError(f"StdoutSink format must be 'pretty' or 'jsonl', got {format!r}")
        self.format = format
        self.stream = stream

    def write(self, df: pl.DataFrame) -> None:
        out = self.stream or sys.stdout
        if self.format == "pretty":
            with pl.Config(tbl_rows=min(df.height, 50), tbl_cols=-1):
                out.write(f"{df}\n")
        else:
            lines = b"".join(orjson.dumps(r, default=str) + b"\n" for r in df.iter_rows(named=True))
            out.write(lines.decode())
        out.flush()
