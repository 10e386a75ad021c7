"""Exactly-once sinks: two-phase commit per epoch, recovery after crashes, idempotent commits.

Each sink kind is driven through the ``TransactionalSink`` protocol directly (open, recover,
write, prepare, commit) as the runtime drives it, with real values. A "crash" abandons the sink
without ``close`` (its OS handles are released as the kernel would release them, nothing more)
and a new sink on the same path recovers from the last durable epoch; a "torn append" adds
bytes to the target after the last commit record, as a killed commit would.
"""

from __future__ import annotations

import csv
import gc
import io
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.io.base import TransactionalSink
from tideflow.io.files_out import CsvSink, JsonlSink, ParquetSink
from tideflow.io.memory import MemorySink
from tideflow.io.sqlite import SqliteCommitError, SqliteSink

Row = tuple[int, str]


def text(i: int) -> str:
    """Awkward text: a comma, quotes, a newline inside quotes for CSV, unicode."""
    return f'r{i}, "q"\nnext é 雪' if i % 3 == 0 else f"r{i} 😀"


def frame(ids: range | list[int]) -> pl.DataFrame:
    ids = list(ids)
    return pl.DataFrame({"id": ids, "text": [text(i) for i in ids], "x": [i / 4 for i in ids]})


def rows(ids: range | list[int]) -> list[Row]:
    return [(i, text(i)) for i in ids]


# -- sink kinds ----------------------------------------------------------------------------


@dataclass
class Kind:
    """How to make, read and crash one kind of sink under ``root``."""

    name: str
    make: Callable[[Path], TransactionalSink]
    read: Callable[[Path, TransactionalSink], list[Row]]
    hidden: Callable[[Path], list[str]]
    target: str | None = None
    """The file a torn append goes to (files only)."""
    garbage: bytes = b""
    in_process: bool = False
    """Memory: only an in-process failure exists; the same object recovers."""


def read_memory(root: Path, sink: TransactionalSink) -> list[Row]:
    assert isinstance(sink, MemorySink)
    return [(r["id"], r["text"]) for r in sink.records]


def read_sqlite(root: Path, sink: TransactionalSink) -> list[Row]:
    conn = sqlite3.connect(root / "out.db")
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone():
            return []
        return conn.execute("SELECT id, text FROM t ORDER BY rowid").fetchall()
    finally:
        conn.close()


def sqlite_hidden(root: Path) -> list[str]:
    if not (root / "out.db").exists():
        return []
    conn = sqlite3.connect(root / "out.db")
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    finally:
        conn.close()
    return [n for n in names if n != "t"]


def read_csv(root: Path, sink: TransactionalSink) -> list[Row]:
    path = root / "out.csv"
    if not path.exists() or path.stat().st_size == 0:
        return []
    records = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    assert records[0] == ["id", "text", "x"]
    assert all(len(r) == 3 and float(r[2]) == int(r[0]) / 4 for r in records[1:])
    return [(int(r[0]), r[1]) for r in records[1:]]


def read_jsonl(root: Path, sink: TransactionalSink) -> list[Row]:
    path = root / "out.jsonl"
    if not path.exists():
        return []
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [(r["id"], r["text"]) for r in records]


def read_parquet(root: Path, sink: TransactionalSink) -> list[Row]:
    out = root / "parts"
    if not out.exists():
        return []
    parts = sorted(p for p in os.listdir(out) if p.startswith("part-") and p.endswith(".parquet"))
    got: list[Row] = []
    for part in parts:
        got += [(r["id"], r["text"]) for r in pl.read_parquet(out / part).to_dicts()]
    return got


