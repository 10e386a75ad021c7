"""CsvSource: every data line is an output row or a dead letter with its raw bytes and position."""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.io.base import Source
from tideflow.io.csv import CsvSource
from tideflow.io.schema import Schema

from ..conftest import FlowThread, wait_until


@dataclass
class Run:
    out: pl.DataFrame
    dead: list[dict[str, Any]]
    result: tdf.RunResult


def run_source(source: Source) -> Run:
    """Run ``source`` into a memory sink, with the dead letters routed to another."""
    flow = tdf.Flow("files")
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    flow.source("src", source).sink("out", out)
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    return Run(out.frame, dead.records, result)


def assert_accounted(run: Run, data_records: int) -> None:
    """Nothing lost: outputs plus dead letters are exactly the records written."""
    assert run.out.height + len(run.dead) == data_records
    assert run.result.records_in == data_records
    assert run.result.dead_letters == len(run.dead)


def letters_by_line(run: Run) -> dict[int, dict[str, Any]]:
    """Dead letters keyed by line number; each must come from the source step."""
    out = {}
    for letter in run.dead:
        assert letter["step"] == "src"
        assert letter["source"] == "src"
        unit, number = letter["position"].split()
        assert unit == "line"
        out[int(number)] = letter
    return out


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_reads_columns_with_inferred_types(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "host,value,count,ok\na,1.5,3,true\nb,2,4,FALSE\n")
    run = run_source(CsvSource(path))
    assert run.out.schema == pl.Schema({"host": pl.String, "value": pl.Float64, "count": pl.Int64, "ok": pl.Boolean})
    assert run.out.to_dicts() == [
        {"host": "a", "value": 1.5, "count": 3, "ok": True},
        {"host": "b", "value": 2.0, "count": 4, "ok": False},
    ]
    assert run.dead == []


MALFORMED = [
    # (line, reason fragment); a schema makes "value" Float64 and "host" required
    (b"a,1.0,x", None),
    (b"b,abc,x", "column 'value': cannot read 'abc' as Float64"),
    (b"c,2.0", "expected 3 fields, got 2"),
    (b"d,3.0,x,extra", "expected 3 fields, got 4"),
    (b'e,"4.0,x', "malformed CSV"),
    (b"\xff\xfe,5.0,x", "invalid UTF-8"),
    (b",6.0,x", "column 'host' is required"),
    (b'"f,g",7.0,"quoted ""note"""', None),
    (b"h,8.0,x\r", None),
    (b"i,", "expected 3 fields, got 2"),
]


@pytest.mark.parametrize("batch_size", [1, 3, 10_000])
def test_malformed_lines_are_dead_letters_with_payload_reason_and_position(tmp_path: Path, batch_size: int) -> None:
    body = b"host,value,note\n"
    number_of: dict[bytes, int] = {}
    number = 1
    for line, _ in MALFORMED:
        number += 1
        body += line + b"\n"
        number_of[line] = number
        if number == 4:
            body += b"\n\n"  # empty lines: skipped, neither records nor dead letters
            number += 2
    path = write(tmp_path / "bad.csv", body.rstrip(b"\n"))  # the last line has no newline
    schema = Schema({"host": pl.String, "value": pl.Float64}, required=["host"])
    run = run_source(CsvSource(path, schema=schema, batch_size=batch_size))

    assert_accounted(run, len(MALFORMED))
    assert run.out.get_column("host").to_list() == ["a", "f,g", "h"]
    assert run.out.get_column("note").to_list() == ["x", 'quoted "note"', "x"]
    letters = letters_by_line(run)
    for line, reason in MALFORMED:
        if reason is None:
            assert number_of[line] not in letters
            continue
        letter = letters[number_of[line]]
        assert reason in letter["error"]
        assert letter["payload"] == line.decode("utf-8", errors="backslashreplace")
        assert letter["file"] == str(path)


def test_empty_and_header_only_files_give_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a_empty.csv", "")
    write(tmp_path / "b_header.csv", "host,value\n")
    write(tmp_path / "c_header_no_newline.csv", "host,value")
    write(tmp_path / "d_blank.csv", "\n\n\r\n")
    run = run_source(CsvSource(tmp_path))
    assert run.out.height == 0
    assert run.dead == []
    assert run.result.records_in == 0


