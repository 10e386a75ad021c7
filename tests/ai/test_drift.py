"""Drift detection: synthetic changes are found within a stated delay, and only them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.ai import drift

pytest.importorskip("river")


def events_for(values: list[dict], detector, *, key: str | None = None, batch_size: int = 100) -> list[dict]:  # type: ignore[no-untyped-def]
    flow = tdf.Flow("drift")
    out = tdf.io.MemorySink()
    stream = flow.source("src", tdf.io.MemorySource(values, batch_size=batch_size))
    if key is not None:
        stream = stream.key_by(key)
    stream.detect_drift("drift", on="x", detector=detector).sink("events", out)
    flow.run(handle_signals=False)
    return out.records


def shifted(n: int, change: int, before: tuple[float, float], after: tuple[float, float], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(*before, size=change), rng.normal(*after, size=n - change)])
    return [{"i": i, "x": float(v)} for i, v in enumerate(values)]


def test_adwin_finds_a_rise_in_error_rate_within_300_rows_and_nothing_before() -> None:
    rng = np.random.default_rng(1)
    errors = np.concatenate([rng.random(4000) < 0.1, rng.random(2000) < 0.4]).astype(float)
    found = events_for([{"x": float(e)} for e in errors], drift.adwin())
    first = [e["index"] for e in found]
    assert first and all(index >= 4000 for index in first)  # no false alarm on the stable part
    assert first[0] - 4000 <= 300
    assert found[0]["detector"] == "ADWIN" and "estimation" in found[0]["evidence"]


def test_page_hinkley_finds_a_mean_shift_within_100_rows() -> None:
    found = events_for(shifted(4000, 2000, (0, 1), (2, 1)), drift.page_hinkley(threshold=100))
    assert found and found[0]["index"] >= 2000 and found[0]["index"] - 2000 <= 100


@pytest.mark.parametrize(
    "detector", [drift.PopulationStability(window=500), drift.KolmogorovSmirnov(window=500)], ids=["psi", "ks"]
)
def test_feature_drift_against_the_reference_window(detector) -> None:  # type: ignore[no-untyped-def]
    found = events_for(shifted(6000, 3000, (0, 1), (1, 1)), detector)
    assert len(found) == 1  # one change, reported once: the new window becomes the reference
    assert 3000 <= found[0]["index"] <= 3000 + 500


def test_each_key_has_its_own_detector() -> None:
    calm = shifted(3000, 1500, (0, 1), (0, 1), seed=2)
    moving = shifted(3000, 1500, (0, 1), (3, 1), seed=3)
    rows = [r | {"host": "calm"} for r in calm] + [r | {"host": "moving"} for r in moving]
    rows.sort(key=lambda r: r["i"])
    found = events_for(rows, drift.page_hinkley(threshold=100), key="host")
    assert {e["key"] for e in found} == {"moving"}
    assert found[0]["index"] >= 1500


@settings(max_examples=10, deadline=None)
@given(batch_size=st.integers(1, 400))
def test_events_do_not_depend_on_batching(batch_size) -> None:  # type: ignore[no-untyped-def]
    data = shifted(2000, 1000, (0, 1), (1.5, 1), seed=4)
    assert events_for(data, drift.adwin(), batch_size=batch_size) == events_for(data, drift.adwin(), batch_size=2000)


def test_a_concept_change_is_seen_in_a_learning_models_error_within_a_stated_delay() -> None:
    """The closed loop: a model learning online, its prequential error, ADWIN on that error."""
    from river import linear_model

    rng = np.random.default_rng(5)
    rows = []
    for i in range(6000):
        x1, x2 = rng.normal(size=2)
        label = bool(x1 + x2 > 0) if i < 3000 else bool(x1 - x2 > 0)  # the concept changes at 3000
        rows.append({"i": i, "x1": float(x1), "x2": float(x2), "y": label})
    flow = tdf.Flow("closed-loop")
    events = tdf.io.MemorySink()
    scored = flow.source("src", tdf.io.MemorySource(rows, batch_size=250)).learn(
        "model",
        tdf.ai.RiverModel(linear_model.LogisticRegression(), concurrency="thread"),
        inputs=["x1", "x2"],
        label="y",
    )
    errors = scored.with_columns("error", x=(pl.col("prediction") != pl.col("y")).cast(pl.Float64))
    errors.detect_drift("drift", on="x", detector=drift.adwin(direction="up")).sink("events", events)
    flow.run(handle_signals=False)
    detected = [e["index"] for e in events.records]
    assert detected and all(index >= 3000 for index in detected)
    assert detected[0] - 3000 <= 250  # stated delay: within 250 rows of the change


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), max_size=6), check_every=st.integers(1, 70))
def test_window_tests_do_not_depend_on_how_values_are_cut(cuts, check_every) -> None:  # type: ignore[no-untyped-def]
    values = np.array([row["x"] for row in shifted(3000, 1500, (0, 1), (1, 1), seed=8)])
    for make in (drift.PopulationStability, drift.KolmogorovSmirnov):
        whole = make(window=200, check_every=check_every).update(values)
        chunked = make(window=200, check_every=check_every)
        parts = [e for part in np.split(values, sorted(cuts)) for e in chunked.update(part)]
        assert parts == whole and whole  # the shift at 1,500 is found either way
