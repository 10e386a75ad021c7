"""SQLite sink: one transaction per batch, so a table only ever holds whole batches.

SQLite is the database that is always there; this sink makes it a safe stream target. A batch
is inserted inside one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), which is what the
runtime's contract needs: when a row fails (a constraint, an unbindable value) the whole batch
rolls back and the runtime bisects it to dead-letter exactly the failing rows. With ``key``
the sink upserts, so replaying a stream converges on the latest record per key.

In a checkpointed run (exactly-once, see :class:`~tideflow.io.base.TransactionalSink`) batches
go to a hidden table in the same database, ``_tf_pending__<table>``, and reach the target when
their epoch commits: one transaction copies them over in write order and deletes them, so a
commit is atomic and doing it twice changes nothing.

Test hook: with the environment variable ``TIDEFLOW_CRASH_AT=commit:N`` the process SIGKILLs
itself in its N-th commit, after the copy and before ``COMMIT``, so tests can prove recovery.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from .base import TransactionalSink
from .files_out import SinkSchemaError, check_epochs, crash, crash_due, iso_text, json_text

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PENDING_PREFIX = "_tf_pending__"
_SEQ = "_tf_seq"
"""The pending table's INTEGER PRIMARY KEY (its rowid): the order rows were written in."""
_COLS = "_tf_cols"
"""Which of the pending table's columns the row's batch had (a hex bit mask), so that a commit
inserts those columns only, as a direct write would: absent columns get the target's defaults,
and an upsert leaves them as they were."""
_RESERVED = (_SEQ, _COLS)


class SqliteCommitError(RuntimeError):
    """Committed rows broke a constraint of the target table.

    With checkpoints, rows reach the target only at commit, so a constraint of a table the user
    created (CHECK, NOT NULL, UNIQUE) fails there, for the whole commit, not per row.
    """


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


