"""What the file sources share: finding files, cutting bytes into lines, and finishing rows.

* :func:`resolve_paths` turns a file, directory, glob (or a list of them) into sorted paths.
* :class:`LineReader` splits a byte stream into numbered lines. It reads ``read(n)`` chunks and
  splits them itself rather than using ``readlines(hint)``, for two reasons: a line longer than
  ``max_record_bytes`` must be cut off without ever holding it whole (a file with no newline
  would otherwise be read into memory entire), and :class:`~tideflow.io.tail.TailSource` must
  hold back a trailing partial line until its newline arrives.
* :class:`LineFeed` takes one file's lines to batches: the header first (CSV), then the
  data lines, decoded by the format's :class:`LineDecoder` in batches of ``batch_size``.
* :class:`RowPipeline` is the part every file source (Parquet too) applies to decoded rows:
  hold column types (:mod:`.schema`), read event time, add the file column, and send each row
  that fails to the dead letters with its raw payload and its file/line position.
"""

from __future__ import annotations

import glob
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .._gc import gc_paused
from ..record import FILE_SHIFT, POSITION, Origin, pack_position
from .base import Source, SourceContext
from .eventtime import parse_event_time
from .pacing import ReplayPacer
from .schema import REASON, ColumnTypes, Schema, SchemaLike

PathSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""A file, a directory (its files), a glob, or a list of those."""

ROW_INDEX = "_tf_idx"
"""Hidden column while rows are being finished: a row's index in its batch of raw payloads."""

CHUNK_BYTES = 1 << 20
"""Bytes read from a file at a time."""

DEFAULT_MAX_RECORD_BYTES = 64 << 20
"""Lines longer than this are dead letters (a cut payload) rather than records."""

CUT_PAYLOAD_BYTES = 64 << 10
"""How much of an over-long line a dead letter keeps (at most ``max_record_bytes``)."""

_GLOB_CHARS = frozenset("*?[")


def resolve_paths(path: PathSpec) -> list[str]:
    """Expand ``path`` into existing files: globs and directories sorted, lists in given order.

    Directories contribute their regular, non-hidden files (not recursively). Raises
    ``FileNotFoundError`` when nothing matches, because a source with no input is a mistake
    better reported when the flow is built than as an empty run.
    """
    specs = [path] if isinstance(path, str | os.PathLike) else list(path)
    found: list[str] = []
    for spec in specs:
        text = os.fspath(spec)
        if _GLOB_CHARS & set(text):
            found.extend(p for p in sorted(glob.glob(text, recursive=True)) if os.path.isfile(p))
        elif os.path.isdir(text):
            found.extend(str(p) for p in sorted(Path(text).iterdir()) if p.is_file() and not p.name.startswith("."))
        elif os.path.isfile(text):
            found.append(text)
        else:
            raise FileNotFoundError(f"no such file or directory: {text!r}")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise FileNotFoundError(f"no files match {path!r}")
    return unique


# -- lines ----------------------------------------------------------------------------------------


@dataclass
class Lines:
    """Complete lines cut from a byte stream: the non-empty ones, with 1-based line numbers."""

    lines: list[bytes] = field(default_factory=list)
    numbers: Sequence[int] = field(default_factory=list)
    overlong: list[tuple[int, bytes, int]] = field(default_factory=list)
    """``(line number, first bytes, full length)`` of lines over ``max_record_bytes``."""


