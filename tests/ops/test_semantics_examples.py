"""The worked examples of docs/semantics.md, exactly as written there."""

from __future__ import annotations

import polars as pl

import tideflow as tdf


def test_lateness_example_from_the_semantics_doc() -> None:
    seconds = [2, 4, 11, 7, 16, 8]
    flow = tdf.Flow("doc")
    source = tdf.io.MemorySource([{"k": "a", "t": s * 1000} for s in seconds], time="t", batch_size=1)
    stream = flow.source("src", source, watermark=tdf.BoundedOutOfOrder("0s"))
    windowed = stream.key_by("k").window("w", tdf.windows.tumbling("10s"), allowed_lateness="5s")
    out, late = tdf.io.MemorySink(), tdf.io.MemorySink()
    windowed.agg(n=pl.len()).sink("out", out)
    windowed.late().sink("late", late)
    flow.run(handle_signals=False)
    assert [(r["window_start"], r["n"], r["is_update"]) for r in out.records] == [
        (0, 2, False),  # fires after the record at 11 s
        (0, 3, True),  # the record at 7 s re-emits it
        (10_000, 2, False),  # at end of input
    ]
    assert [r["t"] for r in late.records] == [8_000]


def test_watermark_example_from_the_semantics_doc() -> None:
    strategy = tdf.BoundedOutOfOrder("2s")
    before, after = strategy.per_row(-(2**63), pl.Series([5_000, 3_000, 9_000, 1_000, 12_000]))
    assert before.to_list()[1:] == [3_000, 3_000, 7_000, 7_000]
    assert after == 10_000


def test_window_bounds_keep_the_time_column_type() -> None:
    from datetime import datetime, timedelta

    base = datetime(2026, 1, 1)
    flow = tdf.Flow("types")
    data = pl.DataFrame({"t": [base + timedelta(seconds=s) for s in (1, 4, 12)]}).with_columns(
        pl.col("t").cast(pl.Datetime("ms"))
    )
    stream = flow.source("src", tdf.io.MemorySource(data, time="t"), watermark=tdf.Monotonic())
    out = tdf.io.MemorySink()
    stream.window("w", tdf.windows.tumbling("10s")).agg(n=pl.len()).sink("out", out)
    flow.run(handle_signals=False)
    assert out.frame.schema["window_start"] == pl.Datetime("ms")
    assert out.frame["window_start"].to_list() == [base, base + timedelta(seconds=10)]
    assert out.frame["n"].to_list() == [2, 1]


def test_emit_updates_gives_early_results_then_the_same_final() -> None:
    def run(emit: str) -> list[dict]:
        flow = tdf.Flow(f"emit-{emit}")
        data = [{"k": "a", "t": t} for t in range(0, 9_000, 500)] + [{"k": "a", "t": 10_500}]
        stream = flow.source(
            "src", tdf.io.MemorySource(data, time="t", batch_size=4), watermark=tdf.BoundedOutOfOrder("0s")
        )
        out = tdf.io.MemorySink()
        stream.key_by("k").window("w", tdf.windows.tumbling("10s"), emit=emit, update_every=4).agg(n=pl.len()).sink(
            "out", out
        )
        flow.run(handle_signals=False)
        return out.records

    final_only = run("final")
    with_updates = run("updates")
    early = [r for r in with_updates if r["is_update"] and r["window_start"] == 0]
    assert [r["n"] for r in early] == [4, 8, 12, 16]  # one per 4 records, before the window closes
    finals = [(r["window_start"], r["n"]) for r in with_updates if not r["is_update"]]
    assert finals == [(r["window_start"], r["n"]) for r in final_only] == [(0, 18), (10_000, 1)]


def test_stateful_map_and_dedupe_through_the_stream_methods() -> None:
    flow = tdf.Flow("keyed")
    data = [
        {"host": h, "t": t}
        for h, t in [("a", 1_000), ("a", 1_500), ("b", 2_000), ("a", 9_000), ("b", 25_000), ("a", 30_000)]
    ]
    stream = flow.source("src", tdf.io.MemorySource(data, time="t"), watermark=tdf.BoundedOutOfOrder("0s"))
    unique = stream.dedupe("once-per-5s", key="host", within="5s")
    dropped = tdf.io.MemorySink()
    unique.duplicates().sink("dupes", dropped)

    def count(state: int | None, record: dict) -> tuple[int, dict]:
        seen = (state or 0) + 1
        return seen, {**record, "seen": seen}

    counted = tdf.io.MemorySink()
    unique.key_by("host").stateful_map("count", count, ttl="10s").sink("out", counted)
    flow.run(handle_signals=False)
    assert [r["t"] for r in dropped.records] == [1_500]
    # Host a's state, last updated at 9 s, expires at 19 s. The record of host b at 25 s moves
    # the watermark past it, so a's record at 30 s finds no state and counts from 1 again. b's
    # state (expiring at 12 s) was still alive when b's record came: the watermark was 9 s.
    assert [(r["host"], r["t"], r["seen"]) for r in counted.records] == [
        ("a", 1_000, 1),
        ("b", 2_000, 1),
        ("a", 9_000, 2),
        ("b", 25_000, 2),
        ("a", 30_000, 1),
    ]
