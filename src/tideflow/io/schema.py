"""Declared column types for file sources, and the vectorized check that holds rows to them.

A file's text says nothing certain about types, and a stream must not change a column's type
halfway through a run (every step downstream was built against the first one). So each file
source keeps one set of column types for the whole run: the columns a :class:`Schema` declares,
plus every other column typed from the first batch in which it has a value, then held fixed.
Rows whose values do not fit are dead letters with a reason, never nulls and never a quietly
changed column.

The rule for "fits": a value is accepted when it converts *exactly* to its column's type:

* text that spells a value of the type (``"42"`` for Int64, ``"TRUE"`` for Boolean, an ISO date
  for Date/Datetime; surrounding spaces are ignored),
* integers into float columns, and whole floats or in-range integers into integer columns,
* any scalar into a text column.

Everything else (``'abc'`` for Float64, ``1.5`` for Int64, a number for Boolean, an object for
Float64) is a violation reported as ``column 'value': cannot read 'abc' as Float64``. A missing or
null value in a required column is reported as ``column 'host' is required``.

Reasons are built with polars expressions over whole columns, so a batch costs a few vectorized
casts however many rows are bad.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from ..record import HIDDEN_PREFIX

REASON = "_tf_reason"
"""Hidden column of a reject frame: why the row was refused."""

MAX_VALUE_CHARS = 80
"""Values quoted in a reason are cut to this many characters (the payload keeps the whole line)."""

DTypeLike = pl.DataType | type[pl.DataType] | type
"""A polars data type (class or instance) or a Python type such as ``int`` or ``str``."""

_TEXT_INFERENCE_ORDER: tuple[pl.DataType, ...] = (pl.Int64(), pl.Float64(), pl.Boolean())
"""Types tried, in order, when typing a text column from its values; text when none fits."""


def as_dtype(value: DTypeLike) -> pl.DataType:
    """Normalise ``pl.Int64``, ``pl.Int64()`` or ``int`` to a polars data type instance."""
    if isinstance(value, pl.DataType):
        return value
    if isinstance(value, type) and issubclass(value, pl.DataType):
        return value()
    if isinstance(value, type):
        return pl.DataType.from_python(value)
    raise TypeError(f"expected a polars data type or a Python type, got {value!r}")


class Schema:
    """Declared column types; ``required`` columns must be present and non-null.

    ``required`` defaults to every declared column. Columns the data has but the schema does not
    declare are kept, typed from their first values like in a source without a schema.
    """

    def __init__(self, columns: Mapping[str, DTypeLike], required: Iterable[str] | None = None) -> None:
        if not isinstance(columns, Mapping):
            raise TypeError(f"Schema columns must be a mapping of name to type, got {type(columns).__name__}")
        self.columns: dict[str, pl.DataType] = {}
        for name, dtype in columns.items():
            if not isinstance(name, str) or not name or name.startswith(HIDDEN_PREFIX):
                raise ValueError(f"invalid column name {name!r} in schema")
            try:
                self.columns[name] = as_dtype(dtype)
            except TypeError as error:
                raise TypeError(f"schema column {name!r}: {error}") from None
        self.required: list[str] = list(self.columns) if required is None else list(required)
        unknown = [name for name in self.required if name not in self.columns]
        if unknown:
            raise ValueError(f"required columns {unknown} are not declared in the schema {list(self.columns)}")

    @classmethod
    def coerce(cls, schema: Schema | Mapping[str, DTypeLike] | None) -> Schema | None:
        """Accept a Schema, a plain ``{name: type}`` dict (all required), or None."""
        if schema is None or isinstance(schema, Schema):
            return schema
        return cls(schema)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return self.columns == other.columns and self.required == other.required

    def __repr__(self) -> str:
        columns = ", ".join(f"{name!r}: {dtype}" for name, dtype in self.columns.items())
        return f"Schema({{{columns}}}, required={self.required!r})"


SchemaLike = Schema | Mapping[str, DTypeLike]


class ColumnTypes:
    """The column types of one source run: declared ones, and inferred ones fixed on first sight.

    ``parse_text`` says whether text may be read as numbers or booleans when *inferring* a type:
    yes for CSV (everything is text there), no for JSON and Parquet, whose text values were
    meant as text. Declared types always parse text.
    """

    def __init__(self, schema: Schema | None = None, *, parse_text: bool) -> None:
        self.schema = schema
        self.types: dict[str, pl.DataType] = dict(schema.columns) if schema else {}
        self.required: set[str] = set(schema.required) if schema else set()
        self.parse_text = parse_text

    def check(
        self, raw: pl.DataFrame, hints: Mapping[str, pl.DataType] | None = None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Split ``raw`` into (good rows cast to the held types, rejects).

        Hidden columns of ``raw`` are carried unchanged into both outputs; the rejects also have
        a :data:`REASON` column. Columns never seen with a value stay untyped (Null) until a
        later batch gives them one. ``hints`` give the type to fix for a new column when its raw
        form cannot tell (JSON values of mixed types arrive as text: the first value's type wins).
        """
        hidden = [name for name in raw.columns if name.startswith(HIDDEN_PREFIX)]
        visible = [name for name in raw.columns if not name.startswith(HIDDEN_PREFIX)]
        self._learn(raw, visible, hints or {})
        names = visible + [name for name in self.types if name not in raw.columns]
        columns: list[pl.Series] = []
        reasons: list[pl.Series] = []
        for name in names:
            column, reason = self._column(raw, name)
            columns.append(column)
            reasons.extend(reason)
        good = pl.DataFrame([*columns, *(raw.get_column(name) for name in hidden)], height=raw.height)
        if not reasons:
            return good, raw.select(hidden).clear().with_columns(pl.lit(None, pl.String).alias(REASON))
        reason = pl.select(pl.concat_str(reasons, separator="; ", ignore_nulls=True).alias(REASON)).to_series()
        bad = reason != ""
        if not bad.any():
            return good, raw.select(hidden).clear().with_columns(reason.clear())
        rejects = raw.select(hidden).with_columns(reason).filter(bad)
        return good.filter(~bad), rejects

    # -- per column ---------------------------------------------------------------------------
    def _learn(self, raw: pl.DataFrame, names: list[str], hints: Mapping[str, pl.DataType]) -> None:
        for name in names:
            if name in self.types:
                continue
            series = raw.get_column(name)
            if series.null_count() < series.len():
                self.types[name] = hints.get(name) or self._infer(series)

    def _infer(self, series: pl.Series) -> pl.DataType:
        if series.dtype != pl.String or not self.parse_text:
            return series.dtype
        for candidate in _TEXT_INFERENCE_ORDER:
            _, failed = convert(series, candidate)
            if failed is None or not failed.any():
                return candidate
        return pl.String()

    def _column(self, raw: pl.DataFrame, name: str) -> tuple[pl.Series, list[pl.Series]]:
        """The column cast to its held type, and the reasons (null where fine) it gives rows."""
        target = self.types.get(name)
        required = name in self.required
        if name not in raw.columns:
            column = pl.repeat(None, raw.height, dtype=target or pl.Null(), eager=True).alias(name)
            if not required:
                return column, []
            return column, [pl.repeat(f"column {name!r} is required", raw.height, dtype=pl.String, eager=True)]
        series = raw.get_column(name)
        if target is None:  # no value seen yet in this run (declared columns always have a type)
            return series.cast(pl.Null), []
        converted, failed = convert(series, target)
        reasons = _missing(series, name) if required else []
        if failed is not None and failed.any():
            reasons.append(_cannot_read(series, failed, name, target))
        return converted.alias(name), reasons


