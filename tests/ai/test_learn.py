"""The learn step: test-then-train predictions and rolling metrics, against direct oracles."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest

import tideflow as tdf

river = pytest.importorskip("river")
sklearn = pytest.importorskip("sklearn")


def concept_stream(n: int, seed: int = 3, flip_at: int | None = None) -> list[dict]:
    """Two features; the label is whether x1 + x2 > 0, reversed after ``flip_at`` (concept drift)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x1, x2 = rng.normal(size=2)
        positive = x1 + x2 > 0
        if flip_at is not None and i >= flip_at:
            positive = not positive
        rows.append({"id": i, "x1": float(x1), "x2": float(x2), "y": bool(positive)})
    return rows


def run_learn(model, data, *, batch_size=64, **options):  # type: ignore[no-untyped-def]
    flow = tdf.Flow("learn")
    out, metrics = tdf.io.MemorySink(), tdf.io.MemorySink()
    learned = flow.source("src", tdf.io.MemorySource(data, batch_size=batch_size)).learn("fit", model, **options)
    learned.sink("out", out)
    learned.metrics().sink("metrics", metrics)
    result = flow.run(handle_signals=False)
    return out.frame, metrics.frame, result


def test_river_predictions_are_made_before_each_row_is_learned() -> None:
    from river import linear_model

    data = concept_stream(1500)
    oracle_model = linear_model.LogisticRegression()
    expected = []
    for row in data:
        x = {"x1": row["x1"], "x2": row["x2"]}
        expected.append(oracle_model.predict_one(x))
        oracle_model.learn_one(x, row["y"])
    handler = tdf.ai.RiverModel(linear_model.LogisticRegression(), concurrency="thread")
    out, metrics, result = run_learn(handler, data, inputs=["x1", "x2"], label="y", every=500, window=500)
    assert out.get_column("prediction").to_list() == expected
    assert out.get_column("id").to_list() == list(range(1500))
    # Rolling accuracy over the last 500 labelled rows, at rows 500, 1000 and 1500.
    correct = np.array(expected) == np.array([row["y"] for row in data])
    assert metrics.get_column("labelled").to_list() == [500, 1000, 1500]
    assert metrics.get_column("accuracy").to_list() == pytest.approx(
        [correct[:500].mean(), correct[500:1000].mean(), correct[1000:1500].mean()]
    )
    assert result.step("fit").metrics["learned"] == 1500


def test_metrics_do_not_depend_on_how_the_stream_is_cut() -> None:
    from river import linear_model

    data = concept_stream(800)
    frames = []
    for batch_size in (1, 7, 800):
        handler = tdf.ai.RiverModel(linear_model.LogisticRegression(), concurrency="thread")
        _, metrics, _ = run_learn(handler, data, batch_size=batch_size, inputs=["x1", "x2"], label="y", every=100)
        frames.append(metrics)
    assert frames[0].equals(frames[1]) and frames[1].equals(frames[2])


def test_rows_without_labels_are_served_but_not_learned() -> None:
    from river import linear_model

    data = concept_stream(600)
    for i, row in enumerate(data):
        if i % 3:
            row["y"] = None
    handler = tdf.ai.RiverModel(linear_model.LogisticRegression(), concurrency="thread")
    out, _, result = run_learn(handler, data, inputs=["x1", "x2"], label="y")
    assert out.height == 600
    assert result.step("fit").metrics["learned"] == 200


def test_sklearn_partial_fit_learns_batch_by_batch() -> None:
    from sklearn.linear_model import SGDClassifier

    data = concept_stream(2000)
    frame = pl.DataFrame(data)
    oracle = SGDClassifier(random_state=0)
    handler = tdf.ai.SklearnModel(copy.deepcopy(oracle), classes=[False, True])
    expected = []
    for start in range(0, 2000, 100):
        part = frame.slice(start, 100)
        x = part.select("x1", "x2").to_numpy()
        expected.extend(oracle.predict(x).tolist() if hasattr(oracle, "coef_") else [None] * 100)
        oracle.partial_fit(x, part.get_column("y").to_numpy(), classes=[False, True])
    out, metrics, _ = run_learn(handler, data, batch_size=100, inputs=["x1", "x2"], label="y", granularity="batch")
    got = out.get_column("prediction").to_list()
    assert got[100:] == expected[100:]  # the first batch is predicted by an unfitted model
    assert metrics.get_column("accuracy").to_list()[-1] > 0.9


def test_regression_metrics_are_mae_and_rmse() -> None:
    from river import linear_model

    rng = np.random.default_rng(1)
    data = [{"x": float(x), "y": float(3 * x + rng.normal(0, 0.1))} for x in rng.normal(size=1000)]
    handler = tdf.ai.RiverModel(linear_model.LinearRegression(), concurrency="thread")
    out, metrics, _ = run_learn(handler, data, inputs="x", label="y", task="regression", every=250, window=250)
    errors = np.abs(out.get_column("prediction").to_numpy() - out.get_column("y").to_numpy())
    assert metrics.get_column("mae").to_list() == pytest.approx(
        [errors[i : i + 250].mean() for i in range(0, 1000, 250)]
    )
    assert metrics.get_column("mae").to_list()[-1] < 0.2


def test_a_model_that_cannot_learn_is_refused() -> None:
    flow = tdf.Flow("bad")
    source = flow.source("src", tdf.io.MemorySource([{"x": 1.0, "y": 1}]))
    with pytest.raises(tdf.FlowDefinitionError, match="cannot learn"):
        source.learn("fit", tdf.ai.BatchFunction(lambda f: f), inputs="x", label="y")
