"""Checkpointed runs interrupted in-process (a failing step, a stop), then resumed.

Each test compares the resumed run's sink contents with one uninterrupted run of the same flow:
equal means nothing lost and nothing repeated. The failure is injected by a step that raises a
fatal error (an ``OSError`` stops the run, it is not dead-lettered) once a checkpoint is durable,
so every resume really starts from a checkpoint taken mid-stream.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tideflow as tdf
from tideflow.checkpoint.store import CheckpointWarning, open_store
from tideflow.errors import StepError

EVENTS = 6_000


def events() -> list[dict[str, Any]]:
    rows = []
    for i in range(EVENTS):
        rows.append({"id": i - (i % 17 == 5), "user": f"u{(i * 7) % 23}", "ts": i * 100 + (i * 37) % 700, "v": i % 11})
    return rows


class FailOnce:
    """Raises OSError on the first batch seen after the run's first durable checkpoint (and
    after ``after`` rows), in the first run only."""

    def __init__(self, flow: tdf.Flow, armed: bool, after: int = 1_000) -> None:
        self.flow, self.armed, self.after, self.seen, self.fired = flow, armed, after, 0, False
        self.stop_instead = False

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        self.seen += df.height
        runtime = self.flow._runtime
        durable = runtime.coordinator.durable_epoch if runtime is not None and runtime.coordinator else 0
        if self.armed and self.seen > self.after and durable >= runtime.first_epoch:
            self.armed, self.fired = False, True
            if self.stop_instead:
                self.flow.stop()
                self.flow.stop()  # impatient: asked twice, still a stop with a checkpoint
                return df
            raise OSError("injected crash")
        return df


def build(out: Path, *, armed: bool, rename: bool = False) -> tuple[tdf.Flow, FailOnce]:
    flow = tdf.Flow("resume-test")
    source = tdf.io.MemorySource(events(), time="ts", batch_size=50)
    stream = flow.source("events", source, watermark=tdf.BoundedOutOfOrder("1s"))
    fail = FailOnce(flow, armed)
    stream = stream.map_batches("maybe_fail", fail, same_rows=True)
    unique = stream.dedupe("dedupe" if not rename else "dedupe_v2", key="id", within="5s")

    def running(state: dict[str, int] | None, row: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
        state = {"n": 0, "sum": 0} if state is None else state
        state = {"n": state["n"] + 1, "sum": state["sum"] + row["v"]}
        return state, {"user": row["user"], "ts": row["ts"], "n": state["n"], "sum": state["sum"]}

    counts = unique.key_by("user").stateful_map("running", running, ttl="3s")
    counts.sink("running_out", tdf.io.SqliteSink(str(out / "out.db"), table="running", key=["user", "ts"]))
    windows = unique.key_by("user").window("per_user", tdf.windows.tumbling("5s")).agg(n=pl.len(), v=pl.col("v").sum())
    windows.sink("windows_out", tdf.io.CsvSink(str(out / "windows.csv")))
    return flow, fail


def contents(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(out / "out.db") as conn:
        running = sorted(conn.execute("SELECT user, ts, n, sum FROM running").fetchall())
    windows = sorted(pl.read_csv(out / "windows.csv").rows())
    return {"running": running, "windows": windows}


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Any, ...]]]:
    out = tmp_path_factory.mktemp("reference")
    flow, _ = build(out, armed=False)
    flow.run(handle_signals=False)
    return contents(out)


def crash_then_resume(out: Path, checkpoints: Path, **options: Any) -> tdf.RunResult:
    flow, fail = build(out, armed=True)
    with pytest.raises(StepError, match="injected crash"):
        flow.run(handle_signals=False, checkpoint_dir=checkpoints, checkpoint_every="20ms", keep_checkpoints=0)
    assert fail.fired
    flow, _ = build(out, armed=False)
    return flow.run(handle_signals=False, checkpoint_dir=checkpoints, resume=True, **options)


def test_a_failed_run_resumed_from_its_checkpoint_writes_what_an_uninterrupted_run_writes(
    tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]
) -> None:
    result = crash_then_resume(tmp_path / "out", tmp_path / "ckpt")
    assert result.recovery is not None and result.recovery["epoch"] >= 1
    assert set(result.recovery["restored"]) >= {"dedupe", "running", "per_user"}
    assert result.recovery["not_restored"] == {} and result.recovery["dropped"] == []
    assert result.records_in < EVENTS  # it really resumed mid-stream
    assert contents(tmp_path / "out") == expected


def test_resuming_a_finished_run_does_nothing(tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]) -> None:
    out = tmp_path / "out"
    flow, _ = build(out, armed=False)
    first = flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt")
    assert first.checkpoints is not None and first.checkpoints["completed"] >= 1
    flow, _ = build(out, armed=False)
    again = flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert again.recovery is not None and again.recovery.get("finished_before") is True
    assert again.records_in == 0
    assert contents(out) == expected


def test_the_files_store_recovers_the_same_way(tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]) -> None:
    flow, _fail = build(tmp_path / "out", armed=True)
    with pytest.raises(StepError):
        flow.run(
            handle_signals=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every="20ms", checkpoint_store="files"
        )
    flow, _ = build(tmp_path / "out", armed=False)
    result = flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert result.recovery is not None
    assert (tmp_path / "ckpt" / "manifests").is_dir()
    assert contents(tmp_path / "out") == expected


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]
) -> None:
    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    flow, fail = build(out, armed=True)
    fail.after = 3_000  # several checkpoints before the crash
    with pytest.raises(StepError):
        flow.run(handle_signals=False, checkpoint_dir=checkpoints, checkpoint_every="20ms", keep_checkpoints=0)
    store = open_store(checkpoints)
    epochs = store.epochs()
    store.close()
    assert len(epochs) >= 2
    corrupt_latest_blob(checkpoints)
    flow, _ = build(out, armed=False)
    with (
        pytest.warns(CheckpointWarning, match=f"checkpoint {epochs[-1]}"),
        pytest.warns(RuntimeWarning, match="appear twice"),
    ):
        result = flow.run(handle_signals=False, checkpoint_dir=checkpoints, resume=True)
    assert result.recovery is not None and result.recovery["epoch"] == epochs[-2]
    got = contents(out)
    # The upserting sink converges; the append-only one repeats what epoch N committed, as warned.
    assert got["running"] == expected["running"]
    assert set(got["windows"]) == set(expected["windows"]) and len(got["windows"]) > len(expected["windows"])


def corrupt_latest_blob(checkpoints: Path) -> None:
    """Flip bytes of one state blob of the newest checkpoint, in the SQLite store's file."""
    store = open_store(checkpoints)
    latest = store.load(store.epochs()[-1])
    store.close()
    blob = latest.steps["dedupe"][max(latest.steps["dedupe"])]
    with sqlite3.connect(checkpoints / "checkpoints.sqlite") as conn:
        changed = conn.execute(
            "UPDATE blobs SET data = ? WHERE data = ?", (bytes(b ^ 0xFF for b in blob[:64]) + blob[64:], blob)
        ).rowcount
    assert changed == 1


