"""Windows and joins split their keyed state by key group, and any subset of the groups restores.

The model is ``stateful_map`` / ``dedupe`` (tests/ops/test_keygroups.py). For tumbling and sliding
windows, session windows, count windows and the window, interval and temporal joins:

1. a run checkpointed by group (``snapshot_groups``, the checkpoint codec, ``restore_groups`` of
   every part into a fresh operator) at any batches gives exactly the output of the
   uninterrupted run, and the restored state is the saved one;
2. a scale-out at the checkpoint: two fresh operators restored from complementary subsets of the
   groups (each with part ``-1``), each fed the later rows of its keys (and the watermark of every
   batch), together output what the single operator outputs after the cut, windows that combine
   rows from before and after the cut included;
3. a subset holds only the keys of its groups, and the two workers' ``state_size`` adds up to
   the whole state's.

Outputs of the scale-out are compared as sorted visible rows: a worker fires a window or session
with the watermark of one of its own rows, so the hidden ``_tf_wm`` stamps (and the order of rows
of different keys) may differ, not the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.deadletters import DeadLetters
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.count_window import CountWindowOp
from tideflow.ops.join import IntervalJoin, TemporalJoin, WindowJoin
from tideflow.ops.keygroups import KEY_GROUP_FUNCTION, KEY_GROUPS, key_groups, key_groups_of_columns
from tideflow.ops.session import SessionWindowOp
from tideflow.record import Batch
from tideflow.runtime.local import InputWatermarks

from .test_dedupe import make_batches, visible
from .test_join import OUT, frames, ordered_side, random_side, rows_of
from .test_keygroups import subset, through_the_codec

Record = dict[str, Any]
Make = Callable[[], Operator]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [*range(12), None]
"""Keys spread over several groups (and a null key, which has a group of its own)."""

group_masks = st.integers(0, 2**KEY_GROUPS - 1)
"""A subset of the groups as a bit mask (a set strategy would draw only small subsets)."""


def chosen_groups(mask: int) -> set[int]:
    return {g for g in range(KEY_GROUPS) if mask >> g & 1}


def group_of(key: Any) -> int:
    return int(key_groups([key], KEY_GROUPS)[0])


# -- comparing states -----------------------------------------------------------------------------
def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Equal plain data, frames equal with their types (``==`` on frames is elementwise)."""
    if isinstance(a, pl.DataFrame) or isinstance(b, pl.DataFrame):
        assert isinstance(a, pl.DataFrame) and isinstance(b, pl.DataFrame), where
        assert a.schema == b.schema and a.equals(b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def held_keys(op: Operator) -> set[Any]:
    """Every key value the operator's state refers to."""
    keys: set[Any] = set()

    def walk(value: Any) -> None:
        if isinstance(value, pl.DataFrame):
            if "k" in value.columns:
                keys.update(value.get_column("k").to_list())
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(op.snapshot())
    if isinstance(op, SessionWindowOp):
        keys.update(op.sessions)
    if isinstance(op, CountWindowOp):
        keys.update(k[0] for k in op.counts)
    return keys


def check_subsets(parts: dict[int, Any], make: Make, mask: int) -> tuple[Operator, Operator, Operator]:
    """Restore all groups, then two complementary subsets: each holds only the keys of its
    groups, together every key, and their sizes add up."""
    assert parts[-1]["key_groups"] == {"groups": KEY_GROUPS, "function": KEY_GROUP_FUNCTION}
    chosen = chosen_groups(mask)
    whole, first, second = make(), make(), make()
    whole.restore_groups(parts)
    first.restore_groups(subset(parts, chosen))
    second.restore_groups(subset(parts, set(range(KEY_GROUPS)) - chosen))
    mine, theirs = held_keys(first), held_keys(second)
    assert all(group_of(k) in chosen for k in mine)
    assert not any(group_of(k) in chosen for k in theirs)
    assert mine | theirs == held_keys(whole)
    assert first.state_size() + second.state_size() == whole.state_size()
    return whole, first, second


# -- one input: windows ---------------------------------------------------------------------------
AGGS = {
    "n": pl.len(),
    "total": pl.col("v").sum(),
    "first": pl.col("v").first(),
    "mid": pl.col("v").median(),  # not mergeable: the window keeps rows
}


def window_factory(assigner: Any, lateness: int = 0, emit: str = "final", keyed: bool = True) -> Make:
    """The operator a flow builds for a window step (keyed by ``k``, or global)."""
    flow = tdf.Flow("w")
    source = flow.source("src", tdf.io.MemorySource([{"t": 0, "k": 0, "v": 0}], time="t"), watermark=tdf.Monotonic())
    stream = source.key_by("k") if keyed else source
    timed = {} if isinstance(assigner, tdf.windows.Count) else {"allowed_lateness": lateness, "emit": emit}
    stream.window("w", assigner, **timed).agg(**AGGS)  # type: ignore[arg-type]
    return flow.nodes["w"].params["factory"]  # type: ignore[no-any-return]


def pane_window(shape: tuple[int, int], lateness: int, emit: str = "final") -> Make:
    size, every = shape
    assigner = tdf.windows.tumbling(size) if size == every else tdf.windows.sliding(size, every)
    return window_factory(assigner, lateness, emit)


def records_of(rows: list[tuple[int, Any]]) -> list[Record]:
    return [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]


def typed_batches(records: list[Record], delay: int, sizes: list[int]) -> list[Batch]:
    """``make_batches`` with the key column typed as a source with a schema types it (a batch
    of null keys only would otherwise be of type Null, which a window's late update cannot
    match against its panes' Int64 keys, with or without checkpoints)."""
    return [
        Batch(b.df.with_columns(pl.col("k").cast(pl.Int64)), b.origin, b.watermark)
        for b in make_batches(records, delay, sizes)
    ]


def collect(op: Operator, result: Batch | None, out: list[Record], late: list[Record]) -> None:
    if result is not None:
        out.extend(visible(result.df))
    late.extend(r for b in op.side_outputs.pop("late", []) for r in visible(b.df))


def run_by_group(make: Make, batches: list[Batch], cuts: set[int], exact: bool) -> tuple[list[Record], list[Record]]:
    """Outputs and late rows of a run checkpointed by group and resumed before each batch in
    ``cuts``; ``exact``: the restored state must be the saved one."""
    ctx = StepContext(DeadLetters())
    op = make()
    out: list[Record] = []
    late: list[Record] = []
    for number, batch in enumerate(batches):
        if number in cuts:
            parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))  # type: ignore[arg-type]
            fresh = make()
            fresh.restore_groups(parts)
            if exact:
                assert_same(fresh.snapshot(), op.snapshot())
            assert fresh.state_size() <= op.state_size()  # a session window drops freed ids' rows
            op = fresh
        collect(op, op.process(batch, ctx), out, late)
    collect(op, op.finish(ctx), out, late)
    assert ctx.dead_letters.total == 0
    return out, late


