"""Processing-time windows fire on the wall clock, even while no data arrives."""

from __future__ import annotations

import threading
from typing import Any

import polars as pl

import tideflow as tdf

from ..conftest import FlowThread, wait_until


def test_processing_time_window_fires_while_the_input_is_silent() -> None:
    resume = threading.Event()

    def bursts() -> Any:
        yield from ({"k": "a", "v": i} for i in range(5))
        resume.wait(30)  # silence: only the clock can fire the first window now
        yield from ({"k": "a", "v": i} for i in range(5, 8))

    flow = tdf.Flow("ptime")
    stream = flow.source("src", tdf.io.IterableSource(bursts(), batch_size=100, linger="5ms"))
    out = tdf.io.MemorySink()
    stream.key_by("k").window("per-200ms", tdf.windows.tumbling("200ms"), time="processing").agg(
        n=pl.len(), total=pl.col("v").sum()
    ).sink("out", out)
    runner = FlowThread(flow)
    runner.start()
    wait_until(lambda: len(out) >= 1, what="the first window to fire without new data")
    first = out.records[0]
    resume.set()
    runner.join(10)
    assert runner.error is None
    assert (first["n"], first["total"]) == (5, 10)
    rows = out.records
    assert sum(r["n"] for r in rows) == 8
    assert not any(r["is_update"] for r in rows)
    assert out.frame.schema["window_start"] == pl.Datetime("ms", "UTC")
    assert all((r["window_end"] - r["window_start"]).total_seconds() == 0.2 for r in rows)


def test_processing_time_windows_need_no_watermark_and_reject_sessions() -> None:
    flow = tdf.Flow("ptime-rules")
    stream = flow.source("src", tdf.io.MemorySource([{"v": 1}]))
    stream.window("ok", tdf.windows.tumbling("1s"), time="processing").agg(n=pl.len())
    try:
        stream.window("bad", tdf.windows.session("1s"), time="processing")
    except tdf.FlowDefinitionError as error:
        assert "tumbling or sliding" in str(error)
    else:
        raise AssertionError("a processing-time session window was accepted")
