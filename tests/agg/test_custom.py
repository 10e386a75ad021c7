"""The Aggregator protocol: the documented example, the default add_groups, binding columns, helpers."""

from __future__ import annotations

import doctest
import struct
from collections import Counter
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow.agg.base
from tideflow.agg import (
    Aggregator,
    ApproxDistinct,
    ApproxQuantile,
    DDSketch,
    HyperLogLog,
    approx_distinct,
    approx_quantile,
    custom,
)
from tideflow.agg.base import NotCheckpointable, group_order


class Range(Aggregator[tuple[float, float] | None]):
    """The example of the module docstring: max - min."""

    dtype = pl.Float64

    def init(self) -> None:
        return None

    def add(self, state: tuple[float, float] | None, values: Any) -> tuple[float, float] | None:
        values = values.drop_nulls()
        if values.len() == 0:
            return state
        return self.merge(state, (float(values.min()), float(values.max())))

    def merge(self, a: tuple[float, float] | None, b: tuple[float, float] | None) -> tuple[float, float] | None:
        if a is None or b is None:
            return b if a is None else a
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, state: tuple[float, float] | None) -> float | None:
        return None if state is None else state[1] - state[0]

    def to_bytes(self, state: tuple[float, float] | None) -> bytes:
        return b"" if state is None else struct.pack("<dd", *state)

    def from_bytes(self, data: bytes) -> tuple[float, float] | None:
        return struct.unpack("<dd", data) if data else None


class TopK(Aggregator[Counter]):
    """The k most frequent values: a state that is a Counter, built with one value_counts per call."""

    dtype = pl.List(pl.String)

    def __init__(self, column: str | None = None, k: int = 2) -> None:
        super().__init__(column)
        self.k = k

    def init(self) -> Counter:
        return Counter()

    def add(self, state: Counter, values: Any) -> Counter:
        counts = values.drop_nulls().value_counts()
        state.update(dict(zip(counts[:, 0].to_list(), counts["count"].to_list(), strict=True)))
        return state

    def merge(self, a: Counter, b: Counter) -> Counter:
        a.update(b)
        return a

    def result(self, state: Counter) -> list[str]:
        return [v for v, _ in sorted(state.items(), key=lambda kv: (-kv[1], kv[0]))[: self.k]]


class ErrorShare(Aggregator[tuple[int, int]]):
    """column=None: reads several columns of the group's rows."""

    dtype = pl.Float64

    def init(self) -> tuple[int, int]:
        return (0, 0)

    def add(self, state: tuple[int, int], values: Any) -> tuple[int, int]:
        assert isinstance(values, pl.DataFrame)
        errors = values.filter((pl.col("status") >= 500) & (pl.col("method") == "GET")).height
        return (state[0] + errors, state[1] + values.height)

    def merge(self, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, state: tuple[int, int]) -> float | None:
        return state[0] / state[1] if state[1] else None


def test_module_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(tideflow.agg.base, verbose=False)
    assert tried > 5 and failures == 0


def test_range_aggregator() -> None:
    agg = Range("latency")
    a = agg.add(agg.init(), pl.Series([3.0, None, 10.0]))
    b = agg.add(agg.init(), pl.Series([-1.0]))
    empty = agg.add(agg.init(), pl.Series([None], dtype=pl.Float64))
    assert agg.result(agg.merge(a, b)) == 11.0
    assert agg.result(agg.merge(empty, a)) == 7.0
    assert agg.result(empty) is None
    assert agg.from_bytes(agg.to_bytes(a)) == a
    assert agg.from_bytes(agg.to_bytes(None)) is None


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), max_size=50),
    n_groups=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_default_add_groups_equals_one_add_per_group(values: list[float | None], n_groups: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_groups, len(values))
    series = pl.Series("v", values, dtype=pl.Float64)
    for agg in (Range("v"), TopK("v", k=3)):
        states = agg.add_groups(ids, series.cast(pl.String) if isinstance(agg, TopK) else series, n_groups)
        assert len(states) == n_groups
        for g in range(n_groups):
            rows = series.filter(pl.Series(ids == g))
            expected = agg.add(agg.init(), rows.cast(pl.String) if isinstance(agg, TopK) else rows)
            assert agg.result(states[g]) == agg.result(expected)


