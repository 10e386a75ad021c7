"""Following files as they grow: an unbounded source of appended CSV or JSON Lines.

The tail source polls: each ``poll`` it lists the followed file (or the directory's files that
match ``pattern``), reads what was appended since last time, and decodes complete lines with
the same decoders and row pipeline as :class:`~tideflow.io.csv.CsvSource` and
:class:`~tideflow.io.jsonl.JsonlSource`. Polling rather than inotify keeps it portable and
correct on network filesystems; the cost is up to one ``poll`` of latency.

Files are tracked by device and inode, so a file renamed within the directory (log rotation)
is followed under its new name without being read again, and a new file under the old name is
read from its start. A file that shrinks (truncated, or replaced by copy-truncate rotation), or
whose first bytes change (rewritten, or a new file that got a deleted one's inode number), is
read again from its start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Literal

import polars as pl

from .._duration import Duration, to_seconds
from ..record import Origin
from .base import Source, SourceContext
from .csv import CsvFormat
from .files import CHUNK_BYTES, DEFAULT_MAX_RECORD_BYTES, LineFeed, LineFormat, LineReader, RowPipeline
from .jsonl import JsonFormat
from .schema import Schema, SchemaLike

FileKey = tuple[int, int]
"""``(st_dev, st_ino)``: a file's identity across renames."""

HEAD_BYTES = 256
"""A followed file's first bytes are kept: if they change, the file was replaced or rewritten
(an inode number reused, or a truncation grown back past the old size between two polls)."""


@dataclass
class _Followed:
    """One followed file: how far it was read, its held partial line, and its batches to be."""

    path: str
    offset: int
    reader: LineReader
    feed: LineFeed
    head: bytes = b""
    stamp: tuple[int, int] = (0, 0)
    """``(size, mtime)`` at the last poll: the first bytes are checked again only when it changes."""


