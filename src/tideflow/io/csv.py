"""CSV files as a source: polars parses clean runs of lines, Python's ``csv`` module the rest.

Most CSV is plain: no quotes, the same number of fields on every line. Such a batch is parsed
in one ``pl.read_csv`` call (as text; :mod:`.schema` types it afterwards). Lines that quote,
have the wrong field count or are not UTF-8 are parsed one by one with the ``csv`` module, so
that each bad line becomes one dead letter carrying its raw bytes and its file and line number.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import polars as pl

from ..record import HIDDEN_PREFIX
from .files import (
    DEFAULT_MAX_RECORD_BYTES,
    ROW_INDEX,
    Decoded,
    LineDecoder,
    LineFileSource,
    LineFormat,
    PathSpec,
    index_column,
)
from .schema import SchemaLike

QUOTE = b'"'


class CsvFormat(LineFormat):
    """CSV with a header line per file; ``delimiter`` is one character."""

    parse_text = True

    def __init__(self, delimiter: str = ",") -> None:
        if len(delimiter.encode()) != 1 or delimiter in ('"', "\n", "\r"):
            raise ValueError(f"delimiter must be one ASCII character, not a quote or newline, got {delimiter!r}")
        self.delimiter = delimiter
        _allow_long_fields()

    def decoder(self) -> CsvDecoder:
        return CsvDecoder(self.delimiter)


def _allow_long_fields() -> None:
    """Let the ``csv`` module read fields as long as any line we accept (default: 128 KiB).

    The limit is process-wide; raising it only removes a refusal, it changes no parsed value.
    """
    limit = min(sys.maxsize, 2**31 - 1)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


class CsvDecoder(LineDecoder):
    """Decodes the lines of one CSV file against its header."""

    needs_header = True

    def __init__(self, delimiter: str) -> None:
        self.delimiter = delimiter
        self.separator = delimiter.encode()
        self.columns: list[str] = []
        self._schema: dict[str, pl.DataType] = {}

    def header(self, line: bytes) -> str | None:
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return f"invalid UTF-8 ({error.reason} at byte {error.start})"
        fields = self._split(text)
        if isinstance(fields, str):
            return fields
        problem = _header_problem(fields)
        if problem is not None:
            return problem
        self.columns = fields
        self._schema = {name: pl.String() for name in fields}
        return None

    def decode(self, lines: list[bytes]) -> Decoded:
        separators = len(self.columns) - 1
        counts = list(map(bytes.count, lines, repeat(self.separator)))
        block = b"\n".join(lines)
        if counts.count(separators) == len(lines) and QUOTE not in block and _is_utf8(block):
            frame = self._parse_plain(block, range(len(lines)))
            if frame is not None:
                return Decoded(frame, [])
        return self._decode_mixed(lines, counts, separators)

    def _decode_mixed(self, lines: list[bytes], counts: list[int], separators: int) -> Decoded:
        """Plain lines still go to polars together; the others are parsed one by one."""
        plain: list[int] = []
        others: list[int] = []
        for index, (line, count) in enumerate(zip(lines, counts, strict=True)):
            is_plain = count == separators and QUOTE not in line and _is_utf8(line)
            (plain if is_plain else others).append(index)
        frames: list[pl.DataFrame] = []
        if plain:
            frame = self._parse_plain(b"\n".join(lines[i] for i in plain), plain)
            if frame is None:  # polars disagreed with our count: let the csv module judge each line
                others, plain = sorted(others + plain), []
            else:
                frames.append(frame)
        rows: list[list[str | None]] = []
        kept: list[int] = []
        rejects: list[tuple[int, str]] = []
        for index in others:
            fields = self._parse_line(lines[index])
            if isinstance(fields, str):
                rejects.append((index, fields))
            else:
                rows.append(fields)
                kept.append(index)
        frames.append(self._frame_of_rows(rows, kept))
        frame = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        return Decoded(frame.sort(ROW_INDEX) if plain and kept else frame, rejects)

    def _parse_plain(self, block: bytes, indices: Sequence[int]) -> pl.DataFrame | None:
        """Parse quote-free lines with the right field count; None if polars sees otherwise."""
        try:
            frame = pl.read_csv(
                block,
                has_header=False,
                schema=self._schema,
                separator=self.delimiter,
                quote_char=None,
                raise_if_empty=False,
            )
        except pl.exceptions.PolarsError:
            return None
        if frame.height != len(indices):
            return None
        return frame.with_columns(index_column(indices))

    def _parse_line(self, line: bytes) -> list[str | None] | str:
        """One line's fields (empty ones as None, like the polars path), or why it is refused."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"invalid UTF-8 ({error.reason} at byte {error.start})"
        fields = self._split(text[:-1] if text.endswith("\r") else text)
        if isinstance(fields, str):
            return fields
        if len(fields) != len(self.columns):
            return f"expected {len(self.columns)} fields, got {len(fields)}"
        return [value or None for value in fields]

    def _split(self, text: str) -> list[str] | str:
        try:
            return next(csv.reader([text], delimiter=self.delimiter, strict=True))
        except csv.Error as error:
            return f"malformed CSV: {error}"
        except StopIteration:
            return []

    def _frame_of_rows(self, rows: list[list[str | None]], indices: list[int]) -> pl.DataFrame:
        values: list[Any] = list(zip(*rows, strict=True)) if rows else [[] for _ in self.columns]
        series = [pl.Series(name, column, dtype=pl.String) for name, column in zip(self.columns, values, strict=True)]
        return pl.DataFrame([*series, index_column(indices)])


def _header_problem(fields: list[str]) -> str | None:
    if not fields:
        return "no column names"
    if any(not name for name in fields):
        return f"empty column name in {fields!r}"
    hidden = [name for name in fields if name.startswith(HIDDEN_PREFIX)]
    if hidden:
        return f"column names starting with {HIDDEN_PREFIX!r} are reserved: {hidden}"
    duplicates = sorted({name for name in fields if fields.count(name) > 1})
    if duplicates:
        return f"duplicate column names {duplicates}"
    return None


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class CsvSource(LineFileSource):
    """Reads CSV files (a file, a directory, a glob or a list; files in sorted order).

    The first line of each file is its header. Empty lines are skipped. Fields are text until
    typed: by ``schema`` (declared types, see :class:`~tideflow.io.schema.Schema`) or, for other
    columns, from the first batch with values, then held for the run; an empty field is null.
    A line that is not UTF-8, has the wrong number of fields, or whose values do not fit the
    types or the event time (``time=``, text or epoch milliseconds) is a dead letter with its raw
    bytes and its file and line (the header is line 1). ``file_column="series"`` adds each
    file's stem, to tell series apart when reading a glob.

    Out of scope: quoted fields containing newlines. Each physical line is one record, so such a
    record arrives as two malformed lines (two dead letters) rather than being joined.
    """

    header_lines = 1

    parse_text = True

    def __init__(
        self,
        path: PathSpec,
        *,
        time: str | None = None,
        time_format: str | None = None,
        schema: SchemaLike | None = None,
        batch_size: int = 10_000,
        replay: float | None = None,
        delimiter: str = ",",
        file_column: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        super().__init__(
            path,
            CsvFormat(delimiter),
            max_record_bytes=max_record_bytes,
            time=time,
            time_format=time_format,
            schema=schema,
            batch_size=batch_size,
            replay=replay,
            file_column=file_column,
        )