def feed(op: Operator, batch: Batch, mask: np.ndarray, ctx: StepContext) -> Batch | None:
    """A worker's share of ``batch``: its rows, or the watermark alone when it has none."""
    rows = batch.df.filter(pl.Series(mask))
    if rows.height:
        return op.process(Batch(rows, batch.origin, batch.watermark), ctx)
    if batch.watermark is not None and hasattr(op, "on_watermark"):
        return op.on_watermark(batch.watermark, ctx)  # type: ignore[no-any-return]
    return None


def ordered(rows: list[Record]) -> list[Record]:
    return sorted(rows, key=lambda r: repr(sorted(r.items())))


def scale_out(make: Make, batches: list[Batch], cut: int, mask: int) -> tuple[list[Record], list[Record]]:
    """Outputs (and late rows) of the single operator after batch ``cut`` against the union of
    two workers restored there from complementary groups. Returns the single operator's."""
    ctx = StepContext(DeadLetters())
    alone = make()
    for batch in batches[:cut]:
        alone.process(batch, ctx)
        alone.side_outputs.clear()
    parts = through_the_codec(alone.snapshot_groups(KEY_GROUPS))  # type: ignore[arg-type]
    _, *workers = check_subsets(parts, make, mask)
    chosen = list(chosen_groups(mask))
    expected: tuple[list[Record], list[Record]] = ([], [])
    got: tuple[list[Record], list[Record]] = ([], [])
    for batch in batches[cut:]:
        collect(alone, alone.process(batch, ctx), *expected)
        mine = np.isin(key_groups_of_columns([batch.df.get_column("k")], KEY_GROUPS), chosen)
        for worker, share in zip(workers, (mine, ~mine), strict=True):
            collect(worker, feed(worker, batch, share, ctx), *got)
    collect(alone, alone.finish(ctx), *expected)
    for worker in workers:
        collect(worker, worker.finish(ctx), *got)
    assert ordered(got[0]) == ordered(expected[0])
    assert ordered(got[1]) == ordered(expected[1])
    assert ctx.dead_letters.total == 0
    return expected