class LineReader:
    """Splits bytes fed in chunks into lines, holding a trailing partial line for the next chunk.

    Lines are returned without their ``\\n`` (a ``\\r`` before it is kept: decoders ignore it).
    Empty lines count for numbering but are not returned.
    """

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be at least 1")
        self.max_bytes = max_record_bytes
        self._cut_bytes = min(max_record_bytes, CUT_PAYLOAD_BYTES)
        self.next_line = 1
        self._pieces: list[bytes] = []
        self._held = 0
        self._cut: bytes | None = None
        """First bytes of an over-long partial line; its further bytes are counted, not kept."""

    @property
    def holding(self) -> bool:
        """Whether a partial line (no newline yet) is waiting."""
        return bool(self._pieces) or self._cut is not None

    def feed(self, data: bytes) -> Lines:
        """Add ``data``; return the lines it completes."""
        first: list[bytes] = []
        overlong: list[tuple[int, bytes, int]] = []
        start = 0
        if self.holding:
            newline = data.find(b"\n")
            if newline < 0:
                self._hold(data)
                return Lines()
            self._hold(data[:newline])
            self._complete(first, overlong)
            start = newline + 1
        parts = data[start:].split(b"\n") if start else data.split(b"\n")
        tail = parts.pop()
        if tail:
            self._hold(tail)
        lines = first + parts if first else parts
        return self._numbered(lines, overlong)

    def finish(self) -> Lines:
        """End of input: a partial line held back is a line after all."""
        if not self.holding:
            return Lines()
        lines: list[bytes] = []
        overlong: list[tuple[int, bytes, int]] = []
        self._complete(lines, overlong)
        return self._numbered(lines, overlong)

    def _hold(self, piece: bytes) -> None:
        self._held += len(piece)
        if self._cut is not None:
            return
        self._pieces.append(piece)
        if self._held > self.max_bytes:
            self._cut = b"".join(self._pieces)[: self._cut_bytes]
            self._pieces = []

    def _complete(self, lines: list[bytes], overlong: list[tuple[int, bytes, int]]) -> None:
        """Turn the held partial line into a line (or an over-long one), numbered next."""
        if self._cut is not None:
            overlong.append((self.next_line, self._cut, self._held))
            self.next_line += 1
        else:
            lines.append(b"".join(self._pieces))
        self._pieces, self._held, self._cut = [], 0, None

    def _numbered(self, lines: list[bytes], overlong: list[tuple[int, bytes, int]]) -> Lines:
        first = self.next_line
        self.next_line += len(lines)
        numbers: Sequence[int] = range(first, first + len(lines))
        long_line = bool(lines) and max(map(len, lines)) > self.max_bytes
        if b"" in lines or b"\r" in lines or long_line:
            kept, kept_numbers = [], []
            for number, line in zip(numbers, lines, strict=True):
                if len(line) > self.max_bytes:
                    overlong.append((number, line[: self._cut_bytes], len(line)))
                elif line not in (b"", b"\r"):
                    kept.append(line)
                    kept_numbers.append(number)
            lines, numbers = kept, kept_numbers
        overlong.sort()
        return Lines(lines, numbers, overlong)


# -- decoding -------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """A batch of lines decoded: raw values of the good lines, and the lines refused."""

    frame: pl.DataFrame
    """One row per decodable line, with :data:`ROW_INDEX` giving the line's index in the batch."""
    rejects: list[tuple[int, str]]
    """``(index in the batch, reason)`` of lines that could not be decoded."""
    hints: dict[str, pl.DataType] = field(default_factory=dict)
    """Types for columns whose raw form cannot tell (see :meth:`ColumnTypes.check`)."""


class LineDecoder(ABC):
    """Decodes one file's lines into raw values (text for CSV, Python values for JSON)."""

    needs_header = False

    def header(self, line: bytes) -> str | None:
        """Take the file's first line; return why it is unusable, or None."""
        return None

    @abstractmethod
    def decode(self, lines: list[bytes]) -> Decoded:
        """Decode a batch of non-empty lines."""


class LineFormat(ABC):
    """A line format (CSV, JSON Lines): makes a decoder per file and says how to infer types."""

    parse_text: bool
    """Whether inferred column types may read text as numbers (see :class:`ColumnTypes`)."""

    @abstractmethod
    def decoder(self) -> LineDecoder:
        """A fresh decoder for one file."""


def index_column(indices: Sequence[int]) -> pl.Series:
    return pl.Series(ROW_INDEX, indices, dtype=pl.Int64)


# -- finishing rows -------------------------------------------------------------------------------


