"""River models on streams: online learning, one record at a time, in the order records come.

River's models are plain Python (one dict of features per record), so they hold the GIL: the
default is ``concurrency="process"``. Under processes each worker has its own copy of the model,
and they learn apart; for one model that learns from every record, run the step with one worker.

River models are not thread-safe: the handler holds a lock around every call into the model, so
it also works under ``concurrency="thread"`` (where threads then take turns, which costs little
for GIL-bound code anyway).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import polars as pl

from ._imports import require
from .base import Batching, Concurrency, ModelHandler

Method = Literal[
    "predict_one",
    "predict_proba_one",
    "score_one",
    "transform_one",
    "predict_many",
    "predict_proba_many",
    "score_many",
    "transform_many",
]
_METHODS: tuple[str, ...] = get_args(Method)


class RiverModel(ModelHandler[Any]):
    """A River model (a classifier, regressor, anomaly detector, transformer or pipeline).

    ``method`` is what to call: ``*_one`` methods run once per row, with the row as a dict;
    ``*_many`` methods take the batch as a pandas DataFrame when pandas is installed, and fall
    back to the ``*_one`` loop when it is not. ``predict_proba_*`` give a probability per class:
    as named columns (``str(class)``: pick them with the step's ``outputs=``), or, when
    ``classes`` is given, as a 2-D array in that order (for one vector output column); a class a
    row has no probability for gets 0.

    ``learn_batch`` calls ``learn_one`` per row by default, so that what the model learns does
    not depend on where batches were cut; ``learn_many=True`` uses the model's ``learn_many``
    (mini-batch updates: faster, but batch-dependent) when it has one. Unsupervised models
    (anomaly detectors) learn from the features alone.
    """

    def __init__(
        self,
        model: Any,
        *,
        method: Method = "predict_one",
        name: str | None = None,
        version: str = "1",
        classes: Sequence[Any] | None = None,
        learn_many: bool = False,
        batching: Batching | None = None,
        concurrency: Concurrency = "process",
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"RiverModel(method={method!r}): use one of {', '.join(_METHODS)}")
        if not hasattr(model, method) and not hasattr(model, _one(method)):
            raise ValueError(f"{type(model).__name__} has no method {method!r}")
        if concurrency not in ("thread", "process"):
            raise ValueError(f"RiverModel(concurrency={concurrency!r}): use 'thread' or 'process'")
        self.model = model
        self.method = method
        self.name = name or type(model).__name__
        self.version = version
        self.classes = None if classes is None else list(classes)
        self.learn_many = learn_many
        self.batching = batching
        self.concurrency = concurrency
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle; each process gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def can_learn(self) -> bool:
        return hasattr(self.model, "learn_one") or hasattr(self.model, "learn_many")

    def load(self, device: str) -> Any:
        require("river", "ml", what="RiverModel")  # the model is already built; this checks the install
        return self.model

    def predict_batch(self, model: Any, inputs: pl.DataFrame) -> Any:
        method = self.method
        if method.endswith("_many") and (not hasattr(model, method) or not _has_pandas()):
            method = _one(method)
        with self._lock:
            if method.endswith("_many"):
                result = getattr(model, method)(inputs.to_pandas())
            else:
                call = getattr(model, method)
                result = [call(row) for row in inputs.iter_rows(named=True)]
        return self._shape(method, result)

    def learn_batch(self, model: Any, inputs: pl.DataFrame, labels: pl.Series | None) -> None:
        supervised = getattr(model, "_supervised", True)
        targets = None if labels is None or not supervised else labels.to_list()
        with self._lock:
            if self.learn_many and hasattr(model, "learn_many") and _has_pandas():
                frame = inputs.to_pandas()
                if targets is None:
                    model.learn_many(frame)
                else:
                    model.learn_many(frame, labels.to_pandas())
                return
            if not hasattr(model, "learn_one"):
                raise NotImplementedError(f"{type(model).__name__} cannot learn online")
            rows = inputs.iter_rows(named=True)
            if targets is None:
                for row in rows:
                    model.learn_one(row)
            else:
                for row, target in zip(rows, targets, strict=True):
                    model.learn_one(row, target)

    def predict_learn_one(self, model: Any, row: dict[str, Any], label: Any) -> Any:
        """Test then train on one row: the prediction is made before the row is learned (for
        ``stream.learn``'s prequential evaluation; a null label only predicts)."""
        method = _one(self.method)
        with self._lock:
            predicted = getattr(model, method)(row)
            if label is not None or not getattr(model, "_supervised", True):
                if getattr(model, "_supervised", True):
                    model.learn_one(row, label)
                else:
                    model.learn_one(row)
        if method.startswith("predict_proba") and self.classes is not None:
            return [predicted.get(c, 0.0) for c in self.classes]
        return predicted

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": self.method}

    def _shape(self, method: str, result: Any) -> Any:
        if method.startswith("predict_proba"):
            rows = result.to_dict("records") if hasattr(result, "to_dict") else result
            return self._probabilities(rows)
        if method.startswith("transform"):
            rows = result.to_dict("records") if hasattr(result, "to_dict") else result
            names = list(dict.fromkeys(key for row in rows for key in row))
            return {str(key): [row.get(key) for row in rows] for key in names}
        if hasattr(result, "to_numpy"):  # a pandas Series from *_many
            return result.to_numpy()
        return result

    def _probabilities(self, rows: list[dict[Any, float]]) -> Any:
        if self.classes is not None:
            return np.array([[row.get(label, 0.0) for label in self.classes] for row in rows], dtype=np.float64)
        labels = list(dict.fromkeys(label for row in rows for label in row))
        return {str(label): [float(row.get(label, 0.0)) for row in rows] for label in labels}


def _one(method: str) -> str:
    return method.replace("_many", "_one")


def _has_pandas() -> bool:
    return importlib.util.find_spec("pandas") is not None
