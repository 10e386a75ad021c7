"""JsonlSource: every line is an output row or a dead letter with its raw bytes and position."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow.io.jsonl import JsonlSource
from tideflow.io.schema import Schema

from .test_csv_source import assert_accounted, letters_by_line, run_source, write


def test_reads_objects_with_types_from_json(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl", '{"host":"a","value":1.5,"n":3,"ok":true,"tags":["x"]}\n{"host":"b","value":2}\n'
    )
    run = run_source(JsonlSource(path))
    assert run.out.schema == pl.Schema(
        {"host": pl.String, "value": pl.Float64, "n": pl.Int64, "ok": pl.Boolean, "tags": pl.List(pl.String)}
    )
    assert run.out.rows() == [("a", 1.5, 3, True, ["x"]), ("b", 2.0, None, None, None)]
    assert run.dead == []


MALFORMED = [
    # (line, reason fragment); "value" is a number column (first line), "host" is required
    (b'{"host":"a","value":1}', None),
    (b'{"host":"b","value":"abc"}', "column 'value': cannot read 'abc' as Float64"),
    (b'{"host":"c","value":true}', "column 'value': cannot read 'true' as Float64"),
    (b'{"value":2}', "column 'host' is required"),
    (b'{"host":"d","value":3,"extra":"kept"}', None),
    (b'{"host":"e","value":4', "invalid JSON"),
    (b'{"host":"f","val', "invalid JSON"),
    (b'{"host":"\xff","value":5}', "invalid JSON: str is not valid UTF-8"),
    (b"[1,2]", "expected a JSON object, got an array"),
    (b'"text"', "expected a JSON object, got a string"),
    (b"null", "expected a JSON object, got null"),
    (b'{"host":"g","value":6.5}', None),
    (b'{"host":"h","value":7} trailing', "invalid JSON"),
]


@pytest.mark.parametrize("batch_size", [1, 4, 10_000])
def test_malformed_lines_are_dead_letters_with_payload_reason_and_position(tmp_path: Path, batch_size: int) -> None:
    body = b""
    number_of: dict[bytes, int] = {}
    number = 0
    for line, _ in MALFORMED:
        number += 1
        body += line + b"\n"
        number_of[line] = number
        if number == 3:
            body += b"\n\r\n"  # empty lines: neither records nor dead letters
            number += 2
    path = write(tmp_path / "bad.jsonl", body)
    schema = Schema({"host": pl.String, "value": pl.Float64}, required=["host"])
    run = run_source(JsonlSource(path, schema=schema, batch_size=batch_size))

    assert_accounted(run, len(MALFORMED))
    assert run.out.select("host", "value").rows() == [("a", 1.0), ("d", 3.0), ("g", 6.5)]
    assert run.out.get_column("extra").to_list() == [None, "kept", None]
    letters = letters_by_line(run)
    for line, reason in MALFORMED:
        if reason is None:
            assert number_of[line] not in letters
            continue
        letter = letters[number_of[line]]
        assert reason in letter["error"], letter
        assert letter["payload"] == line.decode("utf-8", errors="backslashreplace")
        assert letter["file"] == str(path)


def test_mixed_types_without_schema_hold_the_first_type(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", '{"v":1}\n{"v":"n/a"}\n{"v":2.5}\n{"v":"7"}\n{"v":false}\n')
    run = run_source(JsonlSource(path))
    assert_accounted(run, 5)
    assert run.out.get_column("v").to_list() == [1.0, 2.5, 7.0]
    assert [d["error"] for d in run.dead] == [
        "column 'v': cannot read 'n/a' as Float64",
        "column 'v': cannot read 'false' as Float64",
    ]


def test_inferred_types_are_held_across_batches(tmp_path: Path) -> None:
    path = write(tmp_path / "h.jsonl", '{"n":1}\n{"n":2}\n{"n":2.5}\n{"n":3.0}\n{"n":null}\n{"n":"x"}\n')
    run = run_source(JsonlSource(path, batch_size=2))
    assert_accounted(run, 6)
    assert run.out.schema == pl.Schema({"n": pl.Int64})
    assert run.out.get_column("n").to_list() == [1, 2, 3, None]
    assert [(d["error"], d["position"]) for d in run.dead] == [
        ("column 'n': cannot read '2.5' as Int64", "line 3"),
        ("column 'n': cannot read 'x' as Int64", "line 6"),
    ]


def test_keys_missing_and_new_keys_later(tmp_path: Path) -> None:
    path = write(tmp_path / "k.jsonl", '{"a":1}\n{}\n{"a":2,"b":"x"}\n{"b":"y"}\n')
    run = run_source(JsonlSource(path, batch_size=1))
    assert_accounted(run, 4)
    assert run.out.select("a", "b").rows() == [(1, None), (None, None), (2, "x"), (None, "y")]


def test_empty_files_give_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", "")
    write(tmp_path / "b.jsonl", "\n\n\r\n")
    run = run_source(JsonlSource(tmp_path))
    assert (run.out.height, run.dead, run.result.records_in) == (0, [], 0)


def test_ten_megabyte_line_is_an_ordinary_record(tmp_path: Path) -> None:
    big = "z" * (10 << 20)
    path = write(tmp_path / "big.jsonl", orjson.dumps({"id": 1, "text": big}) + b'\n{"id":2,"text":"s"}\n')
    run = run_source(JsonlSource(path))
    assert_accounted(run, 2)
    assert [len(t) for t in run.out.get_column("text").to_list()] == [len(big), 1]


def test_line_over_max_record_bytes_is_a_cut_dead_letter(tmp_path: Path) -> None:
    long_line = orjson.dumps({"id": 2, "text": "y" * (2 << 20)})
    path = write(tmp_path / "long.jsonl", b'{"id":1}\n' + long_line + b'\n{"id":3}')
    run = run_source(JsonlSource(path, max_record_bytes=100_000))
    assert_accounted(run, 3)
    assert run.out.get_column("id").to_list() == [1, 3]
    (letter,) = run.dead
    assert letter["error"] == f"line of {len(long_line)} bytes is longer than max_record_bytes"
    assert letter["payload"] == long_line[:65_536].decode()
    assert letter["position"] == "line 2"


def test_glob_with_file_column_and_positions(tmp_path: Path) -> None:
    write(tmp_path / "b.jsonl", '{"v":3}\n')
    write(tmp_path / "a.jsonl", '{"v":1}\n{"v":2}\nnope\n')
    run = run_source(JsonlSource(str(tmp_path / "*.jsonl"), file_column="series"))
    assert run.out.rows() == [(1, "a"), (2, "a"), (3, "b")]
    (letter,) = run.dead
    assert (letter["file"], letter["position"], letter["payload"]) == (str(tmp_path / "a.jsonl"), "line 3", "nope")


def test_event_time_from_epoch_ms_and_text(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", '{"ts":1700000000000}\n{"ts":"soon"}\n{"ts":1700000000500}\n')
    run = run_source(JsonlSource(path, time="ts"))
    assert run.out.get_column("ts").to_list() == [1_700_000_000_000, 1_700_000_000_500]
    assert [d["error"] for d in run.dead] == ["column 'ts': cannot read 'soon' as Int64"]
    path = write(tmp_path / "iso.jsonl", '{"ts":"2024-05-01T12:00:00"}\n{"ts":"later"}\n{"v":1}\n')
    run = run_source(JsonlSource(path, time="ts"))
    assert_accounted(run, 3)
    assert run.out.get_column("ts").to_list() == [datetime(2024, 5, 1, 12)]
    assert [d["position"] for d in run.dead] == ["line 2", "line 3"]


def test_declared_schema_reads_text_and_exact_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", '{"n":"42","f":1,"s":7}\n{"n":1,"f":"2.5","s":"x"}\n{"n":1.5,"f":1,"s":"y"}\n')
    run = run_source(JsonlSource(path, schema={"n": pl.Int64, "f": pl.Float64, "s": str}))
    assert run.out.rows() == [(42, 1.0, "7"), (1, 2.5, "x")]
    assert [d["error"] for d in run.dead] == ["column 'n': cannot read '1.5' as Int64"]


def test_nested_values_are_typed_over_all_rows(tmp_path: Path) -> None:
    lines = ['{"m":{"a":1}}'] * 150 + ['{"m":{"a":2,"b":3}}']
    run = run_source(JsonlSource(write(tmp_path / "n.jsonl", "\n".join(lines))))
    assert run.out.get_column("m").to_list()[-1] == {"a": 2, "b": 3}


def test_reserved_keys_are_refused(tmp_path: Path) -> None:
    run = run_source(JsonlSource(write(tmp_path / "r.jsonl", '{"_tf_pos":1}\n{"a":1}\n')))
    assert run.out.rows() == [(1,)]
    assert "reserved" in run.dead[0]["error"]


# -- property: the same rows as an independent reader ---------------------------------------------

_COLUMNS = {
    "i": st.integers(-(2**62), 2**62),
    "f": st.floats(allow_nan=False, allow_infinity=False),
    "b": st.booleans(),
    "s": st.text(max_size=12),
}
_ROW = st.fixed_dictionaries({name: st.one_of(st.none(), values) for name, values in _COLUMNS.items()})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=40), batch_size=st.integers(1, 50))
def test_same_rows_as_polars_read_ndjson(tmp_path: Path, rows: list[dict[str, Any]], batch_size: int) -> None:
    text = b"".join(orjson.dumps({name: row[name] for name in _COLUMNS}) + b"\n" for row in rows)
    path = write(tmp_path / "prop.jsonl", text)
    expected = pl.read_ndjson(path, infer_schema_length=None)
    run = run_source(JsonlSource(path, batch_size=batch_size))
    assert run.dead == []
    assert run.out.equals(expected), (run.out, expected)