def test_ten_megabyte_line_is_an_ordinary_record(tmp_path: Path) -> None:
    big = "x" * (10 << 20)
    path = write(tmp_path / "big.csv", f'id,text\n1,{big}\n2,"{big}"\n3,small\n')
    run = run_source(CsvSource(path))
    assert_accounted(run, 3)
    assert run.out.get_column("id").to_list() == [1, 2, 3]
    assert [len(t) for t in run.out.get_column("text").to_list()] == [len(big), len(big), 5]


@pytest.mark.parametrize("length", [5_000, 3 << 20])  # within one read chunk, and across several
def test_line_over_max_record_bytes_is_a_cut_dead_letter(tmp_path: Path, length: int) -> None:
    path = write(tmp_path / "long.csv", "id,text\n1,a\n2," + "y" * length + "\n3,b\n")
    run = run_source(CsvSource(path, max_record_bytes=1_000))
    assert_accounted(run, 3)
    assert run.out.get_column("id").to_list() == [1, 3]
    (letter,) = run.dead
    assert "longer than max_record_bytes" in letter["error"]
    assert letter["payload"] == ("2," + "y" * length)[:1_000]
    assert letter["position"] == "line 3"


def test_glob_reads_files_in_sorted_order_with_file_column(tmp_path: Path) -> None:
    write(tmp_path / "b.csv", "ts,value\n2024-01-01 00:00:02,2\n")
    write(tmp_path / "a.csv", "ts,value\n2024-01-01 00:00:01,1\n2024-01-01 00:00:03,bad\n")
    write(tmp_path / "c.txt", "not,csv\n")
    run = run_source(CsvSource(str(tmp_path / "*.csv"), file_column="series", batch_size=1))
    assert run.out.select("series", "value").rows() == [("a", 1), ("b", 2)]
    (letter,) = run.dead
    assert (letter["file"], letter["position"]) == (str(tmp_path / "a.csv"), "line 3")
    assert letter["error"] == "column 'value': cannot read 'bad' as Int64"


def test_list_of_paths_and_missing_paths(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "x\n1\n")
    b = write(tmp_path / "b.csv", "x\n2\n")
    assert run_source(CsvSource([b, a])).out.get_column("x").to_list() == [2, 1]
    with pytest.raises(FileNotFoundError):
        CsvSource(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError):
        CsvSource(str(tmp_path / "*.parquet"))


def test_event_time_from_text_datetimes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv",
        "ts,v\n2024-01-01 00:00:00,1\n2024-01-01T00:00:01.5,2\nyesterday,3\n2024-01-02,4\n",
    )
    run = run_source(CsvSource(path, time="ts"))
    assert_accounted(run, 4)
    assert run.out.get_column("ts").to_list() == [
        datetime(2024, 1, 1),
        datetime(2024, 1, 1, 0, 0, 1, 500_000),
        datetime(2024, 1, 2),
    ]
    (letter,) = run.dead
    assert letter["error"] == "cannot read event time from column 'ts'"
    assert (letter["payload"], letter["position"]) == ("yesterday,3", "line 4")


def test_event_time_from_epoch_milliseconds_and_a_format(tmp_path: Path) -> None:
    path = write(tmp_path / "ms.csv", "ts,v\n1700000000000,1\n1700000001000,2\n")
    run = run_source(CsvSource(path, time="ts"))
    assert run.out.get_column("ts").to_list() == [1_700_000_000_000, 1_700_000_001_000]
    path = write(tmp_path / "fmt.csv", "ts,v\n01/02/2024 10:00,1\n13/13/2024 10:00,2\n")
    run = run_source(CsvSource(path, time="ts", time_format="%d/%m/%Y %H:%M"))
    assert run.out.get_column("ts").to_list() == [datetime(2024, 2, 1, 10)]
    assert [d["position"] for d in run.dead] == ["line 3"]


