"""File sinks: CSV and JSON Lines (append-only logs) and Parquet (immutable files).

The runtime's contract is that ``write`` stores a whole batch or none of it (it bisects failed
batches to dead-letter only the bad rows), and that a crash never leaves half a record behind.

* CSV and JSONL encode each batch fully in memory first, so an encoding error writes nothing,
  then append it with one ``os.write`` loop on an ``O_APPEND`` descriptor. An ``OSError`` part
  way is undone by truncating back. A kill can still cut a large ``write(2)`` at a page
  boundary (Linux checks for fatal signals between pages), so ``open`` also repairs a torn
  tail: the file is cut back to its last complete row, with a warning.
* Parquet is written to a hidden temporary file beside the target and published with an
  atomic ``os.replace`` once complete, so readers see whole files or nothing.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import decimal
import io
import os
import re
import tempfile
import warnings
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BatchRejected
from .base import Sink

_READ_CHUNK = 1 << 20
_ISO_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"
_ISO_AWARE = "%Y-%m-%dT%H:%M:%S%.f%:z"
_NESTED = (pl.List, pl.Array, pl.Struct)
_ROW_GROUP_ROWS = 128 * 1024
"""Parquet rows gathered before a row group is written: small batches make poor row groups."""


class SinkSchemaError(BatchRejected):
    """A batch's columns do not fit what the sink already holds (header, table or file schema).

    As a ``BatchRejected`` it dead-letters the whole batch at once instead of being bisected
    row by row.
    """


# -- value encoding shared by the text sinks (and SQLite) --------------------------------------


def _json_default(value: Any) -> Any:
    """orjson fallback for the values polars hands back that JSON has no type for."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return f"PT{value.total_seconds():g}S"
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def json_text(series: pl.Series) -> pl.Series:
    """Each value as JSON text (nulls stay null): how nested values go into text columns."""
    dumps = orjson.dumps
    values = [None if v is None else dumps(v, default=_json_default).decode() for v in series.to_list()]
    return pl.Series(series.name, values, dtype=pl.String)


def iso_text(series: pl.Series) -> pl.Series:
    """Datetimes as ISO-8601 text with a ``T`` (and the offset for zone-aware columns)."""
    dtype = series.dtype
    assert isinstance(dtype, pl.Datetime)
    return series.dt.to_string(_ISO_AWARE if dtype.time_zone else _ISO_NAIVE)


