"""Checkpoint stores (SQLite and files): atomic, incremental, verified saves; fallback past
damaged checkpoints; retention and blob garbage collection; export/import; a real crash."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tideflow.checkpoint import codec
from tideflow.checkpoint.store import (
    Checkpoint,
    CheckpointStore,
    CheckpointWarning,
    CorruptCheckpoint,
    open_store,
)
from tideflow.checkpoint.store_files import FileStore
from tideflow.checkpoint.store_sqlite import SqliteStore
from tideflow.errors import TideflowError

KINDS = ["sqlite", "files"]


def checkpoint(epoch: int, steps: dict[str, dict[int, bytes]] | None = None, **changes: object) -> Checkpoint:
    made = Checkpoint(
        epoch=epoch,
        flow="orders",
        created=1_700_000_000.0 + epoch,
        finished=False,
        sources={"orders_in": {"position": epoch * 100, "files": ["a.csv"]}},
        sinks={"orders_out": {"prepared": [epoch]}},
        steps=steps if steps is not None else {"per_user": {0: b"g0-%d" % epoch, 1: b"g1"}, "dedupe": {-1: b"seen"}},
        meta={"tideflow": "0.1.0", "kinds": {"per_user": "KeyedAggregate", "dedupe": "Dedupe"}, "key_groups": 2},
    )
    for name, value in changes.items():
        setattr(made, name, value)
    return made


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path, kind: str) -> Iterator[CheckpointStore]:
    with open_store(tmp_path / "ckpt", kind) as opened:  # type: ignore[arg-type]
        yield opened


def blob_count(store: CheckpointStore) -> int:
    if isinstance(store, SqliteStore):
        return int(store._conn.execute("SELECT count(*) FROM blobs").fetchone()[0])
    assert isinstance(store, FileStore)
    return sum(1 for path in store.blobs.glob("*/*") if path.is_file())


def test_save_load_round_trip_and_incremental_writes(store: CheckpointStore) -> None:
    assert store.epochs() == [] and store.latest() is None and store.list() == []
    first = store.save(checkpoint(1))
    assert (first.blobs_total, first.blobs_written) == (3, 3)
    assert first.bytes_total == first.bytes_written == len(b"g0-1") + len(b"g1") + len(b"seen")
    second = store.save(checkpoint(2))  # only group 0 of per_user changed
    assert (second.epoch, second.blobs_total, second.blobs_written, second.bytes_written) == (2, 3, 1, len(b"g0-2"))
    assert second.seconds >= 0
    assert store.load(1) == checkpoint(1)
    assert store.load(2) == checkpoint(2)
    assert store.latest() == checkpoint(2)
    assert store.epochs() == [1, 2]
    assert blob_count(store) == 4


def test_list_reads_manifests(store: CheckpointStore) -> None:
    store.save(checkpoint(3, finished=True))
    store.save(checkpoint(7, meta={}))
    infos = store.list()
    assert [i.epoch for i in infos] == [3, 7]
    info = infos[0]
    assert (info.flow, info.created, info.finished, info.problem) == ("orders", 1_700_000_003.0, True, None)
    assert info.steps["per_user"].kind == "KeyedAggregate"
    assert (info.steps["per_user"].groups, info.steps["per_user"].bytes) == (2, 6)
    assert info.bytes_total == 10 and info.sources == checkpoint(3).sources and info.sinks == checkpoint(3).sinks
    assert infos[1].steps["dedupe"].kind is None  # no meta["kinds"]


def test_bad_saves_are_refused(store: CheckpointStore) -> None:
    store.save(checkpoint(5))
    with pytest.raises(TideflowError, match=r"checkpoint 5 already exists.*next free one is 6"):
        store.save(checkpoint(5))
    with pytest.raises(TypeError, match="sources must be JSON-able"):
        store.save(checkpoint(6, sources={"s": object()}))
    with pytest.raises(TypeError, match="encoded bytes"):
        store.save(checkpoint(6, steps={"s": {0: "text"}}))  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="key groups"):
        store.save(checkpoint(6, steps={"s": {-2: b""}}))
    with pytest.raises(ValueError, match="epoch"):
        store.save(checkpoint(-1))
    with pytest.raises(TideflowError, match=r"no checkpoint 9 in .*it holds 5"):
        store.load(9)
    assert store.epochs() == [5]


def test_state_from_the_codec_and_from_another_thread(store: CheckpointStore) -> None:
    state = {("user", 1): [1.5, 2.5], "total": 4}
    saved: list[object] = []
    worker = threading.Thread(
        target=lambda: saved.append(store.save(checkpoint(1, steps={"agg": {-1: codec.encode(state)}})))
    )
    worker.start()
    worker.join()
    assert saved, "save from another thread failed"
    assert codec.decode(store.load(1).steps["agg"][-1]) == state


def test_delete_collects_blobs_nothing_references(store: CheckpointStore) -> None:
    store.save(checkpoint(1, steps={"a": {0: b"shared", 1: b"only-1"}}))
    store.save(checkpoint(2, steps={"a": {0: b"shared", 1: b"only-2"}}))
    assert blob_count(store) == 3
    store.delete(1)
    assert store.epochs() == [2] and blob_count(store) == 2
    assert store.load(2).steps == {"a": {0: b"shared", 1: b"only-2"}}
    with pytest.raises(TideflowError, match="no checkpoint 1"):
        store.delete(1)
    store.delete(2)
    assert store.epochs() == [] and blob_count(store) == 0


def test_retain_keeps_the_newest(store: CheckpointStore) -> None:
    for epoch in (1, 2, 4, 8):
        store.save(checkpoint(epoch))
    assert store.retain(2) == [1, 2]
    assert store.epochs() == [4, 8]
    assert store.retain(5) == []
    assert store.load(4) == checkpoint(4)
    assert blob_count(store) == 4  # per_user group 0 of 4 and of 8, the shared group 1, dedupe
    assert store.retain(0) == [4, 8] and blob_count(store) == 0
    with pytest.raises(ValueError):
        store.retain(-1)


def corrupt_blob(store: CheckpointStore, data: bytes) -> None:
    """Flip one byte of the stored blob holding ``data``, behind the store's back."""
    damaged = bytes([data[0] ^ 0x01]) + data[1:]
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("UPDATE blobs SET data = ? WHERE data = ?", (damaged, data)).rowcount == 1
    else:
        assert isinstance(store, FileStore)
        [path] = [p for p in store.blobs.glob("*/*") if p.read_bytes() == data]
        path.write_bytes(damaged)


