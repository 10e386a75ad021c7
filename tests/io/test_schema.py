"""Schema and ColumnTypes: declared and inferred types, exact conversion, reasons per row."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest

from tideflow.io.schema import REASON, ColumnTypes, Schema, convert

IDX = "_tf_idx"


def check(types: ColumnTypes, **columns: list[object]) -> tuple[pl.DataFrame, dict[int, str]]:
    """Check a raw frame; return the good rows (without the index) and reasons by row index."""
    height = len(next(iter(columns.values())))
    raw = pl.DataFrame({**columns, IDX: list(range(height))}, strict=False)
    good, rejects = types.check(raw)
    assert good.height + rejects.height == height
    return good.drop(IDX), dict(rejects.select(IDX, REASON).rows())


def test_schema_accepts_polars_and_python_types_and_requires_all_by_default() -> None:
    schema = Schema({"a": pl.Int64, "b": pl.Float64(), "c": str, "d": pl.Datetime("ms")})
    assert schema.columns == {"a": pl.Int64(), "b": pl.Float64(), "c": pl.String(), "d": pl.Datetime("ms")}
    assert schema.required == ["a", "b", "c", "d"]
    assert Schema.coerce({"a": int}) == Schema({"a": pl.Int64})
    assert Schema.coerce(None) is None
    assert Schema.coerce(schema) is schema
    assert "required=['a']" in repr(Schema({"a": int, "b": int}, required=["a"]))


def test_schema_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="not declared"):
        Schema({"a": int}, required=["b"])
    with pytest.raises(TypeError, match="column 'a'"):
        Schema({"a": "int"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="invalid column name"):
        Schema({"_tf_x": int})


def test_text_is_read_into_declared_types_with_a_reason_per_bad_value() -> None:
    types = ColumnTypes(Schema({"value": pl.Float64, "host": pl.String, "ok": pl.Boolean}), parse_text=True)
    good, reasons = check(
        types,
        host=["a", None, "c", "d", "e"],
        value=["1.5", "2", "abc", None, " 7 "],
        ok=["true", "FALSE", "yes", "True", "false"],
    )
    assert good.rows() == [("a", 1.5, True), ("e", 7.0, False)]
    assert reasons == {
        1: "column 'host' is required",
        2: "column 'value': cannot read 'abc' as Float64; column 'ok': cannot read 'yes' as Boolean",
        3: "column 'value' is required",
    }


def test_reason_quotes_a_cut_value() -> None:
    types = ColumnTypes(Schema({"n": pl.Int64}), parse_text=True)
    _, reasons = check(types, n=["x" * 500])
    assert reasons[0] == f"column 'n': cannot read '{'x' * 80}' as Int64"


def test_numbers_convert_only_exactly() -> None:
    types = ColumnTypes(Schema({"i": pl.Int64, "small": pl.UInt8, "f": pl.Float64}), parse_text=False)
    good, reasons = check(types, i=[1.0, 1.5, 2.0], small=[1, 300, -1], f=[1, 2, 3])
    assert good.rows() == [(1, 1, 1.0)]
    assert reasons == {
        1: "column 'i': cannot read '1.5' as Int64; column 'small': cannot read '300' as UInt8",
        2: "column 'small': cannot read '-1' as UInt8",
    }


def test_booleans_and_numbers_do_not_mix_but_scalars_become_text() -> None:
    series = pl.Series([True, False])
    assert convert(series, pl.Int64())[1].to_list() == [True, True]
    assert convert(pl.Series([1, 0]), pl.Boolean())[1].to_list() == [True, True]
    text, failed = convert(pl.Series([1, None]), pl.String())
    assert text.to_list() == ["1", None]
    assert failed is not None and failed.to_list() == [False, False]
    _, failed = convert(pl.Series([[1], [2]]), pl.String())
    assert failed is not None and failed.all()


def test_dates_and_datetimes_from_text() -> None:
    types = ColumnTypes(Schema({"d": pl.Date, "t": pl.Datetime("us")}, required=[]), parse_text=True)
    good, reasons = check(
        types, d=["2024-01-02", "2024-01-03", "soon", None], t=["2024-01-02 03:04:05", "noon", "2024-01-02", None]
    )
    assert good.rows() == [(date(2024, 1, 2), datetime(2024, 1, 2, 3, 4, 5)), (None, None)]
    assert reasons == {
        1: "column 't': cannot read 'noon' as Datetime(time_unit='us', time_zone=None)",
        2: "column 'd': cannot read 'soon' as Date",
    }


def test_text_types_are_inferred_int_then_float_then_boolean_then_text() -> None:
    types = ColumnTypes(None, parse_text=True)
    good, reasons = check(types, i=["1", "-2"], f=["1", "2.5"], b=["true", "False"], s=["1", "x"], n=[None, None])
    assert reasons == {}
    assert good.schema == pl.Schema({"i": pl.Int64, "f": pl.Float64, "b": pl.Boolean, "s": pl.String, "n": pl.Null})
    assert types.types == {"i": pl.Int64(), "f": pl.Float64(), "b": pl.Boolean(), "s": pl.String()}


def test_json_text_stays_text_when_inferred() -> None:
    types = ColumnTypes(None, parse_text=False)
    good, _ = check(types, s=["1", "2"])
    assert good.schema == pl.Schema({"s": pl.String})


def test_inferred_types_are_held_and_late_columns_are_typed_on_first_values() -> None:
    types = ColumnTypes(None, parse_text=True)
    check(types, n=["1", "2"], late=[None, None])
    good, reasons = check(types, n=["3", "3.5", None], late=["x", None, "y"])
    assert good.schema == pl.Schema({"n": pl.Int64, "late": pl.String})
    assert good.rows() == [(3, "x"), (None, "y")]
    assert reasons == {1: "column 'n': cannot read '3.5' as Int64"}


def test_undeclared_columns_pass_through_and_missing_optional_ones_are_null() -> None:
    types = ColumnTypes(Schema({"a": pl.Int64, "opt": pl.Float64}, required=["a"]), parse_text=True)
    good, reasons = check(types, a=["1"], other=["x"])
    assert good.schema == pl.Schema({"a": pl.Int64, "other": pl.String, "opt": pl.Float64})
    assert good.rows() == [(1, "x", None)]
    assert reasons == {}
    _, reasons = check(types, other=["y"])
    assert reasons == {0: "column 'a' is required"}


def test_hints_fix_the_type_of_a_mixed_column() -> None:
    types = ColumnTypes(None, parse_text=False)
    raw = pl.DataFrame({"v": ["1", "n/a"], IDX: [0, 1]})
    good, rejects = types.check(raw, {"v": pl.Int64()})
    assert good.get_column("v").to_list() == [1]
    assert rejects.get_column(REASON).to_list() == ["column 'v': cannot read 'n/a' as Int64"]