def hidden_files(directory: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def hidden(root: Path) -> list[str]:
        where = directory(root)
        return sorted(n for n in os.listdir(where) if n.startswith(".")) if where.exists() else []

    return hidden


KINDS = {
    "memory": Kind("memory", lambda root: MemorySink(), read_memory, lambda root: [], in_process=True),
    "sqlite": Kind("sqlite", lambda root: SqliteSink(root / "out.db", "t"), read_sqlite, sqlite_hidden),
    "csv": Kind(
        "csv",
        lambda root: CsvSink(root / "out.csv"),
        read_csv,
        hidden_files(lambda root: root),
        target="out.csv",
        garbage=b'999,"garbage row",0\n',  # a whole row: only the commit record can tell it apart
    ),
    "jsonl": Kind(
        "jsonl",
        lambda root: JsonlSink(root / "out.jsonl"),
        read_jsonl,
        hidden_files(lambda root: root),
        target="out.jsonl",
        garbage=b'{"id":999,"text":"garbage row","x":0}\n',
    ),
    "parquet": Kind(
        "parquet",
        lambda root: ParquetSink(root / "parts", rows_per_file=5),
        read_parquet,
        hidden_files(lambda root: root / "parts"),
    ),
}
ALL = list(KINDS)
ON_DISK = [k for k in ALL if not KINDS[k].in_process]
FILES = ["csv", "jsonl"]


def leftovers(kind: Kind) -> list[str]:
    """Hidden files a sink keeps between runs: the commit record of a text file, nothing else."""
    return [f".{kind.target}.tf-commit"] if kind.target else []


def abandon(sink: TransactionalSink) -> None:
    """What a killed process leaves: OS handles released, nothing flushed, renamed or closed."""
    for name in ("_fd", "_open_fd"):
        fd = getattr(sink, name, None)
        if fd is not None:
            os.close(fd)
            setattr(sink, name, None)
    conn = getattr(sink, "_conn", None)
    if conn is not None:
        conn.close()  # every SQLite transaction of the sink is already committed or rolled back
        sink._conn = None  # type: ignore[attr-defined]
    for file in [getattr(sink, "_file", None), *getattr(sink, "_sealed", [])]:
        if file is not None:
            file.writer.close()  # the temporary part stays behind, as after a kill
    if hasattr(sink, "_file"):
        sink._file = None  # type: ignore[attr-defined]
    gc.collect()


def started(kind: Kind, root: Path, committed: int | None = None) -> TransactionalSink:
    sink = kind.make(root)
    sink.open("out")
    sink.recover(committed, None)
    return sink


def crash(kind: Kind, root: Path, sink: TransactionalSink, committed: int | None, *, tear: bool) -> TransactionalSink:
    """Abandon ``sink`` (tearing its target if asked) and recover a new one from ``committed``."""
    if kind.in_process:
        sink.recover(committed, None)
        return sink
    abandon(sink)
    if tear and kind.target:
        with open(root / kind.target, "ab") as target:
            target.write(kind.garbage)
    return started(kind, root, committed)


def write_epoch(sink: TransactionalSink, ids: range, epoch: int) -> None:
    """Write ``ids`` in two batches and prepare them as ``epoch``."""
    middle = ids.start + len(ids) // 2
    sink.write(frame(range(ids.start, middle)))
    sink.write(frame(range(middle, ids.stop)))
    sink.prepare(epoch)


EPOCH_IDS = {1: range(0, 7), 2: range(7, 15), 3: range(15, 26)}


# -- (a) visible exactly once, and only after commit ---------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_rows_appear_on_commit_and_not_before(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = started(kind, tmp_path)
    sink.write(frame(range(0, 4)))
    assert kind.read(tmp_path, sink) == []
    handle = sink.prepare(1)
    orjson.dumps(handle)  # the checkpoint keeps it as JSON
    assert kind.read(tmp_path, sink) == []
    sink.write(frame(range(4, 9)))  # epoch 2, while epoch 1 waits for its checkpoint
    sink.commit(1)
    assert kind.read(tmp_path, sink) == rows(range(0, 4))
    sink.commit(1)  # idempotent
    assert kind.read(tmp_path, sink) == rows(range(0, 4))
    sink.prepare(2)
    assert kind.read(tmp_path, sink) == rows(range(0, 4))
    sink.commit(2)
    assert kind.read(tmp_path, sink) == rows(range(0, 9))
    sink.close()
    assert kind.read(tmp_path, sink) == rows(range(0, 9))
    assert kind.hidden(tmp_path) == leftovers(kind)


@pytest.mark.parametrize("name", ALL)
def test_close_without_commit_publishes_nothing_new(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = started(kind, tmp_path)
    write_epoch(sink, EPOCH_IDS[1], 1)
    sink.commit(1)
    write_epoch(sink, EPOCH_IDS[2], 2)  # prepared, checkpoint not durable yet
    sink.write(frame(range(100, 103)))  # not even prepared
    sink.close()  # an interrupted run
    assert kind.read(tmp_path, sink) == rows(EPOCH_IDS[1])
    if not kind.in_process:
        again = started(kind, tmp_path, committed=2)  # the checkpoint of epoch 2 was durable after all
        assert kind.read(tmp_path, again) == rows(range(0, 15))
        again.close()


@pytest.mark.parametrize("name", ALL)
def test_commits_from_another_thread_while_writing(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = started(kind, tmp_path)
    ready: list[int] = []
    cond = threading.Condition()
    done = threading.Event()
    errors: list[BaseException] = []

    def committer() -> None:
        try:
            while True:
                with cond:
                    cond.wait_for(lambda: ready or done.is_set())
                    if not ready and done.is_set():
                        return
                    epoch = ready.pop(0)
                sink.commit(epoch)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=committer)
    thread.start()
    for epoch in range(1, 41):
        sink.write(frame(range((epoch - 1) * 10, epoch * 10)))
        sink.prepare(epoch)
        with cond:
            ready.append(epoch)
            cond.notify()
    with cond:
        done.set()
        cond.notify()
    thread.join(timeout=60)
    assert not errors
    sink.close()
    assert kind.read(tmp_path, sink) == rows(range(400))


# -- (b) a crash between commits, with a torn append ---------------------------------------


def crashed_after_commit_2(kind: Kind, root: Path) -> TransactionalSink:
    """Epochs 1..3 prepared, 1..2 committed, then the process dies (the target torn)."""
    sink = started(kind, root)
    for epoch, ids in EPOCH_IDS.items():
        write_epoch(sink, ids, epoch)
    sink.commit(1)
    sink.commit(2)
    sink.write(frame(range(500, 505)))  # rows of an epoch never prepared
    assert kind.read(root, sink) == rows(range(0, 15))
    return sink


@pytest.mark.parametrize("name", ALL)
def test_recover_from_a_durable_checkpoint_commits_its_epoch(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = crashed_after_commit_2(kind, tmp_path)
    sink = crash(kind, tmp_path, sink, 3, tear=True)
    assert kind.read(tmp_path, sink) == rows(range(0, 26))
    write_epoch(sink, range(26, 30), 4)
    sink.commit(4)
    sink.close()
    assert kind.read(tmp_path, sink) == rows(range(0, 30))


@pytest.mark.parametrize("name", ALL)
def test_recover_from_an_older_checkpoint_drops_later_epochs(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = crashed_after_commit_2(kind, tmp_path)
    sink = crash(kind, tmp_path, sink, 2, tear=True)
    assert kind.read(tmp_path, sink) == rows(range(0, 15))
    write_epoch(sink, range(15, 20), 3)  # the replay may use epoch 3 again: its old rows are gone
    sink.commit(3)
    sink.close()
    assert kind.read(tmp_path, sink) == rows(range(0, 20))
    assert kind.hidden(tmp_path) == leftovers(kind)


@pytest.mark.parametrize("name", FILES)
def test_a_torn_last_line_is_cut_too(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = crashed_after_commit_2(kind, tmp_path)
    abandon(sink)
    with open(tmp_path / kind.target, "ab") as target:  # type: ignore[arg-type]
        target.write(kind.garbage[:9])
    with pytest.warns(RuntimeWarning, match="incomplete last record"):
        again = started(kind, tmp_path, committed=3)
    assert kind.read(tmp_path, again) == rows(range(0, 26))


@pytest.mark.parametrize("name", FILES)
def test_crash_inside_prepare_before_the_rename(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = started(kind, tmp_path)
    write_epoch(sink, EPOCH_IDS[1], 1)
    sink.commit(1)
    sink.write(frame(EPOCH_IDS[2]))  # prepare(2) is killed before its rename: the open file stays
    abandon(sink)
    again = started(kind, tmp_path, committed=1)
    assert kind.read(tmp_path, again) == rows(EPOCH_IDS[1])
    assert kind.hidden(tmp_path) == leftovers(kind)


@pytest.mark.parametrize("name", FILES)
def test_crash_after_the_commit_record_before_the_epoch_file_is_deleted(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = started(kind, tmp_path)
    write_epoch(sink, EPOCH_IDS[1], 1)
    write_epoch(sink, EPOCH_IDS[2], 2)
    files = {p: p.read_bytes() for p in tmp_path.iterdir() if ".tf-epoch-" in p.name}
    assert len(files) == 2
    sink.commit(2)
    for path, data in files.items():  # as if the kill came just before the deletes
        path.write_bytes(data)
    (tmp_path / f".{kind.target}.tf-commit.tmp").write_bytes(b'{"epoch": 9')  # and a record half written
    abandon(sink)
    again = started(kind, tmp_path, committed=2)
    assert kind.read(tmp_path, again) == rows(range(0, 15))
    assert kind.hidden(tmp_path) == leftovers(kind)


# -- (c) recovering twice changes nothing --------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("committed", [2, 3])
def test_recover_twice_changes_nothing(tmp_path: Path, name: str, committed: int) -> None:
    kind = KINDS[name]
    sink = crashed_after_commit_2(kind, tmp_path)
    sink = crash(kind, tmp_path, sink, committed, tear=True)
    first = kind.read(tmp_path, sink)
    hidden = kind.hidden(tmp_path)
    sink.recover(committed, None)  # the same object again
    sink = crash(kind, tmp_path, sink, committed, tear=False)  # and a new one
    assert kind.read(tmp_path, sink) == first == rows(range(0, 26 if committed == 3 else 15))
    assert kind.hidden(tmp_path) == hidden
    sink.close()


# -- (d) epochs need not be contiguous -----------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_non_contiguous_epochs(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    sink = started(kind, tmp_path)
    write_epoch(sink, range(0, 6), 1)
    write_epoch(sink, range(6, 10), 5)
    sink.prepare(7)  # an empty epoch
    sink.commit(5)
    assert kind.read(tmp_path, sink) == rows(range(0, 10))
    write_epoch(sink, range(10, 13), 9)
    sink = crash(kind, tmp_path, sink, 9, tear=True)
    assert kind.read(tmp_path, sink) == rows(range(0, 13))
    with pytest.raises(ValueError, match="epochs must increase"):
        sink.prepare(9)
    write_epoch(sink, range(13, 15), 12)
    sink.commit(12)
    sink.close()
    assert kind.read(tmp_path, sink) == rows(range(0, 15))


def test_prepare_before_recover_is_refused(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path / "out.csv")
    sink.open("out")
    with pytest.raises(RuntimeError, match="before recover"):
        sink.prepare(1)
    sink.close()


# -- (e) random runs with crashes ----------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.tuples(st.integers(1, 6), st.booleans())),  # rows, a flag for the batch
        st.tuples(st.just("prepare"), st.integers(1, 3)),  # the gap to the next epoch number
        st.tuples(st.just("commit"), st.integers(0, 5)),  # which prepared epoch becomes durable
        st.tuples(st.just("durable"), st.integers(0, 5)),  # durable, but the commit is not reached
        st.tuples(st.just("crash"), st.booleans()),  # torn target or not
    ),
    max_size=30,
)


class Model:
    """What a reader must see: the rows of every committed epoch, in order, once."""

    def __init__(self) -> None:
        self.next_id = 0
        self.open: list[int] = []
        self.prepared: list[tuple[int, list[int]]] = []
        self.visible: list[int] = []
        self.last = 0
        self.durable: int | None = None

    def commit(self, epoch: int) -> None:
        while self.prepared and self.prepared[0][0] <= epoch:
            self.visible += self.prepared.pop(0)[1]


def run_ops(
    kind: Kind, root: Path, ops: list[tuple[str, Any]], write: Callable[[TransactionalSink, list[int], bool], None]
) -> tuple[Model, TransactionalSink]:
    """Play ``ops`` against a sink and the model, then commit everything left as a run's end does."""
    model = Model()
    sink = started(kind, root)
    for op, arg in ops:
        if op == "write":
            count, flag = arg
            ids = list(range(model.next_id, model.next_id + count))
            model.next_id += count
            write(sink, ids, flag)
            model.open += ids
        elif op == "prepare":
            epoch = model.last + arg
            sink.prepare(epoch)
            if model.open:
                model.prepared.append((epoch, model.open))
            model.open, model.last = [], epoch
        elif op in ("commit", "durable") and model.prepared:
            epoch = model.prepared[arg % len(model.prepared)][0]
            model.durable = epoch
            if op == "commit":
                sink.commit(epoch)
                model.commit(epoch)
        elif op == "crash":
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a whole-row tear must be cut silently, by the record
                sink = crash(kind, root, sink, model.durable, tear=arg and model.durable is not None)
            if model.durable is not None:
                model.commit(model.durable)
            model.prepared, model.open, model.last = [], [], model.durable or 0
    final = model.last + 1
    sink.prepare(final)
    if model.open:
        model.prepared.append((final, model.open))
    sink.commit(final)
    model.commit(final)
    sink.close()
    return model, sink


@pytest.mark.parametrize("name", ON_DISK)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_runs_with_crashes_are_exactly_once(name: str, ops: list[tuple[str, Any]]) -> None:
    kind = KINDS[name]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, sink = run_ops(kind, root, ops, lambda sink, ids, _: sink.write(frame(ids)))
        assert kind.read(root, sink) == rows(model.visible)
        assert kind.hidden(root) == leftovers(kind)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_random_runs_with_in_process_failures_memory(ops: list[tuple[str, Any]]) -> None:
    model, sink = run_ops(KINDS["memory"], Path("."), ops, lambda s, ids, _: s.write(frame(ids)))
    assert read_memory(Path("."), sink) == rows(model.visible)


@settings(max_examples=80, deadline=None)
@given(ops=OPS)
def test_random_runs_with_crashes_sqlite_upsert(ops: list[tuple[str, Any]]) -> None:
    """With ``key``: the last value per key; a batch without ``note`` leaves the note as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kind = Kind("sqlite-key", lambda r: SqliteSink(r / "out.db", "t", key="k"), read_sqlite, sqlite_hidden)
        noted: set[int] = set()

        def write(sink: TransactionalSink, ids: list[int], with_note: bool) -> None:
            data: dict[str, list[Any]] = {"k": [i % 5 for i in ids], "v": ids}
            if with_note:
                data["note"] = [f"n{i}" for i in ids]
                noted.update(ids)
            sink.write(pl.DataFrame(data))

        model, _ = run_ops(kind, root, ops, write)
        expected: dict[int, tuple[int, str | None]] = {}
        for i in model.visible:
            note = f"n{i}" if i in noted else expected.get(i % 5, (0, None))[1]
            expected[i % 5] = (i, note)
        conn = sqlite3.connect(root / "out.db")
        try:
            got = {}
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone():
                columns = [r[1] for r in conn.execute("PRAGMA table_info(t)")]
                select = "k, v, note" if "note" in columns else "k, v, NULL"
                got = {k: (v, note) for k, v, note in conn.execute(f"SELECT {select} FROM t")}
        finally:
            conn.close()
        assert got == expected
        assert sqlite_hidden(root) == []


def test_sqlite_upsert_leaves_columns_a_batch_lacks(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "out.db", "t", key="k")
    sink.open("out")
    sink.recover(None, None)
    sink.write(pl.DataFrame({"k": [1, 2], "v": [1, 1], "note": ["a", "b"]}))
    sink.write(pl.DataFrame({"k": [1, 3], "v": [2, 2]}))
    sink.write(pl.DataFrame({"v": [3], "k": [1]}))
    sink.prepare(1)
    sink.commit(1)
    sink.close()
    conn = sqlite3.connect(tmp_path / "out.db")
    assert conn.execute("SELECT k, v, note FROM t ORDER BY k").fetchall() == [(1, 3, "a"), (2, 1, "b"), (3, 2, None)]
    conn.close()


# -- (f) without recover nothing changes ---------------------------------------------------


def run_flow(sink: tdf.io.Sink, records: list[dict[str, Any]]) -> None:
    flow = tdf.Flow("plain")
    flow.source("src", tdf.io.MemorySource(records, batch_size=3)).sink("out", sink)
    flow.run(handle_signals=False)


def test_without_recover_no_hidden_files_or_tables(tmp_path: Path) -> None:
    records = [{"id": i, "text": text(i), "x": i / 4} for i in range(10)]
    memory = MemorySink()
    sinks: list[tdf.io.Sink] = [
        memory,
        SqliteSink(tmp_path / "out.db", "t"),
        CsvSink(tmp_path / "out.csv"),
        JsonlSink(tmp_path / "out.jsonl"),
        ParquetSink(tmp_path / "parts", rows_per_file=4),
        ParquetSink(tmp_path / "one.parquet"),
    ]
    for sink in sinks:
        run_flow(sink, records)
    assert sorted(os.listdir(tmp_path)) == ["one.parquet", "out.csv", "out.db", "out.jsonl", "parts"]
    assert sorted(os.listdir(tmp_path / "parts")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert sqlite_hidden(tmp_path) == []
    assert len(memory) == 10
    for name in ON_DISK:
        assert KINDS[name].read(tmp_path, memory) == rows(range(10))


# -- sink specifics ------------------------------------------------------------------------


def test_parquet_single_file_refuses_epochs(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "out.parquet")
    sink.open("out")
    with pytest.raises(ValueError, match="give a directory"):
        sink.recover(None, None)
    sink.close()


def test_parquet_epochs_end_their_own_parts_and_roll_inside(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "parts", rows_per_file=4)
    sink.open("out")
    sink.recover(None, None)
    sink.write(frame(range(0, 10)))
    assert sink.prepare(1) == {"epoch": 1, "files": ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]}
    assert sorted(os.listdir(tmp_path / "parts")) == [f".part-0000{i}.parquet.tf-epoch-000000000001" for i in range(3)]
    sink.commit(1)
    assert sorted(os.listdir(tmp_path / "parts")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert pl.read_parquet(tmp_path / "parts" / "*.parquet").get_column("id").to_list() == list(range(10))
    sink.close()


def test_parquet_readers_by_glob_never_see_prepared_parts(tmp_path: Path) -> None:
    sink = started(KINDS["parquet"], tmp_path)
    write_epoch(sink, range(0, 8), 1)
    sink.commit(1)
    write_epoch(sink, range(8, 12), 2)
    assert sorted(pl.read_parquet(tmp_path / "parts" / "*.parquet").get_column("id").to_list()) == list(range(8))
    sink.close()


def test_csv_header_once_when_the_target_already_has_rows(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("id,text,x\n-1,old,-0.25\n", encoding="utf-8")
    sink = CsvSink(path)
    sink.open("out")
    sink.recover(None, None)
    sink.write(pl.DataFrame({"x": [0.0], "id": [0], "text": ["new"]}))  # header order is kept
    sink.prepare(1)
    sink.commit(1)
    sink.close()
    assert path.read_text(encoding="utf-8") == "id,text,x\n-1,old,-0.25\n0,new,0.0\n"


def test_csv_columns_are_still_checked_at_write_time(tmp_path: Path) -> None:
    sink = started(KINDS["csv"], tmp_path)
    sink.write(frame(range(2)))
    with pytest.raises(tdf.io.SinkSchemaError, match="header"):
        sink.write(pl.DataFrame({"other": [1]}))
    sink.prepare(1)
    sink.commit(1)
    sink.close()
    assert read_csv(tmp_path, sink) == rows(range(2))


def test_csv_append_false_starts_afresh_on_a_fresh_run_only(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("id,text,x\n-1,old,0\n", encoding="utf-8")
    sink = CsvSink(path, append=False)
    sink.open("out")
    sink.recover(None, None)  # fresh: start afresh
    write_epoch(sink, EPOCH_IDS[1], 1)
    sink.commit(1)
    abandon(sink)
    again = CsvSink(path, append=False)
    again.open("out")
    again.recover(1, None)  # resumed: keep what was committed
    write_epoch(again, EPOCH_IDS[2], 2)
    again.commit(2)
    again.close()
    assert read_csv(tmp_path, again) == rows(range(0, 15))


def test_sqlite_absent_columns_get_the_tables_defaults(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER, note TEXT DEFAULT 'none')")
    conn.close()
    sink = SqliteSink(db, "t")
    sink.open("out")
    sink.recover(None, None)
    sink.write(pl.DataFrame({"id": [1], "note": ["a"]}))
    sink.write(pl.DataFrame({"id": [2]}))
    sink.write(pl.DataFrame({"note": ["c"], "id": [3], "extra": [1.5]}))
    sink.prepare(1)
    sink.commit(1)
    sink.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT id, note, extra FROM t ORDER BY rowid").fetchall() == [
        (1, "a", None),
        (2, "none", None),
        (3, "c", 1.5),
    ]
    assert conn.execute("SELECT typeof(extra) FROM t WHERE id = 3").fetchone() == ("real",)
    conn.close()


def test_sqlite_keeps_types_through_the_pending_table(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = SqliteSink(db, "t")
    sink.open("out")
    sink.recover(None, None)
    df = pl.DataFrame({"i": [1], "f": [2.5], "s": ["3"], "b": [b"\x00\xff"], "ok": [True], "tags": [["a"]]})
    sink.write(df)
    sink.prepare(1)
    sink.commit(1)
    sink.close()
    plain = SqliteSink(tmp_path / "plain.db", "t")
    plain.open("out")
    plain.write(df)
    plain.close()
    select = "SELECT typeof(i), i, typeof(f), f, typeof(s), s, b, ok, tags FROM t"
    got = []
    for path in (db, tmp_path / "plain.db"):
        conn = sqlite3.connect(path)
        got.append(conn.execute(select).fetchall())
        conn.close()
    assert got[0] == got[1] == [("integer", 1, "real", 2.5, "text", "3", b"\x00\xff", 1, '["a"]')]


def test_sqlite_constraint_failures_surface_at_commit(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER, amount REAL CHECK (amount >= 0))")
    conn.close()
    sink = SqliteSink(db, "t")
    sink.open("out")
    sink.recover(None, None)
    sink.write(pl.DataFrame({"id": [1, 2], "amount": [1.0, -1.0]}))
    sink.prepare(1)
    with pytest.raises(SqliteCommitError, match=r"CHECK constraint failed.*_tf_pending__t"):
        sink.commit(1)
    sink.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM _tf_pending__t").fetchone() == (2,)  # kept for the user
    conn.close()


def test_sqlite_reserved_column_names_are_refused_in_epochs(tmp_path: Path) -> None:
    sink = started(KINDS["sqlite"], tmp_path)
    with pytest.raises(tdf.io.SinkSchemaError, match="reserved"):
        sink.write(pl.DataFrame({"_TF_SEQ": [1]}))
    sink.close()


# -- killed inside a commit ----------------------------------------------------------------

CHILD = """
import sys

import polars as pl

from tideflow.io.files_out import CsvSink, JsonlSink, ParquetSink
from tideflow.io.sqlite import SqliteSink

kind, root = sys.argv[1], sys.argv[2]
sinks = {{
    "csv": lambda: CsvSink(root + "/out.csv"),
    "jsonl": lambda: JsonlSink(root + "/out.jsonl"),
    "parquet": lambda: ParquetSink(root + "/parts", rows_per_file={rows_per_file}),
    "sqlite": lambda: SqliteSink(root + "/out.db", "t"),
}}
sink = sinks[kind]()
sink.open("out")
sink.recover(None, None)
for epoch in (1, 2, 3):
    ids = range((epoch - 1) * {per_epoch}, epoch * {per_epoch})
    text = [f'r{{i}}, "q"\\nnext é 雪' if i % 3 == 0 else f"r{{i}} 😀" for i in ids]
    sink.write(pl.DataFrame({{"id": list(ids), "text": text, "x": [i / 4 for i in ids]}}))
    sink.prepare(epoch)
sink.commit(1)
print("committed 1", flush=True)
sink.commit(3)
print("survived", flush=True)
"""

PER_EPOCH = 40_000  # about 1.3 MB of CSV per epoch: a commit appends it in two 1 MiB chunks
ROWS_PER_FILE = 10_000  # four Parquet parts per epoch


@pytest.mark.parametrize(
    ("name", "crash_at"),
    [
        ("csv", 3),  # epoch 1 is chunks 1-2; chunk 3 is epoch 2's first, cut in half
        ("csv", 4),  # the second chunk of epoch 2
        ("jsonl", 3),
        ("jsonl", 6),  # inside epoch 3, after epoch 2's commit record
        ("parquet", 6),  # epoch 1's four renames done, epoch 2's second one not
        ("sqlite", 2),  # the second commit: copied, not committed
    ],
)
def test_killed_inside_a_commit_recovers_exactly_once(tmp_path: Path, name: str, crash_at: int) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(rows_per_file=ROWS_PER_FILE, per_epoch=PER_EPOCH)), "utf-8")
    env = {**os.environ, "TIDEFLOW_CRASH_AT": f"commit:{crash_at}"}
    child = subprocess.run(
        [sys.executable, str(script), name, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.splitlines() == ["committed 1"]
    kind = KINDS[name]
    if kind.target:
        size = (tmp_path / kind.target).stat().st_size
        record = orjson.loads((tmp_path / f".{kind.target}.tf-commit").read_bytes())
        assert size > record["length"]  # the kill did tear an append
    elif name == "parquet":  # epoch 1's parts and one of epoch 2's were renamed
        assert kind.read(tmp_path, MemorySink()) == rows(range(PER_EPOCH + ROWS_PER_FILE))
    else:
        assert kind.read(tmp_path, MemorySink()) == rows(range(PER_EPOCH))
    kind = KINDS[name] if name != "parquet" else Kind(name, child_parquet, read_parquet, kind.hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open() may cut a torn last line first, with a warning
        sink = started(kind, tmp_path, committed=3)
    everything = rows(range(3 * PER_EPOCH))
    assert kind.read(tmp_path, sink) == everything
    sink.close()
    again = started(kind, tmp_path, committed=3)
    assert kind.read(tmp_path, again) == everything
    again.close()
    assert kind.hidden(tmp_path) == leftovers(kind)


def child_parquet(root: Path) -> TransactionalSink:
    return ParquetSink(root / "parts", rows_per_file=ROWS_PER_FILE)
