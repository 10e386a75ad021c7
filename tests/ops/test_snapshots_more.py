"""Snapshots of count windows and of stateful ``map_batches`` steps (anomaly scoring, forecasts).

The property is the one checkpoints rest on: an operator interrupted at any batch, snapshotted,
sent through pickle (what the checkpoint codec does) and restored into a fresh operator built
by the same flow code, gives exactly the outputs of the uninterrupted operator. Snapshots go
through the checkpoint codec (pickle protocol 5 out, the restricted unpickler in).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.anomaly import RobustZScore, SeasonalBaseline, ThresholdCalibrator, detect_anomalies
from tideflow.checkpoint.codec import decode, encode
from tideflow.deadletters import DeadLetters
from tideflow.forecast import RLSAutoRegressive, forecast_stream
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.stateless import MapBatches, state_owner
from tideflow.record import POSITION, Batch, Origin

from .test_dedupe import make_batches, visible

Record = dict[str, Any]


def codec(state: Any) -> Any:
    """A snapshot as a checkpoint gives it back: encoded, and decoded by the restricted unpickler."""
    return decode(encode(state))


def run(make: Callable[[], Operator], batches: list[Batch], cuts: list[int]) -> list[Record]:
    """Every output row of a run that is checkpointed and restarted before each batch in ``cuts``."""
    ctx = StepContext(DeadLetters())
    op = make()
    out: list[Record] = []
    for number, batch in enumerate(batches):
        if number in cuts:
            saved = codec(op.snapshot())
            op = make()
            op.restore(saved)
        result = op.process(batch, ctx)
        if result is not None:
            out.extend(visible(result.df))
    result = op.finish(ctx)
    if result is not None:
        out.extend(visible(result.df))
    assert ctx.dead_letters.total == 0
    return out


# -- count windows --------------------------------------------------------------------------------
def count_window_factory(n: int, keyed: bool, timed: bool) -> Callable[[], Operator]:
    flow = tdf.Flow("c")
    source = flow.source("src", tdf.io.MemorySource([{"t": 0, "k": 0, "v": 0}], time="t" if timed else None))
    stream = source.key_by("k") if keyed else source
    stream.window("w", tdf.windows.count(n)).agg(
        n=pl.len(), total=pl.col("v").sum(), first=pl.col("v").first(), last=pl.col("v").last()
    )
    return flow.nodes["w"].params["factory"]  # type: ignore[no-any-return]


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 60_000), st.sampled_from(["a", "b", None])), min_size=1, max_size=80),
    n=st.integers(1, 7),
    keyed=st.booleans(),
    timed=st.booleans(),
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 25), max_size=3),
)
def test_a_restored_count_window_gives_the_results_of_an_uninterrupted_one(  # type: ignore[no-untyped-def]
    rows, n, keyed, timed, sizes, cuts
) -> None:
    make = count_window_factory(n, keyed, timed)
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    batches = make_batches(records, 0, sizes)
    expected = run(make, batches, [])
    assert run(make, batches, cuts) == expected
    assert sum(r["n"] for r in expected) == len(records)


def test_count_window_refuses_a_snapshot_of_another_size_or_kind() -> None:
    op = count_window_factory(3, True, True)()
    saved = op.snapshot()
    assert saved["open"] is None and saved["counts"] == {}
    with pytest.raises(ValueError, match="windows of 3 records, not 4"):
        count_window_factory(4, True, True)().restore(saved)
    with pytest.raises(ValueError, match="not a count_window snapshot"):
        op.restore({"kind": "window", "version": 1})


# -- map_batches: whose state is checkpointed -----------------------------------------------------
class Counter:
    """A stateful batch function with snapshot/restore (the contract map_batches follows)."""

    def __init__(self) -> None:
        self.seen = 0

    def add_count(self, df: pl.DataFrame) -> pl.DataFrame:
        self.seen += df.height
        return df.with_columns(pl.int_range(self.seen - df.height, self.seen, dtype=pl.Int64).alias("n"))

    __call__ = add_count

    def snapshot(self) -> int:
        return self.seen

    def restore(self, state: int) -> None:
        self.seen = state


def test_map_batches_checkpoints_through_the_functions_owner() -> None:
    counter = Counter()
    bound = MapBatches("m", counter.add_count, "dlq", stateful=True)
    callable_object = MapBatches("m", counter, "dlq", stateful=True)
    assert state_owner(counter.add_count) is counter and state_owner(counter) is counter
    for op in (bound, callable_object):
        assert op.checkpointed_state
    ctx = StepContext(DeadLetters())
    bound.process(Batch(pl.DataFrame({"x": [1, 2, 3]})), ctx)
    saved = {group: codec(part) for group, part in (bound.snapshot_groups(128) or {}).items()}
    assert saved == {-1: {"kind": "map_batches", "version": 1, "state": 3}}
    fresh = Counter()
    restored = MapBatches("m", fresh.add_count, "dlq", stateful=True)
    restored.restore_groups(saved)
    out = restored.process(Batch(pl.DataFrame({"x": [4]})), ctx)
    assert out is not None and out.df.get_column("n").to_list() == [3]


def test_a_stateful_function_without_snapshot_is_marked_unrecoverable_and_a_plain_one_stateless() -> None:
    seen: list[int] = []

    def remember(df: pl.DataFrame) -> pl.DataFrame:
        seen.append(df.height)
        return df

    stateful = MapBatches("m", remember, "dlq", stateful=True)
    assert not stateful.checkpointed_state and stateful.snapshot() is None
    assert stateful.snapshot_groups(128) is None
    plain = MapBatches("m", remember, "dlq")
    assert plain.checkpointed_state and plain.snapshot() is None
    with pytest.raises(TypeError, match="keeps no state"):
        plain.restore({"kind": "map_batches", "version": 1, "state": None})
    assert state_owner(Counter) is None  # a class is not an object with state
    assert state_owner([].append) is None  # a bound method of an object without snapshot/restore


# -- detect_anomalies -----------------------------------------------------------------------------
T0 = 1_700_000_000_000
FIVE_MINUTES = 300_000


def telemetry(n: int, seed: int) -> list[Record]:
    """Two daily-cycle series at 5-minute steps, noise, and a few spikes; rows interleaved."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for series, level in (("cpu", 50.0), ("mem", 20.0)):
            value = level + 10 * np.sin(2 * np.pi * i / 288) + rng.normal(0, 1)
            if rng.random() < 0.01:
                value += rng.choice([-1, 1]) * 25
            if rng.random() < 0.005:
                value = float("nan")  # a gap: no score, not learnt
            rows.append({"series": series, "timestamp": T0 + i * FIVE_MINUTES, "value": float(value)})
    return rows