def _missing(series: pl.Series, name: str) -> list[pl.Series]:
    if not series.has_nulls():
        return []
    message = pl.lit(f"column {name!r} is required")
    return [pl.select(pl.when(series.is_null()).then(message)).to_series()]


def _cannot_read(series: pl.Series, failed: pl.Series, name: str, target: pl.DataType) -> pl.Series:
    text = _value_text(series).str.slice(0, MAX_VALUE_CHARS)
    message = pl.concat_str([pl.lit(f"column {name!r}: cannot read '"), text, pl.lit(f"' as {target}")])
    return pl.select(pl.when(failed).then(message)).to_series()


def _value_text(series: pl.Series) -> pl.Series:
    """Values as text for a reason; nested values that have no text form show their type."""
    if series.dtype == pl.String:
        return series
    try:
        return series.cast(pl.String)
    except pl.exceptions.PolarsError:
        return pl.repeat(f"<{series.dtype}>", series.len(), dtype=pl.String, eager=True)


# -- conversion ---------------------------------------------------------------------------------


def convert(series: pl.Series, target: pl.DataType) -> tuple[pl.Series, pl.Series | None]:
    """Cast ``series`` to ``target`` exactly; return it and a mask of values that did not fit.

    The mask is None when nothing can fail (same type, or an untyped all-null column).
    """
    source = series.dtype
    if source == target:
        return series, None
    if source == pl.Null:
        return series.cast(target), None
    if source == pl.String:
        converted = _parse_text(series, target)
    elif target == pl.String:
        converted = _nothing(series, target) if source.is_nested() else series.cast(pl.String)
    elif source == pl.Boolean or target == pl.Boolean:
        converted = _nothing(series, target)  # numbers are not truth values, nor the reverse
    else:
        converted = _cast(series, target)
        if source.is_numeric() and target.is_integer():
            # 1.5 -> 1 or 300 -> UInt8 are not exact: a value that does not come back is refused.
            back = converted.cast(source, strict=False)
            return converted, series.is_not_null() & back.ne_missing(series)
    return converted, series.is_not_null() & converted.is_null()


def _parse_text(series: pl.Series, target: pl.DataType) -> pl.Series:
    """Read text as ``target``; values that do not spell one become null."""
    if target.is_numeric():
        converted = _cast(series, target)
        if converted.null_count() == series.null_count():
            return converted  # the common case: no padding to strip, no copy made
        return converted.fill_null(_cast(series.str.strip_chars(), target))
    text = series.str.strip_chars()
    if target == pl.Boolean:
        lower = text.str.to_lowercase()
        return pl.select(pl.when(lower == "true").then(True).when(lower == "false").then(False)).to_series()
    if target == pl.Date:
        return _guarded(lambda: text.str.to_date(strict=False), series, target)
    if isinstance(target, pl.Datetime):
        return _guarded(
            lambda: text.str.to_datetime(time_unit=target.time_unit, time_zone=target.time_zone, strict=False),
            series,
            target,
        )
    if target == pl.Time:
        return _guarded(lambda: text.str.to_time(strict=False), series, target)
    if target.is_nested():
        return _guarded(lambda: text.str.json_decode(target), series, target)
    return _cast(text, target)  # decimals, categoricals, ...


def _cast(series: pl.Series, target: pl.DataType) -> pl.Series:
    return _guarded(lambda: series.cast(target, strict=False), series, target)


def _guarded(conversion: Any, series: pl.Series, target: pl.DataType) -> pl.Series:
    """Run a conversion polars may refuse outright (unsupported cast, bad JSON): then none fit."""
    try:
        result = conversion()
    except pl.exceptions.PolarsError:
        return _nothing(series, target)
    assert isinstance(result, pl.Series)
    return result


def _nothing(series: pl.Series, target: pl.DataType) -> pl.Series:
    return pl.repeat(None, series.len(), dtype=target, eager=True).alias(series.name)