class SqliteSink(TransactionalSink):
    """Writes batches to a SQLite table, creating it (and new columns) from the batches' schema.

    Column types follow :func:`sqlite_type`: integers and booleans INTEGER, floats REAL, bytes
    BLOB, everything else TEXT (datetimes and dates ISO-8601, lists and structs JSON). With
    ``key`` (a column or list of columns) rows are upserted: a UNIQUE index is created on the key
    and a later record replaces the earlier one's other columns (rows whose key is NULL are never
    equal, as in SQL, so they are all kept). ``batch_rows`` bounds how many
    rows are turned into Python values at a time; a batch is still one transaction.

    The database runs in WAL mode with ``synchronous=NORMAL``: a commit survives a killed
    process at once, and power loss after ``flush`` (a WAL checkpoint) or ``close``.

    Exactly-once (a checkpointed run, after ``recover``): ``write`` inserts each batch, in one
    transaction as before and with the same conversions, into the hidden table
    ``_tf_pending__<table>`` (the target's columns, untyped so values keep what they were bound
    as, plus ``_tf_seq`` and ``_tf_cols``); the target is still created and evolved then.
    ``prepare(e)`` records in ``_tf_epochs__<table>`` that the rows written so far end epoch
    ``e`` (one small insert, synced so that it survives power loss; the rows are not rewritten);
    ``commit(e)`` copies the rows of epochs ``<= e`` into the target in write order (upserting
    with ``key``) and deletes them, in one transaction; ``recover`` commits the
    checkpoint's epoch and deletes every other pending row. Readers of the target never see an
    uncommitted row. With ``key`` a replay is idempotent anyway, but an uncommitted epoch would
    still show, so the two phases stay. The tables are dropped on ``close`` once empty. Batch
    columns named ``_tf_seq`` or ``_tf_cols`` are refused in this mode.

    Limit: constraints of a target table the user created (CHECK, NOT NULL, UNIQUE beyond
    ``key``) are only checked at commit, where failing rows cannot be sent to dead letters one
    by one: the commit raises :class:`SqliteCommitError`, leaves the rows pending and the run
    fails; fix or delete them in the pending table (or relax the constraint) and resume.
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
        self._pending = _PENDING_PREFIX + table
        self._epochs = False
        """Whether ``recover`` started epochs: writes then go to the pending table."""
        self._pending_columns: list[str] | None = None
        """The pending table's data columns in table order (bit ``i`` of ``_tf_cols`` is column
        ``i``); None until read or created."""
        self._last_epoch = 0
        self._masks: set[str] | None = None
        """Column masks of the pending rows this process wrote (None: unknown)."""

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
                if self._epochs and self._pending_columns is not None:
                    self._drop_pending_if_empty(conn)
            except BaseException:
                conn.close()
                raise
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def _drop_pending_if_empty(self, conn: sqlite3.Connection) -> None:
        """Leave no hidden table behind a run that committed everything it wrote."""
        pending = quote_identifier(self._pending)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(f"SELECT 1 FROM {pending} LIMIT 1").fetchone() is None:
                conn.execute(f"DROP TABLE {pending}")
                conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(self._boundaries)}")
                self._pending_columns = None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- exactly-once -----------------------------------------------------------------------
    def recover(self, committed: int | None, handle: Any) -> None:
        with self._lock:
            conn = self._open_conn()
            self._epochs = True
            self._masks = None  # rows of an earlier process: their column sets are not known here
            self._pending_columns = self._read_pending_columns()
            if self._pending_columns is not None:
                self._ensure_boundaries(conn)
                if committed is not None:
                    self._commit_locked(conn, committed)
                # Epochs after the checkpoint and open rows: they will come again.
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"DELETE FROM {quote_identifier(self._pending)}")
                conn.execute(f"DELETE FROM {quote_identifier(self._boundaries)}")
                conn.execute("COMMIT")
            self._masks = set()
            self._last_epoch = committed or 0

    @property
    def _boundaries(self) -> str:
        """The table of prepared epochs: ``(epoch, last_seq)``; a pending row belongs to the
        first epoch whose ``last_seq`` reaches its ``_tf_seq`` (rows after the last are open).
        Preparing an epoch is one small insert, not a rewrite of its rows."""
        return f"_tf_epochs__{self.table}"

    def _ensure_boundaries(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quote_identifier(self._boundaries)} "
            "(epoch INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL)"
        )

    def prepare(self, epoch: int) -> Any:
        with self._lock:
            conn = self._open_conn()
            check_epochs(self._epochs, epoch, self._last_epoch, f"SqliteSink({self.path!r}, {self.table!r})")
            rows = 0
            if self._pending_columns is not None:
                pending, boundaries = quote_identifier(self._pending), quote_identifier(self._boundaries)
                last = conn.execute(f"SELECT max({_SEQ}) FROM {pending}").fetchone()[0]
                before = conn.execute(f"SELECT max(last_seq) FROM {boundaries}").fetchone()[0]
                if last is not None and last != before:
                    rows = conn.execute(
                        f"SELECT count(*) FROM {pending} WHERE {_SEQ} > ?", (before if before is not None else -1,)
                    ).fetchone()[0]
                    # synchronous=FULL syncs the WAL at this commit: a checkpoint may record this
                    # epoch as prepared only once its rows would survive power loss too.
                    conn.execute("PRAGMA synchronous=FULL")
                    try:
                        conn.execute(f"INSERT INTO {boundaries} (epoch, last_seq) VALUES (?, ?)", (epoch, last))
                    finally:
                        conn.execute("PRAGMA synchronous=NORMAL")
            self._last_epoch = epoch
            return {"epoch": epoch, "rows": rows}

    def commit(self, epoch: int) -> None:
        with self._lock:
            conn = self._open_conn()
            if self._pending_columns is not None:
                self._commit_locked(conn, epoch)

    def _commit_locked(self, conn: sqlite3.Connection, epoch: int) -> None:
        """Copy the rows of epochs ``<= epoch`` into the target and delete them, atomically.

        Rows are copied in runs of consecutive rows with the same columns (usually one run),
        each with one ``INSERT ... SELECT`` in write order, so that with ``key`` the last
        record per key wins, as with direct writes.
        """
        pending, boundaries = quote_identifier(self._pending), quote_identifier(self._boundaries)
        conn.execute("BEGIN IMMEDIATE")
        try:
            bound = conn.execute(f"SELECT max(last_seq) FROM {boundaries} WHERE epoch <= ?", (epoch,)).fetchone()[0]
            runs = [] if bound is None else self._runs(conn, bound)
            for mask, first, last in runs:
                conn.execute(self._copy_sql(self._mask_columns(mask)), (first, last))
            if runs and crash_due("commit"):
                crash()
            if bound is not None:
                conn.execute(f"DELETE FROM {pending} WHERE {_SEQ} <= ?", (bound,))
            conn.execute(f"DELETE FROM {boundaries} WHERE epoch <= ?", (epoch,))
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise SqliteCommitError(
                f"SQLite table {self.table!r}: rows of epochs up to {epoch} break a constraint of the table "
                f"({error}). With checkpoints rows reach the table only when their epoch commits, so they "
                f"cannot go to dead letters one by one; they wait in table {self._pending!r}: fix or delete "
                "them there, or relax the constraint, then resume the run"
            ) from error
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _runs(self, conn: sqlite3.Connection, bound: int) -> list[tuple[str, int, int]]:
        """``(column mask, first seq, last seq)`` of the runs of pending rows up to ``bound`` that
        have the same columns, in write order. Usually every row has the same columns, and this
        process knows it without a query over the rows."""
        if self._masks is not None and len(self._masks) == 1:
            return [(next(iter(self._masks)), -1, bound)]
        return conn.execute(
            f"SELECT {_COLS}, min({_SEQ}), max({_SEQ}) FROM ("
            f"SELECT {_SEQ}, {_COLS}, row_number() OVER (ORDER BY {_SEQ})"
            f" - row_number() OVER (PARTITION BY {_COLS} ORDER BY {_SEQ}) AS island"
            f" FROM {quote_identifier(self._pending)} WHERE {_SEQ} <= ?) GROUP BY {_COLS}, island ORDER BY 2",
            (bound,),
        ).fetchall()

    def _copy_sql(self, names: list[str]) -> str:
        columns = ", ".join(quote_identifier(n) for n in names)
        sql = (
            f"INSERT INTO {quote_identifier(self.table)} ({columns}) SELECT {columns} FROM "
            f"{quote_identifier(self._pending)} WHERE {_SEQ} BETWEEN ? AND ? ORDER BY {_SEQ}"
        )
        # The WHERE clause keeps SQLite's parser from reading ON CONFLICT as a join constraint.
        return sql + self._conflict_clause(names)

    def _mask_columns(self, mask: str) -> list[str]:
        assert self._pending_columns is not None
        bits = int(mask, 16)
        return [name for i, name in enumerate(self._pending_columns) if bits >> i & 1]

    def _read_pending_columns(self) -> list[str] | None:
        assert self._conn is not None
        rows = self._conn.execute(f"PRAGMA table_info({quote_identifier(self._pending)})").fetchall()
        if not rows:
            return None
        names = [row[1] for row in rows]
        if names[: len(_RESERVED)] != list(_RESERVED):
            raise RuntimeError(
                f"SQLite table {self._pending!r} exists but is not tideflow's pending table for {self.table!r}"
            )
        return names[len(_RESERVED) :]

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"SqliteSink({self.path!r}, {self.table!r}) is not open; call open() first")
        return self._conn

    # -- writing ----------------------------------------------------------------------------
    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        with self._lock:
            conn = self._open_conn()
            self._check(df)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._evolve(conn, df)
                sql = self._pending_sql(conn, df) if self._epochs else self._insert_sql(df.columns)
                for offset in range(0, df.height, self.batch_rows):
                    part = df.slice(offset, self.batch_rows)
                    columns = [sqlite_values(series) for series in part.iter_columns()]
                    conn.executemany(sql, zip(*columns, strict=True))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (disk full)
                    conn.execute("ROLLBACK")
                self._columns = self._read_columns()  # DDL rolled back with the rows
                if self._epochs:
                    self._pending_columns = self._read_pending_columns()
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
        if self._epochs and not set(folded).isdisjoint(_RESERVED):
            raise SinkSchemaError(
                f"SQLite table {self.table!r}: columns {list(_RESERVED)} are reserved for the pending table "
                "of checkpointed runs"
            )

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

    def _pending_sql(self, conn: sqlite3.Connection, df: pl.DataFrame) -> str:
        """Create or widen the pending table for ``df``; the statement inserting ``df`` there."""
        pending = quote_identifier(self._pending)
        if self._pending_columns is None:
            columns = "".join(f", {quote_identifier(n)}" for n in df.columns)  # untyped: values stay as bound
            conn.execute(
                f"CREATE TABLE {pending} ({_SEQ} INTEGER PRIMARY KEY, {_COLS} TEXT{columns})"
            )
            self._ensure_boundaries(conn)
            self._pending_columns = list(df.columns)
        index = {_fold(n): i for i, n in enumerate(self._pending_columns)}
        for name in df.columns:
            if _fold(name) not in index:
                conn.execute(f"ALTER TABLE {pending} ADD COLUMN {quote_identifier(name)}")
                index[_fold(name)] = len(self._pending_columns)
                self._pending_columns.append(name)
        mask = sum(1 << index[_fold(n)] for n in df.columns)
        if self._masks is not None:
            self._masks.add(f"{mask:x}")
        columns = ", ".join(quote_identifier(n) for n in df.columns)
        marks = ", ".join("?" for _ in df.columns)
        return f"INSERT INTO {pending} ({_COLS}, {columns}) VALUES ('{mask:x}', {marks})"

    def _insert_sql(self, names: list[str]) -> str:
        columns = ", ".join(quote_identifier(n) for n in names)
        marks = ", ".join("?" for _ in names)
        sql = f"INSERT INTO {quote_identifier(self.table)} ({columns}) VALUES ({marks})"
        return sql + self._conflict_clause(names)

    def _conflict_clause(self, names: list[str]) -> str:
        """The upsert clause for rows with columns ``names`` ('' without ``key``)."""
        if not self.key:
            return ""
        keys = ", ".join(quote_identifier(k) for k in self.key)
        updates = [n for n in names if _fold(n) not in self._key_folded]
        if not updates:
            return f" ON CONFLICT ({keys}) DO NOTHING"
        assignments = ", ".join(f"{quote_identifier(n)} = excluded.{quote_identifier(n)}" for n in updates)
        return f" ON CONFLICT ({keys}) DO UPDATE SET {assignments}"
