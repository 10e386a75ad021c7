"""Event-time joins against oracles written in DuckDB SQL, for any batching and interleaving.

The operators are driven directly (no threads), so hypothesis controls everything: batch sizes
of each input, the order in which the two inputs' batches arrive, and the disorder of event
times. Watermarks are computed exactly as the runtime does (``BoundedOutOfOrder.per_row`` per
source, ``InputWatermarks`` for the minimum over the two inputs).

Exactness: whatever arrives late is set aside, and the on-time rows join as a batch join over
all on-time rows would. With a watermark delay at least the disorder of the input, no row is
late and the output is defined by the content alone.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.deadletters import DeadLetters
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.join import (
    IntervalJoin,
    JoinOperator,
    TemporalJoin,
    WindowJoin,
    interval_join,
    temporal_join,
    window_join,
)
from tideflow.record import WATERMARK, Batch, Origin, strip_hidden
from tideflow.runtime.local import InputWatermarks
from tideflow.time.watermarks import BoundedOutOfOrder

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["k"]
TIMES = ("t", "t")


# -- harness ----------------------------------------------------------------------------------
@dataclass
class Run:
    out: pl.DataFrame
    late: pl.DataFrame
    """Late rows of both inputs, with a column ``side`` (0 left, 1 right)."""
    arrived: list[Batch] = field(default_factory=list)
    """Every batch as the operator got it (with the combined per-row watermark)."""
    sizes: list[int] = field(default_factory=list)
    """``state_size()`` after each batch."""
    op: Operator | None = None


def frames(rows: pl.DataFrame, sizes: list[int], delay: int, side: int) -> list[Batch]:
    """Cut ``rows`` into batches with per-row watermarks, as a source with ``delay`` would."""
    strategy = BoundedOutOfOrder(delay)
    origin = Origin(f"src{side}")
    batches, start, current, i = [], 0, -(2**63), 0
    while start < rows.height:
        size = sizes[i % len(sizes)] if sizes else rows.height
        part = rows.slice(start, size)
        before, current = strategy.per_row(current, part.get_column("t").cast(pl.Int64))
        batches.append(Batch(part.hstack([before]), origin, current))
        start += size
        i += 1
    return batches


def drive(
    make: Any,
    left: pl.DataFrame,
    right: pl.DataFrame,
    *,
    delays: tuple[int, int],
    sizes: tuple[list[int], list[int]],
    order: list[bool],
    swap_at: int | None = None,
) -> Run:
    """Feed both inputs to ``make()`` in the interleaving ``order`` (True: left next).

    ``swap_at``: after that many batches, snapshot the operator, pickle the snapshot, and go on
    with a fresh operator restored from it (a checkpoint and a restart)."""
    op = make()
    ctx = StepContext(DeadLetters())
    queues = [frames(left, sizes[0], delays[0], 0), frames(right, sizes[1], delays[1], 1)]
    inputs = InputWatermarks(2)
    for side in (0, 1):
        if not queues[side]:
            inputs.end(side)
    outs: list[pl.DataFrame] = []
    late: list[pl.DataFrame] = []
    run = Run(pl.DataFrame(), pl.DataFrame())
    step = 0

    def collect(result: Batch | None) -> None:
        if result is not None:
            outs.append(result.df)
        for port, batches in op.side_outputs.items():
            for b in batches:
                late.append(b.df.with_columns(pl.lit(0 if port == "late" else 1).alias("side")))
        op.side_outputs = {}

    while queues[0] or queues[1]:
        pick = order[step % len(order)] if order else True
        side = 0 if (pick and queues[0]) or not queues[1] else 1
        batch = inputs.arrive(side, queues[side].pop(0))
        if not queues[side]:
            inputs.end(side)
        run.arrived.append(batch)
        collect(op.process(batch, ctx))
        run.sizes.append(op.state_size())
        step += 1
        if swap_at is not None and step == swap_at:
            state = pickle.loads(pickle.dumps(op.snapshot()))
            op = make()
            op.restore(state)
    collect(op.finish(ctx))
    assert ctx.dead_letters.total == 0
    run.out = pl.concat(outs, how="diagonal_relaxed") if outs else pl.DataFrame()
    run.late = pl.concat(late, how="diagonal_relaxed") if late else pl.DataFrame()
    run.op = op
    return run


def rows_of(df: pl.DataFrame, columns: list[str]) -> list[tuple[Any, ...]]:
    """Sorted rows; columns absent are null (a left join before any right row came has no
    right columns to fill: streams carry no schema before their first batch)."""
    if df.height == 0:
        return []
    return sorted(df.select(pl.col(c) if c in df.columns else pl.lit(None).alias(c) for c in columns).rows(), key=repr)


def sql(query: str, **tables: pl.DataFrame) -> pl.DataFrame:
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table.to_arrow())
    return pl.from_arrow(con.sql(query).to_arrow_table())  # type: ignore[return-value]


def assert_on_time_downstream(out: pl.DataFrame, time: str) -> None:
    """No result is late for the next event-time step: each row's time is at or after the
    watermark stamped before it, and the stamps never go back."""
    if out.height:
        assert out.filter(pl.col(time) < pl.col(WATERMARK)).height == 0
        assert out.get_column(WATERMARK).is_sorted()


def late_ids(run: Run, side: int) -> set[int]:
    if run.late.height == 0:
        return set()
    return set(run.late.filter(pl.col("side") == side).get_column("id").to_list())


def on_time(df: pl.DataFrame, late: set[int]) -> pl.DataFrame:
    return df.filter(~pl.col("id").is_in(pl.Series(sorted(late), dtype=pl.Int64).implode()))


def arrived_rows(run: Run, side: int) -> pl.DataFrame:
    """Every row of one input as it arrived, with the combined watermark before it."""
    parts = [b.df for b in run.arrived if b.input == side]
    return pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.Int64, "t": pl.Int64, WATERMARK: pl.Int64})


# -- data -------------------------------------------------------------------------------------
@st.composite
def ordered_side(draw: st.DrawFn, disorder: int, first_id: int, keys: int, max_n: int = 40) -> pl.DataFrame:
    """Rows whose times are out of order by at most ``disorder``: a delay of ``disorder``
    makes none of them late."""
    n = draw(st.integers(0, max_n))
    gaps = draw(st.lists(st.integers(0, 400), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(0, disorder), min_size=n, max_size=n))
    ks = draw(st.lists(st.integers(0, keys - 1), min_size=n, max_size=n))
    base, times = 0, []
    for gap, j in zip(gaps, jitter, strict=True):
        base += gap
        times.append(base + j)
    return pl.DataFrame(
        {"k": ks, "t": times, "id": list(range(first_id, first_id + n)), "v": [f"v{i}" for i in range(n)]},
        schema={"k": pl.Int64, "t": pl.Int64, "id": pl.Int64, "v": pl.String},
    )


@st.composite
def random_side(draw: st.DrawFn, first_id: int, keys: int, max_n: int = 40) -> pl.DataFrame:
    """Rows in any time order (for lateness)."""
    n = draw(st.integers(0, max_n))
    times = draw(st.lists(st.integers(0, 5_000), min_size=n, max_size=n))
    ks = draw(st.lists(st.integers(0, keys - 1), min_size=n, max_size=n))
    return pl.DataFrame(
        {"k": ks, "t": times, "id": list(range(first_id, first_id + n)), "v": [f"v{i}" for i in range(n)]},
        schema={"k": pl.Int64, "t": pl.Int64, "id": pl.Int64, "v": pl.String},
    )


@st.composite
def exact_case(draw: st.DrawFn) -> dict[str, Any]:
    """Two inputs, each out of order by at most its watermark delay: nothing is late."""
    keys = draw(st.integers(1, 5))
    d0, d1 = draw(st.integers(0, 1_500)), draw(st.integers(0, 1_500))
    return {
        "left": draw(ordered_side(d0, 0, keys)),
        "right": draw(ordered_side(d1, 1_000, keys)),
        "delays": (d0, d1),
        "sizes": (
            draw(st.lists(st.integers(1, 12), min_size=1, max_size=4)),
            draw(st.lists(st.integers(1, 12), min_size=1, max_size=4)),
        ),
        "order": draw(st.lists(st.booleans(), min_size=1, max_size=12)),
    }


@st.composite
def late_case(draw: st.DrawFn) -> dict[str, Any]:
    """Two inputs in random time order with tiny delays: many rows are late."""
    keys = draw(st.integers(1, 4))
    return {
        "left": draw(random_side(0, keys)),
        "right": draw(random_side(1_000, keys)),
        "delays": (draw(st.integers(0, 300)), draw(st.integers(0, 300))),
        "sizes": (
            draw(st.lists(st.integers(1, 12), min_size=1, max_size=4)),
            draw(st.lists(st.integers(1, 12), min_size=1, max_size=4)),
        ),
        "order": draw(st.lists(st.booleans(), min_size=1, max_size=12)),
    }


def run_case(make: Any, case: dict[str, Any], **extra: Any) -> Run:
    return drive(
        make, case["left"], case["right"], delays=case["delays"], sizes=case["sizes"], order=case["order"], **extra
    )


# -- oracles (DuckDB) -------------------------------------------------------------------------
OUT = ["k", "t", "id", "v", "t_right", "id_right", "v_right"]


def window_oracle(left: pl.DataFrame, right: pl.DataFrame, size: int, how: str) -> pl.DataFrame:
    join = "LEFT JOIN" if how == "left" else "JOIN"
    return sql(
        f"""
        SELECT l.k, l.t, l.id, l.v, r.t AS t_right, r.id AS id_right, r.v AS v_right,
               CAST(floor(l.t / {size}) * {size} AS BIGINT) AS window_start,
               CAST(floor(l.t / {size}) * {size} + {size} AS BIGINT) AS window_end
        FROM l {join} r ON l.k = r.k AND floor(l.t / {size}) = floor(r.t / {size})
        """,
        l=left,
        r=right,
    )


def interval_oracle(left: pl.DataFrame, right: pl.DataFrame, lower: int, upper: int, how: str) -> pl.DataFrame:
    join = "LEFT JOIN" if how == "left" else "JOIN"
    return sql(
        f"""
        SELECT l.k, l.t, l.id, l.v, r.t AS t_right, r.id AS id_right, r.v AS v_right
        FROM l {join} r ON l.k = r.k AND r.t BETWEEN l.t - {lower} AND l.t + {upper}
        """,
        l=left,
        r=right,
    )


def temporal_oracle(stream: pl.DataFrame, table: pl.DataFrame, ttl: int | None, how: str) -> pl.DataFrame:
    fresh = "rt IS NOT NULL" if ttl is None else f"t - rt <= {ttl}"
    out = sql(
        f"""
        WITH j AS (
            SELECT s.k, s.t, s.id, s.v, r.t AS rt, r.id AS rid, r.v AS rv
            FROM s ASOF LEFT JOIN r ON s.k = r.k AND s.t >= r.t
        )
        SELECT k, t, id, v, CASE WHEN {fresh} THEN rt END AS t_right,
               CASE WHEN {fresh} THEN rid END AS id_right, CASE WHEN {fresh} THEN rv END AS v_right
        FROM j
        """,
        s=stream,
        r=table,
    )
    return out.filter(pl.col("id_right").is_not_null()) if how == "inner" else out


def unique_versions(table: pl.DataFrame) -> pl.DataFrame:
    """One table version per (key, time): with ties the as-of result would depend on arrival."""
    return table.unique(subset=["k", "t"], keep="first", maintain_order=True)


# -- window join ------------------------------------------------------------------------------
def make_window(size: int, how: str) -> Any:
    return lambda: WindowJoin("wj", on=KEYS, times=TIMES, size_ms=size, how=how, on_error="fail")  # type: ignore[arg-type]


@SETTINGS
@given(case=exact_case(), size=st.integers(1, 2_000), how=st.sampled_from(["inner", "left"]))
def test_window_join_equals_sql_whatever_the_batching(case: dict[str, Any], size: int, how: str) -> None:
    run = run_case(make_window(size, how), case)
    assert run.late.height == 0
    expected = window_oracle(case["left"], case["right"], size, how)
    columns = [*OUT, "window_start", "window_end"]
    assert rows_of(run.out, columns) == rows_of(expected, columns)
    assert_on_time_downstream(run.out, "window_end")
    assert run.op is not None and run.op.state_size() == 0


@SETTINGS
@given(case=late_case(), size=st.integers(1, 1_500), how=st.sampled_from(["inner", "left"]))
def test_window_join_late_rows_are_set_aside_and_the_rest_is_exact(case: dict[str, Any], size: int, how: str) -> None:
    run = run_case(make_window(size, how), case)
    for side, frame in ((0, case["left"]), (1, case["right"])):
        arrived = arrived_rows(run, side)
        ends = pl.col("t") // size * size + size
        expected = arrived.filter(ends <= pl.col(WATERMARK)).get_column("id").to_list() if frame.height else []
        assert late_ids(run, side) == set(expected)
    left = on_time(case["left"], late_ids(run, 0))
    right = on_time(case["right"], late_ids(run, 1))
    columns = [*OUT, "window_start", "window_end"]
    assert rows_of(run.out, columns) == rows_of(window_oracle(left, right, size, how), columns)
    assert_on_time_downstream(run.out, "window_end")
    if how == "left":  # every left row is out (joined or with nulls) or late, never both
        out_ids = set(run.out.get_column("id").to_list()) if run.out.height else set()
        assert out_ids | late_ids(run, 0) == set(case["left"].get_column("id").to_list())
        assert not out_ids & late_ids(run, 0)
    assert run.op is not None and run.op.state_size() == 0


def test_window_join_fires_at_window_end_and_fills_nulls_for_left() -> None:
    left = pl.DataFrame({"k": [1, 2, 1], "t": [100, 200, 1_500], "id": [0, 1, 2], "v": ["a", "b", "c"]})
    right = pl.DataFrame({"k": [1, 1], "t": [900, 1_100], "id": [10, 11], "v": ["x", "y"]})
    make = make_window(1_000, "left")
    op = make()
    ctx = StepContext(DeadLetters())
    inputs = InputWatermarks(2)
    (lb,) = frames(left, [], 0, 0)
    (rb,) = frames(right, [], 0, 1)
    assert op.process(inputs.arrive(0, lb), ctx) is None  # right's watermark still -inf
    fired = op.process(inputs.arrive(1, rb), ctx)  # min(1500, 1100) >= 1000: window [0, 1000) fires
    assert fired is not None
    assert fired.df.select([*OUT[:4], "id_right", "window_start", "window_end"]).rows() == [
        (1, 100, 0, "a", 10, 0, 1_000),
        (2, 200, 1, "b", None, 0, 1_000),
    ]
    assert fired.df.get_column(WATERMARK).to_list() == [-(2**63)] * 2  # stamped with the watermark before
    assert op.state_size() == 2  # window [1000, 2000): one row of each side
    rest = op.finish(ctx)
    assert rest is not None and rest.df.select("id", "id_right").rows() == [(2, 11)]
    assert op.state_size() == 0


def test_window_bounds_have_the_left_time_type() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    left = pl.DataFrame({"k": ["a"], "ts": [start + timedelta(seconds=61)]})
    right = pl.DataFrame({"k": ["a"], "ts": [start + timedelta(seconds=119)], "w": [1.5]})
    op = WindowJoin("wj", on=["k"], times=("ts", "ts"), size_ms=60_000, how="inner", on_error="fail")
    ctx = StepContext(DeadLetters())
    op.process(Batch(left, watermark=0, input=0), ctx)
    op.process(Batch(right, watermark=0, input=1), ctx)
    out = op.finish(ctx)
    assert out is not None
    row = strip_hidden(out.df).row(0, named=True)
    assert row == {
        "k": "a",
        "ts": start + timedelta(seconds=61),
        "ts_right": start + timedelta(seconds=119),
        "w": 1.5,
        "window_start": start + timedelta(seconds=60),
        "window_end": start + timedelta(seconds=120),
    }
    assert out.df.schema["window_start"] == left.schema["ts"]


# -- interval join ----------------------------------------------------------------------------
def make_interval(lower: int, upper: int, how: str) -> Any:
    return lambda: IntervalJoin("ij", on=KEYS, times=TIMES, lower_ms=lower, upper_ms=upper, how=how, on_error="fail")


@SETTINGS
@given(
    case=exact_case(),
    lower=st.integers(0, 1_000),
    upper=st.integers(0, 1_000),
    how=st.sampled_from(["inner", "left"]),
)
def test_interval_join_equals_sql_whatever_the_batching(case: dict[str, Any], lower: int, upper: int, how: str) -> None:
    run = run_case(make_interval(lower, upper, how), case)
    assert run.late.height == 0
    assert rows_of(run.out, OUT) == rows_of(interval_oracle(case["left"], case["right"], lower, upper, how), OUT)
    assert_on_time_downstream(run.out, "t")
    assert run.op is not None and run.op.state_size() == 0


@SETTINGS
@given(
    case=late_case(),
    lower=st.integers(0, 600),
    upper=st.integers(0, 600),
    how=st.sampled_from(["inner", "left"]),
)
def test_interval_join_late_rows_are_set_aside_and_the_rest_is_exact(
    case: dict[str, Any], lower: int, upper: int, how: str
) -> None:
    run = run_case(make_interval(lower, upper, how), case)
    for side in (0, 1):
        arrived = arrived_rows(run, side)
        assert late_ids(run, side) == set(arrived.filter(pl.col("t") < pl.col(WATERMARK)).get_column("id").to_list())
    left = on_time(case["left"], late_ids(run, 0))
    right = on_time(case["right"], late_ids(run, 1))
    assert rows_of(run.out, OUT) == rows_of(interval_oracle(left, right, lower, upper, how), OUT)
    assert_on_time_downstream(run.out, "t")
    if how == "left":
        out_ids = set(run.out.get_column("id").to_list()) if run.out.height else set()
        assert out_ids | late_ids(run, 0) == set(case["left"].get_column("id").to_list())
        assert not out_ids & late_ids(run, 0)
    assert run.op is not None and run.op.state_size() == 0


def test_interval_join_emits_matches_on_arrival_and_buffers_only_what_can_match() -> None:
    op = make_interval(100, 200, "left")()
    ctx = StepContext(DeadLetters())
    inputs = InputWatermarks(2)
    left = pl.DataFrame({"k": [1, 1, 2], "t": [1_000, 1_050, 1_000], "id": [0, 1, 2], "v": ["a", "b", "c"]})
    right = pl.DataFrame({"k": [1, 1], "t": [900, 1_300], "id": [10, 11], "v": ["x", "y"]})
    (lb,) = frames(left, [], 0, 0)
    assert op.process(inputs.arrive(0, lb), ctx) is None
    (rb,) = frames(right, [], 0, 1)
    out = op.process(inputs.arrive(1, rb), ctx)
    # 900 in [1000-100, 1000+200] for id 0 only; 1300 is past 1050+200 and 1000+200.
    # Watermark min(1050, 1300) = 1050 passes no left row's upper bound yet (1000+200), but right
    # 900 leaves: it could only match left rows up to 900+100, and later ones are >= 1050.
    assert out is not None and out.df.select("id", "id_right").rows() == [(0, 10)]
    assert op.state_size() == 4
    later = pl.DataFrame({"k": [3], "t": [1_400], "id": [3], "v": ["d"]})
    (lb2,) = frames(later, [], 0, 0)
    lb2 = Batch(lb2.df.with_columns(pl.lit(1_050, pl.Int64).alias(WATERMARK)), lb2.origin, 1_400)
    out = op.process(inputs.arrive(0, lb2), ctx)
    # Watermark min(1400, 1300) = 1300 > 1050+200 and 1000+200: ids 1 and 2 leave unmatched;
    # right 1300 stays (1300+100 >= 1300).
    assert out is not None and sorted(out.df.select("id", "id_right").rows()) == [(1, None), (2, None)]
    assert op.state_size() == 2  # left 1400 and right 1300
    op.finish(ctx)
    assert op.state_size() == 0


# -- temporal join ----------------------------------------------------------------------------
def make_temporal(ttl: int | None, how: str) -> Any:
    return lambda: TemporalJoin("tj", on=KEYS, times=TIMES, ttl_ms=ttl, how=how, on_error="fail")  # type: ignore[arg-type]


@SETTINGS
@given(
    case=exact_case(),
    ttl=st.none() | st.integers(0, 2_000),
    how=st.sampled_from(["inner", "left"]),
)
def test_temporal_join_equals_sql_asof_whatever_the_batching(case: dict[str, Any], ttl: int | None, how: str) -> None:
    case = {**case, "right": unique_versions(case["right"])}
    run = run_case(make_temporal(ttl, how), case)
    assert run.late.height == 0
    assert rows_of(run.out, OUT) == rows_of(temporal_oracle(case["left"], case["right"], ttl, how), OUT)
    assert_on_time_downstream(run.out, "t")
    assert run.op is not None and run.op.state_size() == 0


@SETTINGS
@given(case=late_case(), ttl=st.none() | st.integers(0, 2_000), how=st.sampled_from(["inner", "left"]))
def test_temporal_join_late_rows_are_set_aside_and_the_rest_is_exact(
    case: dict[str, Any], ttl: int | None, how: str
) -> None:
    case = {**case, "right": unique_versions(case["right"])}
    run = run_case(make_temporal(ttl, how), case)
    for side in (0, 1):
        arrived = arrived_rows(run, side)
        assert late_ids(run, side) == set(arrived.filter(pl.col("t") < pl.col(WATERMARK)).get_column("id").to_list())
    stream = on_time(case["left"], late_ids(run, 0))
    table = on_time(case["right"], late_ids(run, 1))
    assert rows_of(run.out, OUT) == rows_of(temporal_oracle(stream, table, ttl, how), OUT)
    assert_on_time_downstream(run.out, "t")
    if how == "left":
        out_ids = run.out.get_column("id").to_list() if run.out.height else []
        assert sorted(out_ids + sorted(late_ids(run, 0))) == case["left"].get_column("id").to_list()


def test_temporal_join_waits_for_the_watermark_before_joining() -> None:
    op = make_temporal(None, "left")()
    ctx = StepContext(DeadLetters())
    inputs = InputWatermarks(2)
    versions = pl.DataFrame(
        {"k": [i % 2 for i in range(3_000)], "t": list(range(3_000)), "id": list(range(3_000)), "v": ["x"] * 3_000}
    )
    stream = pl.DataFrame({"k": [0, 1, 5], "t": [2_500, 2_999, 10], "id": [0, 1, 2], "v": ["a", "b", "c"]})
    (sb,) = frames(stream, [], 10_000, 0)
    assert op.process(inputs.arrive(0, sb), ctx) is None  # the table's watermark is still -inf
    for tb in frames(versions, [1_000], 0, 1):
        # The stream's watermark (2 999 - 10 000) holds everything back: a version could still come.
        assert op.process(inputs.arrive(1, tb), ctx) is None
    assert op.state_size() == 3 + 3_000
    out = op.finish(ctx)
    assert out is not None
    assert out.df.select("id", "id_right").rows() == [(2, None), (0, 2_500), (1, 2_999)]
    assert op.state_size() == 0


def test_temporal_join_state_stays_bounded_by_keys() -> None:
    op = make_temporal(1_000, "left")()
    ctx = StepContext(DeadLetters())
    inputs = InputWatermarks(2)
    ends = []
    for i in range(20):
        t0 = i * 1_000
        table = pl.DataFrame({"k": list(range(100)) * 10, "t": [t0 + j for j in range(1_000)], "id": [0] * 1_000})
        stream = pl.DataFrame({"k": list(range(100)), "t": [t0 + 500] * 100, "id": list(range(100))})
        for side, frame in ((1, table), (0, stream)):
            (batch,) = frames(frame.with_columns(pl.lit("v").alias("v")), [], 0, side)
            op.process(inputs.arrive(side, batch), ctx)
        ends.append(op.state_size())
    assert max(ends) < 4_000  # versions of the last ~2 s at most, not all 20 000


def test_temporal_join_the_last_received_of_equal_versions_wins() -> None:
    op = make_temporal(None, "inner")()
    ctx = StepContext(DeadLetters())
    table = pl.DataFrame({"k": [1, 1, 1], "t": [5, 5, 3], "id": [10, 11, 12], "v": ["x", "y", "z"]})
    op.process(Batch(table, watermark=0, input=1), ctx)
    op.process(Batch(pl.DataFrame({"k": [1], "t": [5], "id": [0], "v": ["a"]}), watermark=0, input=0), ctx)
    out = op.finish(ctx)
    assert out is not None and out.df.select("id", "id_right").rows() == [(0, 11)]


def test_a_watermark_that_goes_back_does_not_reopen_a_fired_window() -> None:
    # An idle input that resumes lowers the combined watermark; what already fired stays fired.
    op = make_window(1_000, "inner")()
    ctx = StepContext(DeadLetters())
    row = {"k": [1], "t": [500], "id": [0], "v": ["a"]}
    op.process(Batch(pl.DataFrame(row).with_columns(pl.lit(0).alias(WATERMARK)), watermark=400, input=0), ctx)
    on_time = pl.DataFrame({**row, "id": [1]}).with_columns(pl.lit(400).alias(WATERMARK))
    fired = op.process(Batch(on_time, watermark=2_000, input=1), ctx)
    assert fired is not None and fired.df.select("id", "id_right").rows() == [(0, 1)]
    regressed = pl.DataFrame({**row, "id": [2]}).with_columns(pl.lit(100).alias(WATERMARK))
    assert op.process(Batch(regressed, watermark=600, input=1), ctx) is None
    assert [b.df.get_column("id").to_list() for b in op.side_outputs["late_right"]] == [[2]]
    assert op.state_size() == 0


# -- snapshots --------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=late_case(), swap=st.integers(1, 10), kind=st.sampled_from(["window", "interval", "temporal"]))
def test_snapshot_and_restore_continue_exactly(case: dict[str, Any], swap: int, kind: str) -> None:
    make = {
        "window": make_window(700, "left"),
        "interval": make_interval(300, 200, "left"),
        "temporal": make_temporal(800, "left"),
    }[kind]
    whole = run_case(make, case)
    resumed = run_case(make, case, swap_at=swap)
    assert rows_of(resumed.out, OUT) == rows_of(whole.out, OUT)
    assert rows_of(resumed.late, ["id", "side"]) == rows_of(whole.late, ["id", "side"])
    assert resumed.op is not None and resumed.op.state_size() == 0


# -- edge cases -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [make_window(1_000, "left"), make_interval(50, 50, "left"), make_temporal(None, "left")]
)
def test_null_keys_match_nothing_and_null_times_are_dead_letters(make: Any) -> None:
    op: JoinOperator = make()
    op.on_error = "dlq"
    ctx = StepContext(DeadLetters())
    left = pl.DataFrame({"k": [None, 1, 1], "t": [10, None, 20], "id": [0, 1, 2], "v": ["a", "b", "c"]})
    right = pl.DataFrame({"k": [None, 1], "t": [10, 15], "id": [10, 11], "v": ["x", "y"]})
    parts = [
        op.process(Batch(right, watermark=0, input=1), ctx),
        op.process(Batch(left, watermark=0, input=0), ctx),
        op.finish(ctx),
    ]
    out = pl.concat([p.df for p in parts if p is not None])
    assert sorted(out.select("id", "id_right").rows(), key=repr) == [(0, None), (2, 11)]
    assert ctx.dead_letters.total == 1  # the row without a time
    assert op.state_size() == 0


def test_a_batch_missing_the_key_column_is_rejected() -> None:
    op = make_interval(10, 10, "inner")()
    op.on_error = "dlq"
    ctx = StepContext(DeadLetters())
    assert op.process(Batch(pl.DataFrame({"t": [1, 2]}), watermark=0, input=0), ctx) is None
    assert ctx.dead_letters.total == 2
    assert "lacks column" in ctx.dead_letters.kept[0]["error"]


def test_key_types_are_conformed_between_inputs() -> None:
    op = make_window(100, "inner")()
    ctx = StepContext(DeadLetters())
    op.process(Batch(pl.DataFrame({"k": [1], "t": [5]}, schema={"k": pl.Int32, "t": pl.Int64}), input=0), ctx)
    op.process(Batch(pl.DataFrame({"k": [1], "t": [7], "w": [2]}), input=1), ctx)
    out = op.finish(ctx)
    assert out is not None and strip_hidden(out.df).select("k", "w").rows() == [(1, 2)]


# -- in a flow --------------------------------------------------------------------------------
def two_sources(flow: tdf.Flow, left: list[dict[str, Any]], right: list[dict[str, Any]], delay: str = "1s") -> Any:
    a = flow.source("left", tdf.io.MemorySource(left, time="t", batch_size=3), watermark=tdf.BoundedOutOfOrder(delay))
    b = flow.source("right", tdf.io.MemorySource(right, time="t", batch_size=2), watermark=tdf.BoundedOutOfOrder(delay))
    return a, b


def test_joins_in_a_flow() -> None:
    left = [{"k": i % 3, "t": 1_000 * i, "id": i} for i in range(30)]
    right = [{"k": i % 3, "t": 1_000 * i + 400, "id": 100 + i} for i in range(30)]
    lf, rf = pl.DataFrame(left), pl.DataFrame(right)
    flow = tdf.Flow("joins")
    a, b = two_sources(flow, left, right)
    sinks = {name: tdf.io.MemorySink() for name in ("window", "interval", "temporal")}
    window_join(a, b, "wj", on="k", window="3s", how="left").sink("w-out", sinks["window"])
    interval_join(a, b, "ij", on=["k"], lower="1s", upper=timedelta(seconds=2)).sink("i-out", sinks["interval"])
    temporal_join(a, b, "tj", on="k", ttl="5s").sink("t-out", sinks["temporal"])
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0
    lo, ro = lf.with_columns(pl.lit("").alias("v")), rf.with_columns(pl.lit("").alias("v"))
    cols = ["k", "t", "id", "t_right", "id_right"]
    assert rows_of(sinks["window"].frame, cols) == rows_of(window_oracle(lo, ro, 3_000, "left"), cols)
    assert rows_of(sinks["interval"].frame, cols) == rows_of(interval_oracle(lo, ro, 1_000, 2_000, "inner"), cols)
    assert rows_of(sinks["temporal"].frame, cols) == rows_of(temporal_oracle(lo, ro, 5_000, "left"), cols)
    assert not any(c.startswith("_tf_") for c in sinks["window"].frame.columns)


def test_late_rows_reach_the_late_side_outputs_in_a_flow() -> None:
    # Which rows are late depends on how the two source threads interleave (the watermark is the
    # minimum of both inputs); whatever it was, every left row is out or late, and the output is
    # exactly the join of the rows that were not late.
    left = [{"k": i % 2, "t": t, "id": i} for i, t in enumerate([10_000, 20_000, 1_000, 30_000, 5_000, 31_000])]
    right = [{"k": i % 2, "t": t, "id": 100 + i} for i, t in enumerate([10_500, 25_000, 2_000, 30_000, 29_500])]
    flow = tdf.Flow("late-join")
    a, b = two_sources(flow, left, right, delay="1s")
    joined = interval_join(a, b, "ij", on="k", lower="1s", upper="1s", how="left")
    out, late_left, late_right = tdf.io.MemorySink(), tdf.io.MemorySink(), tdf.io.MemorySink()
    joined.sink("out", out)
    joined._side("late").sink("late-left", late_left)
    joined._side("late_right").sink("late-right", late_right)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0
    late = ({r["id"] for r in late_left.records}, {r["id"] for r in late_right.records})
    out_ids = {r["id"] for r in out.records}
    assert out_ids | late[0] == set(range(6)) and not out_ids & late[0]
    lf = pl.DataFrame(left).with_columns(pl.lit("").alias("v"))
    rf = pl.DataFrame(right).with_columns(pl.lit("").alias("v"))
    expected = interval_oracle(on_time(lf, late[0]), on_time(rf, late[1]), 1_000, 1_000, "left")
    cols = ["id", "id_right"]
    assert rows_of(out.frame, cols) == rows_of(expected, cols)


def test_joins_refuse_inputs_without_a_watermark() -> None:
    flow = tdf.Flow("no-wm")
    a = flow.source("a", tdf.io.MemorySource([{"k": 1, "t": 1}], time="t"), watermark=tdf.Monotonic())
    b = flow.source("b", tdf.io.MemorySource([{"k": 1, "t": 1}], time="t"))
    with pytest.raises(tdf.FlowDefinitionError, match="no watermark"):
        window_join(a, b, "wj", on="k", window="1s")
    with pytest.raises(tdf.FlowDefinitionError, match="how must be"):
        interval_join(a, a, "ij", on="k", lower=0, upper=0, how="outer")  # type: ignore[arg-type]
    with pytest.raises(tdf.FlowDefinitionError, match="join it with a copy"):
        interval_join(a, a, "ij", on="k", lower=0, upper=0)


def test_a_self_join_through_a_copy() -> None:
    flow = tdf.Flow("self")
    data = [{"k": i % 2, "t": i * 100, "id": i} for i in range(6)]
    a = flow.source("a", tdf.io.MemorySource(data, time="t", batch_size=2), watermark=tdf.Monotonic())
    out = tdf.io.MemorySink()
    interval_join(a, a.filter("copy", pl.lit(True)), "ij", on="k", lower=0, upper="200ms").sink("o", out)
    flow.run(handle_signals=False)
    pairs = sorted((r["id"], r["id_right"]) for r in out.records)
    assert pairs == sorted((i, j) for i in range(6) for j in range(6) if i % 2 == j % 2 and 0 <= j - i <= 2)
