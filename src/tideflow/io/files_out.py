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

Exactly-once (a checkpointed run: ``recover`` was called; see
:class:`~tideflow.io.base.TransactionalSink`). Output becomes visible only when its epoch
commits, and every step leaves files from which ``recover`` can finish or undo it:

* CSV and JSONL (target ``dir/name``): batches are appended, as above, to the hidden
  ``dir/.name.tf-open``; ``prepare(e)`` fsyncs it and renames it ``dir/.name.tf-epoch-<e:012d>``
  (an epoch without rows leaves no file). ``commit(e)`` appends each prepared file ``<= e`` to
  the target in epoch order, fsyncs it, publishes ``dir/.name.tf-commit`` (JSON
  ``{"epoch": e, "length": n}``: the target's length once epoch ``e`` is in) by write, fsync
  and rename, and only then deletes the epoch file. ``recover(c)`` cuts the target back to the
  sidecar's length (what a killed append left after it goes), appends the epoch files
  ``<= c`` the sidecar does not cover yet and deletes the later ones and the open file. Every
  pending CSV file starts with the header line; the commit copies it only into an empty
  target, so the header is written once. Limit: between a crash and its resumption, nothing
  else may append to the target (the sidecar's length would cut it off).
* Parquet (a directory): a part file is written under a hidden temporary name as before;
  ``prepare(e)`` completes the epoch's open part (so each epoch ends its own part) and renames
  each part of the epoch to ``dir/.part-NNNNN.parquet.tf-epoch-<e:012d>``, a name that holds
  its final one; ``commit(e)`` renames them to ``dir/part-NNNNN.parquet``, where a file already
  renamed is skipped, so a repeated commit is a no-op. Hidden names do not end in
  ``.parquet``, so ``dir/*.parquet`` never reads them. A single ``.parquet`` file cannot grow
  per checkpoint without rewriting it whole each time, so it refuses checkpointed runs.

Test hook: with the environment variable ``TIDEFLOW_CRASH_AT=commit:N`` the process SIGKILLs
itself at the N-th step of its commits: the N-th chunk a CSV/JSONL commit appends (after
writing half of it: a torn append) or the N-th rename of a Parquet commit (before it).
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
import signal
import tempfile
import threading
import warnings
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BatchRejected
from .base import TransactionalSink

_READ_CHUNK = 1 << 20
_ISO_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"
_ISO_AWARE = "%Y-%m-%dT%H:%M:%S%.f%:z"
_NESTED = (pl.List, pl.Array, pl.Struct)
_ROW_GROUP_ROWS = 128 * 1024
"""Parquet rows gathered before a row group is written: small batches make poor row groups."""


_CRASH_ENV = "TIDEFLOW_CRASH_AT"
_crash_counts: dict[str, int] = {}


def crash_due(point: str) -> bool:
    """Test hook: whether this is the N-th time ``point`` is reached and ``TIDEFLOW_CRASH_AT``
    is ``point:N`` (one environment lookup when the variable is unset)."""
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return False
    name, _, count = spec.partition(":")
    if name != point:
        return False
    _crash_counts[point] = reached = _crash_counts.get(point, 0) + 1
    return reached == int(count)


def crash() -> NoReturn:
    """Test hook: die as a killed process does, with no cleanup and no flush."""
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    raise SystemExit(137)  # not reached where SIGKILL exists


def check_epochs(started: bool, epoch: int, last: int, what: str) -> None:
    """Guard the epoch protocol: a bug upstream must not silently publish or lose rows."""
    if not started:
        raise RuntimeError(f"{what}: prepare() before recover(); a checkpointed run starts epochs with recover()")
    if epoch <= last:
        raise ValueError(f"{what}: epoch {epoch} is not after the last one, {last}; epochs must increase")


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


class _AppendFileSink(TransactionalSink):
    """An append-only file of newline-terminated records, written one whole batch at a time."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool = True) -> None:
        self.path = Path(path)
        self.append = append
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        self._dir_synced = True
        self._truncate = False
        """``append=False`` empties the file before its first write, not on ``open``: a resumed
        checkpointed run must keep what it committed, and only ``recover`` tells which it is."""
        # Exactly-once state (see the module docstring).
        self._epochs = False
        self._lock = threading.Lock()
        """Guards the open file and the list of prepared epochs, shared with commit's thread."""
        self._commit_lock = threading.Lock()
        """One commit at a time; the target is only touched under it. ``close`` waits for it."""
        self._open_fd: int | None = None
        self._open_size = 0
        self._prepared: list[tuple[int, Path]] = []
        self._last_epoch = 0
        self._committed = (0, 0)
        """The sidecar: the last epoch appended to the target, and the target's length then."""

    def open(self, step: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._truncate = not self.append and self._size > 0
        if self._size and self.append:
            self._repair_tail()
        self._dirty = created or not self.append
        self._dir_synced = not created
        self._opened()

    def _start(self) -> None:
        """Empty the file for ``append=False``, once, before anything is written to it."""
        if self._truncate:
            assert self._fd is not None
            os.ftruncate(self._fd, 0)
            self._size = 0
            self._truncate = False
            self._dirty = True
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

    def _pending_prefix(self, df: pl.DataFrame) -> bytes:
        """What a new pending file starts with (CSV: the header line)."""
        return b""

    def _prefix_length(self, fd: int, size: int) -> int:
        """The length of ``_pending_prefix`` in a pending file: skipped when the target has rows."""
        return 0

    def write(self, df: pl.DataFrame) -> None:
        if self._fd is None:
            raise RuntimeError(f"{type(self).__name__}({str(self.path)!r}) is not open; call open() first")
        if df.height == 0:
            return
        if self._epochs:
            self._write_pending(df)
            return
        self._start()
        self._append(self._encode(df))
        self._written(df)

    def _written(self, df: pl.DataFrame) -> None:
        """Hook run after a batch was appended."""

    def _append(self, data: bytes) -> None:
        """Append ``data`` completely, or truncate back to where it started and raise."""
        assert self._fd is not None
        self._size = _append_all(self._fd, self._size, data)
        self._dirty = True

    def flush(self) -> None:
        """fsync the file (and its directory entry, the first time) so rows survive power loss.

        In a checkpointed run rows become durable at ``prepare`` and visible at ``commit``; this
        does nothing then.
        """
        if self._fd is None or self._epochs:
            return
        self._start()
        if not self._dirty:
            return
        os.fsync(self._fd)
        if not self._dir_synced:
            _fsync_dir(self.path.parent)
            self._dir_synced = True
        self._dirty = False

    def close(self) -> None:
        if self._fd is None:
            return
        if self._epochs:
            self._close_epochs()
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = None

    # -- exactly-once -------------------------------------------------------------------------

    def _hidden(self, suffix: str) -> Path:
        return self.path.parent / f".{self.path.name}.tf-{suffix}"

    def _epoch_path(self, epoch: int) -> Path:
        return self._hidden(f"epoch-{epoch:012d}")

    def recover(self, committed: int | None, handle: Any) -> None:
        with self._commit_lock:
            if self._fd is None:
                raise RuntimeError(f"{type(self).__name__}({str(self.path)!r}) is not open; call open() first")
            self._epochs = True
            with self._lock:
                self._drop_open_file()
            self._hidden("commit.tmp").unlink(missing_ok=True)
            epochs = self._epoch_files()
            if committed is None:
                self._start()  # a fresh run: append=False empties the target now
                self._prepared = []
                self._publish_sidecar(0, self._size)
            else:
                self._truncate = False  # a resumed run keeps what it committed
                self._cut_to_sidecar(committed)
                self._prepared = [(e, p) for e, p in epochs if e <= committed]
                self._commit_prepared(committed)
            for e, p in epochs:
                if committed is None or e > committed:
                    p.unlink(missing_ok=True)
            self._opened()
            self._last_epoch = committed or 0

    def _epoch_files(self) -> list[tuple[int, Path]]:
        pattern = re.compile(rf"^\.{re.escape(self.path.name)}\.tf-epoch-(\d+)$")
        found = [
            (int(m.group(1)), self.path.parent / m.group(0))
            for n in os.listdir(self.path.parent)
            if (m := pattern.match(n))
        ]
        return sorted(found)

    def _cut_to_sidecar(self, committed: int) -> None:
        """Trust the target up to the sidecar's length: a killed commit may have appended more."""
        assert self._fd is not None
        sidecar = self._read_sidecar()
        if sidecar is None:
            warnings.warn(
                f"{self.path}: no commit record {self._hidden('commit').name!r} to resume from; "
                "epochs prepared before the crash are appended again",
                RuntimeWarning,
                stacklevel=3,
            )
            if self._size:
                self._repair_tail()
            self._publish_sidecar(0, self._size)
            sidecar = (0, self._size)
        epoch, length = sidecar
        if length > self._size:
            warnings.warn(
                f"{self.path}: the file is shorter ({self._size} bytes) than its last commit left it "
                f"({length}); was it changed by another program?",
                RuntimeWarning,
                stacklevel=3,
            )
            length = self._size
        elif length < self._size:
            os.ftruncate(self._fd, length)  # a torn or unrecorded append of a killed commit
            os.fsync(self._fd)
            self._size = length
        if epoch > committed:
            warnings.warn(
                f"{self.path}: epoch {epoch} is already committed but the run resumes from epoch "
                f"{committed}: rows of the epochs between will appear twice",
                RuntimeWarning,
                stacklevel=3,
            )
        self._committed = (epoch, length)

    def _read_sidecar(self) -> tuple[int, int] | None:
        try:
            data = orjson.loads(self._hidden("commit").read_bytes())
            return int(data["epoch"]), int(data["length"])
        except FileNotFoundError:
            return None

    def _publish_sidecar(self, epoch: int, length: int) -> None:
        """Record, atomically and durably, that the target holds epochs ``<= epoch`` in ``length`` bytes."""
        temp = self._hidden("commit.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _append_all(fd, 0, orjson.dumps({"epoch": epoch, "length": length}))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self._hidden("commit"))
        _fsync_dir(self.path.parent)  # before any epoch file it covers is deleted
        self._committed = (epoch, length)
        self._dir_synced = True

    def _write_pending(self, df: pl.DataFrame) -> None:
        data = self._encode(df)
        with self._lock:
            if self._open_fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
                self._open_fd = os.open(self._hidden("open"), flags, 0o644)
                self._open_size = 0
            if self._open_size == 0:
                data = self._pending_prefix(df) + data
            self._open_size = _append_all(self._open_fd, self._open_size, data)
        self._written(df)

    def prepare(self, epoch: int) -> Any:
        with self._lock:
            check_epochs(self._epochs, epoch, self._last_epoch, f"{type(self).__name__}({str(self.path)!r})")
            name, size = None, self._open_size
            if self._open_fd is not None and size:
                os.fsync(self._open_fd)
                os.close(self._open_fd)
                self._open_fd = None
                target = self._epoch_path(epoch)
                os.replace(self._hidden("open"), target)
                _fsync_dir(self.path.parent)
                self._prepared.append((epoch, target))
                name = target.name
            else:
                self._drop_open_file()
            self._open_size = 0
            self._last_epoch = epoch
            return {"epoch": epoch, "file": name, "bytes": size if name else 0}

    def commit(self, epoch: int) -> None:
        with self._commit_lock:
            if self._fd is None:
                raise RuntimeError(f"{type(self).__name__}({str(self.path)!r}) is not open")
            self._commit_prepared(epoch)

    def _commit_prepared(self, epoch: int) -> None:
        """Append prepared epochs ``<= epoch`` in order; under the commit lock."""
        with self._lock:
            due = [(e, p) for e, p in self._prepared if e <= epoch]
        for e, path in due:
            if e > self._committed[0]:
                self._append_file(path)
                assert self._fd is not None
                os.fsync(self._fd)
                self._publish_sidecar(e, self._size)
            path.unlink(missing_ok=True)
            with self._lock:
                self._prepared.remove((e, path))

    def _append_file(self, path: Path) -> None:
        """Append an epoch file to the target whole (its prefix only to an empty target)."""
        assert self._fd is not None
        start = self._size
        src = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            length = os.fstat(src).st_size
            offset = self._prefix_length(src, length) if start else 0
            try:
                while offset < length:
                    chunk = os.pread(src, min(_READ_CHUNK, length - offset), offset)
                    if not chunk:
                        raise OSError(f"{path}: shorter than its size while it was copied")
                    if crash_due("commit"):
                        _append_all(self._fd, self._size, chunk[: len(chunk) // 2])
                        crash()
                    self._size = _append_all(self._fd, self._size, chunk)
                    offset += len(chunk)
            except BaseException:
                os.ftruncate(self._fd, start)
                self._size = start
                raise
        finally:
            os.close(src)

    def _drop_open_file(self) -> None:
        """Discard the rows written since the last prepare (under the lock)."""
        if self._open_fd is not None:
            os.close(self._open_fd)
            self._open_fd = None
        self._open_size = 0
        self._hidden("open").unlink(missing_ok=True)

    def _close_epochs(self) -> None:
        """Release files: rows not yet prepared are dropped (a resumed run writes them again)
        and prepared epochs stay for ``recover``."""
        with self._commit_lock:
            with self._lock:
                self._drop_open_file()
            assert self._fd is not None
            fd, self._fd = self._fd, None
            os.close(fd)


def _append_all(fd: int, start: int, data: bytes) -> int:
    """Append ``data`` to ``fd`` (``O_APPEND``, now ``start`` bytes long) completely and return the
    new length, or truncate back to ``start`` and raise."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.ftruncate(fd, start)
        raise
    return start + len(data)


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
        self.header = self._read_header() if self._size and not self._truncate else None

    def _read_header(self) -> list[str]:
        with open(self.path, encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle), [])

    def _encode(self, df: pl.DataFrame) -> bytes:
        if self.header is not None:
            df = self._conform(df)
        out = io.BytesIO()
        header = self.header is None and not self._epochs  # pending files get theirs from _pending_prefix
        _converted(df, _textual).write_csv(out, include_header=header, line_terminator="\n")
        return out.getvalue()

    def _pending_prefix(self, df: pl.DataFrame) -> bytes:
        """The header line: each pending file carries it, for a commit into an empty target."""
        out = io.BytesIO()
        columns = self.header if self.header is not None else df.columns
        pl.DataFrame(schema=dict.fromkeys(columns, pl.String)).write_csv(out, include_header=True, line_terminator="\n")
        return out.getvalue()

    def _prefix_length(self, fd: int, size: int) -> int:
        """The end of the header: the first newline outside quotes (a name may hold newlines)."""
        quotes = 0
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
            newline = chunk.find(b"\n")
            while newline >= 0:
                if (quotes + chunk.count(b'"', 0, newline)) % 2 == 0:
                    return offset + newline + 1
                newline = chunk.find(b"\n", newline + 1)
            quotes += chunk.count(b'"')
            offset += len(chunk)
        return size

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
        isinstance(dtype, _NESTED) and _contains(dtype, lambda t: t == pl.Binary or isinstance(t, pl.Datetime))
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
_EPOCH_PART = re.compile(r"^\.(part-(\d+)\.parquet)\.tf-epoch-(\d+)$")
"""A prepared part: its final name and its epoch."""
_TEMP_PART = re.compile(r"^\.part-\d+\.parquet\..+\.tmp$")
"""A part still being written (or abandoned by a crash)."""


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

    def finish(self) -> None:
        """Write the footer and fsync: complete and durable, still under the hidden name."""
        self.writer.close()
        fd = os.open(self.temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Finish the file, fsync it and rename it into place in one atomic step."""
        self.finish()
        os.replace(self.temp, self.target)
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.temp.unlink(missing_ok=True)


class ParquetSink(TransactionalSink):
    """Writes Parquet that readers only ever see complete.

    If ``path`` ends with ``.parquet`` it is one file, published on ``close``; otherwise it is a
    directory of ``part-NNNNN.parquet`` files, each published once it holds ``rows_per_file``
    rows (and the last one on ``close``); numbering continues after parts already there. The
    first batch fixes the schema; later batches are cast to it (rows whose values cannot be
    cast raise and go to dead letters; other column sets raise :class:`SinkSchemaError`).
    ``flush`` publishes the current part in directory mode; a single file can only appear whole,
    on ``close``. A crash leaves at most a hidden ``.*.tmp`` file, never a partial ``path``.

    Exactly-once (a checkpointed run) needs a directory: each epoch's rows end in parts of their
    own (rolled at ``rows_per_file`` as before, the last one closed at the checkpoint), which
    become visible, under the usual part names, when the epoch commits (see the module
    docstring). Frequent checkpoints therefore make small files. A single ``.parquet`` file
    refuses ``recover``: it could only be rewritten whole at each commit.
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
        # Exactly-once state (see the module docstring).
        self._epochs = False
        self._sealed: list[_ParquetFile] = []
        """Parts of the open epoch that are complete, waiting for ``prepare``."""
        self._prepared: list[tuple[int, list[tuple[Path, Path]]]] = []
        """Prepared epochs: (hidden name, final name) of each part, in epoch order."""
        self._lock = threading.Lock()
        """Guards ``_prepared``, shared with commit's thread."""
        self._commit_lock = threading.Lock()
        self._last_epoch = 0

    def open(self, step: str) -> None:
        if self.single:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._next_part = self._first_free_part()

    def _first_free_part(self) -> int:
        """The number after every part there, prepared ones of a checkpointed run included."""
        numbers = [int(m.group(1)) for p in self.path.iterdir() if (m := _PART.match(p.name))]
        numbers += [int(m.group(2)) for p in self.path.iterdir() if (m := _EPOCH_PART.match(p.name))]
        return max(numbers, default=-1) + 1

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
            raise SinkSchemaError(f"{self.path}: batch columns {df.columns} differ from the Parquet schema's {names}")
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
        """Publish the open part; in a checkpointed run only complete it, for ``prepare``."""
        self._drain()
        if self._file is None:
            return
        if self._epochs:
            self._file.finish()
            self._sealed.append(self._file)
        else:
            self._file.commit()
        self._file = None
        if not self.single:
            self._next_part += 1

    def flush(self) -> None:
        if self._epochs:
            return  # a checkpointed run publishes on commit only
        if self.single:
            self._drain()
        else:
            self._publish()

    def close(self) -> None:
        if not self._epochs:
            self._publish()
            return
        with self._commit_lock:  # rows not prepared are dropped: a resumed run writes them again
            self._discard_unprepared()

    # -- exactly-once -------------------------------------------------------------------------

    def recover(self, committed: int | None, handle: Any) -> None:
        if self.single:
            raise ValueError(
                f"ParquetSink({str(self.path)!r}): one .parquet file cannot grow with each checkpoint (it "
                "would be rewritten whole at every commit); for exactly-once output give a directory, "
                "where each checkpoint commits part files"
            )
        with self._commit_lock:
            self._epochs = True
            self._discard_unprepared()
            prepared: dict[int, list[tuple[Path, Path]]] = {}
            for name in os.listdir(self.path):
                if match := _EPOCH_PART.match(name):
                    epoch = int(match.group(3))
                    if committed is not None and epoch <= committed:
                        prepared.setdefault(epoch, []).append((self.path / name, self.path / match.group(1)))
                    else:
                        (self.path / name).unlink(missing_ok=True)
                elif _TEMP_PART.match(name):
                    (self.path / name).unlink(missing_ok=True)  # a part a killed run was writing
            self._prepared = [(e, sorted(prepared[e], key=lambda pair: pair[1].name)) for e in sorted(prepared)]
            if committed is not None:
                self._commit_prepared(committed)
            self._next_part = self._first_free_part()
            self._last_epoch = committed or 0

    def prepare(self, epoch: int) -> Any:
        check_epochs(self._epochs, epoch, self._last_epoch, f"ParquetSink({str(self.path)!r})")
        self._publish()  # the epoch's last part must be complete too
        parts: list[tuple[Path, Path]] = []
        for file in self._sealed:
            hidden = file.target.parent / f".{file.target.name}.tf-epoch-{epoch:012d}"
            os.replace(file.temp, hidden)
            parts.append((hidden, file.target))
        self._sealed = []
        if parts:
            _fsync_dir(self.path)
            with self._lock:
                self._prepared.append((epoch, parts))
        self._last_epoch = epoch
        return {"epoch": epoch, "files": [target.name for _, target in parts]}

    def commit(self, epoch: int) -> None:
        with self._commit_lock:
            self._commit_prepared(epoch)

    def _commit_prepared(self, epoch: int) -> None:
        """Rename the parts of prepared epochs ``<= epoch`` into place; under the commit lock."""
        with self._lock:
            due = [entry for entry in self._prepared if entry[0] <= epoch]
        for entry in due:
            for hidden, target in entry[1]:
                if crash_due("commit"):
                    crash()
                if hidden.exists():  # gone: renamed by a commit that a crash interrupted
                    os.replace(hidden, target)
            _fsync_dir(self.path)
            with self._lock:
                self._prepared.remove(entry)

    def _discard_unprepared(self) -> None:
        """Delete parts of the open epoch: its rows are in no checkpoint."""
        files, self._sealed = [*self._sealed, *([self._file] if self._file else [])], []
        self._file = None
        self._pending, self._pending_rows = [], 0
        for file in files:
            file.discard()

    def __del__(self) -> None:
        # A run that aborted never calls close: do not leave the temporary file open.
        file = getattr(self, "_file", None)
        if file is not None:
            with contextlib.suppress(Exception):
                file.discard()