def _textual(series: pl.Series) -> pl.Series:
    """A column as text formats can hold it: ISO times, base64 bytes, JSON for nested values."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        return iso_text(series)
    if isinstance(dtype, pl.Duration):
        return series.dt.to_string("iso")
    if dtype == pl.Binary:
        return series.bin.encode("base64")
    if isinstance(dtype, _NESTED) or dtype == pl.Object:
        return json_text(series)
    return series


def _converted(df: pl.DataFrame, convert: Callable[[pl.Series], pl.Series]) -> pl.DataFrame:
    """``df`` with ``convert`` applied to each column (no copy for columns it leaves alone)."""
    return pl.DataFrame([convert(series) for series in df.iter_columns()])


def _contains(dtype: pl.DataType, wanted: Callable[[pl.DataType], bool]) -> bool:
    """Whether ``dtype`` or any type nested inside it satisfies ``wanted``."""
    if wanted(dtype):
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _contains(dtype.inner, wanted)
    if isinstance(dtype, pl.Struct):
        return any(_contains(f.dtype, wanted) for f in dtype.fields)
    return False


# -- append-only text files --------------------------------------------------------------------


class _AppendFileSink(Sink):
    """An append-only file of newline-terminated records, written one whole batch at a time."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool = True) -> None:
        self.path = Path(path)
        self.append = append
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        self._dir_synced = True

    def open(self, step: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if not self.append:
            flags |= os.O_TRUNC
        self._fd = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        if self._size:
            self._repair_tail()
        self._dirty = created or not self.append
        self._dir_synced = not created
        self._opened()

    def _repair_tail(self) -> None:
        """Cut the file back to its last complete record: a crash may have torn the last one."""
        assert self._fd is not None
        end = self._last_record_end()
        if end == self._size:
            return
        os.ftruncate(self._fd, end)
        warnings.warn(
            f"{self.path}: removed {self._size - end} bytes of an incomplete last record "
            "(left by a crash or power loss) before appending",
            RuntimeWarning,
            stacklevel=3,
        )
        self._size = end
        self._dirty = True

    def _last_record_end(self) -> int:
        """Offset just past the last newline: every record here ends with one."""
        assert self._fd is not None
        end = self._size
        while end > 0:
            start = max(0, end - _READ_CHUNK)
            chunk = os.pread(self._fd, end - start, start)
            found = chunk.rfind(b"\n")
            if found >= 0:
                return start + found + 1
            end = start
        return 0

    def _opened(self) -> None:
        """Hook run after the file is open and repaired (CSV reads its header here)."""

    @abstractmethod
    def _encode(self, df: pl.DataFrame) -> bytes:
        """The batch as the bytes to append; raising here writes nothing."""

    def write(self, df: pl.DataFrame) -> None:
        if self._fd is None:
            raise RuntimeError(f"{type(self).__name__}({str(self.path)!r}) is not open; call open() first")
        if df.height == 0:
            return
        self._append(self._encode(df))
        self._written(df)

    def _written(self, df: pl.DataFrame) -> None:
        """Hook run after a batch was appended."""

    def _append(self, data: bytes) -> None:
        """Append ``data`` completely, or truncate back to where it started and raise."""
        assert self._fd is not None
        start = self._size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BaseException:
            os.ftruncate(self._fd, start)
            raise
        self._size = start + len(data)
        self._dirty = True

    def flush(self) -> None:
        """fsync the file (and its directory entry, the first time) so rows survive power loss."""
        if self._fd is None or not self._dirty:
            return
        os.fsync(self._fd)
        if not self._dir_synced:
            _fsync_dir(self.path.parent)
            self._dir_synced = True
        self._dirty = False

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = None


class CsvSink(_AppendFileSink):
    """Appends batches to a CSV file with one header line, written when the file is new.

    Every batch must have the header's columns (in any order; they are written in the header's
    order); a batch with other columns raises :class:`SinkSchemaError`, so the runtime sends it
    to dead letters. Datetimes are ISO-8601, durations ISO-8601 durations, bytes base64, and
    lists and structs JSON text. ``append=False`` starts the file afresh.

    Finding the last complete row on ``open`` reads the whole file once: a quoted field may hold
    newlines, so only counting quotes from the start tells a row's end from a line's.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = True) -> None:
        super().__init__(path, append=append)
        self.header: list[str] | None = None

    def _last_record_end(self) -> int:
        """Offset just past the last newline that lies outside quotes (``""`` keeps parity)."""
        assert self._fd is not None
        quotes = 0
        end = 0
        offset = 0
        while offset < self._size:
            chunk = os.pread(self._fd, min(_READ_CHUNK, self._size - offset), offset)
            newline = chunk.rfind(b"\n")
            while newline >= 0:
                if (quotes + chunk.count(b'"', 0, newline)) % 2 == 0:
                    end = offset + newline + 1
                    break
                newline = chunk.rfind(b"\n", 0, newline)
            quotes += chunk.count(b'"')
            offset += len(chunk)
        return end

    def _opened(self) -> None:
        self.header = self._read_header() if self._size else None

    def _read_header(self) -> list[str]:
        with open(self.path, encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle), [])

    def _encode(self, df: pl.DataFrame) -> bytes:
        if self.header is not None:
            df = self._conform(df)
        out = io.BytesIO()
        _converted(df, _textual).write_csv(out, include_header=self.header is None, line_terminator="\n")
        return out.getvalue()

    def _conform(self, df: pl.DataFrame) -> pl.DataFrame:
        assert self.header is not None
        if df.columns == self.header:
            return df
        if sorted(df.columns) != sorted(self.header):
            raise SinkSchemaError(
                f"{self.path}: batch columns {df.columns} differ from the file's header "
                f"{self.header}; a CSV file holds one set of columns"
            )
        return df.select(self.header)

    def _written(self, df: pl.DataFrame) -> None:
        if self.header is None:
            self.header = list(df.columns)


class JsonlSink(_AppendFileSink):
    """Appends batches to a JSON Lines file: one JSON object per row, one row per line.

    Datetimes are ISO-8601 strings, bytes base64, decimals strings; JSON's escaping keeps
    newlines out of records, so a line is always a row. ``append=False`` starts afresh.
    """

    def _encode(self, df: pl.DataFrame) -> bytes:
        if any(_needs_python_json(t) for t in df.dtypes):
            return self._encode_rows(df)
        out = io.BytesIO()
        _converted(df, _jsonable).write_ndjson(out)
        return out.getvalue()

    @staticmethod
    def _encode_rows(df: pl.DataFrame) -> bytes:
        """Row by row with orjson: for nested times and bytes, which polars' writer mishandles."""
        dumps = orjson.dumps
        return b"".join(dumps(row, default=_json_default) + b"\n" for row in df.iter_rows(named=True))


def _needs_python_json(dtype: pl.DataType) -> bool:
    """Types polars' NDJSON writer cannot write well inside lists and structs."""
    return dtype == pl.Object or (
        isinstance(dtype, _NESTED)
        and _contains(dtype, lambda t: t == pl.Binary or isinstance(t, pl.Datetime))
    )


def _jsonable(series: pl.Series) -> pl.Series:
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        return iso_text(series)
    if dtype == pl.Binary:
        return series.bin.encode("base64")
    return series


def _fsync_dir(directory: Path) -> None:
    """Make a new or renamed directory entry durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- Parquet -----------------------------------------------------------------------------------

_PART = re.compile(r"^part-(\d+)\.parquet$")


class _ParquetFile:
    """One Parquet file being written under a hidden temporary name, published on ``commit``."""

    def __init__(self, target: Path, schema: pa.Schema, compression: str) -> None:
        self.target = target
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        self.temp = Path(name)
        self.writer = pq.ParquetWriter(self.temp, schema, compression=compression)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=_ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def commit(self) -> None:
        """Finish the file, fsync it and rename it into place in one atomic step."""
        self.writer.close()
        fd = os.open(self.temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.temp, self.target)
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.temp.unlink(missing_ok=True)


class ParquetSink(Sink):
    """Writes Parquet that readers only ever see complete.

    If ``path`` ends with ``.parquet`` it is one file, published on ``close``; otherwise it is a
    directory of ``part-NNNNN.parquet`` files, each published once it holds ``rows_per_file``
    rows (and the last one on ``close``); numbering continues after parts already there. The
    first batch fixes the schema; later batches are cast to it (rows whose values cannot be
    cast raise and go to dead letters; other column sets raise :class:`SinkSchemaError`).
    ``flush`` publishes the current part in directory mode; a single file can only appear whole,
    on ``close``. A crash leaves at most a hidden ``.*.tmp`` file, never a partial ``path``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, rows_per_file: int = 1_000_000, compression: str = "zstd"
    ) -> None:
        if rows_per_file < 1:
            raise ValueError("rows_per_file must be at least 1")
        self.path = Path(path)
        self.single = self.path.suffix == ".parquet" and not self.path.is_dir()
        self.rows_per_file = rows_per_file
        self.compression = compression
        self._schema: pl.Schema | None = None
        self._arrow_schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._file: _ParquetFile | None = None
        self._next_part = 0

    def open(self, step: str) -> None:
        if self.single:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        self.path.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in self.path.iterdir() if (m := _PART.match(p.name))]
        self._next_part = max(numbers, default=-1) + 1

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        table = self._conform(df)
        if not self.single:
            self._write_parts(table)
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= _ROW_GROUP_ROWS:
            try:
                self._drain()
            except BaseException:
                self._pending.pop()  # this batch must not stay buffered: the runtime retries it
                self._pending_rows -= table.num_rows
                raise

    def _conform(self, df: pl.DataFrame) -> pa.Table:
        """The batch as Arrow in the fixed schema; raising here buffers and writes nothing."""
        if self._schema is None:
            table = df.to_arrow()
            self._schema, self._arrow_schema = df.schema, table.schema
            return table
        names = list(self._schema.names())
        if sorted(df.columns) != sorted(names):
            raise SinkSchemaError(
                f"{self.path}: batch columns {df.columns} differ from the Parquet schema's {names}"
            )
        if df.schema != self._schema:
            df = df.select(names).cast(dict(self._schema), strict=True)
        table = df.to_arrow()
        if table.schema != self._arrow_schema:
            table = table.cast(self._arrow_schema)
        return table

    def _write_parts(self, table: pa.Table) -> None:
        """Split the batch at part boundaries, publishing each part as it fills."""
        offset = 0
        while offset < table.num_rows:
            room = self.rows_per_file - self._pending_rows - (self._file.rows if self._file else 0)
            piece = table.slice(offset, room)
            self._pending.append(piece)
            self._pending_rows += piece.num_rows
            offset += piece.num_rows
            if piece.num_rows == room:
                self._publish()
            elif self._pending_rows >= _ROW_GROUP_ROWS:
                self._drain()

    def _drain(self) -> None:
        """Write the gathered batches to the open temporary file as row groups."""
        if not self._pending:
            return
        if self._file is None:
            assert self._arrow_schema is not None
            self._file = _ParquetFile(self._target(), self._arrow_schema, self.compression)
        self._file.write(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0

    def _target(self) -> Path:
        if self.single:
            return self.path
        return self.path / f"part-{self._next_part:05d}.parquet"

    def _publish(self) -> None:
        self._drain()
        if self._file is None:
            return
        self._file.commit()
        self._file = None
        if not self.single:
            self._next_part += 1

    def flush(self) -> None:
        if self.single:
            self._drain()
        else:
            self._publish()

    def close(self) -> None:
        self._publish()

    def __del__(self) -> None:
        # A run that aborted never calls close: do not leave the temporary file open.
        file = getattr(self, "_file", None)
        if file is not None:
            with contextlib.suppress(Exception):
                file.discard()
