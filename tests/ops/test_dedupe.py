"""Event-time dedupe, checked against a record-by-record oracle of the rule in ops/keyed.py."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.deadletters import DeadLetters
from tideflow.ops import keyed
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.keyed import Dedupe
from tideflow.record import POSITION, Batch, Origin
from tideflow.time.watermarks import NO_WATERMARK, event_time_ms

Record = dict[str, Any]


# -- the oracle ---------------------------------------------------------------------------------
def oracle(
    records: list[Record], key: Callable[[Record], Hashable], within: int, delay: int
) -> tuple[list[Record], list[Record], dict[Hashable, int]]:
    """The documented rule, one record at a time, with the watermark advanced after each record.

    Returns (kept, duplicates, anchors that are live once the last record's watermark holds)."""
    anchors: dict[Hashable, int] = {}
    kept: list[Record] = []
    dups: list[Record] = []
    newest: int | None = None
    for record in records:
        w = NO_WATERMARK if newest is None else newest - delay
        k, t = key(record), record["t"]
        a = anchors.get(k)
        if a is not None and w < a + within and t < a + within:
            dups.append(record)
        else:
            anchors[k] = t
            kept.append(record)
        newest = t if newest is None else max(newest, t)
    w = NO_WATERMARK if newest is None else newest - delay
    return kept, dups, {k: a for k, a in anchors.items() if w < a + within}


def live_after(records: list[Record], key: Callable[[Record], Hashable], within: int, delay: int) -> int:
    return len(oracle(records, key, within, delay)[2])


# -- running it ---------------------------------------------------------------------------------
def capture(stream: tdf.Stream) -> list[Operator]:
    """Record the operator the runtime builds for ``stream``'s step (to read its state after)."""
    built: list[Operator] = []
    factory = stream.node.params["factory"]
    stream.node.params["factory"] = lambda: built.append(factory()) or built[-1]
    return built


def run_flow(
    records: list[Record], *, key: str | list[str], within: Any, delay: int, batch_size: int, route: bool = True
) -> tuple[list[Record], list[Record], tdf.RunResult, Dedupe]:
    flow = tdf.Flow("dedupe")
    stream = flow.source(
        "src",
        tdf.io.MemorySource(records, time="t", batch_size=batch_size),
        watermark=tdf.BoundedOutOfOrder(delay),
    )
    deduped = keyed.dedupe(stream, "dedupe", key=key, within=within)
    built = capture(deduped)
    out, dups = tdf.io.MemorySink(), tdf.io.MemorySink()
    deduped.sink("out", out)
    if route:
        keyed.duplicates(deduped).sink("dups", dups)
    result = flow.run(handle_signals=False)
    op = built[0]
    assert isinstance(op, Dedupe)
    return out.records, dups.records, result, op


def make_batches(records: list[Record], delay: int, sizes: list[int]) -> list[Batch]:
    """Cut ``records`` into batches of the given sizes (cycled), with per-row watermarks as the
    source computes them."""
    strategy = tdf.BoundedOutOfOrder(delay)
    origin = Origin("src")
    current = NO_WATERMARK
    batches: list[Batch] = []
    start = 0
    turn = 0
    while start < len(records):
        size = sizes[turn % len(sizes)]
        turn += 1
        chunk = records[start : start + size]
        df = pl.DataFrame(chunk).with_columns(pl.int_range(start, start + len(chunk), dtype=pl.Int64).alias(POSITION))
        start += len(chunk)
        before, current = strategy.per_row(current, event_time_ms(df.get_column("t")))
        batches.append(Batch(df.hstack([before]), origin, current))
    return batches


def visible(df: pl.DataFrame) -> list[Record]:
    return df.select([c for c in df.columns if not c.startswith("_tf_")]).to_dicts()


def by_key(record: Record) -> Hashable:
    return record["k"]


def by_pair(record: Record) -> Hashable:
    return (record["k"], record["g"])


# -- properties ---------------------------------------------------------------------------------
events = st.lists(
    st.tuples(st.integers(0, 3_000), st.integers(0, 5), st.sampled_from(["x", "y", None])),
    min_size=0,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(
    rows=events,
    within=st.integers(1, 800),
    delay=st.integers(0, 1_000),
    batch_size=st.integers(1, 30),
)
def test_flow_matches_the_oracle_whatever_the_batch_size(
    rows: list[tuple[int, int, str | None]], within: int, delay: int, batch_size: int
) -> None:
    records = [{"t": t, "k": k, "g": g, "v": i} for i, (t, k, g) in enumerate(rows)]
    kept, dups, _ = oracle(records, by_pair, within, delay)
    out, dropped, result, op = run_flow(records, key=["k", "g"], within=within, delay=delay, batch_size=batch_size)
    if not records:
        return
    assert out == kept
    assert dropped == dups
    assert op.duplicates == len(dups)
    assert result.dead_letters == 0
    assert op.state_size() == 0  # end of input: the watermark is +inf, every anchor is freed
    assert len(op.index) == 0


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 3)), max_size=120),
    within=st.integers(1, 600),
    delay=st.integers(0, 600),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    cut=st.integers(0, 200),
)
def test_operator_state_is_freed_as_the_watermark_passes_and_snapshots_round_trip(
    rows: list[tuple[int, int]], within: int, delay: int, sizes: list[int], cut: int
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    kept, dups, _ = oracle(records, by_key, within, delay)
    batches = make_batches(records, delay, sizes)
    ctx = StepContext(DeadLetters())
    op = Dedupe("dedupe", ["k"], within_ms=within, time="t")
    out: list[Record] = []
    dropped: list[Record] = []
    seen = 0
    cut = min(cut, len(batches))
    for number, batch in enumerate(batches):
        if number == cut:
            # A checkpoint and a restart: a fresh operator restored from the snapshot goes on.
            saved = op.snapshot()
            op = Dedupe("dedupe", ["k"], within_ms=within, time="t")
            op.restore(saved)
            assert op.snapshot() == saved
        result = op.process(batch, ctx)
        if result is not None:
            out.extend(visible(result.df))
        # Side outputs are drained after each batch, as the runtime does (the operator before the
        # restart took its duplicates with it otherwise: the test's own bug, found by hypothesis).
        dropped.extend(r for port in op.side_outputs.pop("duplicates", []) for r in visible(port.df))
        seen += batch.df.height
        # After each batch exactly the live anchors remain: freed as the watermark passes them.
        assert op.state_size() == live_after(records[:seen], by_key, within, delay)
    assert out == kept
    assert dropped == dups
    op.finish(ctx)
    assert op.state_size() == 0
    assert ctx.dead_letters.total == 0


# -- the rule, case by case ---------------------------------------------------------------------
def test_the_rule_on_a_worked_example() -> None:
    # within 10 ms, watermark delay 100 ms (so nothing here is late and no anchor dies early).
    times = [1_000, 1_005, 1_009, 1_010, 995, 1_019, 1_020, 800]
    records = [{"t": t, "k": "a", "v": i} for i, t in enumerate(times)]
    out, dups, _, op = run_flow(records, key="k", within=10, delay=100, batch_size=3)
    # 1000 kept (anchor 1000); 1005, 1009 inside [.., 1010): dropped; 1010 kept (anchor 1010);
    # 995 is older than the kept record while it lives: dropped; 1019 dropped; 1020 kept; 800 dropped.
    assert [r["t"] for r in out] == [1_000, 1_010, 1_020]
    assert [r["t"] for r in dups] == [1_005, 1_009, 995, 1_019, 800]
    assert op.duplicates == 5


def test_a_dead_anchor_does_not_drop_a_late_record() -> None:
    # delay 0: after t=2000 the watermark is 2000 >= 1000 + 50, so key a's anchor has died and a
    # late a@1010 is kept. Its own anchor (dead at 1060) is dead on arrival too, so a@1020 is
    # kept as well: once the watermark has passed them, late records are not deduplicated.
    records = [{"t": 1_000, "k": "a"}, {"t": 2_000, "k": "b"}, {"t": 1_010, "k": "a"}, {"t": 1_020, "k": "a"}]
    for batch_size in (1, 2, 4):
        out, dups, _, _ = run_flow(records, key="k", within=50, delay=0, batch_size=batch_size)
        assert [(r["k"], r["t"]) for r in out] == [("a", 1_000), ("b", 2_000), ("a", 1_010), ("a", 1_020)]
        assert dups == []
    # With a delay of 1 s the anchor of a@1000 still lives (watermark 1000 < 1050): both dropped.
    out, dups, _, _ = run_flow(records, key="k", within=50, delay=1_000, batch_size=1)
    assert [(r["k"], r["t"]) for r in out] == [("a", 1_000), ("b", 2_000)]
    assert [(r["k"], r["t"]) for r in dups] == [("a", 1_010), ("a", 1_020)]


def test_int_string_and_tuple_keys_and_datetimes() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        {"t": start + timedelta(seconds=s), "user": u, "page": p}
        for s, u, p in [(0, 1, "a"), (1, 1, "a"), (2, 1, "b"), (3, 2, "a"), (70, 1, "a"), (71, 2, "a")]
    ]
    by_user, _, _, _ = run_flow(records, key="user", within="1m", delay=5, batch_size=4)
    assert [(r["user"], r["page"]) for r in by_user] == [(1, "a"), (2, "a"), (1, "a"), (2, "a")]
    by_both, dups, _, _ = run_flow(records, key=["user", "page"], within=timedelta(minutes=1), delay=5, batch_size=4)
    assert [(r["user"], r["page"]) for r in by_both] == [(1, "a"), (1, "b"), (2, "a"), (1, "a"), (2, "a")]
    assert [(r["user"], r["page"], r["t"].second) for r in dups] == [(1, "a", 1)]


