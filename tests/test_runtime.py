"""The embedded runtime: build-time checks, backpressure, stopping, failures, fusion."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest

import tideflow as tdf
from tideflow.runtime.plan import compile_stages

from .conftest import FlowThread, wait_until


def test_duplicate_step_names_fail_at_build_time() -> None:
    flow = tdf.Flow("dup")
    stream = flow.source("src", tdf.io.MemorySource([{"a": 1}]))
    stream.map("step", lambda r: r)
    with pytest.raises(tdf.FlowDefinitionError, match="already has a step named 'step'"):
        stream.filter("step", lambda r: True)


def test_bad_arguments_are_reported_when_the_flow_is_built() -> None:
    flow = tdf.Flow("bad")
    stream = flow.source("src", tdf.io.MemorySource([{"a": 1}]))
    with pytest.raises(tdf.FlowDefinitionError, match="expected a function"):
        stream.map("m", "not callable")  # type: ignore[arg-type]
    with pytest.raises(tdf.FlowDefinitionError, match="expected a tideflow sink"):
        stream.sink("s", object())  # type: ignore[arg-type]
    with pytest.raises(tdf.FlowDefinitionError, match="expected a tideflow source"):
        flow.source("s2", [{"a": 1}])  # type: ignore[arg-type]
    with pytest.raises(tdf.FlowDefinitionError, match="on_error"):
        stream.map("m2", lambda r: r, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(tdf.FlowDefinitionError, match="another flow"):
        stream.union("u", tdf.Flow("other").source("x", tdf.io.MemorySource([])))


def test_a_flow_without_sources_cannot_run() -> None:
    with pytest.raises(tdf.TideflowError, match="no source"):
        tdf.Flow("empty").run(handle_signals=False)


def test_stateless_steps_fuse_into_one_stage_and_fan_out_splits_stages() -> None:
    flow = tdf.Flow("plan")
    src = flow.source("src", tdf.io.MemorySource([{"a": 1}]))
    chained = src.filter("f", pl.col("a") > 0).with_columns("w", b=pl.col("a")).map("m", lambda r: r)
    chained.sink("out", tdf.io.MemorySink())
    chained.sink("out2", tdf.io.MemorySink())
    stages = compile_stages(flow)
    assert [[n.name for n in s.nodes] for s in stages] == [["src"], ["f", "w", "m"], ["out"], ["out2"]]
    ops = stages[1].operators()
    assert [type(op).__name__ for op in ops] == ["ExprChain", "RecordChain"]
    assert ops[0].steps == ["f", "w"]


class CountingSlowSink(tdf.io.Sink):
    """Deliberately slow: each write waits until the test lets it go."""

    def __init__(self) -> None:
        self.rows = 0
        self.gate = threading.Semaphore(0)

    def write(self, df: pl.DataFrame) -> None:
        self.gate.acquire()
        self.rows += df.height


def test_backpressure_bounds_what_the_source_reads_ahead_of_a_slow_sink() -> None:
    batch, queue_size, batches = 100, 2, 200
    produced = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal produced
        for i in range(batch * batches):
            produced += 1
            yield {"i": i}

    sink = CountingSlowSink()
    flow = tdf.Flow("bp")
    flow.source("src", tdf.io.IterableSource(records(), batch_size=batch)).map("m", lambda r: r).sink("slow", sink)
    runner = FlowThread(flow, queue_size=queue_size)
    runner.start()
    # Hold the sink: the pipeline fills its bounded channels, then the source must block.
    # Bound: 2 channels of queue_size batches + one batch in each of 3 workers + the source's
    # chunk being built + the prefetch buffer (2 batches) and the item its reader holds.
    bound = (2 * queue_size + 3 + 1 + 2) * batch + 1
    wait_until(lambda: produced >= bound - batch, what="the pipeline to fill up")
    highest = 0
    for released in range(batches):
        highest = max(highest, produced - sink.rows)
        assert produced - sink.rows <= bound, f"source ran {produced - sink.rows} records ahead"
        sink.gate.release()
        wait_until(lambda r=released: sink.rows >= (r + 1) * batch, what="the sink to take a batch")
    runner.join(10)
    assert runner.error is None
    assert sink.rows == batch * batches
    assert highest >= bound - 2 * batch  # the bound was actually approached: the test can fail


def test_stop_ends_an_unbounded_source_and_flushes_what_was_read() -> None:
    def forever() -> Iterator[dict[str, Any]]:
        i = 0
        while True:
            yield {"i": i}
            i += 1

    out = tdf.io.MemorySink()
    closed = threading.Event()

    class ClosingSink(tdf.io.MemorySink):
        def close(self) -> None:
            closed.set()

    flush_probe = ClosingSink()
    flow = tdf.Flow("stop")
    stream = flow.source("src", tdf.io.IterableSource(forever(), batch_size=50, linger="10ms"))
    stream.sink("out", out)
    stream.sink("probe", flush_probe)
    runner = FlowThread(flow)
    runner.start()
    wait_until(lambda: len(out) >= 500, what="records to flow")
    flow.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert runner.result is not None and runner.result.interrupted
    assert closed.is_set()
    # Every record read was delivered: the output is a gap-free prefix of the input.
    assert [r["i"] for r in out.records] == list(range(len(out)))
    assert runner.result.records_in == len(out) == len(flush_probe)


def test_a_failing_step_stops_every_thread_and_raises_in_the_caller() -> None:
    def forever() -> Iterator[dict[str, Any]]:
        i = 0
        while True:
            yield {"i": i}
            i += 1

    flow = tdf.Flow("boom", on_error="fail")
    (
        flow.source("src", tdf.io.IterableSource(forever(), batch_size=10))
        .map("explode-at-1000", lambda r: {"i": 1 // (r["i"] - 1000)})
        .sink("out", tdf.io.NullSink())
    )
    before = threading.active_count()
    with pytest.raises(tdf.StepError, match="explode-at-1000"):
        flow.run(handle_signals=False)
    wait_until(lambda: threading.active_count() <= before, what="worker threads to exit")


def test_an_exception_in_a_source_names_the_source() -> None:
    def broken() -> Iterator[dict[str, Any]]:
        yield {"a": 1}
        raise OSError("disk on fire")

    flow = tdf.Flow("src-fail")
    flow.source("reader", tdf.io.IterableSource(broken(), batch_size=1)).sink("out", tdf.io.NullSink())
    with pytest.raises(tdf.StepError, match="step 'reader' failed: OSError: disk on fire"):
        flow.run(handle_signals=False)


def test_run_result_counts_and_summary_fields() -> None:
    flow = tdf.Flow("counts")
    out = tdf.io.MemorySink()
    flow.source("src", tdf.io.MemorySource([{"v": i} for i in range(10)], batch_size=3)).filter(
        "big", pl.col("v") >= 4
    ).sink("out", out)
    result = flow.run(handle_signals=False)
    summary = result.to_dict()
    assert summary["records_in"] == 10
    assert summary["records_out"] == 6
    assert summary["dead_letters"] == 0
    assert summary["records_per_s"] > 0
    assert result.step("big").records_in == 10 and result.step("big").records_out == 6
    assert result.step("src").kind == "source"


def test_source_watermark_is_the_max_event_time_minus_the_delay() -> None:
    data = [{"t": t} for t in [1_000, 5_000, 3_000, 9_000, 2_000]]
    flow = tdf.Flow("wm")
    flow.source(
        "src", tdf.io.MemorySource(data, time="t", batch_size=2), watermark=tdf.BoundedOutOfOrder("2s")
    ).sink("out", tdf.io.NullSink())
    result = flow.run(handle_signals=False)
    assert result.step("src").watermark_ms == 9_000 - 2_000