class TailSource(Source):
    """Follows a file, or the files matching ``pattern`` in a directory, and reads appended lines.

    ``format`` is ``"jsonl"`` or ``"csv"`` (each file's first line is its header). A trailing
    line without its newline is held back until the newline arrives. New files that appear are
    read from their start; ``from_start=False`` starts files that exist when the run begins at
    their end (their lines are counted, for positions, but not emitted). Hidden files (names
    starting with ``.``) are ignored unless ``pattern`` starts with a dot.

    Unbounded: runs until the flow stops, or, with ``idle_timeout``, until that long passes with
    no new data; then partial lines held back are read as lines and the source ends like a
    bounded one. Lines appended after a stop request are left for the next run. Column types,
    event time and dead letters work as in the bounded file sources.
    """

    bounded = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        pattern: str = "*",
        time: str | None = None,
        time_format: str | None = None,
        schema: SchemaLike | None = None,
        poll: Duration = "200ms",
        idle_timeout: Duration | None = None,
        from_start: bool = True,
        batch_size: int = 10_000,
        delimiter: str = ",",
        file_column: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if format not in ("jsonl", "csv"):
            raise ValueError(f"TailSource format must be 'jsonl' or 'csv', got {format!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be at least 1")
        self.path = os.fspath(path)
        self.format: LineFormat = CsvFormat(delimiter) if format == "csv" else JsonFormat()
        self.pattern = pattern
        self.time = time
        self.time_format = time_format
        self.schema = Schema.coerce(schema)
        self.poll_s = to_seconds(poll, what="poll")
        self.idle_s = None if idle_timeout is None else to_seconds(idle_timeout, what="idle_timeout")
        self.from_start = from_start
        self.batch_size = batch_size
        self.file_column = file_column
        self.max_record_bytes = max_record_bytes
        self._done = 0

    def origin(self, step: str) -> Origin:
        """Files are registered as they are discovered."""
        return Origin(step, files=[], unit="line")

    def progress(self) -> tuple[int, int | None]:
        return (self._done, None)

    def batches(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        if ctx.origin is None:
            ctx.origin = self.origin(ctx.step)
        self._done = 0
        pipeline = RowPipeline(
            schema=self.schema,
            parse_text=self.format.parse_text,
            time=self.time,
            time_format=self.time_format,
            file_column=self.file_column,
        )
        yield from _Follower(self, ctx, pipeline).run()


class _Follower:
    """The state of one run of a tail source: the files followed and the polling loop."""

    def __init__(self, source: TailSource, ctx: SourceContext, pipeline: RowPipeline) -> None:
        assert ctx.origin is not None
        self.source = source
        self.ctx = ctx
        self.origin = ctx.origin
        self.pipeline = pipeline
        self.directory = os.path.isdir(source.path)
        self.files: dict[FileKey, _Followed] = {}
        self.grew = False

    def run(self) -> Iterator[pl.DataFrame]:
        source, ctx = self.source, self.ctx
        yield from self._poll(catch_up=not source.from_start)
        quiet_since = time.monotonic()
        while not ctx.stopping():
            wait = source.poll_s
            if source.idle_s is not None:
                left = source.idle_s - (time.monotonic() - quiet_since)
                if left <= 0:
                    yield from self._end()
                    return
                wait = min(wait, left)
            if ctx.stop.wait(wait):
                return
            yield from self._poll(catch_up=False)
            if self.grew:
                quiet_since = time.monotonic()

    def _poll(self, *, catch_up: bool) -> Iterator[pl.DataFrame]:
        """Read what every file gained since the last poll; ``catch_up`` reads without emitting."""
        self.grew = False
        found = self._scan()
        alive: set[FileKey] = set()
        for path, stat in found.items():
            key = (stat.st_dev, stat.st_ino)
            alive.add(key)
            followed = self.files.get(key)
            if followed is None:
                followed = self.files[key] = self._follow(path)
            elif followed.path != path:
                followed.path = path
                followed.feed.moved(path, self.origin.file_index(path))
            if stat.st_size < followed.offset or self._rewritten(followed, stat):
                yield from self._restart(followed)
            followed.stamp = (stat.st_size, stat.st_mtime_ns)
            if stat.st_size > followed.offset:
                yield from self._read(key, followed, emit=not catch_up)
            if self.ctx.stopping():
                return
        for key in [key for key in self.files if key not in alive]:
            yield from self._last_lines(self.files.pop(key))

    def _scan(self) -> dict[str, os.stat_result]:
        if not self.directory:
            try:
                return {self.source.path: os.stat(self.source.path)}
            except OSError:
                return {}
        pattern = self.source.pattern
        found: dict[str, os.stat_result] = {}
        try:
            entries = list(os.scandir(self.source.path))
        except OSError:
            return {}
        for entry in entries:
            if entry.name.startswith(".") and not pattern.startswith("."):
                continue
            if not fnmatch(entry.name, pattern):
                continue
            try:
                if entry.is_file():
                    found[entry.path] = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
        return dict(sorted(found.items()))

    def _follow(self, path: str) -> _Followed:
        return _Followed(path, 0, LineReader(self.source.max_record_bytes), self._feed(path))

    def _feed(self, path: str) -> LineFeed:
        return LineFeed(
            self.source.format.decoder(),
            self.pipeline,
            path=path,
            file_index=self.origin.file_index(path),
            batch_size=self.source.batch_size,
        )

    def _read(self, key: FileKey, followed: _Followed, *, emit: bool) -> Iterator[pl.DataFrame]:
        try:
            handle = open(followed.path, "rb")  # noqa: SIM115 - closed below; the generator may stop early
        except OSError:
            return  # gone since the scan: the next poll sees it
        with handle:
            stat = os.fstat(handle.fileno())
            if (stat.st_dev, stat.st_ino) != key:
                return  # replaced since the scan: the next poll sees the new file
            handle.seek(followed.offset)
            while chunk := handle.read(CHUNK_BYTES):
                if len(followed.head) < HEAD_BYTES and followed.offset == len(followed.head):
                    followed.head += chunk[: HEAD_BYTES - len(followed.head)]
                followed.offset += len(chunk)
                self.source._done += len(chunk)
                self.grew = True
                yield from followed.feed.push(followed.reader.feed(chunk), self.ctx, emit=emit)
                if self.ctx.stopping():
                    return
        yield from followed.feed.flush(self.ctx)

    @staticmethod
    def _rewritten(followed: _Followed, stat: os.stat_result) -> bool:
        """Whether a modified file no longer starts with the bytes it started with."""
        if not followed.head or (stat.st_size, stat.st_mtime_ns) == followed.stamp:
            return False
        try:
            with open(followed.path, "rb") as handle:
                return handle.read(len(followed.head)) != followed.head
        except OSError:
            return False  # gone: the next scan drops it

    def _restart(self, followed: _Followed) -> Iterator[pl.DataFrame]:
        """The file shrank: what it held before is done; read it again from the start."""
        yield from self._last_lines(followed)
        followed.offset = 0
        followed.head = b""
        followed.reader = LineReader(self.source.max_record_bytes)
        followed.feed = self._feed(followed.path)

    def _last_lines(self, followed: _Followed) -> Iterator[pl.DataFrame]:
        """A held partial line is a line after all (the file ended, shrank or went away)."""
        yield from followed.feed.push(followed.reader.finish(), self.ctx)
        yield from followed.feed.flush(self.ctx)

    def _end(self) -> Iterator[pl.DataFrame]:
        for followed in self.files.values():
            yield from self._last_lines(followed)
