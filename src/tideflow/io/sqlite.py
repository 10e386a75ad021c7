"""SQLite sink: one transaction per batch, so a table only ever holds whole batches.

SQLite is the database that is always there; this sink makes it a safe stream target. A batch
is inserted inside one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), which is what the
runtime's contract needs: when a row fails (a constraint, an unbindable value) the whole batch
rolls back and the runtime bisects it to dead-letter exactly the failing rows. With ``key``
the sink upserts, so replaying a stream converges on the latest record per key.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from .base import Sink
from .files_out import SinkSchemaError, iso_text, json_text

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def quote_identifier(name: str) -> str:
    """Quote a table or column name for SQL: identifiers cannot be bound as parameters."""
    if "\x00" in name:
        raise ValueError(f"SQLite identifiers cannot contain NUL characters: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _fold(name: str) -> str:
    """SQLite compares identifiers case-insensitively, for ASCII letters only."""
    return name.translate(_ASCII_LOWER)


def sqlite_type(dtype: pl.DataType) -> str:
    """The column type to declare for a polars dtype ('' for all-null columns: no affinity)."""
    if dtype.is_integer() or dtype == pl.Boolean:
        return "INTEGER"
    if dtype.is_float():
        return "REAL"
    if dtype == pl.Binary:
        return "BLOB"
    if dtype == pl.Null:
        return ""
    return "TEXT"


def sqlite_values(series: pl.Series) -> list[Any]:
    """A column as Python values sqlite3 binds: ISO text for times, JSON text for nested data."""
    dtype = series.dtype
    if (dtype.is_numeric() and not isinstance(dtype, pl.Decimal)) or dtype in (pl.Boolean, pl.Binary, pl.Null):
        return series.to_list()
    if isinstance(dtype, pl.Datetime):
        return iso_text(series).to_list()
    if isinstance(dtype, pl.Duration):
        return series.dt.to_string("iso").to_list()
    if dtype == pl.Time:
        return series.dt.to_string("%H:%M:%S%.f").to_list()  # a plain cast drops the fraction
    if isinstance(dtype, pl.List | pl.Array | pl.Struct) or dtype == pl.Object:
        return json_text(series).to_list()
    return series.cast(pl.String).to_list()


class SqliteSink(Sink):
    """Writes batches to a SQLite table, creating it (and new columns) from the batches' schema.

    Column types follow :func:`sqlite_type`: integers and booleans INTEGER, floats REAL, bytes
    BLOB, everything else TEXT (datetimes and dates ISO-8601, lists and structs JSON). With
    ``key`` (a column or list of columns) rows are upserted: a UNIQUE index is created on the key
    and a later record replaces the earlier one's other columns (rows whose key is NULL are never
    equal, as in SQL, so they are all kept). ``batch_rows`` bounds how many
    rows are turned into Python values at a time; a batch is still one transaction.

    The database runs in WAL mode with ``synchronous=NORMAL``: a commit survives a killed
    process at once, and power loss after ``flush`` (a WAL checkpoint) or ``close``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str,
        *,
        key: str | Sequence[str] | None = None,
        batch_rows: int = 10_000,
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self.path = str(path)
        self.table = table
        self.key = [key] if isinstance(key, str) else list(key or [])
        self.batch_rows = batch_rows
        quote_identifier(table)
        for column in self.key:
            quote_identifier(column)
        self._conn: sqlite3.Connection | None = None
        self._columns: dict[str, str] | None = None
        """Folded name -> declared name of the table's columns; None until read or created."""
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, step: str) -> None:
        """Connect from the worker thread that will write.

        ``check_same_thread=False`` only lifts sqlite3's guard so that ``close`` may come from
        another thread; calls are serialised by a lock, and the runtime makes one at a time.
        """
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        self._columns = self._read_columns()

    def flush(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    # -- writing ----------------------------------------------------------------------------
    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError(f"SqliteSink({self.path!r}, {self.table!r}) is not open; call open() first")
            self._check(df)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._evolve(conn, df)
                sql = self._insert_sql(df.columns)
                for offset in range(0, df.height, self.batch_rows):
                    part = df.slice(offset, self.batch_rows)
                    columns = [sqlite_values(series) for series in part.iter_columns()]
                    conn.executemany(sql, zip(*columns, strict=True))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (disk full)
                    conn.execute("ROLLBACK")
                self._columns = self._read_columns()  # DDL rolled back with the rows
                raise

    def _check(self, df: pl.DataFrame) -> None:
        """Faults of the whole batch, raised before touching the database."""
        folded = [_fold(c) for c in df.columns]
        if len(set(folded)) != len(folded):
            raise SinkSchemaError(
                f"SQLite table {self.table!r}: columns {df.columns} collide, as SQLite ignores ASCII case"
            )
        missing = [k for k in self.key if _fold(k) not in folded]
        if missing:
            raise SinkSchemaError(f"SQLite table {self.table!r}: batch lacks key column(s) {missing}")

    @property
    def _key_folded(self) -> set[str]:
        return {_fold(k) for k in self.key}

    def _read_columns(self) -> dict[str, str] | None:
        assert self._conn is not None
        rows = self._conn.execute(f"PRAGMA table_info({quote_identifier(self.table)})").fetchall()
        return {_fold(row[1]): row[1] for row in rows} or None

    def _evolve(self, conn: sqlite3.Connection, df: pl.DataFrame) -> None:
        """Create the table from the first batch, add columns later batches bring, index the key."""
        table = quote_identifier(self.table)
        if self._columns is None:
            columns = ", ".join(f"{quote_identifier(n)} {sqlite_type(t)}".rstrip() for n, t in df.schema.items())
            conn.execute(f"CREATE TABLE {table} ({columns})")
            self._columns = {_fold(n): n for n in df.columns}
        for name, dtype in df.schema.items():
            if _fold(name) not in self._columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote_identifier(name)} {sqlite_type(dtype)}".rstrip())
                self._columns[_fold(name)] = name
        if self.key:
            index = quote_identifier(f"{self.table}__tf_key__{'__'.join(self.key)}")
            keys = ", ".join(quote_identifier(k) for k in self.key)
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} ({keys})")

    def _insert_sql(self, names: list[str]) -> str:
        columns = ", ".join(quote_identifier(n) for n in names)
        marks = ", ".join("?" for _ in names)
        sql = f"INSERT INTO {quote_identifier(self.table)} ({columns}) VALUES ({marks})"
        if not self.key:
            return sql
        keys = ", ".join(quote_identifier(k) for k in self.key)
        updates = [n for n in names if _fold(n) not in self._key_folded]
        if not updates:
            return f"{sql} ON CONFLICT ({keys}) DO NOTHING"
        assignments = ", ".join(f"{quote_identifier(n)} = excluded.{quote_identifier(n)}" for n in updates)
        return f"{sql} ON CONFLICT ({keys}) DO UPDATE SET {assignments}"
