"""Per-row watermarks: what event-time operators see, whatever the batching and inputs."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.ops.base import Operator, StepContext
from tideflow.record import WATERMARK, Batch
from tideflow.time.watermarks import NO_WATERMARK


class RecordWatermarks(Operator):
    """Test operator: passes rows through, keeping (value, watermark before it) pairs; rows
    whose time is below their watermark go to the side output "late"."""

    requires_watermark = True
    seen: list[tuple[Any, int]]

    def __init__(self, step: str, seen: list[tuple[Any, int]]) -> None:
        super().__init__(step, "dlq")
        self.seen = seen

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.seen.extend(zip(df["v"].to_list(), df[WATERMARK].to_list(), strict=True))
        late = df["t"] < df[WATERMARK]
        self.emit_side("late", batch.with_df(df.filter(late)))
        return batch.with_df(df.filter(~late))


def run_recording(times: list[int], delay: int, batch_size: int) -> tuple[list[tuple[Any, int]], list[Any], list[Any]]:
    seen: list[tuple[Any, int]] = []
    flow = tdf.Flow("wm")
    stream = flow.source(
        "src",
        tdf.io.MemorySource([{"t": t, "v": i} for i, t in enumerate(times)], time="t", batch_size=batch_size),
        watermark=tdf.BoundedOutOfOrder(delay),
    )
    recorded = stream._operator("record", lambda: RecordWatermarks("record", seen), requires_watermark=True)
    on_time, late = tdf.io.MemorySink(), tdf.io.MemorySink()
    recorded.sink("on-time", on_time)
    recorded._side("late").sink("late-out", late)
    flow.run(handle_signals=False)
    return seen, [r["v"] for r in on_time.records], [r["v"] for r in late.records]


@settings(max_examples=50, deadline=None)
@given(
    times=st.lists(st.integers(0, 10_000), min_size=1, max_size=60),
    delay=st.integers(0, 3_000),
    batch_size=st.integers(1, 20),
)
def test_row_watermark_is_the_running_max_before_it_whatever_the_batching(
    times: list[int], delay: int, batch_size: int
) -> None:
    seen, on_time, late = run_recording(times, delay, batch_size)
    expected = []
    newest = None
    for i, t in enumerate(times):
        expected.append((i, NO_WATERMARK if newest is None else newest - delay))
        newest = t if newest is None else max(newest, t)
    assert seen == expected
    assert late == [i for i, (_, wm) in enumerate(expected) if times[i] < wm]
    assert sorted(on_time + late) == list(range(len(times)))


def test_a_late_side_output_without_a_consumer_becomes_dead_letters() -> None:
    seen: list[tuple[Any, int]] = []
    flow = tdf.Flow("unrouted")
    data = [{"t": t, "v": i} for i, t in enumerate([10_000, 1_000, 12_000])]
    stream = flow.source("src", tdf.io.MemorySource(data, time="t"), watermark=tdf.BoundedOutOfOrder("1s"))
    stream._operator("record", lambda: RecordWatermarks("record", seen), requires_watermark=True).sink(
        "out", tdf.io.NullSink()
    )
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 1
    assert "record.late()" in result.dead_letter_samples[0]["error"]


def test_event_time_steps_refuse_inputs_without_a_watermark() -> None:
    flow = tdf.Flow("no-wm")
    stream = flow.source("src", tdf.io.MemorySource([{"t": 1}], time="t"))
    with pytest.raises(tdf.FlowDefinitionError, match="no watermark"):
        stream._operator("needs-wm", lambda: RecordWatermarks("needs-wm", []), requires_watermark=True)


def test_map_keeps_the_row_watermarks() -> None:
    seen: list[tuple[Any, int]] = []
    flow = tdf.Flow("map-wm")
    data = [{"t": t, "v": i} for i, t in enumerate([5_000, 9_000, 7_000])]
    stream = flow.source("src", tdf.io.MemorySource(data, time="t", batch_size=3), watermark=tdf.Monotonic())
    mapped = stream.map("touch", lambda r: {**r, "v": r["v"] * 10})
    mapped._operator("record", lambda: RecordWatermarks("record", seen), requires_watermark=True).sink(
        "out", tdf.io.NullSink()
    )
    flow.run(handle_signals=False)
    assert seen == [(0, NO_WATERMARK), (10, 5_000), (20, 9_000)]


def test_union_watermark_is_the_minimum_of_its_inputs() -> None:
    seen: list[tuple[Any, int]] = []
    flow = tdf.Flow("union-wm")
    fast = flow.source(
        "fast", tdf.io.MemorySource([{"t": 50_000, "v": "fast"}], time="t"), watermark=tdf.Monotonic()
    )
    slow = flow.source(
        "slow", tdf.io.MemorySource([{"t": 1_000, "v": "slow"}], time="t"), watermark=tdf.Monotonic()
    )
    merged = fast.union("both", slow)
    merged._operator("record", lambda: RecordWatermarks("record", seen), requires_watermark=True).sink(
        "out", tdf.io.NullSink()
    )
    flow.run(handle_signals=False)
    # Whichever input arrives second, its row sees at most the other input's watermark, and the
    # slow input's record is never judged against the fast input's 50 s.
    assert dict(seen)["slow"] <= 1_000
    assert all(wm <= 50_000 for _, wm in seen)


def test_union_ignores_an_idle_input() -> None:
    from tideflow.record import Batch as B
    from tideflow.runtime.local import InputWatermarks

    inputs = InputWatermarks(2)
    first = B(pl.DataFrame({WATERMARK: [100]}), watermark=100, idle_ms=0)
    out = inputs.arrive(0, first)
    assert out.watermark == NO_WATERMARK  # input 1 has said nothing, and has no idle timeout yet
    inputs.idle_ms[1] = 0  # input 1 declared idle after 0 ms of silence
    second = inputs.arrive(0, B(pl.DataFrame({WATERMARK: [200]}), watermark=200, idle_ms=0))
    assert second.watermark == 200
    inputs.end(1)
    assert inputs.arrive(0, B(pl.DataFrame({WATERMARK: [300]}), watermark=300)).watermark == 300