def test_float_keys_compare_as_polars_does_nan_and_signed_zero_included() -> None:
    keys = [math.nan, 0.0, -0.0, math.nan, None, None, 1.5, float("nan")]
    records = [{"t": 100 + i, "k": k, "v": i} for i, k in enumerate(keys)]

    def normal(record: Record) -> Hashable:
        k = record["k"]
        return "nan" if isinstance(k, float) and k != k else k  # 0.0 == -0.0 in Python already

    kept, dups, _ = oracle(records, normal, 1_000, 1_000)
    assert [r["v"] for r in kept] == [0, 1, 4, 6]
    for size in (1, 3, 8):
        batches = make_batches(records, 1_000, [size])
        op, ctx = Dedupe("d", ["k"], within_ms=1_000, time="t"), StepContext(DeadLetters())
        out = [r["v"] for b in batches if (res := op.process(b, ctx)) is not None for r in visible(res.df)]
        assert out == [0, 1, 4, 6]
        assert op.duplicates == len(dups)


def test_repeats_inside_one_batch_that_move_the_anchor() -> None:
    # One batch, one key, anchors moving three times inside it: the record-by-record path.
    times = [0, 5, 10, 12, 25, 26, 31, 3]
    records = [{"t": t, "k": "a", "v": i} for i, t in enumerate(times)]
    kept, _, _ = oracle(records, by_key, 10, 1_000)
    assert [r["t"] for r in kept] == [0, 10, 25]
    op, ctx = Dedupe("d", ["k"], within_ms=10, time="t"), StepContext(DeadLetters())
    (batch,) = make_batches(records, 1_000, [len(records)])
    result = op.process(batch, ctx)
    assert result is not None
    assert [r["t"] for r in visible(result.df)] == [0, 10, 25]
    assert op.anchors == {"a": 25}