def test_missing_time_column_makes_every_line_a_dead_letter(tmp_path: Path) -> None:
    path = write(tmp_path / "no_ts.csv", "a,b\n1,2\n3,4\n")
    run = run_source(CsvSource(path, time="ts"))
    assert_accounted(run, 2)
    assert {d["error"] for d in run.dead} == {"event-time column 'ts' is missing"}


def test_schema_required_columns_and_optional_missing_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "host,value,extra\na,1,x\n,2,y\nc,,z\nd,3.5,w\n")
    schema = Schema({"host": pl.String, "value": pl.Float64, "rack": pl.Int32}, required=["host"])
    run = run_source(CsvSource(path, schema=schema))
    assert_accounted(run, 4)
    assert run.out.schema == pl.Schema({"host": pl.String, "value": pl.Float64, "extra": pl.String, "rack": pl.Int32})
    assert run.out.select("host", "value", "rack").rows() == [("a", 1.0, None), ("c", None, None), ("d", 3.5, None)]
    (letter,) = run.dead
    assert letter["error"] == "column 'host' is required"
    assert letter["payload"] == ",2,y"


def test_plain_dict_schema_requires_every_column(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "host,value\na,1\nb,\n")
    run = run_source(CsvSource(path, schema={"host": pl.String, "value": pl.Int64}))
    assert run.out.rows() == [("a", 1)]
    assert [d["error"] for d in run.dead] == ["column 'value' is required"]


def test_required_column_absent_from_header_rejects_each_line(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "value\n1\n2\n")
    run = run_source(CsvSource(path, schema=Schema({"host": pl.String}, required=["host"])))
    assert_accounted(run, 2)
    assert [d["error"] for d in run.dead] == ["column 'host' is required"] * 2


def test_inferred_types_are_held_across_batches(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "n,label\n1,a\n2,b\n2.5,c\n3,4\n,e\n")
    run = run_source(CsvSource(path, batch_size=2))
    assert_accounted(run, 5)
    assert run.out.schema == pl.Schema({"n": pl.Int64, "label": pl.String})
    assert run.out.rows() == [(1, "a"), (2, "b"), (3, "4"), (None, "e")]
    (letter,) = run.dead
    assert (letter["error"], letter["position"]) == ("column 'n': cannot read '2.5' as Int64", "line 4")


def test_types_are_held_across_files(tmp_path: Path) -> None:
    write(tmp_path / "1.csv", "n\n1\n")
    write(tmp_path / "2.csv", "n\nx\n7\n")
    run = run_source(CsvSource(tmp_path))
    assert run.out.get_column("n").to_list() == [1, 7]
    assert run.dead[0]["file"] == str(tmp_path / "2.csv")


def test_column_seen_empty_first_is_typed_when_values_come(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "a,b\n1,\n2,\n3,4.5\n")
    run = run_source(CsvSource(path, batch_size=2))
    assert run.out.schema == pl.Schema({"a": pl.Int64, "b": pl.Float64})
    assert run.out.get_column("b").to_list() == [None, None, 4.5]


def test_unusable_header_rejects_the_header_and_every_line(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "x,x\n1,2\n3,4\n")
    write(tmp_path / "b.csv", "x\n5\n")
    run = run_source(CsvSource(tmp_path))
    assert run.out.get_column("x").to_list() == [5]
    letters = letters_by_line(run)
    assert "duplicate column names ['x']" in letters[1]["error"]
    assert letters[2]["error"] == "not read: the file's header (line 1) is unusable"
    assert (letters[3]["payload"], letters[3]["file"]) == ("3,4", str(tmp_path / "a.csv"))


def test_delimiter_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "semi.csv", b'\xef\xbb\xbfa;b\r\n1;"x;y"\r\n2;z\r\n')
    run = run_source(CsvSource(path, delimiter=";"))
    assert run.out.rows() == [(1, "x;y"), (2, "z")]
    with pytest.raises(ValueError, match="delimiter"):
        CsvSource(path, delimiter=";;")


