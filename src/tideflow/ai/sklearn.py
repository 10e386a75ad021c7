"""scikit-learn estimators on streams: predict, probabilities, anomaly scores, online learning.

scikit-learn's compiled code releases the GIL for most of a ``predict``, so the handler runs in
threads. The input columns become one 2-D array in the order the step lists them — the order the
estimator was fitted with is the caller's to keep.

**Model files are trusted artifacts.** A path is loaded with ``joblib.load``, which unpickles it
and so runs code from the file, exactly as any pickle does: register only files you produced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ._arrays import to_matrix
from ._imports import require
from .base import Batching, ModelHandler

Method = Literal["predict", "predict_proba", "decision_function", "score_samples"]
_METHODS = ("predict", "predict_proba", "decision_function", "score_samples")


class SklearnModel(ModelHandler[Any]):
    """A fitted estimator, or the path of one saved with ``joblib.dump``.

    ``method`` picks what to call: ``predict`` (one value per row), ``predict_proba`` (a 2-D
    array, one column per class in ``estimator.classes_`` order: name one output per class, or
    one output for a vector column), ``decision_function``, ``score_samples`` (e.g. an
    ``IsolationForest``'s anomaly score). ``dtype`` is the array the estimator receives; float64
    (the default) gives exactly what ``estimator.predict(X)`` gives on float64 data, float32
    halves the copy for estimators that work in float32 anyway (trees, forests).

    Estimators with ``partial_fit`` learn online through ``learn_batch``; ``classes`` is passed
    to the first ``partial_fit`` of a classifier, which needs every class up front. The handler
    shares one estimator among the threads of a process: predicting is safe, learning while
    other threads predict is only as safe as the estimator's ``partial_fit``.
    """

    concurrency = "thread"

    def __init__(
        self,
        estimator_or_path: Any,
        *,
        method: Method = "predict",
        name: str | None = None,
        version: str = "1",
        batching: Batching | None = None,
        dtype: Literal["float32", "float64"] = "float64",
        classes: Sequence[Any] | None = None,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"SklearnModel(method={method!r}): use one of {', '.join(_METHODS)}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"SklearnModel(dtype={dtype!r}): use 'float32' or 'float64'")
        self.path: Path | None = None
        self.estimator: Any = None
        if isinstance(estimator_or_path, str | os.PathLike):
            self.path = Path(estimator_or_path)
            default_name = self.path.stem
        else:
            self.estimator = estimator_or_path
            if not hasattr(estimator_or_path, method):
                raise ValueError(f"{type(estimator_or_path).__name__} has no method {method!r}")
            default_name = type(estimator_or_path).__name__
        self.method = method
        self.name = name or default_name
        self.version = version
        self.batching = batching
        self.dtype = dtype
        self.classes = None if classes is None else np.asarray(classes)

    @property
    def can_learn(self) -> bool:
        # A path is only known after loading; an estimator can be asked now.
        return self.estimator is None or hasattr(self.estimator, "partial_fit")

    def load(self, device: str) -> Any:
        if self.estimator is not None:
            return self.estimator
        joblib = require("joblib", "ml", what="SklearnModel")
        require("sklearn", "ml", what="SklearnModel")  # unpickling needs it; say so clearly
        estimator = joblib.load(self.path)
        if not hasattr(estimator, self.method):
            raise ValueError(f"{self.path}: {type(estimator).__name__} has no method {self.method!r}")
        return estimator

    def example(self, model: Any) -> pl.DataFrame | None:
        features = getattr(model, "n_features_in_", None)
        if not isinstance(features, int):
            return None
        return pl.DataFrame({f"x{i}": [0.0] for i in range(features)})

    def predict_batch(self, model: Any, inputs: pl.DataFrame) -> np.ndarray:
        return np.asarray(getattr(model, self.method)(to_matrix(inputs, self.dtype)))

    def fitted(self, model: Any) -> bool:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(model)
        except NotFittedError:
            return False
        return True

    def learn_batch(self, model: Any, inputs: pl.DataFrame, labels: pl.Series) -> None:
        partial_fit = getattr(model, "partial_fit", None)
        if partial_fit is None:
            raise NotImplementedError(f"{type(model).__name__} has no partial_fit, so it cannot learn online")
        features = to_matrix(inputs, self.dtype)
        target = None if labels is None else labels.to_numpy()
        if self.classes is not None and not hasattr(model, "classes_"):
            partial_fit(features, target, classes=self.classes)
        else:
            partial_fit(features, target)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": self.method, "source": str(self.path) if self.path else "instance"}