def test_a_changed_pipeline_restores_matching_steps_and_reports_the_others(
    tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]
) -> None:
    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    flow, _ = build(out, armed=True)
    with pytest.raises(StepError):
        flow.run(handle_signals=False, checkpoint_dir=checkpoints, checkpoint_every="20ms")
    flow, _ = build(out, armed=False, rename=True)
    with pytest.warns(CheckpointWarning, match="dedupe_v2"):
        result = flow.run(handle_signals=False, checkpoint_dir=checkpoints, resume=True)
    report = result.recovery
    assert report is not None
    assert "running" in report["restored"] and "per_user" in report["restored"]
    assert "dedupe_v2" in report["not_restored"] and "starts empty" in report["not_restored"]["dedupe_v2"]
    assert report["dropped"] == ["dedupe"]


def test_export_then_import_on_another_machine_resumes_the_same(
    tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]
) -> None:
    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    flow, _ = build(out, armed=True)
    with pytest.raises(StepError):
        flow.run(handle_signals=False, checkpoint_dir=checkpoints, checkpoint_every="20ms")
    store = open_store(checkpoints)
    epoch = store.export(tmp_path / "state.tfckpt")
    store.close()
    moved = tmp_path / "elsewhere"
    other = open_store(moved, "files")
    assert other.import_(tmp_path / "state.tfckpt") == epoch
    other.close()
    flow, _ = build(out, armed=False)
    result = flow.run(handle_signals=False, checkpoint_dir=moved, resume=True)
    assert result.recovery is not None and result.recovery["epoch"] == epoch
    assert contents(out) == expected


def test_stop_takes_a_checkpoint_without_flushing_windows_and_resume_goes_on_exactly(
    tmp_path: Path, expected: dict[str, list[tuple[Any, ...]]]
) -> None:
    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    flow, stopper = build(out, armed=True)
    stopper.stop_instead = True
    first = flow.run(handle_signals=False, checkpoint_dir=checkpoints, checkpoint_every="20ms")
    assert stopper.fired and first.interrupted
    assert first.records_in < EVENTS
    partial = contents(out)
    assert len(partial["windows"]) < len(expected["windows"])  # windows were not flushed early
    assert set(partial["windows"]) <= set(expected["windows"])
    flow, _ = build(out, armed=False)
    resumed = flow.run(handle_signals=False, checkpoint_dir=checkpoints, resume=True)
    assert resumed.recovery is not None and resumed.recovery["epoch"] == first.checkpoints["last_epoch"]
    assert contents(out) == expected


