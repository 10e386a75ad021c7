"""SQLite sink: table creation and types, upserts, schema evolution, all-or-nothing batches."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

import tideflow as tdf
from tideflow.io.files_out import SinkSchemaError
from tideflow.io.sqlite import SqliteSink, quote_identifier


def run_into(sink: SqliteSink, data: Any, *, batch_size: int = 4) -> tuple[tdf.RunResult, list[dict]]:
    flow = tdf.Flow("db")
    flow.source("src", tdf.io.MemorySource(data, batch_size=batch_size)).sink("out", sink)
    dead = tdf.io.MemorySink()
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    return result, dead.records


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def declared_types(path: Path, table: str) -> dict[str, str]:
    return {row[1]: row[2] for row in query(path, f"PRAGMA table_info({quote_identifier(table)})")}


def test_round_trip_with_types_nulls_unicode_and_datetimes(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    base = dt.datetime(2024, 2, 29, 23, 59, 59, 123456)
    records = [
        {
            "id": i,
            "name": None if i == 2 else f"名前 {i} 😀 'quote' \"dq\"",
            "score": None if i == 3 else i * 1.25,
            "ok": i % 2 == 0,
            "at": base + dt.timedelta(hours=i),
            "at_utc": (base + dt.timedelta(hours=i)).replace(tzinfo=dt.UTC),
            "day": dt.date(2024, 1, 1 + i),
            "blob": bytes([i, 0, 255]),
            "tags": [f"t{i}", "x"],
            "point": {"x": i, "y": -i},
        }
        for i in range(10)
    ]
    result, dead = run_into(SqliteSink(db, "events"), records)
    assert (result.records_out, dead) == (10, [])
    assert declared_types(db, "events") == {
        "id": "INTEGER", "name": "TEXT", "score": "REAL", "ok": "INTEGER", "at": "TEXT",
        "at_utc": "TEXT", "day": "TEXT", "blob": "BLOB", "tags": "TEXT", "point": "TEXT",
    }
    rows = query(db, "SELECT * FROM events ORDER BY id")
    assert len(rows) == 10
    for record, row in zip(records, rows, strict=True):
        got = dict(zip(record, row, strict=True))
        assert got["id"] == record["id"] and got["name"] == record["name"] and got["score"] == record["score"]
        assert got["ok"] == int(record["ok"])
        assert dt.datetime.fromisoformat(got["at"]) == record["at"]
        assert dt.datetime.fromisoformat(got["at_utc"]) == record["at_utc"]
        assert got["at_utc"].endswith("+00:00") and "T" in got["at"]
        assert dt.date.fromisoformat(got["day"]) == record["day"]
        assert got["blob"] == record["blob"]
        assert orjson.loads(got["tags"]) == record["tags"]
        assert orjson.loads(got["point"]) == record["point"]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


def test_second_run_appends_to_the_existing_table(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    run_into(SqliteSink(db, "t"), [{"a": i} for i in range(5)])
    run_into(SqliteSink(db, "t"), [{"a": i} for i in range(5, 8)])
    assert [r[0] for r in query(db, "SELECT a FROM t ORDER BY rowid")] == list(range(8))


def test_upsert_by_key_keeps_the_latest_record(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    records = [{"user": f"u{i % 3}", "clicks": i, "note": f"n{i}"} for i in range(10)]
    run_into(SqliteSink(db, "state", key="user"), records, batch_size=3)
    assert query(db, "SELECT user, clicks, note FROM state ORDER BY user") == [
        ("u0", 9, "n9"), ("u1", 7, "n7"), ("u2", 8, "n8"),
    ]
    run_into(SqliteSink(db, "state", key="user"), [{"user": "u1", "clicks": 100, "note": "again"}])
    assert query(db, "SELECT clicks, note FROM state WHERE user = 'u1'") == [(100, "again")]
    assert query(db, "SELECT count(*) FROM state") == [(3,)]


def test_upsert_with_a_composite_key(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    records = [
        {"region": "eu", "day": "mon", "total": 1},
        {"region": "us", "day": "mon", "total": 2},
        {"region": "eu", "day": "tue", "total": 3},
        {"region": "eu", "day": "mon", "total": 4},
        {"region": "us", "day": "mon", "total": 5},
    ]
    run_into(SqliteSink(db, "totals", key=["region", "day"]), records, batch_size=2)
    assert query(db, "SELECT region, day, total FROM totals ORDER BY region, day") == [
        ("eu", "mon", 4), ("eu", "tue", 3), ("us", "mon", 5),
    ]


def test_key_only_rows_are_kept_once(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    run_into(SqliteSink(db, "seen", key="k"), [{"k": k} for k in "abcab"])
    assert query(db, "SELECT k FROM seen ORDER BY k") == [("a",), ("b",), ("c",)]


def test_new_columns_in_later_batches_are_added(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    batches = [
        pl.DataFrame({"id": [1, 2]}),
        pl.DataFrame({"id": [3], "extra": [1.5]}),
        pl.DataFrame({"label": ["x"], "id": [4]}),
    ]
    run_into(SqliteSink(db, "grow"), batches)
    assert declared_types(db, "grow") == {"id": "INTEGER", "extra": "REAL", "label": "TEXT"}
    assert query(db, "SELECT id, extra, label FROM grow ORDER BY id") == [
        (1, None, None), (2, None, None), (3, 1.5, None), (4, None, "x"),
    ]


def test_identifiers_are_quoted(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    table = 'odd "table"; DROP TABLE x; --'
    records = [{'col "1"': 1, "select": "a", "with space": True}]
    run_into(SqliteSink(db, table, key="select"), records)
    assert query(db, f"SELECT * FROM {quote_identifier(table)}") == [(1, "a", 1)]


def test_values_are_bound_not_formatted(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    evil = "x'); DROP TABLE t; --"
    run_into(SqliteSink(db, "t"), [{"s": evil}])
    assert query(db, "SELECT s FROM t") == [(evil,)]


def test_constraint_failures_dead_letter_exactly_the_bad_rows(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE amounts (id INTEGER, amount REAL CHECK (amount >= 0))")
    conn.close()
    records = [{"id": i, "amount": -1.0 if i in (3, 8) else float(i)} for i in range(10)]
    result, dead = run_into(SqliteSink(db, "amounts"), records, batch_size=10)
    assert [r[0] for r in query(db, "SELECT id FROM amounts ORDER BY id")] == [0, 1, 2, 4, 5, 6, 7, 9]
    assert sorted(orjson.loads(d["payload"])["id"] for d in dead) == [3, 8]
    assert all("CHECK constraint failed" in d["error"] for d in dead)
    assert result.step("out").dead_letters == 2


def test_a_failed_batch_rolls_back_its_new_columns_too(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER NOT NULL)")
    conn.close()
    sink = SqliteSink(db, "t")
    sink.open("out")
    with pytest.raises(sqlite3.IntegrityError):
        sink.write(pl.DataFrame({"id": [1, None], "new": ["a", "b"]}))
    assert declared_types(db, "t") == {"id": "INTEGER"}
    sink.write(pl.DataFrame({"id": [2], "new": ["c"]}))
    sink.close()
    assert query(db, "SELECT id, new FROM t") == [(2, "c")]


def test_a_batch_without_the_key_is_a_schema_error(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "out.db", "t", key="id")
    sink.open("out")
    with pytest.raises(SinkSchemaError, match="key column"):
        sink.write(pl.DataFrame({"other": [1]}))
    sink.close()


def test_close_from_another_thread_is_allowed(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "out.db", "t")
    opened = threading.Thread(target=sink.open, args=("out",))
    opened.start()
    opened.join()
    sink.write(pl.DataFrame({"a": [1]}))
    sink.close()
    assert query(tmp_path / "out.db", "SELECT a FROM t") == [(1,)]


def test_batch_rows_chunks_a_batch_inside_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    records = [{"id": i} for i in range(25)]
    run_into(SqliteSink(db, "t", batch_rows=3), records, batch_size=25)
    assert query(db, "SELECT count(*), min(id), max(id) FROM t") == [(25, 0, 24)]
