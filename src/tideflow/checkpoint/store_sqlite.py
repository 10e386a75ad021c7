"""The SQLite checkpoint store: ``DIR/checkpoints.sqlite``, and the format of exported files.

One transaction per save (blobs, manifest, refs), so a crash anywhere leaves the file as it was;
WAL with ``synchronous=FULL`` makes a committed checkpoint survive a power cut too. Tables:

    checkpoints(epoch PRIMARY KEY, manifest, manifest_sha)   the manifest JSON and its sha256
    blobs(sha PRIMARY KEY, data)                             encoded state, by its sha256
    refs(epoch, sha)                                         which blobs each checkpoint uses

``refs`` makes garbage collection one indexed query per deleted checkpoint. One connection is
shared by every thread (the runtime saves from a background thread), behind the store's lock;
another process (``tideflow checkpoints`` next to a running flow) waits on SQLite's lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import pathname2url

from ..errors import TideflowError
from .codec import CorruptCheckpoint
from .store import FORMAT, CheckpointStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (epoch INTEGER PRIMARY KEY, manifest BLOB NOT NULL, manifest_sha TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS refs (epoch INTEGER NOT NULL, sha TEXT NOT NULL, PRIMARY KEY (epoch, sha)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_sha ON refs (sha);
"""
_CHUNK = 500  # below SQLite's limit on query parameters


class SqliteStore(CheckpointStore):
    """Checkpoints in one SQLite file. ``wal=False`` (exports) keeps it one file with no
    ``-wal`` companion; ``readonly`` (imports) opens it read-only, never writing to it."""

    def __init__(self, path: Path, *, location: Path | None = None, wal: bool = True, readonly: bool = False) -> None:
        super().__init__(location or path)
        self.path = path
        try:
            if readonly:
                uri = f"file:{pathname2url(str(path.resolve()))}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
                self._conn.execute("PRAGMA trusted_schema = OFF")
                self._check_tables()
            else:
                self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
                self._conn.execute("PRAGMA trusted_schema = OFF")
                self._conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA journal_size_limit = 67108864")
                with self._transaction():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute("INSERT OR IGNORE INTO info VALUES ('format', ?)", (str(FORMAT),))
        except sqlite3.DatabaseError as error:
            raise TideflowError(f"{path} is not a tideflow checkpoint file ({error})") from None

    def _check_tables(self) -> None:
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"checkpoints", "blobs", "refs"} <= tables:
            raise TideflowError(f"{self.path} is a SQLite file, not a tideflow checkpoint export")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes SQLite's write lock at once, so another
        process's writes wait here rather than fail halfway."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def epochs(self) -> list[int]:
        with self._lock:
            return [row[0] for row in self._conn.execute("SELECT epoch FROM checkpoints ORDER BY epoch")]

    def _read_manifest(self, epoch: int) -> tuple[bytes, str]:
        row = self._conn.execute("SELECT manifest, manifest_sha FROM checkpoints WHERE epoch = ?", (epoch,)).fetchone()
        if row is None:
            raise TideflowError(self._no_such(epoch))
        body, sha = row
        if not isinstance(sha, str):
            raise CorruptCheckpoint("manifest checksum is missing")
        return (body.encode() if isinstance(body, str) else bytes(body)), sha

    def _read_blob(self, sha: str) -> bytes | None:
        row = self._conn.execute("SELECT data FROM blobs WHERE sha = ?", (sha,)).fetchone()
        return None if row is None else bytes(row[0])

    def _sizes(self, shas: Iterable[str]) -> dict[str, int]:
        """Stored length of each of ``shas`` the store holds."""
        shas = list(shas)
        sizes: dict[str, int] = {}
        for start in range(0, len(shas), _CHUNK):
            chunk = shas[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT sha, length(data) FROM blobs WHERE sha IN ({marks})"
            sizes.update(self._conn.execute(query, chunk).fetchall())
        return sizes

    def _write(self, epoch: int, manifest: bytes, manifest_sha: str, blobs: dict[str, bytes]) -> tuple[int, int]:
        with self._transaction():
            if self._conn.execute("SELECT 1 FROM checkpoints WHERE epoch = ?", (epoch,)).fetchone():
                raise TideflowError(
                    f"checkpoint {epoch} already exists in {self.location}; epochs only increase "
                    f"(the next free one is {max(self.epochs()) + 1})"
                )
            sizes = self._sizes(blobs)
            # a stored blob of the wrong length is damaged: this save replaces it
            new = [sha for sha, data in blobs.items() if sizes.get(sha) != len(data)]
            for done, sha in enumerate(new, 1):
                self._conn.execute("INSERT OR REPLACE INTO blobs (sha, data) VALUES (?, ?)", (sha, blobs[sha]))
                self._progress(done, len(new))
            self._progress(None, len(new))
            self._conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", (epoch, manifest, manifest_sha))
            self._conn.executemany("INSERT INTO refs VALUES (?, ?)", [(epoch, sha) for sha in blobs])
        return len(new), sum(len(blobs[sha]) for sha in new)

    def _remove(self, epochs: list[int]) -> None:
        with self._transaction():
            for epoch in epochs:
                shas = [row[0] for row in self._conn.execute("SELECT sha FROM refs WHERE epoch = ?", (epoch,))]
                self._conn.execute("DELETE FROM refs WHERE epoch = ?", (epoch,))
                self._conn.execute("DELETE FROM checkpoints WHERE epoch = ?", (epoch,))
                self._conn.executemany(
                    "DELETE FROM blobs WHERE sha = ? AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.sha = blobs.sha)",
                    [(sha,) for sha in shas],
                )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