def test_progress_reaches_the_total_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "a\n" + "1\n" * 1000)
    source = CsvSource(path, batch_size=100)
    assert source.progress() == (0, path.stat().st_size)
    run_source(source)
    assert source.progress() == (path.stat().st_size, path.stat().st_size)


def test_replay_paces_by_event_time_and_keeps_every_row(tmp_path: Path) -> None:
    lines = "".join(f"{1_700_000_000_000 + i * 100},{i}\n" for i in range(20))
    path = write(tmp_path / "r.csv", "ts,v\n" + lines)
    run = run_source(CsvSource(path, time="ts", replay=100.0, batch_size=7))
    assert run.out.get_column("v").to_list() == list(range(20))
    assert run.result.seconds >= 1.9 / 100


def test_stop_ends_a_long_read(tmp_path: Path) -> None:
    path = write(tmp_path / "long.csv", "n\n" + "1\n" * 200_000)
    gate, entered = threading.Event(), threading.Event()

    def held(df: pl.DataFrame) -> pl.DataFrame:
        entered.set()
        gate.wait()
        return df

    flow = tdf.Flow("stop")
    out = tdf.io.MemorySink()
    flow.source("src", CsvSource(path, batch_size=1_000)).map_batches("gate", held).sink("out", out)
    runner = FlowThread(flow, queue_size=1)
    runner.start()
    wait_until(entered.is_set, what="the first batch at the gate")
    flow.stop()
    gate.set()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert runner.result is not None and runner.result.interrupted
    assert 0 < len(out) < 200_000


def test_constructor_checks_its_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "a\n1\n")
    with pytest.raises(ValueError, match="batch_size"):
        CsvSource(path, batch_size=0)
    with pytest.raises(ValueError, match="replay"):
        CsvSource(path, replay=1.0)


# -- property: the same rows as an independent reader ---------------------------------------------

_WORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\x85\u2028\u2029"),
    min_size=1,
    max_size=12,
).map(lambda s: "w" + s)  # a letter first: never a number, a boolean or empty
_COLUMNS = {
    "i": st.integers(-(2**53), 2**53),
    "f": st.floats(allow_nan=False, allow_infinity=False),
    "b": st.booleans(),
    "s": _WORDS,
}
_ROW = st.fixed_dictionaries({name: st.one_of(st.none(), values) for name, values in _COLUMNS.items()})


def _cell(value: Any) -> str:
    """How a value is written: floats by repr (always with a point or exponent), booleans lower-case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _csv_text(rows: list[dict[str, Any]], crlf: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(_COLUMNS)
    writer.writerows([_cell(row[name]) for name in _COLUMNS] for row in rows)
    return buffer.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=40), batch_size=st.integers(1, 50), crlf=st.booleans())
def test_same_rows_as_polars_read_csv(tmp_path: Path, rows: list[dict[str, Any]], batch_size: int, crlf: bool) -> None:
    path = write(tmp_path / "prop.csv", _csv_text(rows, crlf))
    expected = pl.read_csv(path, infer_schema_length=None)
    run = run_source(CsvSource(path, batch_size=batch_size))
    assert run.dead == []
    # a column empty in the whole file is Null for us, text for polars: compare values there
    for name in expected.columns:
        if expected.get_column(name).null_count() == len(rows):
            expected = expected.with_columns(pl.lit(None).alias(name))
    assert run.out.equals(expected), (run.out, expected)


def test_replay_progress_counts_released_records_not_bytes_read(tmp_path: Path) -> None:
    path = tmp_path / "series.csv"
    path.write_text("ts,v\n" + "".join(f"{1_000 * i},{i}\n" for i in range(50)))
    source = tdf.io.CsvSource(str(path), time="ts", replay=1_000_000.0, batch_size=7)
    seen: list[tuple[int, int | None]] = []
    flow = tdf.Flow("replay-progress")
    flow.source("src", source).sink("out", tdf.io.NullSink())
    flow.run(handle_signals=False, on_tick=lambda runtime: seen.append(runtime.progress()[0][1:3]))
    assert source.progress_unit == "records"
    assert source.progress() == (50, 50)
    assert all(done <= total for done, total in seen)