def ttl_events() -> list[dict[str, Any]]:
    """Key "a" every 0.5 s (its state never expires under a 2 s TTL), "b" every 2.5 s (its state
    always expires first), "c" with gaps of 1 s and 3 s in turn: the counts show both whether
    state survived and whether its expiry did."""
    rows = [{"key": "a", "ts": t} for t in range(0, 60_000, 500)]
    rows += [{"key": "b", "ts": t} for t in range(0, 60_000, 2_500)]
    t = 0
    for gap in [1_000, 3_000] * 15:
        rows.append({"key": "c", "ts": t})
        t += gap
    return sorted(rows, key=lambda row: row["ts"])


def ttl_flow(out: Path, *, armed: bool) -> tuple[tdf.Flow, FailOnce]:
    flow = tdf.Flow("ttl-timers")
    stream = flow.source(
        "events", tdf.io.MemorySource(ttl_events(), time="ts", batch_size=5), watermark=tdf.BoundedOutOfOrder("0s")
    )
    fail = FailOnce(flow, armed, after=60)
    stream = stream.map_batches("maybe_fail", fail, same_rows=True)

    def count(state: int | None, row: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        state = (state or 0) + 1
        return state, {"key": row["key"], "ts": row["ts"], "n": state}

    stream.key_by("key").stateful_map("count", count, ttl="2s").sink("counts", tdf.io.JsonlSink(str(out / "c.jsonl")))
    sessions = stream.key_by("key").window("sessions", tdf.windows.session("1500ms")).agg(n=pl.len())
    sessions.sink("sessions_out", tdf.io.JsonlSink(str(out / "s.jsonl")))
    return flow, fail


def test_ttl_expiries_and_window_timers_survive_a_restore(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    flow, _ = ttl_flow(reference, armed=False)
    flow.run(handle_signals=False)
    expected_counts = sorted(pl.read_ndjson(reference / "c.jsonl").rows())
    expected_sessions = sorted(pl.read_ndjson(reference / "s.jsonl").rows())
    by_key = {key: [n for k, _, n in expected_counts if k == key] for key in "abc"}
    assert max(by_key["a"]) > 50 and set(by_key["b"]) == {1} and 1 < max(by_key["c"]) < 4  # TTL matters here

    out = tmp_path / "out"
    flow, fail = ttl_flow(out, armed=True)
    with pytest.raises(StepError, match="injected crash"):
        flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every="5ms")
    assert fail.fired
    flow, _ = ttl_flow(out, armed=False)
    result = flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert result.recovery is not None and {"count", "sessions"} <= set(result.recovery["restored"])
    assert 0 < result.records_in < len(ttl_events())
    assert sorted(pl.read_ndjson(out / "c.jsonl").rows()) == expected_counts
    assert sorted(pl.read_ndjson(out / "s.jsonl").rows()) == expected_sessions


def dead_letter_flow(out: Path, *, armed: bool) -> tuple[tdf.Flow, FailOnce]:
    flow = tdf.Flow("dead-letters")
    stream = flow.source(
        "events", tdf.io.MemorySource(events(), time="ts", batch_size=50), watermark=tdf.BoundedOutOfOrder("1s")
    )
    fail = FailOnce(flow, armed)
    stream = stream.map_batches("maybe_fail", fail, same_rows=True)

    def strict(row: dict[str, Any]) -> dict[str, Any]:
        if row["v"] == 7:
            raise ValueError(f"v must not be 7 (id {row['id']})")
        return row

    stream.map("strict", strict).sink("kept", tdf.io.JsonlSink(str(out / "kept.jsonl")))
    flow.dead_letters().sink("letters", tdf.io.JsonlSink(str(out / "letters.jsonl")))
    return flow, fail


def letters(out: Path) -> list[tuple[Any, ...]]:
    """The dead letters without their timestamp (when a letter was written differs by run)."""
    return sorted(pl.read_ndjson(out / "letters.jsonl").drop("at").rows())


def test_the_dead_letter_branch_is_exactly_once_across_a_crash(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    flow, _ = dead_letter_flow(reference, armed=False)
    flow.run(handle_signals=False)
    expected = letters(reference)
    assert len(expected) == sum(1 for row in events() if row["v"] == 7)

    out = tmp_path / "out"
    flow, fail = dead_letter_flow(out, armed=True)
    with pytest.raises(StepError, match="injected crash"):
        flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every="10ms")
    assert fail.fired
    flow, _ = dead_letter_flow(out, armed=False)
    flow.run(handle_signals=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert letters(out) == expected
    assert sorted(pl.read_ndjson(out / "kept.jsonl").rows()) == sorted(pl.read_ndjson(reference / "kept.jsonl").rows())