def frame_batches(records: list[Record], sizes: list[int]) -> list[Batch]:
    batches, start, turn = [], 0, 0
    while start < len(records):
        chunk = records[start : start + sizes[turn % len(sizes)]]
        df = pl.DataFrame(chunk).with_columns(pl.int_range(start, start + len(chunk), dtype=pl.Int64).alias(POSITION))
        batches.append(Batch(df, Origin("src")))
        start += len(chunk)
        turn += 1
    return batches


def anomaly_step(detector: Callable[[], Any]) -> Callable[[], Operator]:
    """The operator ``detect_anomalies`` adds, from a fresh flow each time (each with its own scorer,
    as a restarted process would build it)."""

    def make() -> Operator:
        flow = tdf.Flow("anomalies")
        source = flow.source("src", tdf.io.MemorySource([{"series": "x", "timestamp": T0, "value": 0.0}]))
        detect_anomalies(
            source,
            "detect",
            detector,
            calibrator=lambda: ThresholdCalibrator(target_fpr=0.02, warmup=60, cooldown=3, update_every=8),
        )
        node = flow.nodes["detect"]
        p = node.params
        return MapBatches(node.name, p["fn"], "dlq", p["format"], p["same_rows"], p["stateful"])

    return make


@pytest.mark.parametrize(
    "detector",
    [
        lambda: RobustZScore(window=48, min_history=12),
        lambda: SeasonalBaseline(slot_minutes=60, history=12, min_history=3),
    ],
    ids=["robust-z", "seasonal"],
)
@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 200), min_size=1, max_size=4), cuts=st.lists(st.integers(0, 40), max_size=3))
def test_a_restored_anomaly_step_scores_and_alerts_as_an_uninterrupted_one(
    detector: Callable[[], Any], sizes: list[int], cuts: list[int]
) -> None:
    make = anomaly_step(detector)
    batches = frame_batches(telemetry(900, seed=7), sizes)
    expected = run(make, batches, [])
    assert sum(r["is_anomaly"] for r in expected) > 5  # the threshold is calibrated and does alert
    got = run(make, batches, cuts)
    assert pl.DataFrame(got).equals(pl.DataFrame(expected))  # scores bit for bit (NaN-safe), flags too


