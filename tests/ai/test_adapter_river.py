"""RiverModel: online learning one record at a time, then predicting from what was learnt."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import polars as pl
import pytest

from tideflow.ai import RiverModel
from tideflow.ai.base import as_columns

pytest.importorskip("river")

from river import anomaly, linear_model, preprocessing


def stream(n: int, seed: int = 2) -> tuple[pl.DataFrame, pl.Series]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x[:, 0] - x[:, 1] > 0
    return pl.DataFrame({"x0": x[:, 0], "x1": x[:, 1]}), pl.Series("label", y)


def test_logistic_regression_learns_then_predicts() -> None:
    handler = RiverModel(preprocessing.StandardScaler() | linear_model.LogisticRegression())
    assert handler.concurrency == "process" and handler.can_learn
    model = handler.load("cpu")
    test_x, test_y = stream(200, seed=9)
    for start in range(0, 600, 100):
        train_x, train_y = stream(600)
        handler.learn_batch(model, train_x.slice(start, 100), train_y.slice(start, 100))
    predicted = handler.predict_batch(model, test_x)
    assert len(predicted) == 200
    assert (np.array(predicted) == test_y.to_numpy()).mean() > 0.9
    # The handler calls exactly what River would: the same rows give the same answers.
    rows = test_x.iter_rows(named=True)
    assert predicted == [model.predict_one(row) for row in rows]


def test_learning_per_record_does_not_depend_on_batch_boundaries() -> None:
    train_x, train_y = stream(300)
    handlers = [RiverModel(linear_model.LogisticRegression()) for _ in range(2)]
    models = [handler.load("cpu") for handler in handlers]
    handlers[0].learn_batch(models[0], train_x, train_y)
    for start in range(0, 300, 7):
        handlers[1].learn_batch(models[1], train_x.slice(start, 7), train_y.slice(start, 7))
    assert models[0].weights == pytest.approx(models[1].weights)


def test_predict_proba_gives_named_columns_or_a_matrix() -> None:
    train_x, train_y = stream(300)
    model = linear_model.LogisticRegression()
    RiverModel(model).learn_batch(model, train_x, train_y)
    test_x, _ = stream(20, seed=4)
    named = RiverModel(model, method="predict_proba_one").predict_batch(model, test_x)
    assert set(named) == {"False", "True"}
    expected = [model.predict_proba_one(row)[True] for row in test_x.iter_rows(named=True)]
    assert named["True"] == pytest.approx(expected)
    assert as_columns(named, ["True"], 20)["True"].len() == 20
    matrix = RiverModel(model, method="predict_proba_one", classes=[False, True]).predict_batch(model, test_x)
    assert matrix.shape == (20, 2)
    np.testing.assert_allclose(matrix[:, 1], expected)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


def test_predict_many_matches_predict_one() -> None:
    train_x, train_y = stream(300)
    model = linear_model.LogisticRegression()
    RiverModel(model, learn_many=True).learn_batch(model, train_x, train_y)  # one mini-batch step
    test_x, _ = stream(30, seed=5)
    many = RiverModel(model, method="predict_proba_many").predict_batch(model, test_x)
    one = RiverModel(model, method="predict_proba_one").predict_batch(model, test_x)
    assert many["True"] == pytest.approx(one["True"])
    labels = RiverModel(model, method="predict_many").predict_batch(model, test_x)
    assert list(labels) == RiverModel(model).predict_batch(model, test_x)


def test_an_anomaly_detector_learns_without_labels_and_scores() -> None:
    detector = anomaly.HalfSpaceTrees(n_trees=5, height=4, window_size=20, seed=1)
    handler = RiverModel(detector, method="score_one")
    rng = np.random.default_rng(0)
    normal = pl.DataFrame({"x": rng.uniform(0.4, 0.6, 200), "y": rng.uniform(0.4, 0.6, 200)})
    handler.learn_batch(detector, normal, None)
    scores = handler.predict_batch(detector, pl.DataFrame({"x": [0.5, 0.99], "y": [0.5, 0.01]}))
    assert scores[1] > scores[0]


def test_the_handler_pickles_for_processes_and_locks_for_threads() -> None:
    handler = RiverModel(linear_model.LogisticRegression())
    copy = pickle.loads(pickle.dumps(handler))
    assert copy.model is not handler.model and copy.method == "predict_one"
    train_x, train_y = stream(400)
    model = handler.load("cpu")
    threads = [
        threading.Thread(target=handler.learn_batch, args=(model, train_x.slice(i, 100), train_y.slice(i, 100)))
        for i in range(0, 400, 100)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.predict_one({"x0": 2.0, "x1": -2.0}) is True


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method="):
        RiverModel(linear_model.LogisticRegression(), method="fit")  # type: ignore[arg-type]