# -- output shape, accounting and errors --------------------------------------------------------
def test_hidden_columns_stay_on_kept_and_dropped_rows() -> None:
    records = [{"t": 10, "k": 1}, {"t": 11, "k": 1}, {"t": 12, "k": 2}]
    (batch,) = make_batches(records, 5, [3])
    op, ctx = Dedupe("d", ["k"], within_ms=100, time="t"), StepContext(DeadLetters())
    result = op.process(batch, ctx)
    assert result is not None
    assert result.df.get_column(POSITION).to_list() == [0, 2]
    assert result.watermark == batch.watermark
    (side,) = op.side_outputs["duplicates"]
    assert side.df.get_column(POSITION).to_list() == [1]
    assert "_tf_wm" in side.df.columns
    assert op.records_in == 3 and op.records_out == 2


def test_unrouted_duplicates_are_counted_in_the_run_result_not_dead_lettered() -> None:
    records = [{"t": 10, "k": 1}, {"t": 11, "k": 1}, {"t": 12, "k": 1}]
    out, _, result, op = run_flow(records, key="k", within=100, delay=0, batch_size=2, route=False)
    assert len(out) == 1
    assert op.duplicates == 2
    assert result.dead_letters == 0  # dropping duplicates is the step's job, not an error
    stats = [s for s in result.steps if s.dropped]
    assert [(s.kind, s.dropped) for s in stats] == [("op", {"duplicates": 2})]