class RowPipeline:
    """Turns decoded rows into a source batch, dead-lettering every row that fails on the way.

    One per source run, so column types inferred from the first batch hold for all files.
    """

    def __init__(
        self,
        *,
        schema: Schema | None,
        parse_text: bool,
        time: str | None,
        time_format: str | None,
        file_column: str | None,
    ) -> None:
        self.types = ColumnTypes(schema, parse_text=parse_text)
        self.time = time
        self.time_format = time_format
        self.file_column = file_column

    def finish(
        self,
        frame: pl.DataFrame,
        ctx: SourceContext,
        payload: Callable[[int], Any],
        stem: str,
        hints: dict[str, pl.DataType] | None = None,
    ) -> pl.DataFrame | None:
        """``frame`` carries :data:`ROW_INDEX` and POSITION; ``payload(i)`` is row i's raw form."""
        good, rejects = self.types.check(frame, hints)
        _reject_rows(rejects, ctx, payload)
        if self.file_column is not None:
            good = good.with_columns(pl.lit(stem, dtype=pl.String).alias(self.file_column))
        if self.time is not None and good.height:
            good = self._event_time(good, ctx, payload)
        if good.height == 0:
            return None
        return good.drop(ROW_INDEX)

    def _event_time(self, frame: pl.DataFrame, ctx: SourceContext, payload: Callable[[int], Any]) -> pl.DataFrame:
        assert self.time is not None
        if self.time not in frame.columns:
            reason = f"event-time column {self.time!r} is missing"
            _reject_rows(frame.select(ROW_INDEX, POSITION, pl.lit(reason).alias(REASON)), ctx, payload)
            return frame.clear()
        frame, bad = parse_event_time(frame, self.time, self.time_format)
        if bad is None:
            return frame
        reason = f"cannot read event time from column {self.time!r}"
        _reject_rows(frame.filter(bad).select(ROW_INDEX, POSITION, pl.lit(reason).alias(REASON)), ctx, payload)
        return frame.filter(~bad)


def _reject_rows(rejects: pl.DataFrame, ctx: SourceContext, payload: Callable[[int], Any]) -> None:
    if rejects.height == 0:
        return
    columns = (rejects.get_column(name).to_list() for name in (ROW_INDEX, POSITION, REASON))
    for index, position, reason in zip(*columns, strict=True):
        ctx.reject(reason, payload(index), position)


