"""stateful_map: per-key state, event-time TTL, dead letters, snapshots, and the expiry index."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.deadletters import DeadLetters
from tideflow.ops import keyed
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.keyed import StatefulMap
from tideflow.ops.state import ExpiryIndex, python_keys
from tideflow.record import POSITION, WATERMARK, Batch, Origin
from tideflow.time.watermarks import NO_WATERMARK, event_time_ms

Record = dict[str, Any]


# -- a function with every outcome, and the oracle ----------------------------------------------
def summarize(state: tuple[int, int] | None, record: Record) -> tuple[Any, Record | None]:
    """State (count, total). v % 11 == 5 raises; v % 7 == 6 deletes the state; v % 3 == 0 emits
    nothing. Never mutates ``state`` (the oracle shares nothing with the operator)."""
    v = record["v"]
    if v % 11 == 5:
        raise ValueError(f"bad value {v}")
    count, total = state if state is not None else (0, 0)
    count, total = count + 1, total + v
    new_state = None if v % 7 == 6 else (count, total)
    output = None if v % 3 == 0 else {"k": record["k"], "v": v, "count": count, "total": total}
    return new_state, output


def oracle(
    records: list[Record], ttl: int | None, delay: int, key: Any = lambda r: r["k"]
) -> tuple[list[Record], list[Record], int]:
    """Record by record: (outputs, records that failed, live states once the last watermark holds)."""
    states: dict[Hashable, Any] = {}
    expiry: dict[Hashable, int] = {}
    out: list[Record] = []
    failed: list[Record] = []
    newest: int | None = None
    for record in records:
        w = NO_WATERMARK if newest is None else newest - delay
        newest = record["t"] if newest is None else max(newest, record["t"])
        k = key(record)
        if ttl is not None and k in states and expiry[k] <= w:
            del states[k], expiry[k]
        try:
            new_state, output = summarize(states.get(k), dict(record))
        except ValueError:
            failed.append(record)
            continue
        if new_state is None:
            states.pop(k, None)
            expiry.pop(k, None)
        else:
            if ttl is not None:
                end = record["t"] + ttl
                expiry[k] = max(expiry[k], end) if k in states else end
            states[k] = new_state
        if output is not None:
            out.append(output)
    w = NO_WATERMARK if newest is None else newest - delay
    live = sum(1 for k in states if ttl is None or expiry[k] > w)
    return out, failed, live


def capture(stream: tdf.Stream) -> list[Operator]:
    built: list[Operator] = []
    factory = stream.node.params["factory"]
    stream.node.params["factory"] = lambda: built.append(factory()) or built[-1]
    return built


def run_flow(
    records: list[Record],
    fn: Any = summarize,
    *,
    key: str | list[str] = "k",
    ttl: Any = None,
    delay: int = 0,
    batch_size: int = 5,
    on_error: str | None = None,
) -> tuple[list[Record], list[Record], tdf.RunResult, StatefulMap]:
    flow = tdf.Flow("state")
    stream = flow.source(
        "src",
        tdf.io.MemorySource(records, time="t", batch_size=batch_size),
        watermark=tdf.BoundedOutOfOrder(delay),
    )
    mapped = keyed.stateful_map(stream.key_by(key), "state", fn, ttl=ttl, on_error=on_error)  # type: ignore[arg-type]
    built = capture(mapped)
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    mapped.sink("out", out)
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    op = built[0]
    assert isinstance(op, StatefulMap)
    return out.records, dead.records, result, op


def make_batches(records: list[Record], delay: int, sizes: list[int]) -> list[Batch]:
    strategy = tdf.BoundedOutOfOrder(delay)
    current = NO_WATERMARK
    batches: list[Batch] = []
    start = turn = 0
    while start < len(records):
        chunk = records[start : start + sizes[turn % len(sizes)]]
        turn += 1
        df = pl.DataFrame(chunk).with_columns(pl.int_range(start, start + len(chunk), dtype=pl.Int64).alias(POSITION))
        start += len(chunk)
        before, current = strategy.per_row(current, event_time_ms(df.get_column("t")))
        batches.append(Batch(df.hstack([before]), Origin("src"), current))
    return batches


def visible(df: pl.DataFrame) -> list[Record]:
    return df.select([c for c in df.columns if not c.startswith("_tf_")]).to_dicts()


# -- properties ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3_000), st.integers(0, 4)), min_size=1, max_size=60),
    ttl=st.one_of(st.none(), st.integers(1, 1_500)),
    delay=st.integers(0, 1_000),
    batch_size=st.integers(1, 25),
)
def test_flow_matches_the_oracle_whatever_the_batch_size(
    rows: list[tuple[int, int]], ttl: int | None, delay: int, batch_size: int
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    expected, failed, _ = oracle(records, ttl, delay)
    out, dead, result, op = run_flow(records, ttl=ttl, delay=delay, batch_size=batch_size)
    assert out == expected
    assert [letter["payload"] for letter in dead] == [f'{{"t":{r["t"]},"k":{r["k"]},"v":{r["v"]}}}' for r in failed]
    assert all(letter["step"] == "state" and "bad value" in letter["error"] for letter in dead)
    assert result.dead_letters == len(failed)
    if ttl is not None:
        assert op.state_size() == 0  # end of input expires every state
        assert len(op.index) == 0


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 3)), max_size=100),
    ttl=st.one_of(st.none(), st.integers(1, 800)),
    delay=st.integers(0, 500),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    cut=st.integers(0, 100),
)
def test_operator_frees_expired_state_after_each_batch_and_snapshots_round_trip(
    rows: list[tuple[int, int]], ttl: int | None, delay: int, sizes: list[int], cut: int
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    expected, _, _ = oracle(records, ttl, delay)
    batches = make_batches(records, delay, sizes)
    ctx = StepContext(DeadLetters())

    def fresh() -> StatefulMap:
        return StatefulMap("state", ["k"], summarize, ttl_ms=ttl, time="t")

    op = fresh()
    out: list[Record] = []
    seen = 0
    for number, batch in enumerate(batches):
        if number == min(cut, len(batches) - 1):
            saved = op.snapshot()
            op = fresh()
            op.restore(saved)
            assert op.snapshot() == saved
        result = op.process(batch, ctx)
        if result is not None:
            out.extend(visible(result.df))
        seen += batch.df.height
        assert op.state_size() == oracle(records[:seen], ttl, delay)[2]
    assert out == expected
    op.finish(ctx)
    assert op.state_size() == (0 if ttl is not None else oracle(records, None, delay)[2])


# -- value, list and dict state -----------------------------------------------------------------
def count(n: int | None, r: Record) -> tuple[int, Record]:
    n = (n or 0) + 1
    return n, {"user": r["user"], "count": n}


def last_three(items: list[int] | None, r: Record) -> tuple[list[int], Record]:
    items = [*(items or []), r["v"]][-3:]
    return items, {"user": r["user"], "recent": sum(items)}


def per_page(pages: dict[str, int] | None, r: Record) -> tuple[dict[str, int], Record]:
    pages = dict(pages or {})
    pages[r["page"]] = pages.get(r["page"], 0) + 1
    return pages, {"user": r["user"], "page": r["page"], "views": pages[r["page"]], "pages": len(pages)}


CLICK_ROWS = [("a", "x", 1), ("b", "x", 10), ("a", "y", 2), ("a", "x", 3), ("b", "y", 20), ("a", "x", 4)]
CLICKS = [{"t": i, "user": u, "page": p, "v": v} for i, (u, p, v) in enumerate(CLICK_ROWS)]


def test_a_value_as_state() -> None:
    out, _, _, op = run_flow(CLICKS, count, key="user", batch_size=4)
    assert [(r["user"], r["count"]) for r in out] == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4)]
    assert op.states == {"a": 4, "b": 2}


def test_a_list_as_state() -> None:
    out, _, _, op = run_flow(CLICKS, last_three, key="user", batch_size=2)
    assert [r["recent"] for r in out] == [1, 10, 3, 6, 30, 9]
    assert op.states == {"a": [2, 3, 4], "b": [10, 20]}


def test_a_dict_as_state() -> None:
    out, _, _, op = run_flow(CLICKS, per_page, key="user", batch_size=3)
    assert [(r["user"], r["page"], r["views"], r["pages"]) for r in out] == [
        ("a", "x", 1, 1),
        ("b", "x", 1, 1),
        ("a", "y", 1, 2),
        ("a", "x", 2, 2),
        ("b", "y", 1, 2),
        ("a", "x", 3, 2),
    ]
    assert op.states == {"a": {"x": 3, "y": 1}, "b": {"x": 1, "y": 1}}


def test_tuple_keys_and_int_keys() -> None:
    out, _, _, op = run_flow(CLICKS, count, key=["user", "page"], batch_size=4)
    assert [r["count"] for r in out] == [1, 1, 1, 2, 1, 3]
    assert op.states == {("a", "x"): 3, ("b", "x"): 1, ("a", "y"): 1, ("b", "y"): 1}
    numbered = [{"t": i, "user": i % 2, "v": i} for i in range(6)]
    out, _, _, op = run_flow(numbered, count, key="user", batch_size=4)
    assert [r["count"] for r in out] == [1, 1, 2, 2, 3, 3]
    assert op.states == {0: 3, 1: 3}


def test_returning_none_deletes_the_state_and_none_output_emits_nothing() -> None:
    def session(total: int | None, r: Record) -> tuple[int | None, Record | None]:
        total = (total or 0) + r["v"]
        if r["end"]:
            return None, {"user": r["user"], "total": total}
        return total, None

    rows = [("a", 1, False), ("a", 2, False), ("a", 3, True), ("a", 4, False), ("a", 5, True)]
    records = [{"t": i, "user": u, "v": v, "end": e} for i, (u, v, e) in enumerate(rows)]
    out, _, _, op = run_flow(records, session, key="user", batch_size=2)
    assert out == [{"user": "a", "total": 6}, {"user": "a", "total": 9}]
    assert op.state_size() == 0


# -- TTL -----------------------------------------------------------------------------------------
def test_ttl_expires_state_and_the_next_record_starts_again() -> None:
    # ttl 100 ms, delay 0. a@0 → expiry 100; a@50 → 150; b@200 moves the watermark to 200 ≥ 150,
    # so a@210 starts from None (count 1) again.
    times = [(0, "a"), (50, "a"), (200, "b"), (210, "a"), (260, "a")]
    records = [{"t": t, "user": u} for t, u in times]
    for batch_size in (1, 2, 5):
        out, _, _, op = run_flow(records, count, key="user", ttl="100ms", batch_size=batch_size)
        assert [(r["user"], r["count"]) for r in out] == [("a", 1), ("a", 2), ("b", 1), ("a", 1), ("a", 2)]
        assert op.expired == 3  # a's first state, then b and a at end of input
        assert op.state_size() == 0


def test_ttl_counts_from_the_newest_update_not_the_latest_arrival() -> None:
    # a@100 then an out-of-order a@10: the expiry stays 100 + ttl, not 10 + ttl.
    records = [{"t": 100, "user": "a"}, {"t": 10, "user": "a"}, {"t": 150, "user": "b"}, {"t": 160, "user": "a"}]
    out, _, _, _ = run_flow(records, count, key="user", ttl=100, delay=200, batch_size=1)
    assert [r["count"] for r in out] == [1, 2, 1, 3]


def test_expired_state_is_freed_when_the_watermark_passes_without_touching_the_key() -> None:
    op = StatefulMap("s", ["user"], count, ttl_ms=1_000, time="t")
    ctx = StepContext(DeadLetters())
    records = [{"t": i, "user": f"u{i}"} for i in range(5_000)]
    for batch in make_batches(records, 0, [1_000]):
        op.process(batch, ctx)
    # Watermark 4999: the states updated at t <= 3999 have expired and are gone.
    assert op.state_size() == 1_000
    assert op.expired == 4_000
    # One record at t=20000 moves the watermark past every expiry but its own (21000): the
    # thousand states nobody touched are freed through the expiry index.
    df = pl.DataFrame({"t": [20_000], "user": ["z"], WATERMARK: [4_999]})
    op.process(Batch(df, Origin("src"), 20_000), ctx)
    assert op.state_size() == 1
    assert op.expired == 5_000
    assert len(op.index) == 1


def test_stateful_map_without_ttl_needs_no_watermark_but_with_ttl_it_does() -> None:
    flow = tdf.Flow("plain")
    plain = flow.source("src", tdf.io.MemorySource([{"t": 1, "user": "a"}], time="t")).key_by("user")
    keyed.stateful_map(plain, "count", count)
    with pytest.raises(tdf.FlowDefinitionError, match="no watermark"):
        keyed.stateful_map(plain, "count-ttl", count, ttl="1m")
    with pytest.raises(tdf.FlowDefinitionError, match="not keyed"):
        keyed.stateful_map(flow.source("other", tdf.io.MemorySource([{"t": 1}])), "unkeyed", count)
    with pytest.raises(tdf.FlowDefinitionError, match="positive"):
        keyed.stateful_map(plain, "zero", count, ttl=0)
    with pytest.raises(tdf.FlowDefinitionError, match="expects a function"):
        keyed.stateful_map(plain, "nofn", "count")  # type: ignore[arg-type]


# -- errors ----------------------------------------------------------------------------------------
def test_errors_in_fn_are_dead_letters_with_the_record_and_leave_the_state() -> None:
    def fragile(n: int | None, r: Record) -> tuple[int, Record]:
        if r["v"] < 0:
            raise ValueError("negative")
        n = (n or 0) + r["v"]
        return n, {"user": r["user"], "sum": n}

    records = [{"t": i, "user": "a", "v": v} for i, v in enumerate([1, 2, -5, 3])]
    out, dead, result, _ = run_flow(records, fragile, key="user", batch_size=3)
    assert [r["sum"] for r in out] == [1, 3, 6]
    assert result.dead_letters == 1
    (letter,) = dead
    assert letter["step"] == "state"
    assert letter["error"] == "ValueError: negative"
    assert letter["payload"] == '{"t":2,"user":"a","v":-5}'
    assert letter["position"] == "index 2"
    with pytest.raises(tdf.StepError, match=r"'state' failed at .*index 2.*negative"):
        run_flow(records, fragile, key="user", batch_size=3, on_error="fail")


def test_a_function_returning_the_wrong_shape_is_a_dead_letter() -> None:
    records = [{"t": 0, "user": "a"}, {"t": 1, "user": "a"}, {"t": 2, "user": "a"}]
    shapes = iter([{"user": "a"}, (1, ["not", "a", "dict"]), (2, {"user": "a", "n": 2})])
    out, dead, _, op = run_flow(records, lambda s, r: next(shapes), key="user", batch_size=3)
    assert out == [{"user": "a", "n": 2}]
    assert ["must return (new_state" in dead[0]["error"], "must be a dict or None" in dead[1]["error"]] == [True, True]
    assert op.states == {"a": 2}


def test_outputs_keep_positions_and_row_watermarks() -> None:
    (batch,) = make_batches([{"t": 5, "user": "a"}, {"t": 9, "user": "a"}, {"t": 7, "user": "b"}], 2, [3])
    op = StatefulMap("s", ["user"], lambda n, r: ((n or 0) + 1, None if r["t"] == 9 else r), time="t")
    result = op.process(batch, StepContext(DeadLetters()))
    assert result is not None
    assert result.df.get_column(POSITION).to_list() == [0, 2]
    assert result.df.get_column(WATERMARK).to_list() == [NO_WATERMARK, 7]
    assert op.records_in == 3 and op.records_out == 2


# -- snapshots ------------------------------------------------------------------------------------
def test_snapshot_is_a_copy_and_restore_rebuilds_the_expiry_index() -> None:
    op = StatefulMap("s", ["user"], last_three, ttl_ms=100, time="t")
    ctx = StepContext(DeadLetters())
    (batch,) = make_batches([{"t": 0, "user": "a", "v": 1}, {"t": 30, "user": "b", "v": 2}], 0, [2])
    op.process(batch, ctx)
    saved = op.snapshot()
    assert saved["states"] == {"a": [1], "b": [2]}
    assert saved["expiry"] == {"a": 100, "b": 130}
    op.states["a"].append(99)  # a later in-place change does not reach the snapshot
    assert saved["states"]["a"] == [1]
    restored = StatefulMap("s", ["user"], last_three, ttl_ms=100, time="t")
    restored.restore(saved)
    assert len(restored.index) == 2
    restored._advance(100)
    assert restored.states == {"b": [2]}
    with pytest.raises(ValueError, match="not a stateful_map snapshot"):
        restored.restore({"kind": "dedupe", "version": 1})


# -- the building blocks --------------------------------------------------------------------------
def test_expiry_index_returns_entries_in_time_order_without_scanning_live_ones() -> None:
    index = ExpiryIndex()
    index.add([50, 10, 30], ["c", "a", "b"])
    index.add([20, 20, 90], ["d", None, ("t", 1)])  # any hashable, ties never compare keys
    assert len(index) == 6
    assert index.next_expiry() == 10
    assert index.expired(9)[1] == []
    expiries, keys = index.expired(20)
    assert (expiries.tolist(), keys) == ([10, 20, 20], ["a", "d", None])
    assert index.expired(50)[1] == ["b", "c"]
    assert index.next_expiry() == 90
    assert index.expired(10**18)[1] == [("t", 1)]
    assert len(index) == 0 and index.next_expiry() is None


def test_python_keys_are_values_or_tuples() -> None:
    df = pl.DataFrame({"a": [1, 2, None], "b": ["x", "y", "z"], "l": [[1], [2, 3], None]})
    assert python_keys([df["a"]]) == [1, 2, None]
    assert python_keys([df["a"], df["b"]]) == [(1, "x"), (2, "y"), (None, "z")]
    assert python_keys([df["l"]]) == [(1,), (2, 3), None]
