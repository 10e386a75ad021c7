"""Window state survives a snapshot and a restore into a fresh operator: the results of a run
interrupted at any batch equal those of the uninterrupted run (the basis of checkpoints)."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.deadletters import DeadLetters
from tideflow.ops.base import StepContext

from .test_dedupe import make_batches, visible


def window_operator(assigner: Any, lateness: int, emit: str = "final") -> Any:
    """The operator a flow would build for a keyed window step."""
    flow = tdf.Flow("w")
    source = flow.source("src", tdf.io.MemorySource([{"t": 0, "k": 0, "v": 0}], time="t"), watermark=tdf.Monotonic())
    source.key_by("k").window("w", assigner, allowed_lateness=lateness, emit=emit).agg(
        n=pl.len(), total=pl.col("v").sum(), top=pl.col("v").max()
    )
    return flow.nodes["w"].params["factory"]


def run(factory: Any, batches: list, cut: int | None) -> tuple[list[dict], list[dict]]:
    ctx = StepContext(DeadLetters())
    op = factory()
    out: list[dict] = []
    late: list[dict] = []
    for number, batch in enumerate(batches):
        if number == cut:
            saved = op.snapshot()
            op = factory()
            op.restore(saved)
            assert op.snapshot() == saved
        result = op.process(batch, ctx)
        if result is not None:
            out.extend(visible(result.df))
        late.extend(r for b in op.side_outputs.pop("late", []) for r in visible(b.df))
    result = op.finish(ctx)
    if result is not None:
        out.extend(visible(result.df))
    return out, late


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 2)), min_size=1, max_size=80),
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 5_000]),
    shape=st.sampled_from([(10_000, 10_000), (10_000, 2_500)]),
    emit=st.sampled_from(["final", "updates"]),
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    cut=st.integers(0, 20),
)
def test_a_restored_window_gives_the_results_of_an_uninterrupted_one(  # type: ignore[no-untyped-def]
    rows, delay, lateness, shape, emit, sizes, cut
) -> None:
    size, every = shape
    assigner = tdf.windows.tumbling(size) if size == every else tdf.windows.sliding(size, every)
    factory = window_operator(assigner, lateness, emit)
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    batches = make_batches(records, delay, sizes)
    assert run(factory, batches, min(cut, len(batches))) == run(factory, batches, None)


def test_restore_refuses_another_steps_snapshot() -> None:
    op = window_operator(tdf.windows.tumbling("10s"), 0)()
    with pytest.raises(ValueError, match="not a window snapshot"):
        op.restore({"kind": "dedupe", "version": 1})


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 2)), min_size=1, max_size=80),
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 5_000]),
    gap=st.sampled_from([1_000, 4_000]),
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    cut=st.integers(0, 20),
)
def test_a_restored_session_window_gives_the_results_of_an_uninterrupted_one(  # type: ignore[no-untyped-def]
    rows, delay, lateness, gap, sizes, cut
) -> None:
    factory = window_operator(tdf.windows.session(gap), lateness)
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    batches = make_batches(records, delay, sizes)
    assert run(factory, batches, min(cut, len(batches))) == run(factory, batches, None)