def test_rows_without_event_time_or_key_column_are_dead_letters() -> None:
    ctx = StepContext(DeadLetters())
    op = Dedupe("d", ["k"], within_ms=100, time="t")
    df = pl.DataFrame(
        {"t": [10, None, 12], "k": [1, 1, 1], "_tf_wm": [NO_WATERMARK] * 3}, schema_overrides={"t": pl.Int64}
    )
    result = op.process(Batch(df, Origin("src"), 12), ctx)
    assert result is not None and result.df.height == 1
    assert op.duplicates == 1
    assert ctx.dead_letters.total == 1
    assert "no event time" in ctx.dead_letters.kept[0]["error"]
    missing = pl.DataFrame({"t": [20], "_tf_wm": [12]})
    assert op.process(Batch(missing, Origin("src"), 20), ctx) is None
    assert ctx.dead_letters.total == 2
    with pytest.raises(tdf.StepError, match="'d'"):
        Dedupe("d", ["k"], within_ms=100, time="t", on_error="fail").process(Batch(missing, Origin("src"), 20), ctx)


def test_dedupe_needs_a_watermark_a_key_and_a_positive_within() -> None:
    flow = tdf.Flow("bad")
    plain = flow.source("plain", tdf.io.MemorySource([{"t": 1, "k": 1}], time="t"))
    with pytest.raises(tdf.FlowDefinitionError, match="no watermark"):
        keyed.dedupe(plain, "d1", key="k", within="1s")
    timed = flow.source("timed", tdf.io.MemorySource([{"t": 1, "k": 1}], time="t"), watermark=tdf.Monotonic())
    with pytest.raises(tdf.FlowDefinitionError, match="needs key="):
        keyed.dedupe(timed, "d2", within="1s")
    with pytest.raises(tdf.FlowDefinitionError, match="positive"):
        keyed.dedupe(timed, "d3", key="k", within=0)
    with pytest.raises(tdf.FlowDefinitionError, match="not a duration"):
        keyed.dedupe(timed, "d4", key="k", within="soon")
    with pytest.raises(tdf.FlowDefinitionError, match="column name"):
        keyed.dedupe(timed, "d5", key=[], within="1s")
    # The stream's key_by columns are the default key.
    keyed.dedupe(timed.key_by("k"), "d6", within="1s")


def test_restore_refuses_another_operators_snapshot() -> None:
    op = Dedupe("d", ["k"], within_ms=10, time="t")
    with pytest.raises(ValueError, match="not a dedupe snapshot"):
        op.restore({"kind": "stateful_map", "version": 1})