window_rows = st.lists(st.tuples(st.integers(0, 60_000), st.sampled_from(KEYS)), min_size=1, max_size=80)
shapes = st.sampled_from([(10_000, 10_000), (10_000, 2_500)])
batch_sizes = st.lists(st.integers(1, 20), min_size=1, max_size=4)
cut_points = st.lists(st.integers(0, 40), min_size=1, max_size=3)
"""Batches before which a run is checkpointed and resumed (modulo the number of batches)."""


def at(cuts: list[int], batches: list[Batch]) -> set[int]:
    return {c % len(batches) for c in cuts} if batches else set()


@SETTINGS
@given(
    rows=window_rows,
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 5_000]),
    shape=shapes,
    emit=st.sampled_from(["final", "updates"]),
    sizes=batch_sizes,
    cuts=cut_points,
)
def test_a_window_restored_by_group_gives_the_results_of_an_uninterrupted_one(  # type: ignore[no-untyped-def]
    rows, delay, lateness, shape, emit, sizes, cuts
) -> None:
    make = pane_window(shape, lateness, emit)
    batches = typed_batches(records_of(rows), delay, sizes)
    assert run_by_group(make, batches, at(cuts, batches), exact=True) == run_by_group(make, batches, set(), exact=True)


@SETTINGS
@given(
    rows=window_rows,
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 5_000]),
    shape=shapes,
    sizes=batch_sizes,
    cut=st.integers(0, 40),
    mask=group_masks,
)
def test_window_workers_restored_from_complementary_groups_do_the_work_of_one(  # type: ignore[no-untyped-def]
    rows, delay, lateness, shape, sizes, cut, mask
) -> None:
    batches = typed_batches(records_of(rows), delay, sizes)
    scale_out(pane_window(shape, lateness), batches, cut % (len(batches) + 1), mask)


def test_a_window_that_spans_the_cut_combines_rows_from_both_sides_in_each_worker() -> None:
    keys = [k for k in range(40) if group_of(k) % 2 == 0][:3] + [k for k in range(40) if group_of(k) % 2][:3]
    rows = [(1_000 + i, k) for i, k in enumerate(keys)] + [(5_000 + i, k) for i, k in enumerate(keys)]
    batches = typed_batches(records_of(rows), 0, [len(keys)])
    mask = sum(1 << g for g in range(0, KEY_GROUPS, 2))
    make = pane_window((10_000, 10_000), 0)
    out, _ = scale_out(make, batches, 1, mask)
    assert sorted((r["k"], r["n"], r["total"]) for r in out) == sorted((k, 2, 2 * i + 6) for i, k in enumerate(keys))
    # Each worker holds the open pane's rows of its own keys only.
    ctx = StepContext(DeadLetters())
    alone = make()
    alone.process(batches[0], ctx)
    parts = through_the_codec(alone.snapshot_groups(KEY_GROUPS))
    _, even, odd = check_subsets(parts, make, mask)
    assert held_keys(even) == set(keys[:3]) and held_keys(odd) == set(keys[3:])
    assert set(parts) == {-1, *(group_of(k) for k in keys)}


# -- session windows ------------------------------------------------------------------------------
def session_window(gap: int, lateness: int) -> Make:
    flow = tdf.Flow("s")
    source = flow.source("src", tdf.io.MemorySource([{"t": 0, "k": 0, "v": 0}], time="t"), watermark=tdf.Monotonic())
    source.key_by("k").window("s", tdf.windows.session(gap), allowed_lateness=lateness).agg(**AGGS)
    return flow.nodes["s"].params["factory"]  # type: ignore[no-any-return]


@SETTINGS
@given(
    rows=window_rows,
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 5_000]),
    gap=st.sampled_from([1_000, 4_000]),
    sizes=batch_sizes,
    cuts=cut_points,
)
def test_a_session_window_restored_by_group_gives_the_results_of_an_uninterrupted_one(  # type: ignore[no-untyped-def]
    rows, delay, lateness, gap, sizes, cuts
) -> None:
    make = session_window(gap, lateness)
    batches = typed_batches(records_of(rows), delay, sizes)
    assert run_by_group(make, batches, at(cuts, batches), exact=False) == run_by_group(
        make, batches, set(), exact=False
    )


