"""SklearnModel against the estimator called directly, on data made here."""

from __future__ import annotations

import joblib
import numpy as np
import polars as pl
import pytest

from tideflow.ai import SklearnModel
from tideflow.ai.base import as_columns

pytest.importorskip("sklearn")

from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression, SGDClassifier


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(400, 3))
    labels = (features @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.3, size=400) > 0).astype(np.int64)
    frame = pl.DataFrame({"f0": features[:, 0], "f1": features[:, 1], "f2": features[:, 2]})
    return features, labels, frame


def test_isolation_forest_predictions_and_scores_equal_the_estimators(data) -> None:
    features, _, frame = data
    forest = IsolationForest(n_estimators=50, random_state=0).fit(features)
    predict = SklearnModel(forest)
    assert predict.name == "IsolationForest" and predict.concurrency == "thread"
    np.testing.assert_array_equal(predict.predict_batch(predict.load("cpu"), frame), forest.predict(features))
    scores = SklearnModel(forest, method="score_samples")
    np.testing.assert_array_equal(scores.predict_batch(scores.load("cpu"), frame), forest.score_samples(features))


def test_logistic_regression_predict_and_proba_equal_the_estimators(data) -> None:
    features, labels, frame = data
    classifier = LogisticRegression().fit(features, labels)
    predict = SklearnModel(classifier)
    np.testing.assert_array_equal(predict.predict_batch(predict.load("cpu"), frame), classifier.predict(features))
    proba = SklearnModel(classifier, method="predict_proba")
    result = proba.predict_batch(proba.load("cpu"), frame)
    assert result.shape == (400, 2)
    np.testing.assert_array_equal(result, classifier.predict_proba(features))
    columns = as_columns(result, ["p0", "p1"], 400)
    assert columns["p1"].to_list() == classifier.predict_proba(features)[:, 1].tolist()
    assert as_columns(result, ["proba"], 400)["proba"].dtype == pl.Array(pl.Float64, 2)


def test_float32_input_is_what_the_estimator_sees(data) -> None:
    features, labels, frame = data
    classifier = LogisticRegression().fit(features, labels)
    handler = SklearnModel(classifier, method="decision_function", dtype="float32")
    expected = classifier.decision_function(features.astype(np.float32))
    np.testing.assert_array_equal(handler.predict_batch(classifier, frame), expected)


def test_columns_are_fed_in_the_order_given(data) -> None:
    features, labels, frame = data
    reordered = np.ascontiguousarray(features[:, [2, 0, 1]])
    classifier = LogisticRegression().fit(reordered, labels)
    handler = SklearnModel(classifier, method="predict_proba")
    result = handler.predict_batch(classifier, frame.select("f2", "f0", "f1"))
    np.testing.assert_array_equal(result, classifier.predict_proba(reordered))


def test_a_joblib_file_loads_and_predicts_the_same(data, tmp_path) -> None:
    features, labels, frame = data
    classifier = LogisticRegression().fit(features, labels)
    path = tmp_path / "churn.joblib"
    joblib.dump(classifier, path)
    handler = SklearnModel(path, method="predict_proba")
    assert handler.name == "churn" and handler.describe()["source"] == str(path)
    model = handler.load("cpu")
    assert model is not classifier
    np.testing.assert_array_equal(handler.predict_batch(model, frame), classifier.predict_proba(features))


def test_partial_fit_learning_changes_predictions(data) -> None:
    features, labels, frame = data
    handler = SklearnModel(SGDClassifier(loss="log_loss", random_state=0), classes=[0, 1])
    assert handler.can_learn
    model = handler.load("cpu")
    handler.learn_batch(model, frame.head(20), pl.Series(labels[:20]))  # first call: classes= passed
    np.testing.assert_array_equal(model.classes_, [0, 1])
    before = model.decision_function(features).copy()
    accuracy_before = (handler.predict_batch(model, frame) == labels).mean()
    for start in range(20, 400, 50):
        handler.learn_batch(model, frame.slice(start, 50), pl.Series(labels[start : start + 50]))
    after = model.decision_function(features)
    assert not np.allclose(before, after)
    accuracy_after = (handler.predict_batch(model, frame) == labels).mean()
    assert accuracy_after >= 0.9 and accuracy_after >= accuracy_before


def test_an_estimator_without_partial_fit_cannot_learn(data) -> None:
    features, labels, frame = data
    classifier = LogisticRegression().fit(features, labels)
    handler = SklearnModel(classifier)
    assert not handler.can_learn
    with pytest.raises(NotImplementedError, match="partial_fit"):
        handler.learn_batch(classifier, frame, pl.Series(labels))


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="method="):
        SklearnModel(LogisticRegression(), method="transform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no method 'score_samples'"):
        SklearnModel(LogisticRegression(), method="score_samples")
