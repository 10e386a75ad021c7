"""CSV, JSONL and Parquet sinks: round trips, appends, torn tails, atomic publishing, crashes."""

from __future__ import annotations

import csv
import datetime as dt
import errno
import gc
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

import tideflow as tdf
from tideflow.io.files_out import CsvSink, JsonlSink, ParquetSink, SinkSchemaError

UTC = dt.UTC


def sample(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Records with the awkward parts: nulls, unicode, quotes, commas, naive and aware times."""
    base = dt.datetime(2024, 2, 29, 23, 59, 58)
    return [
        {
            "id": i,
            "name": None if i % 5 == 0 else f'«{i}», "quoted", 雪 😀',
            "score": None if i % 7 == 0 else i / 3,
            "at": base + dt.timedelta(seconds=i, microseconds=i * 37),
            "at_utc": (base + dt.timedelta(minutes=i)).replace(tzinfo=UTC),
            "day": dt.date(2024, 1, 1) + dt.timedelta(days=i),
            "ok": i % 2 == 0,
        }
        for i in range(start, start + n)
    ]


def run_into(sink: tdf.io.Sink, data: Any, *, batch_size: int = 7) -> tuple[tdf.RunResult, list[dict]]:
    """Run ``data`` through a flow into ``sink``; return the result and the dead letters."""
    flow = tdf.Flow("files")
    flow.source("src", tdf.io.MemorySource(data, batch_size=batch_size)).sink("out", sink)
    dead = tdf.io.MemorySink()
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    return result, dead.records


def expected(records: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(records)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# -- round trips ---------------------------------------------------------------------------


def test_csv_round_trip_through_a_flow(tmp_path: Path) -> None:
    records = sample(40)
    result, dead = run_into(CsvSink(tmp_path / "out.csv"), records)
    assert (result.records_out, dead) == (40, [])
    frame = expected(records)
    back = pl.read_csv(tmp_path / "out.csv", schema=frame.schema)
    assert back.equals(frame)


def test_csv_writes_datetimes_as_iso_8601(tmp_path: Path) -> None:
    run_into(CsvSink(tmp_path / "out.csv"), sample(2))
    rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8", newline="")))
    assert rows[1]["at"] == "2024-02-29T23:59:59.000037"
    assert rows[1]["at_utc"] == "2024-03-01T00:00:58+00:00"
    assert rows[1]["day"] == "2024-01-02"
    assert dt.datetime.fromisoformat(rows[0]["at"]) == dt.datetime(2024, 2, 29, 23, 59, 58)


def test_jsonl_round_trip_through_a_flow(tmp_path: Path) -> None:
    records = sample(40)
    result, dead = run_into(JsonlSink(tmp_path / "out.jsonl"), records)
    assert (result.records_out, dead) == (40, [])
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len(lines) == 40
    first = orjson.loads(lines[1])
    assert first["at"] == "2024-02-29T23:59:59.000037"
    assert first["at_utc"] == "2024-03-01T00:00:58+00:00"
    frame = expected(records)
    back = pl.read_ndjson(tmp_path / "out.jsonl", schema={k: pl.String for k in frame.columns} | {
        "id": pl.Int64, "score": pl.Float64, "ok": pl.Boolean
    })
    back = back.with_columns(
        pl.col("at").str.to_datetime(time_unit="us"),
        pl.col("at_utc").str.to_datetime(time_unit="us", time_zone="UTC"),
        pl.col("day").str.to_date(),
    )
    assert back.equals(frame)


def test_jsonl_encodes_bytes_and_nested_values_as_json(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "blob": [b"\x00\xff", None],
            "tags": [["a", "b"], []],
            "inner": [{"t": dt.datetime(2024, 1, 1, 12), "b": b"hi"}, None],
            "took": [dt.timedelta(seconds=1.5), None],
        }
    )
    run_into(JsonlSink(tmp_path / "out.jsonl"), frame)
    rows = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert rows[0] == {
        "blob": "AP8=",
        "tags": ["a", "b"],
        "inner": {"t": "2024-01-01T12:00:00", "b": "aGk="},
        "took": "PT1.5S",
    }
    assert rows[1] == {"blob": None, "tags": [], "inner": None, "took": None}


def test_csv_writes_nested_values_as_json_text_and_bytes_as_base64(tmp_path: Path) -> None:
    frame = pl.DataFrame({"tags": [["a", "b"], None], "blob": [b"hi", None]})
    run_into(CsvSink(tmp_path / "out.csv"), frame)
    rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8", newline="")))
    assert rows == [{"tags": '["a","b"]', "blob": "aGk="}, {"tags": "", "blob": ""}]


def test_parquet_single_file_round_trip(tmp_path: Path) -> None:
    records = sample(40)
    result, dead = run_into(ParquetSink(tmp_path / "out.parquet"), records)
    assert (result.records_out, dead) == (40, [])
    assert pl.read_parquet(tmp_path / "out.parquet").equals(expected(records))
    assert os.listdir(tmp_path) == ["out.parquet"]


# -- appending and headers -----------------------------------------------------------------


def test_csv_header_written_once_across_batches_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    run_into(CsvSink(path), sample(30), batch_size=4)
    run_into(CsvSink(path), sample(30, start=30), batch_size=4)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("id,name,") for line in lines) == 1
    back = pl.read_csv(path, schema=expected(sample(60)).schema)
    assert back.get_column("id").to_list() == list(range(60))


def test_append_false_starts_afresh(tmp_path: Path) -> None:
    csv_path, jsonl_path = tmp_path / "out.csv", tmp_path / "out.jsonl"
    for append in (True, False):
        run_into(CsvSink(csv_path, append=append), [{"id": 1}, {"id": 2}])
        run_into(JsonlSink(jsonl_path, append=append), [{"id": 1}, {"id": 2}])
    assert csv_path.read_text() == "id\n1\n2\n"
    assert jsonl_path.read_text() == '{"id":1}\n{"id":2}\n'


def test_csv_columns_in_another_order_are_written_in_header_order(tmp_path: Path) -> None:
    first = pl.DataFrame({"a": [1], "b": ["x"]})
    swapped = pl.DataFrame({"b": ["y"], "a": [2]})
    _, dead = run_into(CsvSink(tmp_path / "out.csv"), [first, swapped])
    assert dead == []
    assert (tmp_path / "out.csv").read_text() == "a,b\n1,x\n2,y\n"


def test_csv_batch_with_other_columns_goes_to_dead_letters_alone(tmp_path: Path) -> None:
    good = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    other = pl.DataFrame({"a": [3, 4, 5], "c": [1.0, 2.0, 3.0]})
    later = pl.DataFrame({"a": [6], "b": ["z"]})
    result, dead = run_into(CsvSink(tmp_path / "out.csv"), [good, other, later])
    assert (tmp_path / "out.csv").read_text() == "a,b\n1,x\n2,y\n6,z\n"
    assert result.step("out").dead_letters == 3
    assert sorted(d["payload"] for d in dead) == [f'{{"a":{n},"c":{n - 2}.0}}' for n in (3, 4, 5)]
    assert all(d["error"].startswith("SinkSchemaError:") and "header" in d["error"] for d in dead)


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = CsvSink(tmp_path / "out.csv")
    sink.open("out")
    sink.write(pl.DataFrame({"a": [1]}))
    before = (tmp_path / "out.csv").read_bytes()
    real_write = os.write

    def half_then_full_disk(fd: int, data: Any) -> int:
        if len(data) > 4:
            return real_write(fd, bytes(data)[:4])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        sink.write(pl.DataFrame({"a": list(range(1000, 1100))}))
    monkeypatch.undo()
    assert (tmp_path / "out.csv").read_bytes() == before
    sink.write(pl.DataFrame({"a": [2]}))
    sink.close()
    assert (tmp_path / "out.csv").read_text() == "a\n1\n2\n"


# -- torn tails ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("torn", "repaired"),
    [
        ("id,name\n1,x\n2,y", "id,name\n1,x\n"),
        ('id,name\n1,x\n2,"two\nlines', "id,name\n1,x\n"),  # ends at a newline inside quotes
        ('id,name\n1,"a ""q""\nb"\n2,"c', 'id,name\n1,"a ""q""\nb"\n'),
        ("id,na", ""),
    ],
)
def test_csv_torn_tail_is_cut_back_to_the_last_whole_row(tmp_path: Path, torn: str, repaired: str) -> None:
    path = tmp_path / "out.csv"
    path.write_text(torn, encoding="utf-8")
    sink = CsvSink(path)
    with pytest.warns(RuntimeWarning, match="incomplete last record"):
        sink.open("out")
    sink.close()
    assert path.read_text(encoding="utf-8") == repaired


def test_csv_append_after_repair_gives_a_clean_file(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("id,name\n1,x\n2,y", encoding="utf-8")
    with pytest.warns(RuntimeWarning):
        run_into(CsvSink(path), [{"id": 3, "name": "z"}])
    assert path.read_text() == "id,name\n1,x\n3,z\n"


def test_jsonl_torn_tail_is_cut_back(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\n{"a":')
    with pytest.warns(RuntimeWarning, match="removed 5 bytes"):
        run_into(JsonlSink(path), [{"a": 3}])
    assert path.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'


def test_a_whole_file_is_not_touched(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a":1}\n')
    sink = JsonlSink(path)
    sink.open("out")
    sink.close()
    assert path.read_bytes() == b'{"a":1}\n'
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# -- Parquet -------------------------------------------------------------------------------


def test_parquet_single_file_appears_only_on_close(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    sink = ParquetSink(path)
    sink.open("out")
    frame = expected(sample(300))
    for _ in range(3):
        sink.write(frame)
    sink.flush()
    assert not path.exists()
    assert all(name.startswith(".out.parquet.") for name in os.listdir(tmp_path))
    sink.close()
    assert os.listdir(tmp_path) == ["out.parquet"]
    assert pl.read_parquet(path).equals(pl.concat([frame] * 3))


def test_parquet_replaces_an_old_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    pl.DataFrame({"old": [1]}).write_parquet(path)
    sink = ParquetSink(path)
    sink.open("out")
    sink.write(pl.DataFrame({"new": [2]}))
    assert pl.read_parquet(path).columns == ["old"]  # readers still see the old file whole
    sink.close()
    assert pl.read_parquet(path).to_dicts() == [{"new": 2}]


def test_parquet_abandoned_without_close_leaves_no_file(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "out.parquet")
    sink.open("out")
    sink.write(pl.DataFrame({"a": list(range(200_000))}))  # past a row group: on disk
    assert os.listdir(tmp_path) != []
    del sink
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_parquet_directory_parts_are_published_as_they_fill(tmp_path: Path) -> None:
    out = tmp_path / "parts"
    records = sample(25)
    result, _ = run_into(ParquetSink(out, rows_per_file=10), records, batch_size=7)
    assert result.records_out == 25
    assert sorted(os.listdir(out)) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    heights = [pl.read_parquet(out / f"part-0000{i}.parquet").height for i in range(3)]
    assert heights == [10, 10, 5]
    run_into(ParquetSink(out, rows_per_file=10), sample(5, start=25))
    assert sorted(os.listdir(out))[-1] == "part-00003.parquet"
    back = pl.read_parquet(out / "*.parquet").sort("id")
    assert back.equals(expected(sample(30)))


def test_parquet_directory_part_visible_before_the_run_ends(tmp_path: Path) -> None:
    out = tmp_path / "parts"
    sink = ParquetSink(out, rows_per_file=4)
    sink.open("out")
    sink.write(pl.DataFrame({"a": [1, 2, 3, 4, 5]}))
    assert os.listdir(out) == ["part-00000.parquet"]
    assert pl.read_parquet(out / "part-00000.parquet").height == 4
    sink.flush()
    assert pl.read_parquet(out / "part-00001.parquet").to_dicts() == [{"a": 5}]
    sink.close()
    assert sorted(os.listdir(out)) == ["part-00000.parquet", "part-00001.parquet"]


def test_parquet_schema_is_fixed_by_the_first_batch(tmp_path: Path) -> None:
    first = pl.DataFrame({"n": [1, 2], "s": ["a", "b"]})
    castable = pl.DataFrame({"s": ["c"], "n": pl.Series([3], dtype=pl.Int32)})
    bad_values = pl.DataFrame({"n": ["4", "four", "5"], "s": ["d", "e", "f"]})
    other_columns = pl.DataFrame({"n": [6], "t": ["g"]})
    result, dead = run_into(ParquetSink(tmp_path / "out.parquet"), [first, castable, bad_values, other_columns])
    back = pl.read_parquet(tmp_path / "out.parquet")
    assert back.schema == first.schema
    assert back.to_dicts() == [
        {"n": 1, "s": "a"}, {"n": 2, "s": "b"}, {"n": 3, "s": "c"}, {"n": 4, "s": "d"}, {"n": 5, "s": "f"},
    ]
    assert sorted(d["payload"] for d in dead) == ['{"n":"four","s":"e"}', '{"n":6,"t":"g"}']
    assert result.step("out").dead_letters == 2


def test_schema_error_rejects_the_batch_without_bisecting(tmp_path: Path) -> None:
    calls = 0

    class CountingCsv(tdf.io.CsvSink):
        def write(self, df: pl.DataFrame) -> None:
            nonlocal calls
            calls += 1
            super().write(df)

    path = tmp_path / "out.csv"
    path.write_text("a,b\n1,2\n")
    flow = tdf.Flow("reject")
    flow.source("src", tdf.io.MemorySource([{"x": i} for i in range(64)], batch_size=64)).sink(
        "csv", CountingCsv(str(path))
    )
    result = flow.run(handle_signals=False)
    assert calls == 1  # one attempt, no bisection into 2n calls
    assert result.dead_letters == 64
    assert issubclass(SinkSchemaError, tdf.errors.BatchRejected)


# -- crashes -------------------------------------------------------------------------------

BATCH = 250

HELPER = """
import datetime as dt
import sys

import tideflow as tdf
from tideflow.io.files_out import CsvSink, JsonlSink
from tideflow.io.sqlite import SqliteSink

out = sys.argv[1]
start = dt.datetime(2024, 1, 1)


def endless():
    i = 0
    while True:
        yield {{"id": i, "text": f'row {{i}}, "q" é', "at": start + dt.timedelta(milliseconds=i), "x": i / 7}}
        i += 1


flow = tdf.Flow("crash")
rows = flow.source("gen", tdf.io.IterableSource(endless(), batch_size={batch}, linger="1h"))
rows.sink("csv", CsvSink(out + "/out.csv"))
rows.sink("jsonl", JsonlSink(out + "/out.jsonl"))
rows.sink("db", SqliteSink(out + "/out.db", "rows"))
result = flow.run()
print("interrupted", result.interrupted, result.records_in, flush=True)
"""


def start_writer(tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(HELPER.format(batch=BATCH)), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for_output(tmp_path: Path, process: subprocess.Popen[str]) -> None:
    def written() -> bool:
        if process.poll() is not None:
            pytest.fail(f"writer exited early: {process.communicate()}")
        enough = 20 * BATCH * 30
        files = ("out.csv", "out.jsonl", "out.db-wal")
        return all(size(tmp_path / name) > enough for name in files[:2]) and size(tmp_path / files[2]) > 0

    wait_for(written, "the writer's output")


def check_row(row_id: int, text: str, at: str) -> None:
    assert text == f'row {row_id}, "q" é'
    assert dt.datetime.fromisoformat(at) == dt.datetime(2024, 1, 1) + dt.timedelta(milliseconds=row_id)


def complete_lines(path: Path) -> list[bytes]:
    """The file's newline-terminated lines, after checking that nothing follows the last one.

    A kill can cut a large write(2) at a page boundary, leaving a torn tail: reopening the sink
    (as a restarted flow does) must cut it away. Either way, only whole lines remain.
    """
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        sink = CsvSink(path) if path.suffix == ".csv" else JsonlSink(path)
        with pytest.warns(RuntimeWarning, match="incomplete last record"):
            sink.open("reopen")
        sink.close()
        data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.splitlines()


def check_csv(path: Path) -> int:
    lines = complete_lines(path)
    rows = list(csv.reader(io.StringIO(b"\n".join(lines).decode("utf-8"))))
    assert rows[0] == ["id", "text", "at", "x"]
    for number, row in enumerate(rows[1:]):
        assert len(row) == 4
        assert int(row[0]) == number
        check_row(number, row[1], row[2])
        assert float(row[3]) == number / 7
    return len(rows) - 1


def check_jsonl(path: Path) -> int:
    lines = complete_lines(path)
    for number, line in enumerate(lines):
        record = orjson.loads(line)
        assert record["id"] == number and record["x"] == number / 7
        check_row(number, record["text"], record["at"])
    return len(lines)


def check_db(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = [row[0] for row in conn.execute("SELECT id FROM rows ORDER BY id")]
    conn.close()
    assert ids == list(range(len(ids)))
    assert len(ids) % BATCH == 0, "the database must hold whole batches only"
    return len(ids)


def test_sigkill_leaves_only_whole_rows_and_whole_batches(tmp_path: Path) -> None:
    process = start_writer(tmp_path)
    try:
        wait_for_output(tmp_path, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert check_csv(tmp_path / "out.csv") > 0
    assert check_jsonl(tmp_path / "out.jsonl") > 0
    assert check_db(tmp_path / "out.db") > 0


def test_sigint_stops_cleanly_and_flushes_everything(tmp_path: Path) -> None:
    process = start_writer(tmp_path)
    try:
        wait_for_output(tmp_path, process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    words = stdout.split()
    assert words[:2] == ["interrupted", "True"], stdout
    records_in = int(words[2])
    assert (tmp_path / "out.csv").read_bytes().endswith(b"\n")
    assert (tmp_path / "out.jsonl").read_bytes().endswith(b"\n")
    assert check_csv(tmp_path / "out.csv") == records_in
    assert check_jsonl(tmp_path / "out.jsonl") == records_in
    assert check_db(tmp_path / "out.db") == records_in