@SETTINGS
@given(
    rows=window_rows,
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 5_000]),
    gap=st.sampled_from([1_000, 4_000]),
    sizes=batch_sizes,
    cut=st.integers(0, 40),
    mask=group_masks,
)
def test_session_workers_restored_from_complementary_groups_do_the_work_of_one(  # type: ignore[no-untyped-def]
    rows, delay, lateness, gap, sizes, cut, mask
) -> None:
    batches = typed_batches(records_of(rows), delay, sizes)
    scale_out(session_window(gap, lateness), batches, cut % (len(batches) + 1), mask)


def test_session_parts_hold_their_keys_sessions_timers_and_rows() -> None:
    rows = [(1_000, 1), (1_500, 2), (2_000, 1), (9_000, 2), (10_000, 3)]
    make = session_window(2_000, 0)
    ctx = StepContext(DeadLetters())
    op = make()
    for batch in typed_batches(records_of(rows), 0, [2]):
        op.process(batch, ctx)
    parts = op.snapshot_groups(KEY_GROUPS)
    # At watermark 9000 key 1's session and key 2's first one fired and were freed: the rows of
    # their ids are not saved. Key 2's second session and key 3's are open.
    assert set(parts) == {-1, group_of(2), group_of(3)}
    two = parts[group_of(2)]
    assert [(s[0], s[1], s[2]) for s in two["table"]] == [(2, 9_000, 11_000)]
    assert len(two["timers"]) == 1 and two["open"] == {2: [0]}
    whole, first, _ = check_subsets(through_the_codec(parts), make, 1 << group_of(3))
    assert set(first.sessions) == {3}
    assert (op.state_size(), whole.state_size()) == (5 + 2, 2 + 2)  # rows of 3 freed ids left out


# -- count windows --------------------------------------------------------------------------------
def count_window(n: int) -> Make:
    return window_factory(tdf.windows.count(n))


@settings(max_examples=60, deadline=None)
@given(
    rows=window_rows,
    n=st.integers(1, 5),
    sizes=batch_sizes,
    cuts=cut_points,
)
def test_a_count_window_restored_by_group_gives_the_results_of_an_uninterrupted_one(  # type: ignore[no-untyped-def]
    rows, n, sizes, cuts
) -> None:
    make = count_window(n)
    batches = typed_batches(records_of(rows), 0, sizes)
    assert run_by_group(make, batches, at(cuts, batches), exact=True) == run_by_group(make, batches, set(), exact=True)


@settings(max_examples=60, deadline=None)
@given(rows=window_rows, n=st.integers(1, 5), sizes=batch_sizes, cut=st.integers(0, 40), mask=group_masks)
def test_count_workers_restored_from_complementary_groups_do_the_work_of_one(  # type: ignore[no-untyped-def]
    rows, n, sizes, cut, mask
) -> None:
    batches = typed_batches(records_of(rows), 0, sizes)
    expected, _ = scale_out(count_window(n), batches, cut % (len(batches) + 1), mask)
    assert sum(r["n"] for r in expected) <= len(rows)


# -- global windows stay whole; old whole snapshots still restore ---------------------------------
@pytest.mark.parametrize(
    "assigner",
    [tdf.windows.tumbling(10_000), tdf.windows.session(1_000), tdf.windows.count(3)],
    ids=["tumbling", "session", "count"],
)
def test_a_global_window_keeps_its_state_whole_and_whole_snapshots_restore(assigner: Any) -> None:
    ctx = StepContext(DeadLetters())
    batches = typed_batches(records_of([(t, t % 5) for t in range(0, 30_000, 700)]), 500, [7])
    for keyed in (False, True):
        make = window_factory(assigner, keyed=keyed)
        op = make()
        for batch in batches[:4]:
            op.process(batch, ctx)
        parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))
        assert (set(parts) == {-1}) is not keyed
        if not keyed:
            assert "key_groups" not in parts[-1]
        whole, older = make(), make()
        whole.restore_groups(parts)
        older.restore_groups({-1: through_the_codec({-1: op.snapshot()})[-1]})  # a checkpoint from before
        outs = []
        for restored in (op, whole, older):
            out: list[Record] = []
            for batch in batches[4:]:
                collect(restored, restored.process(batch, ctx), out, [])
            collect(restored, restored.finish(ctx), out, [])
            outs.append(out)
        assert outs[0] == outs[1] == outs[2] and outs[0]


