"""JSON Lines files as a source: one JSON object per line, decoded with orjson.

A batch is decoded with one ``map(orjson.loads, lines)`` when every line is valid (no Python
frame per line); only a batch with a bad line is decoded line by line, to find which. Values
become columns: a column whose values share one JSON type gets that type; a column mixing
types (``1`` here, ``"n/a"`` there) is kept as text, so that :mod:`.schema` judges each value
against the column's held type instead of polars coercing them quietly.
"""

from __future__ import annotations

from typing import Any

import orjson
import polars as pl

from .._columns import _columns_of
from ..record import HIDDEN_PREFIX
from .files import DEFAULT_MAX_RECORD_BYTES, Decoded, LineDecoder, LineFileSource, LineFormat, PathSpec, index_column
from .schema import SchemaLike

_NONE = type(None)
_NESTED = (dict, list)
_BOM = b"\xef\xbb\xbf"


class JsonFormat(LineFormat):
    """JSON Lines: each non-empty line one JSON object."""

    parse_text = False

    def decoder(self) -> JsonDecoder:
        return JsonDecoder()


class JsonDecoder(LineDecoder):
    """Decodes the lines of one JSON Lines file."""

    def __init__(self) -> None:
        self._first = True

    def decode(self, lines: list[bytes]) -> Decoded:
        if self._first:
            self._first = False
            if lines[0].startswith(_BOM):
                lines = [lines[0][len(_BOM) :], *lines[1:]]
        try:
            values: list[Any] = list(map(orjson.loads, lines))
            indices: list[int] = list(range(len(lines)))
            rejects: list[tuple[int, str]] = []
        except orjson.JSONDecodeError:
            values, indices, rejects = _decode_each(lines)
        if set(map(type, values)) - {dict}:
            values, indices = _objects_only(values, indices, rejects)
        columns = _columns_of(values) if values else {}
        if any(name.startswith(HIDDEN_PREFIX) for name in columns):
            values, indices = _without_reserved(values, indices, rejects)
            columns = _columns_of(values) if values else {}
        rejects.sort()
        frame, hints = frame_of_columns(columns, indices)
        return Decoded(frame, rejects, hints)


def _decode_each(lines: list[bytes]) -> tuple[list[Any], list[int], list[tuple[int, str]]]:
    values: list[Any] = []
    indices: list[int] = []
    rejects: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        try:
            values.append(orjson.loads(line))
        except orjson.JSONDecodeError as error:
            rejects.append((index, f"invalid JSON: {error}"))
        else:
            indices.append(index)
    return values, indices, rejects


def _objects_only(values: list[Any], indices: list[int], rejects: list[tuple[int, str]]) -> tuple[list[Any], list[int]]:
    kept, kept_indices = [], []
    for value, index in zip(values, indices, strict=True):
        if type(value) is dict:
            kept.append(value)
            kept_indices.append(index)
        else:
            rejects.append((index, f"expected a JSON object, got {_json_type(value)}"))
    return kept, kept_indices


def _without_reserved(
    values: list[dict[str, Any]], indices: list[int], rejects: list[tuple[int, str]]
) -> tuple[list[Any], list[int]]:
    kept, kept_indices = [], []
    for value, index in zip(values, indices, strict=True):
        reserved = [name for name in value if name.startswith(HIDDEN_PREFIX)]
        if reserved:
            rejects.append((index, f"keys starting with {HIDDEN_PREFIX!r} are reserved: {reserved}"))
        else:
            kept.append(value)
            kept_indices.append(index)
    return kept, kept_indices


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


def frame_of_columns(columns: dict[str, list[Any]], indices: list[int]) -> tuple[pl.DataFrame, dict[str, pl.DataType]]:
    """A frame of raw JSON values, and the type each mixed-type column should take."""
    series: list[pl.Series] = []
    hints: dict[str, pl.DataType] = {}
    for name, values in columns.items():
        column, hint = raw_series(name, values)
        series.append(column)
        if hint is not None:
            hints[name] = hint
    return pl.DataFrame([*series, index_column(indices)]), hints


def raw_series(name: str, values: list[Any]) -> tuple[pl.Series, pl.DataType | None]:
    """A column of JSON values with no silent coercion, and a type hint if its types are mixed.

    One JSON type: that type (ints and floats together: Float64). Nested values are typed over
    all rows (polars' Series constructor looks only at the first hundred dicts, dropping keys
    that first appear later). Mixed types: each value as text (JSON for non-strings), with the
    first value's type as the hint, so the column's held type decides per value what fits
    (``1, "n/a"``: Int64, and ``"n/a"`` is refused) instead of everything becoming text.
    """
    types = set(map(type, values))
    types.discard(_NONE)
    if not types:
        return pl.Series(name, values, dtype=pl.Null), None
    if types == {int, float}:
        return pl.Series(name, values, dtype=pl.Float64, strict=False), None
    if len(types) == 1:
        try:
            if types <= set(_NESTED):
                return pl.from_dicts([{name: v} for v in values], infer_schema_length=None).get_column(name), None
            return pl.Series(name, values, strict=True), None
        except (TypeError, OverflowError, ValueError, pl.exceptions.PolarsError):
            pass
    text = pl.Series(name, [_as_text(v) for v in values], dtype=pl.String)
    return text, _hint(types, next(v for v in values if v is not None))


def _hint(types: set[type], first: Any) -> pl.DataType:
    """The type a mixed column is held to: the first value's, ints widened when floats occur."""
    kind = type(first)
    if kind in (int, float):
        return pl.Float64() if kind is float or float in types else pl.Int64()
    if kind is bool:
        return pl.Boolean()
    return pl.String()


def _as_text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    return orjson.dumps(value).decode()


class JsonlSource(LineFileSource):
    """Reads JSON Lines files (a file, a directory, a glob or a list; files in sorted order).

    Each non-empty line must be one JSON object. Invalid JSON (a truncated line included), a
    line that is not an object, and invalid UTF-8 are dead letters with the raw line and its
    file and line number. Column types come from ``schema`` or, for other columns, from the
    first batch with values, then are held for the run (see :mod:`tideflow.io.schema`); a record
    lacking a key has null there. ``time=`` names the event-time column (text or epoch ms).
    """

    def __init__(
        self,
        path: PathSpec,
        *,
        time: str | None = None,
        time_format: str | None = None,
        schema: SchemaLike | None = None,
        batch_size: int = 10_000,
        replay: float | None = None,
        file_column: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        super().__init__(
            path,
            JsonFormat(),
            max_record_bytes=max_record_bytes,
            time=time,
            time_format=time_format,
            schema=schema,
            batch_size=batch_size,
            replay=replay,
            file_column=file_column,
        )