def corrupt_manifest(store: CheckpointStore, epoch: int) -> None:
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            query = "UPDATE checkpoints SET manifest = replace(manifest, 'orders', 'ordera') WHERE epoch = ?"
            assert conn.execute(query, (epoch,)).rowcount == 1
    else:
        assert isinstance(store, FileStore)
        path = store.manifests / f"{epoch:012d}.json"
        path.write_bytes(path.read_bytes().replace(b'"orders"', b'"ordera"'))


def test_a_damaged_blob_is_reported_and_latest_falls_back(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(checkpoint(1))
    store.save(checkpoint(2))
    corrupt_blob(store, b"g0-2")
    with pytest.raises(CorruptCheckpoint, match=r"checkpoint 2 in .* is corrupted \(step 'per_user' group 0: blob"):
        store.load(2)
    assert "checksum mismatch" in store.verify(2)[0] and store.verify(1) == []
    with caplog.at_level(logging.WARNING, logger="tideflow.checkpoint"), pytest.warns(CheckpointWarning) as caught:
        assert store.latest() == checkpoint(1)
    message = str(caught[0].message)
    assert "checkpoint 2 in" in message and "checksum mismatch" in message and "resuming from checkpoint 1" in message
    assert message in caplog.text
    assert [info.problem for info in store.list()] == [None, None]  # list reads manifests only


def test_a_damaged_manifest_is_reported_and_latest_falls_back(store: CheckpointStore) -> None:
    store.save(checkpoint(1))
    store.save(checkpoint(2))
    corrupt_manifest(store, 2)
    with pytest.raises(CorruptCheckpoint, match="manifest checksum mismatch"):
        store.load(2)
    with pytest.warns(
        CheckpointWarning, match=r"checkpoint 2 .*manifest checksum mismatch.*resuming from checkpoint 1"
    ):
        assert store.latest() == checkpoint(1)
    assert [info.problem is not None for info in store.list()] == [False, True]


def test_a_missing_blob_and_nothing_valid_left(tmp_path: Path) -> None:
    with open_store(tmp_path, "files") as store:
        assert isinstance(store, FileStore)
        store.save(checkpoint(1))
        [path] = [p for p in store.blobs.glob("*/*") if p.read_bytes() == b"seen"]
        path.unlink()
        assert "is missing" in store.verify(1)[0]
        with pytest.warns(CheckpointWarning, match="no older checkpoint verifies"):
            assert store.latest() is None


@pytest.mark.parametrize("direction", [("sqlite", "files"), ("files", "sqlite"), ("sqlite", "sqlite")])
def test_export_import_round_trip(tmp_path: Path, direction: tuple[str, str]) -> None:
    source_kind, target_kind = direction
    exported = tmp_path / "state.tfckpt"
    with open_store(tmp_path / "a", source_kind) as source:  # type: ignore[arg-type]
        source.save(checkpoint(1))
        source.save(checkpoint(2))
        assert source.export(exported) == 2  # default: the newest
        with pytest.raises(TideflowError, match="exists"):
            source.export(exported, 1)
        assert source.export(exported, 1, overwrite=True) == 1
        assert source.export(tmp_path / "two.tfckpt", 2) == 2
        original = source.load(1)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"
    with open_store(tmp_path / "b", target_kind) as target:  # type: ignore[arg-type]
        assert target.import_(exported) == 1
        assert target.load(1) == original  # blobs, positions, handles, meta: all equal
        assert target.import_(exported) == 1  # the same again: nothing to do
        assert target.import_(tmp_path / "two.tfckpt") == 2
        assert target.epochs() == [1, 2]
    with open_store(tmp_path / "c", target_kind) as other:  # type: ignore[arg-type]
        other.save(checkpoint(1, flow="something else"))
        with pytest.raises(TideflowError, match=r"already exists .* with different content"):
            other.import_(exported)


def test_import_refuses_what_is_not_an_export(tmp_path: Path) -> None:
    with open_store(tmp_path / "a", "sqlite") as store:
        store.save(checkpoint(1))
        store.save(checkpoint(2))
        not_sqlite = tmp_path / "notes.txt"
        not_sqlite.write_text("hello")
        plain = tmp_path / "plain.sqlite"
        sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.commit()
        with pytest.raises(TideflowError, match="not a tideflow checkpoint"):
            store.import_(not_sqlite)
        with pytest.raises(TideflowError, match="not a tideflow checkpoint export"):
            store.import_(plain)
        with pytest.raises(TideflowError, match="holds 2 checkpoints"):
            store.import_(tmp_path / "a" / "checkpoints.sqlite")
        with pytest.raises(TideflowError, match="not a file"):
            store.import_(tmp_path / "missing")
        damaged = tmp_path / "damaged.tfckpt"
        store.export(damaged, 1)
        with sqlite3.connect(damaged) as conn:
            conn.execute("UPDATE blobs SET data = X'00' WHERE data = ?", (b"seen",))
        with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
            store.import_(damaged)


def test_open_store_picks_the_layout_already_there(tmp_path: Path) -> None:
    with open_store(tmp_path / "new") as fresh:
        assert isinstance(fresh, SqliteStore)
    with open_store(tmp_path / "f", "files") as files:
        files.save(checkpoint(1))
    with open_store(tmp_path / "f") as again:
        assert isinstance(again, FileStore) and again.epochs() == [1]
    with pytest.raises(TideflowError, match="holds a files checkpoint store, not sqlite"):
        open_store(tmp_path / "f", "sqlite")
    with pytest.raises(ValueError):
        open_store(tmp_path / "x", "zip")  # type: ignore[arg-type]


CRASHING_SAVE = textwrap.dedent(
    """
    import sys
    from tideflow.checkpoint.store import Checkpoint, open_store

    store = open_store(sys.argv[1], sys.argv[2])
    def save(epoch, groups):
        steps = {"big": {g: bytes([epoch, g]) * 100_000 for g in range(groups)}}
        store.save(Checkpoint(epoch, "crash", 0.0, False, {"src": {"position": epoch}}, {}, steps))
    save(1, 4)
    save(2, 4)
    print("saved 1 and 2", flush=True)
    save(3, 8)  # TIDEFLOW_CRASH_AT=save:3 kills the process half way
    print("not reached", flush=True)
    """
)


def test_a_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoints(tmp_path: Path, kind: str) -> None:
    directory = tmp_path / "ckpt"
    env = {**os.environ, "TIDEFLOW_CRASH_AT": "save:3"}
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, str(directory), kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "saved 1 and 2" in done.stdout and "not reached" not in done.stdout
    with open_store(directory) as store:
        assert store.epochs() == [1, 2]
        assert store.load(2).sources == {"src": {"position": 2}}
        assert store.latest() is not None and store.latest().epoch == 2  # type: ignore[union-attr]
        if isinstance(store, FileStore):
            assert blob_count(store) > 8, "the crash left some of save 3's blobs behind"
        report = store.save(Checkpoint(3, "crash", 0.0, False, {}, {}, {"big": {0: b"again"}}))
        assert report.blobs_written == 1
        store.retain(1)
        assert store.epochs() == [3] and blob_count(store) == 1  # the crash's leftovers are swept too
        assert store.load(3).steps == {"big": {0: b"again"}}


def test_a_million_entry_state(tmp_path: Path, kind: str) -> None:
    state = {i: i for i in range(1_000_000)}
    started = time.perf_counter()
    data = codec.encode(state)
    encoded = time.perf_counter() - started
    with open_store(tmp_path / "ckpt", kind) as store:  # type: ignore[arg-type]
        report = store.save(checkpoint(1, steps={"big": {-1: data}}))
        again = store.save(checkpoint(2, steps={"big": {-1: data}}))
        started = time.perf_counter()
        loaded = store.load(1)
        load_seconds = time.perf_counter() - started
    assert report.bytes_written == len(data) and again.bytes_written == 0
    assert codec.decode(loaded.steps["big"][-1]) == state
    print(
        f"\n{kind}: 1M int->int state {len(data) / 1e6:.1f} MB, encode {encoded:.3f}s, "
        f"save {report.seconds:.3f}s, unchanged re-save {again.seconds:.3f}s, load+verify {load_seconds:.3f}s"
    )
