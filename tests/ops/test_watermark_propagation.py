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


def test_window_join_fires_when_an_upstream_filter_drops_the_record_that_moved_the_watermark() -> None:
    resume = threading.Event()

    def left_rows() -> Any:
        yield {"k": 1, "t": 1_000, "keep": True}
        yield {"k": 1, "t": 15_000, "keep": False}
        resume.wait(30)

    flow = tdf.Flow("wm-through-filter-join")
    wm = tdf.BoundedOutOfOrder("0s")
    left = flow.source("left", tdf.io.IterableSource(left_rows(), time="t", batch_size=1), watermark=wm)
    right = flow.source(
        "right", tdf.io.MemorySource([{"k": 1, "t": 2_000, "x": "r"}], time="t"), watermark=wm
    )  # ends at once: its watermark becomes +inf, so the left input decides
    out = tdf.io.MemorySink()
    left.filter("keep", pl.col("keep")).window_join("pairs", right, on="k", window="10s").sink("out", out)
    runner = FlowThread(flow)
    runner.start()
    wait_until(lambda: len(out) == 1, what="the window join to fire on the watermark alone")
    resume.set()
    runner.join(10)
    assert runner.error is None
    assert [(r["t"], r["t_right"], r["x"]) for r in out.records] == [(1_000, 2_000, "r")]


def test_a_join_fires_when_its_other_input_ends_after_the_watermark_moved() -> None:
    """End to end: the window closes although the left input sends nothing after its watermark
    moved (whichever of the two arrives first at the join: the unit test below pins the order)."""
    resume = threading.Event()
    left_passed = threading.Event()

    def left_rows() -> Any:
        yield {"k": 1, "t": 1_000}
        yield {"k": 1, "t": 15_000}
        resume.wait(30)

    def right_rows() -> Any:
        yield {"k": 1, "t": 2_000, "x": "r"}
        left_passed.wait(30)  # end only once the left side's watermark has gone by

    def mark(record: dict) -> dict:
        if record["t"] == 15_000:
            left_passed.set()
        return record

    flow = tdf.Flow("wm-on-end")
    wm = tdf.BoundedOutOfOrder("0s")
    left = flow.source("left", tdf.io.IterableSource(left_rows(), time="t", batch_size=1), watermark=wm)
    right = flow.source("right", tdf.io.IterableSource(right_rows(), time="t", batch_size=1), watermark=wm)
    out = tdf.io.MemorySink()
    left.map("mark", mark).window_join("pairs", right, on="k", window="10s").sink("out", out)
    runner = FlowThread(flow)
    runner.start()
    wait_until(lambda: len(out) == 1, what="the window join to fire when the right input ended")
    resume.set()
    runner.join(10)
    assert runner.error is None
    assert [(r["t"], r["t_right"], r["x"]) for r in out.records] == [(1_000, 2_000, "r")]


def test_the_end_of_an_input_releases_the_combined_watermark() -> None:
    from tideflow.record import WATERMARK, Batch
    from tideflow.runtime.local import InputWatermarks

    inputs = InputWatermarks(2)
    inputs.arrive(1, Batch(pl.DataFrame({"t": [2_000], WATERMARK: [0]}), None, 2_000))
    held = inputs.arrive(0, Batch(pl.DataFrame({"t": [15_000], WATERMARK: [1_000]}), None, 15_000))
    assert held.watermark == 2_000  # the right input holds the left one back
    assert inputs.end(1) == 15_000  # once it ends, the left input's watermark is the combined one
    assert inputs.end(0) is None  # all ended: the step finishes instead
