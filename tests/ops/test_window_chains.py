"""Windows after windows: results fired by one step are on time for the next, however they come."""

from __future__ import annotations

import time

import polars as pl
import pytest

import tideflow as tdf

BASE = 1_700_000_000_000


@pytest.mark.parametrize("batch_size", [1, 7, 60])
def test_a_window_of_window_results_counts_every_row(batch_size: int) -> None:
    rows = [{"k": i % 3, "t": BASE + i * 1000} for i in range(60)]
    flow = tdf.Flow("chain")
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    source = flow.source("src", tdf.io.MemorySource(rows, time="t", batch_size=batch_size), watermark=tdf.Monotonic())
    per_10s = source.key_by("k").window("w1", tdf.windows.tumbling("10s")).agg(n=pl.len())
    per_10s.key_by("k").window("w2", tdf.windows.tumbling("1h")).agg(total=pl.col("n").sum(), windows=pl.len()).sink(
        "out", out
    )
    flow.dead_letters().sink("dlq", dead)
    flow.run(handle_signals=False)
    assert dead.records == []  # nothing late: results flushed at the end keep the last real watermark
    assert sorted((r["k"], r["total"], r["windows"]) for r in out.records) == [(0, 20, 6), (1, 20, 6), (2, 20, 6)]


def test_a_window_after_sessions_counts_every_session() -> None:
    rows = [{"user": u, "t": BASE + start + i * 1000} for u in range(3) for start in (0, 60_000) for i in range(5)]
    rows.sort(key=lambda r: r["t"])
    flow = tdf.Flow("sessions-then-window")
    out = tdf.io.MemorySink()
    source = flow.source("src", tdf.io.MemorySource(rows, time="t", batch_size=4), watermark=tdf.Monotonic())
    sessions = source.key_by("user").window("sessions", tdf.windows.session("10s")).agg(clicks=pl.len())
    sessions.window("per-hour", tdf.windows.tumbling("1h")).agg(sessions=pl.len(), clicks=pl.col("clicks").sum()).sink(
        "out", out
    )
    flow.run(handle_signals=False)
    assert [(r["sessions"], r["clicks"]) for r in out.records] == [(6, 30)]


def test_processing_time_windows_count_rows_arriving_across_window_ends() -> None:
    """Rows arrive over several 50 ms windows of wall-clock time: every one is counted once."""

    def rows():  # type: ignore[no-untyped-def]
        for i in range(12):
            yield pl.DataFrame({"i": list(range(i * 100, i * 100 + 100))})
            boundary = (time.time() * 1000 // 50 + 1) * 50
            while time.time() * 1000 < boundary:  # processing time must pass a window end
                time.sleep(0.002)

    flow = tdf.Flow("processing-time")
    out = tdf.io.MemorySink()
    flow.source("src", tdf.io.IterableSource(rows(), linger="1ms")).window(
        "per-50ms", tdf.windows.tumbling("50ms"), time="processing"
    ).agg(n=pl.len()).sink("out", out)
    flow.run(handle_signals=False)
    counts = out.frame.get_column("n").to_list()
    assert sum(counts) == 1200 and len(counts) >= 6


def test_a_late_update_from_a_batch_whose_key_column_is_all_null_is_emitted() -> None:
    """A frame whose key column holds only nulls is typed Null; the late update must still find
    its window (it failed the step with a join SchemaError)."""
    frames = [
        pl.DataFrame({"ts": [1000], "k": [1]}),
        pl.DataFrame({"ts": [12000], "k": [2]}),
        pl.DataFrame({"ts": [2000], "k": [None]}),
    ]
    flow = tdf.Flow("null-key")
    source = flow.source(
        "s", tdf.io.MemorySource(frames, time="ts", batch_size=1), watermark=tdf.BoundedOutOfOrder("0s")
    )
    sink = tdf.io.MemorySink()
    windows = source.key_by("k").window("w", tdf.windows.tumbling("10s"), allowed_lateness="5s")
    windows.agg(n=pl.len()).sink("out", sink)
    flow.run(handle_signals=False)
    assert sorted(sink.records, key=lambda r: (r["window_start"], str(r["k"]))) == [
        {"k": 1, "window_start": 0, "window_end": 10000, "n": 1, "is_update": False},
        {"k": None, "window_start": 0, "window_end": 10000, "n": 1, "is_update": True},
        {"k": 2, "window_start": 10000, "window_end": 20000, "n": 1, "is_update": False},
    ]
