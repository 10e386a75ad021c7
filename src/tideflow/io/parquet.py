"""Parquet files as a source, read a record batch at a time with ``pyarrow.parquet``.

Parquet carries its own types, so there is nothing to decode; the shared row pipeline still
holds column types across files (a later file whose ``value`` is Int32 where the first had
Float64 is cast exactly, value by value), reads event time and adds the file column. A file
that cannot be read (not Parquet, truncated, corrupt part way) is one dead letter naming the
file and the error; the rows read from it before the error stay, and the source goes on with
the next file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..record import POSITION, pack_position, strip_hidden
from .base import SourceContext
from .files import ROW_INDEX, FileSource, PathSpec, RowPipeline
from .schema import SchemaLike

_READ_ERRORS = (OSError, pa.ArrowException, ValueError)


class ParquetSource(FileSource):
    """Reads Parquet files (a file, a directory, a glob or a list; files in sorted order).

    Positions are 0-based row indices within each file (unit ``"row"``). ``schema`` declares
    column types (values cast exactly, see :mod:`tideflow.io.schema`); ``time=`` names the
    event-time column (a datetime, epoch milliseconds or text); ``file_column`` adds each file's
    stem. Progress is in bytes of the files, counted as their rows are read.
    """

    unit = "row"

    def __init__(
        self,
        path: PathSpec,
        *,
        time: str | None = None,
        time_format: str | None = None,
        schema: SchemaLike | None = None,
        batch_size: int = 65_536,
        replay: float | None = None,
        file_column: str | None = None,
    ) -> None:
        super().__init__(
            path,
            time=time,
            time_format=time_format,
            schema=schema,
            batch_size=batch_size,
            replay=replay,
            file_column=file_column,
        )

    def _frames(self, ctx: SourceContext, pipeline: RowPipeline) -> Iterator[pl.DataFrame]:
        for path in self.paths:
            size = os.path.getsize(path) if os.path.exists(path) else 0
            done_before = self._done
            yield from self._read(path, self._file_index(ctx, path), size, pipeline, ctx)
            self._done = done_before + size
            if ctx.stopping():
                return

    def _read(
        self, path: str, file_index: int, size: int, pipeline: RowPipeline, ctx: SourceContext
    ) -> Iterator[pl.DataFrame]:
        row = 0
        try:
            parquet = pq.ParquetFile(path)
            total = max(parquet.metadata.num_rows, 1)
            batches = parquet.iter_batches(batch_size=self.batch_size)
        except _READ_ERRORS as error:
            self._unreadable(path, file_index, row, error, ctx)
            return
        stem = os.path.splitext(os.path.basename(path))[0]
        start = self._done
        with parquet:
            while True:
                try:
                    batch = next(batches, None)
                except _READ_ERRORS as error:
                    self._unreadable(path, file_index, row, error, ctx)
                    return
                if batch is None:
                    return
                frame = self._positioned(batch, file_index, row)
                row += batch.num_rows
                self._done = start + size * row // total
                out = pipeline.finish(frame, ctx, _row_payload(frame), stem)
                if out is not None:
                    yield out
                if ctx.stopping():
                    return

    @staticmethod
    def _positioned(batch: pa.RecordBatch, file_index: int, first_row: int) -> pl.DataFrame:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        first = pack_position(file_index, first_row)
        return frame.with_columns(
            pl.int_range(0, frame.height, dtype=pl.Int64).alias(ROW_INDEX),
            pl.int_range(first, first + frame.height, dtype=pl.Int64).alias(POSITION),
        )

    @staticmethod
    def _unreadable(path: str, file_index: int, row: int, error: BaseException, ctx: SourceContext) -> None:
        reason = f"cannot read Parquet file {path}: {type(error).__name__}: {error}"
        ctx.reject(reason, path, pack_position(file_index, row))


def _row_payload(frame: pl.DataFrame) -> Callable[[int], dict[str, Any]]:
    """The raw form of a refused row: its values as read, before any cast."""
    visible = strip_hidden(frame)
    return lambda index: visible.row(index, named=True)