def test_parts_of_another_kind_are_refused() -> None:
    ctx = StepContext(DeadLetters())
    window, session = pane_window((10_000, 10_000), 0)(), session_window(1_000, 0)()
    for batch in typed_batches(records_of([(1_000, 1), (2_000, 2)]), 0, [2]):
        window.process(batch, ctx)
    with pytest.raises(ValueError, match="not a session snapshot"):
        session.restore_groups(window.snapshot_groups(KEY_GROUPS))
    with pytest.raises(ValueError, match="part -1"):
        session.restore_groups({3: {}})
    with pytest.raises(ValueError, match="global window"):
        window_factory(tdf.windows.tumbling(10_000), keyed=False)().restore_groups(window.snapshot_groups(KEY_GROUPS))


# -- joins ----------------------------------------------------------------------------------------
JOIN_KEYS = 10


@st.composite
def join_case(draw: st.DrawFn) -> dict[str, Any]:
    """Two inputs, in order within their delay or in random order (many late rows)."""
    if draw(st.booleans()):
        d0, d1 = draw(st.integers(0, 1_500)), draw(st.integers(0, 1_500))
        left, right = draw(ordered_side(d0, 0, JOIN_KEYS)), draw(ordered_side(d1, 1_000, JOIN_KEYS))
    else:
        d0, d1 = draw(st.integers(0, 300)), draw(st.integers(0, 300))
        left, right = draw(random_side(0, JOIN_KEYS)), draw(random_side(1_000, JOIN_KEYS))
    sizes = st.lists(st.integers(1, 12), min_size=1, max_size=4)
    return {
        "left": left,
        "right": right,
        "delays": (d0, d1),
        "sizes": (draw(sizes), draw(sizes)),
        "order": draw(st.lists(st.booleans(), min_size=1, max_size=12)),
    }


def arrivals(case: dict[str, Any]) -> list[Batch]:
    """The batches of both inputs in the interleaving of ``case``, with the combined watermarks."""
    queues = [
        frames(case["left"], case["sizes"][0], case["delays"][0], 0),
        frames(case["right"], case["sizes"][1], case["delays"][1], 1),
    ]
    inputs = InputWatermarks(2)
    for side in (0, 1):
        if not queues[side]:
            inputs.end(side)
    out, step, order = [], 0, case["order"]
    while queues[0] or queues[1]:
        side = 0 if (order[step % len(order)] and queues[0]) or not queues[1] else 1
        out.append(inputs.arrive(side, queues[side].pop(0)))
        if not queues[side]:
            inputs.end(side)
        step += 1
    return out


JOINS: dict[str, Callable[[str], Make]] = {
    "window": lambda how: lambda: WindowJoin("j", on=["k"], times=("t", "t"), size_ms=700, how=how, on_error="fail"),  # type: ignore[arg-type]
    "interval": lambda how: (
        lambda: IntervalJoin(
            "j",
            on=["k"],
            times=("t", "t"),
            lower_ms=300,
            upper_ms=200,
            how=how,  # type: ignore[arg-type]
            on_error="fail",
        )
    ),
    "temporal": lambda how: lambda: TemporalJoin("j", on=["k"], times=("t", "t"), ttl_ms=800, how=how, on_error="fail"),  # type: ignore[arg-type]
}
JOIN_OUT = {"window": [*OUT, "window_start", "window_end"], "interval": OUT, "temporal": OUT}


def join_collect(op: Operator, result: Batch | None, out: list[pl.DataFrame], late: list[pl.DataFrame]) -> None:
    if result is not None:
        out.append(result.df)
    for port, batches in op.side_outputs.items():
        late.extend(b.df.select("id").with_columns(pl.lit(port).alias("port")) for b in batches)
    op.side_outputs = {}


def join_rows(frames: list[pl.DataFrame], columns: list[str]) -> list[tuple[Any, ...]]:
    return rows_of(pl.concat(frames, how="diagonal_relaxed"), columns) if frames else []