def test_the_anomaly_scorers_state_pickles_and_is_detached() -> None:
    op = anomaly_step(lambda: SeasonalBaseline(slot_minutes=60, history=12, min_history=3))()
    ctx = StepContext(DeadLetters())
    batches = frame_batches(telemetry(300, seed=3), [100])
    op.process(batches[0], ctx)
    saved = op.snapshot()
    assert saved is not None
    state = saved["state"]
    assert set(state["detectors"]) == {"cpu", "mem"} and set(state["calibrators"]) == {"cpu", "mem"}
    before = pickle.dumps(saved, protocol=5)
    op.process(batches[1], ctx)  # the operator goes on: the snapshot does not
    assert pickle.dumps(saved, protocol=5) == before
    restored = codec(saved)
    assert restored["state"]["calibrators"]["cpu"].threshold == state["calibrators"]["cpu"].threshold


# -- forecast -------------------------------------------------------------------------------------
def load(n: int, seed: int) -> list[Record]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for host, base in (("a", 20.0), ("b", 5.0)):
            value = base + 3 * np.sin(2 * np.pi * i / 12) + rng.normal(0, 0.3)
            rows.append({"host": host, "ts": T0 + i * 60_000, "value": float(value)})
    return rows


def forecast_step(every: int) -> Callable[[], Operator]:
    def make() -> Operator:
        flow = tdf.Flow("forecast")
        readings = flow.source("readings", tdf.io.MemorySource([{"host": "a", "ts": T0, "value": 0.0}], time="ts"))
        forecast_stream(
            readings.key_by("host"),
            "fc",
            lambda: RLSAutoRegressive(3, seasonal_lags=(12,), max_horizon=4),
            interval=60_000,
            on="value",
            horizon=3,
            every=every,
        )
        node = flow.nodes["fc"]
        p = node.params
        return MapBatches(node.name, p["fn"], "dlq", p["format"], p.get("same_rows"), p.get("stateful", False))

    return make


@settings(max_examples=25, deadline=None)
@given(
    every=st.sampled_from([1, 3]),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_a_restored_forecast_step_forecasts_as_an_uninterrupted_one(
    every: int, sizes: list[int], cuts: list[int]
) -> None:
    make = forecast_step(every)
    batches = frame_batches(load(150, seed=5), sizes)
    expected = run(make, batches, [])
    assert len(expected) == 300 // every
    got = run(make, batches, cuts)
    assert pl.DataFrame(got).equals(pl.DataFrame(expected))  # forecasts and intervals bit for bit


def test_the_forecast_state_pickles_and_holds_each_keys_forecaster() -> None:
    op = forecast_step(1)()
    ctx = StepContext(DeadLetters())
    batches = frame_batches(load(40, seed=1), [30])
    op.process(batches[0], ctx)
    saved = op.snapshot()
    assert saved is not None
    state = codec(saved)["state"]
    assert state["kind"] == "forecasters" and set(state["models"]) == {("a",), ("b",)}
    assert state["counts"] == {("a",): 15, ("b",): 15}
    assert isinstance(state["models"][("a",)], RLSAutoRegressive)
    assert state["models"][("a",)].n_seen == 15
