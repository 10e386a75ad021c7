"""A step that keeps no rows of a batch still moves the watermark on to the steps after it."""

from __future__ import annotations

import threading
from typing import Any

import polars as pl
import pytest

import tideflow as tdf

from ..conftest import FlowThread, wait_until


@pytest.mark.parametrize("across_stages", [False, True])
def test_window_fires_when_an_upstream_filter_drops_the_record_that_moved_the_watermark(across_stages: bool) -> None:
    resume = threading.Event()

    def readings() -> Any:
        yield {"t": 1_000, "keep": True}
        yield {"t": 15_000, "keep": False}  # dropped by the filter, but its time passes 10 s
        resume.wait(30)  # then silence: only the watermark can fire [0, 10 s)

    flow = tdf.Flow("wm-through-filter")
    stream = flow.source(
        "src", tdf.io.IterableSource(readings(), time="t", batch_size=1), watermark=tdf.BoundedOutOfOrder("0s")
    )
    kept = stream.filter("keep", pl.col("keep"))
    if across_stages:
        kept.sink("also", tdf.io.NullSink())  # a second consumer puts the window in its own stage
    out = tdf.io.MemorySink()
    kept.window("w", tdf.windows.tumbling("10s")).agg(n=pl.len()).sink("out", out)
    runner = FlowThread(flow)
    runner.start()
    wait_until(lambda: len(out) == 1, what="the window to fire on the watermark alone")
    resume.set()
    runner.join(10)
    assert runner.error is None
    assert [(r["window_start"], r["n"]) for r in out.records] == [(0, 1)]