@SETTINGS
@given(
    case=join_case(),
    kind=st.sampled_from(sorted(JOINS)),
    how=st.sampled_from(["inner", "left"]),
    cuts=cut_points,
)
def test_a_join_restored_by_group_gives_the_results_of_an_uninterrupted_one(
    case: dict[str, Any], kind: str, how: str, cuts: list[int]
) -> None:
    make = JOINS[kind](how)
    batches = arrivals(case)
    runs = []
    for checkpoints in (at(cuts, batches), set()):
        ctx = StepContext(DeadLetters())
        op = make()
        out: list[pl.DataFrame] = []
        late: list[pl.DataFrame] = []
        for number, batch in enumerate(batches):
            if number in checkpoints:
                parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))
                fresh = make()
                fresh.restore_groups(parts)
                assert_same(fresh.snapshot(), op.snapshot())
                op = fresh
            join_collect(op, op.process(batch, ctx), out, late)
        join_collect(op, op.finish(ctx), out, late)
        assert ctx.dead_letters.total == 0 and op.state_size() == 0
        runs.append((out, late))
    (resumed, resumed_late), (whole, whole_late) = runs
    assert len(resumed) == len(whole)  # the same output batches, row for row, in order
    for a, b in zip(resumed, whole, strict=True):
        assert a.equals(b)
    assert join_rows(resumed_late, ["id", "port"]) == join_rows(whole_late, ["id", "port"])


@SETTINGS
@given(
    case=join_case(),
    kind=st.sampled_from(sorted(JOINS)),
    how=st.sampled_from(["inner", "left"]),
    cut=st.integers(0, 40),
    mask=group_masks,
)
def test_join_workers_restored_from_complementary_groups_do_the_work_of_one(
    case: dict[str, Any], kind: str, how: str, cut: int, mask: int
) -> None:
    make = JOINS[kind](how)
    batches = arrivals(case)
    cut = cut % (len(batches) + 1)
    ctx = StepContext(DeadLetters())
    alone = make()
    for batch in batches[:cut]:
        alone.process(batch, ctx)
    alone.side_outputs = {}
    parts = through_the_codec(alone.snapshot_groups(KEY_GROUPS))
    _, *workers = check_subsets(parts, make, mask)
    chosen = list(chosen_groups(mask))
    expected: tuple[list[pl.DataFrame], list[pl.DataFrame]] = ([], [])
    got: tuple[list[pl.DataFrame], list[pl.DataFrame]] = ([], [])
    for batch in batches[cut:]:
        join_collect(alone, alone.process(batch, ctx), *expected)
        mine = np.isin(key_groups_of_columns([batch.df.get_column("k")], KEY_GROUPS), chosen)
        for worker, share in zip(workers, (mine, ~mine), strict=True):
            rows = batch.df.filter(pl.Series(share))  # a join takes a batch without rows: its watermark
            join_collect(worker, worker.process(Batch(rows, batch.origin, batch.watermark, batch.input), ctx), *got)
    join_collect(alone, alone.finish(ctx), *expected)
    for worker in workers:
        join_collect(worker, worker.finish(ctx), *got)
    assert ctx.dead_letters.total == 0
    assert join_rows(got[0], JOIN_OUT[kind]) == join_rows(expected[0], JOIN_OUT[kind])
    assert join_rows(got[1], ["id", "port"]) == join_rows(expected[1], ["id", "port"])


def test_join_parts_split_every_buffer_by_key() -> None:
    ctx = StepContext(DeadLetters())
    left = pl.DataFrame({"k": [1, 2, 1, None], "t": [100, 150, 200, 250], "id": [0, 1, 2, 3], "v": list("abcd")})
    right = pl.DataFrame({"k": [2, 1], "t": [120, 160], "id": [10, 11], "v": ["x", "y"]})
    for kind in JOINS:
        op = JOINS[kind]("left")()
        inputs = InputWatermarks(2)
        for side, rows in ((0, left), (1, right)):
            (batch,) = frames(rows, [], 10_000, side)
            op.process(inputs.arrive(side, batch), ctx)
        parts = op.snapshot_groups(KEY_GROUPS)
        assert set(parts) == {-1, group_of(1), group_of(2), group_of(None)}, kind
        assert parts[-1]["kind"] == f"{kind}_join"
        whole, first, second = check_subsets(through_the_codec(parts), JOINS[kind]("left"), 1 << group_of(1))
        assert held_keys(first) == {1} and held_keys(second) == {2, None}, kind
        assert whole.state_size() == op.state_size() == 6, kind
