"""Rolling quality of a model that learns online: test-then-train (prequential) metrics.

Each labelled row is first predicted, then learned, so every prediction is honest: made by a
model that had not seen that row. The metrics cover the last ``window`` labelled rows, the
shape of "how good is the model now" on a stream whose concept may drift.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import numpy as np

CLASSIFICATION = ("accuracy", "macro_f1")
REGRESSION = ("mae", "rmse")


class RollingMetrics:
    """Accuracy and macro-F1 (classification) or MAE and RMSE (regression) over a window."""

    def __init__(self, task: str, window: int = 1_000) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.task = task
        self.window = window
        self.predicted: deque[Any] = deque(maxlen=window)
        self.actual: deque[Any] = deque(maxlen=window)
        self.seen = 0

    def update(self, predicted: Any, actual: Any) -> None:
        self.predicted.append(predicted)
        self.actual.append(actual)
        self.seen += 1

    def snapshot(self) -> dict[str, Any]:
        """The window as plain lists (copies: the values are the model's predictions, which
        may be mutable, e.g. probability vectors), for a checkpoint."""
        return {
            "task": self.task,
            "predicted": copy.deepcopy(list(self.predicted)),
            "actual": copy.deepcopy(list(self.actual)),
            "seen": self.seen,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take ``snapshot()``'s window (its newest ``window`` values, if this window is shorter)."""
        if state["task"] != self.task:
            raise ValueError(f"rolling metrics of a {state['task']} task cannot restore a {self.task} one")
        self.predicted = deque(copy.deepcopy(state["predicted"]), maxlen=self.window)
        self.actual = deque(copy.deepcopy(state["actual"]), maxlen=self.window)
        self.seen = state["seen"]

    def values(self) -> dict[str, float | None]:
        if not self.actual:
            return dict.fromkeys(CLASSIFICATION if self.task == "classification" else REGRESSION)
        if self.task == "regression":
            error = np.asarray(self.predicted, dtype=np.float64) - np.asarray(self.actual, dtype=np.float64)
            return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error**2).mean()))}
        predicted, actual = list(self.predicted), list(self.actual)
        correct = sum(p == a for p, a in zip(predicted, actual, strict=True))
        return {"accuracy": correct / len(actual), "macro_f1": macro_f1(predicted, actual)}


def macro_f1(predicted: list[Any], actual: list[Any]) -> float:
    """Mean F1 over the classes present in ``actual`` (a class never predicted scores 0)."""
    scores = []
    for label in dict.fromkeys(actual):
        true_positive = sum(p == label and a == label for p, a in zip(predicted, actual, strict=True))
        predicted_positive = sum(p == label for p in predicted)
        actual_positive = sum(a == label for a in actual)
        precision = true_positive / predicted_positive if predicted_positive else 0.0
        recall = true_positive / actual_positive
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(scores))