class LineFeed:
    """One file's lines on their way to batches: the header first, then data cut at batch_size.

    Shared by the bounded line sources and the tail source (one feed per followed file).
    """

    def __init__(
        self,
        decoder: LineDecoder,
        pipeline: RowPipeline,
        *,
        path: str,
        file_index: int,
        batch_size: int,
    ) -> None:
        self.decoder = decoder
        self.pipeline = pipeline
        self.batch_size = batch_size
        self._header_line: int | None = None
        self._header_error: str | None = None
        self._lines: list[bytes] = []
        self._numbers: list[int] = []
        self.moved(path, file_index)

    @property
    def wants_header(self) -> bool:
        """Whether the next non-empty line is this file's header (CSV, not yet seen)."""
        return self.decoder.needs_header and self._header_line is None

    def moved(self, path: str, file_index: int) -> None:
        """The file is now known by ``path`` (a rename): later positions point there."""
        self.path = path
        self.file_index = file_index
        self.stem = Path(path).stem

    def push(self, lines: Lines, ctx: SourceContext, *, emit: bool = True) -> Iterator[pl.DataFrame]:
        """Take newly read lines; yield each batch that fills.

        ``emit=False`` skips them (a tail source starting at the end of a file), but still takes
        the header, so that later lines are decoded against it.
        """
        data, numbers = lines.lines, lines.numbers
        if self.decoder.needs_header and self._header_line is None and data:
            self._take_header(data[0], numbers[0], ctx)
            data, numbers = data[1:], numbers[1:]
        if not emit:
            return
        for number, cut, length in lines.overlong:
            ctx.reject(f"line of {length} bytes is longer than max_record_bytes", cut, self._position(number))
        if not data:
            return
        if self._header_error is not None:
            self._refuse(data, numbers, ctx)
            return
        self._lines.extend(data)
        self._numbers.extend(numbers)
        start, size = 0, self.batch_size
        while len(self._lines) - start >= size:
            yield from self._batch(self._lines[start : start + size], self._numbers[start : start + size], ctx)
            start += size
        if start:  # one deletion per push: cutting batch by batch would be quadratic in small batches
            del self._lines[:start], self._numbers[:start]

    def flush(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        """Yield the lines waiting for a full batch."""
        if self._lines:
            batch, numbers = self._lines, self._numbers
            self._lines, self._numbers = [], []
            yield from self._batch(batch, numbers, ctx)

    def _position(self, number: int) -> int:
        return pack_position(self.file_index, number)

    def _take_header(self, line: bytes, number: int, ctx: SourceContext) -> None:
        self._header_line = number
        error = self.decoder.header(line)
        if error is not None:
            self._header_error = error
            ctx.reject(f"unusable header: {error}", line, self._position(number))

    def _refuse(self, lines: list[bytes], numbers: Sequence[int], ctx: SourceContext) -> None:
        """The header could not be read, so no line of the file can be: each is a dead letter."""
        reason = f"not read: the file's header (line {self._header_line}) is unusable"
        for line, number in zip(lines, numbers, strict=True):
            ctx.reject(reason, line, self._position(number))

    def _batch(self, lines: list[bytes], numbers: Sequence[int], ctx: SourceContext) -> Iterator[pl.DataFrame]:
        with gc_paused():
            decoded = self.decoder.decode(lines)
            for index, reason in decoded.rejects:
                ctx.reject(reason, lines[index], self._position(numbers[index]))
            positions = pl.Series(POSITION, numbers, dtype=pl.Int64) + self._position(0)
            frame = decoded.frame.with_columns(positions.gather(decoded.frame.get_column(ROW_INDEX)))
            out = self.pipeline.finish(frame, ctx, lines.__getitem__, self.stem, decoded.hints)
        if out is not None:
            yield out


# -- sources --------------------------------------------------------------------------------------


class FileSource(Source):
    """Options and bookkeeping shared by the bounded file sources."""

    unit = "line"
    parse_text = False
    """Whether inferred column types may read text as numbers (CSV: yes)."""

    def __init__(
        self,
        path: PathSpec,
        *,
        time: str | None,
        time_format: str | None,
        schema: SchemaLike | None,
        batch_size: int,
        replay: float | None,
        file_column: str | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if replay is not None and time is None:
            raise ValueError("replay= paces by event time; pass time= too")
        self.paths = resolve_paths(path)
        self.time = time
        self.time_format = time_format
        self.schema = Schema.coerce(schema)
        self.batch_size = batch_size
        self.replay = replay
        self.file_column = file_column
        self._done = 0
        self._total = sum(os.path.getsize(p) for p in self.paths)
        self._replayed: tuple[int, int] | None = None
        self._pipeline: RowPipeline | None = None
        self._resume_after: int | None = None
        self._resume_types: dict[str, pl.DataType] | None = None

    replayable = True
    """Files are read again identically (they are not expected to change under a flow)."""

    def checkpoint_state(self) -> Any:
        """The column types fixed so far: a resumed read must not infer them again from later rows."""
        return dict(self._pipeline.types.types) if self._pipeline is not None else None

    def resume(self, after_position: int, state: Any) -> None:
        self._resume_after = after_position
        self._resume_types = dict(state) if state else None

    def _resume_point(self) -> tuple[int, int] | None:
        """``(file index, row)`` after which a resumed read starts, or None."""
        if self._resume_after is None:
            return None
        return self._resume_after >> FILE_SHIFT, self._resume_after & ((1 << FILE_SHIFT) - 1)

    def origin(self, step: str) -> Origin:
        return Origin(step, files=list(self.paths), unit=self.unit)

    progress_unit = "bytes"
    header_lines = 0
    """Lines per file that are not records (the CSV header), for counting a replay's total."""

    def progress(self) -> tuple[int, int | None]:
        if self._replayed is not None:
            return self._replayed
        return (self._done, self._total)

    def batches(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        if ctx.origin is None:
            ctx.origin = self.origin(ctx.step)
        self._done = 0
        pipeline = RowPipeline(
            schema=self.schema,
            parse_text=self.parse_text,
            time=self.time,
            time_format=self.time_format,
            file_column=self.file_column,
        )
        if self._resume_types:
            pipeline.types.types.update(self._resume_types)
        self._pipeline = pipeline
        frames = self._frames(ctx, pipeline)
        if self.replay is None or self.time is None:
            yield from frames
            return
        # A replay reads far ahead of what it releases, so bytes read say nothing about progress:
        # count records released against the files' line count instead (a newline count, fast).
        total = max(0, sum(_count_lines(p) for p in self.paths) - self.header_lines * len(self.paths))
        self.progress_unit = "records"
        self._replayed = (0, total)
        pacer = ReplayPacer(self.replay, self.time, ctx.stop)
        for frame in frames:
            for part in pacer.pace(frame):
                self._replayed = (self._replayed[0] + part.height, total)
                yield part

    @abstractmethod
    def _frames(self, ctx: SourceContext, pipeline: RowPipeline) -> Iterator[pl.DataFrame]:
        """Read every file, yielding finished batches."""

    def _file_index(self, ctx: SourceContext, path: str) -> int:
        assert ctx.origin is not None
        return ctx.origin.file_index(path)


class LineFileSource(FileSource):
    """A bounded source of line-oriented files (CSV, JSON Lines), read in chunks."""

    def __init__(self, path: PathSpec, line_format: LineFormat, *, max_record_bytes: int, **options: Any) -> None:
        super().__init__(path, **options)
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be at least 1")
        self.format = line_format
        self.max_record_bytes = max_record_bytes
        self.parse_text = line_format.parse_text

    def _frames(self, ctx: SourceContext, pipeline: RowPipeline) -> Iterator[pl.DataFrame]:
        resume = self._resume_point()
        for path in self.paths:
            index = self._file_index(ctx, path)
            skip_through = None
            if resume is not None:
                if index < resume[0]:
                    self._done += os.path.getsize(path)
                    continue  # read to its end before the checkpoint
                skip_through = resume[1] if index == resume[0] else None
            feed = LineFeed(self.format.decoder(), pipeline, path=path, file_index=index, batch_size=self.batch_size)
            yield from self._read(path, feed, ctx, skip_through)
            if ctx.stopping():
                return

    def _read(
        self, path: str, feed: LineFeed, ctx: SourceContext, skip_through: int | None = None
    ) -> Iterator[pl.DataFrame]:
        """Read one file; lines numbered up to ``skip_through`` (a resume) are cut before
        decoding, except the header, which later lines need."""
        reader = LineReader(self.max_record_bytes)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below; the generator may stop early
        except OSError as error:
            ctx.reject(f"cannot open file: {error}", path, pack_position(feed.file_index, 0))
            return
        with handle:
            while chunk := _read_chunk(handle, path, feed, ctx):
                self._done += len(chunk)
                lines = reader.feed(chunk)
                if skip_through is not None:
                    lines, skipping = _lines_after(lines, skip_through, keep_first=feed.wants_header)
                    skip_through = skip_through if skipping else None
                yield from feed.push(lines, ctx)
                if ctx.stopping():
                    return
        lines = reader.finish()
        if skip_through is not None:
            lines, _ = _lines_after(lines, skip_through, keep_first=feed.wants_header)
        yield from feed.push(lines, ctx)
        yield from feed.flush(ctx)


def _lines_after(lines: Lines, through: int, *, keep_first: bool) -> tuple[Lines, bool]:
    """The lines numbered after ``through`` (and the first line when ``keep_first``); the flag
    says whether later lines may still need cutting."""
    numbers = lines.numbers
    if numbers and numbers[0] > through:
        return lines, False
    kept = [i for i, number in enumerate(numbers) if number > through or (keep_first and i == 0)]
    overlong = [entry for entry in lines.overlong if entry[0] > through]
    still = not numbers or numbers[-1] <= through
    return Lines([lines.lines[i] for i in kept], [numbers[i] for i in kept], overlong), still


def _read_chunk(handle: Any, path: str, feed: LineFeed, ctx: SourceContext) -> bytes:
    """The next chunk, or b"" at the end; a read error is the file's dead letter and its end."""
    try:
        return handle.read(CHUNK_BYTES)
    except OSError as error:
        ctx.reject(f"cannot read file: {error}", path, pack_position(feed.file_index, 0))
        return b""


def _count_lines(path: str) -> int:
    """Lines of a file (a trailing line without newline counts); empty lines are counted too, so
    a replay's progress total is an upper bound when a file has blank lines."""
    count = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