def test_default_add_groups_keeps_arrival_order_and_reads_frames() -> None:
    seen: list[list[int]] = []

    class Collect(Range):
        def add(self, state: Any, values: Any) -> Any:
            seen.append(values.to_list())
            return super().add(state, values)

    ids = np.array([2, 0, 2, 0, 2])
    Collect("v").add_groups(ids, pl.Series([1.0, 2.0, 3.0, 4.0, 5.0]), 4)
    assert seen == [[2.0, 4.0], [1.0, 3.0, 5.0]]  # group 1 and 3 have no rows: init(), no add call

    frame = pl.DataFrame({"status": [200, 503, 500, 404], "method": ["GET", "GET", "POST", "GET"]})
    agg = custom(None, ErrorShare)
    states = agg.add_groups(np.array([0, 0, 1, 1]), frame, 3)
    assert [agg.result(s) for s in states] == [0.5, 0.0, None]
    with pytest.raises(ValueError, match="group ids"):
        agg.add_groups(np.array([0]), frame, 1)


def test_group_order() -> None:
    assert group_order(np.array([0, 0, 1, 3]), 4) is None
    rng = np.random.default_rng(0)
    for n_groups in (3, 70_000):
        ids = rng.integers(0, n_groups, 200_000)
        order = group_order(ids, n_groups)
        assert order is not None
        np.testing.assert_array_equal(order, np.argsort(ids, kind="stable"))


def test_custom_binds_a_column() -> None:
    bound = custom("latency", Range)
    assert isinstance(bound, Range) and bound.column == "latency"
    template = TopK(k=5)
    other = custom("host", template)
    assert other is not template and other.column == "host" and other.k == 5 and template.column is None
    with pytest.raises(TypeError, match="Aggregator"):
        custom("x", int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Aggregator"):
        custom("x", pl.col("x").max())  # type: ignore[arg-type]


def test_protocol_defaults() -> None:
    with pytest.raises(TypeError):
        Aggregator()  # type: ignore[abstract]
    agg = TopK("v")
    state = agg.add(agg.init(), pl.Series(["a", "b", "a"]))
    copied = agg.copy(state)
    agg.merge(copied, state)
    assert agg.result(state) == ["a", "b"] and state["a"] == 2 and copied["a"] == 4
    with pytest.raises(NotCheckpointable, match="to_bytes"):
        agg.to_bytes(state)
    with pytest.raises(NotCheckpointable, match="from_bytes"):
        agg.from_bytes(b"")
    assert "TopK" in repr(agg)


def test_helpers_build_the_sketch_aggregators() -> None:
    p99 = approx_quantile("latency", 0.99)
    quartiles = approx_quantile("latency", [0.25, 0.5, 0.75], relative_accuracy=0.02)
    users = approx_distinct("user", precision=10)
    assert isinstance(p99, ApproxQuantile) and isinstance(users, ApproxDistinct)
    assert p99.column == "latency" and users.column == "user"
    assert p99.dtype == pl.Float64 and quartiles.dtype == pl.List(pl.Float64) and users.dtype == pl.Int64
    assert isinstance(p99.init(), DDSketch) and isinstance(users.init(), HyperLogLog)
    assert users.init().precision == 10 and quartiles.init().relative_accuracy == 0.02

    values = pl.Series("latency", np.arange(1, 1001, dtype=np.float64))
    left = p99.add(p99.init(), values[:400])
    right = p99.add(p99.init(), values[400:])
    assert abs(p99.result(p99.merge(left, right)) - 990.0) <= 9.9
    q = quartiles.result(quartiles.add(quartiles.init(), values))
    assert isinstance(q, list) and len(q) == 3
    assert all(abs(e - x) <= 0.02 * x for e, x in zip(q, [250.0, 500.0, 750.0], strict=True))
    assert p99.result(p99.init()) is None and quartiles.result(quartiles.init()) is None

    ids = pl.Series("user", ["a", "b", None, "a"])
    state = users.merge(users.add(users.init(), ids), users.add(users.init(), pl.Series(["c"])))
    assert users.result(state) == 3 and isinstance(users.result(state), int)
    assert users.result(users.init()) == 0

    # the engine's copy keeps a pane's state intact while a window result is merged
    pane = p99.add(p99.init(), values)
    window = p99.merge(p99.copy(pane), pane)
    assert window.count == 2 * pane.count == 2000
    assert "ApproxQuantile" in repr(p99) and "precision=10" in repr(users)


def test_sketch_aggregators_override_add_groups() -> None:
    ids = np.array([1, 0, 1, 1])
    values = pl.Series("v", [1.0, 2.0, None, 4.0])
    q = approx_quantile("v", 0.5)
    d = approx_distinct("v")
    assert [s.count for s in q.add_groups(ids, values, 3)] == [1, 2, 0]
    assert [d.result(s) for s in d.add_groups(ids, values, 3)] == [1, 2, 0]
    assert type(q).add_groups is not Aggregator.add_groups and type(d).add_groups is not Aggregator.add_groups
