"""Small model handlers for the infer-step tests (importable by worker processes, too)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import polars as pl

from tideflow.ai.base import BatchTooLarge, ModelHandler


class Scale(ModelHandler[float]):
    """``y = x * factor``; a row with ``x`` in ``poison`` makes any batch holding it fail."""

    def __init__(self, factor: float = 2.0, version: str = "v1", poison: tuple[int, ...] = ()) -> None:
        self.factor = factor
        self.version = version
        self.poison = poison
        self.name = "scale"

    def load(self, device: str) -> float:
        return self.factor

    def predict_batch(self, model: float, inputs: pl.DataFrame) -> Any:
        x = inputs.get_column("x").to_numpy()
        if self.poison and np.isin(x, self.poison).any():
            raise ValueError(f"poisoned value among {len(x)} rows")
        return x * model


class Capped(ModelHandler[None]):
    """Fails like an out-of-memory error on batches bigger than ``limit``; records batch sizes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def load(self, device: str) -> None:
        return None

    def predict_batch(self, model: None, inputs: pl.DataFrame) -> Any:
        self.sizes.append(inputs.height)
        if inputs.height > self.limit:
            raise BatchTooLarge(f"{inputs.height} rows do not fit; at most {self.limit}")
        return inputs.get_column("x").to_numpy() + 1


class Gated(ModelHandler[None]):
    """Blocks every call until ``gate`` is set; counts calls and the most at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.called = threading.Event()
        self.calls = 0
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def load(self, device: str) -> None:
        return None

    def predict_batch(self, model: None, inputs: pl.DataFrame) -> Any:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.called.set()
        self.gate.wait(30)
        with self._lock:
            self.active -= 1
        return inputs.get_column("x").to_numpy()


class Embed(ModelHandler[None]):
    """A vector per row (like an embedding), so outputs keep a fixed-size array column."""

    def load(self, device: str) -> None:
        return None

    def predict_batch(self, model: None, inputs: pl.DataFrame) -> Any:
        x = inputs.get_column("x").to_numpy().astype(np.float32)
        return np.stack([x, x * 2, x * 3], axis=1)


class PythonHeavy(ModelHandler[int]):
    """A per-record Python model, marked for process workers; returns the worker's pid too."""

    concurrency = "process"

    def load(self, device: str) -> int:
        import os

        return os.getpid()

    def predict_batch(self, model: int, inputs: pl.DataFrame) -> Any:
        xs = inputs.get_column("x").to_list()
        if -1 in xs:
            raise ValueError("negative one")
        return {"y": [x * 3 for x in xs], "pid": [model] * len(xs)}


class FakeRegistry:
    """Follows a champion like ``tdf.ai.RegisteredModel`` does, driven by the test."""

    def __init__(self, handler: ModelHandler[Any]) -> None:
        self.handler = handler
        self._revision = 0
        self.lock = threading.Lock()

    def promote(self, handler: ModelHandler[Any]) -> None:
        with self.lock:
            self.handler = handler
            self._revision += 1

    def current(self) -> tuple[Any, ModelHandler[Any]]:
        with self.lock:
            return self.handler.version, self.handler

    def revision(self) -> int:
        with self.lock:
            return self._revision


class ScaleInProcess(Scale):
    """``Scale`` served by worker processes: reports the worker's pid too."""

    concurrency = "process"

    def predict_batch(self, model: float, inputs: pl.DataFrame) -> Any:
        import os

        x = inputs.get_column("x").to_numpy()
        return {"y": x * model, "pid": np.full(len(x), os.getpid())}


def concept(rows: int, first_id: int, rule: str, seed: int) -> pl.DataFrame:
    """Labelled points of a concept: ``y`` is whether ``x1 + x2 > 0`` (``"sum"``) or
    ``x1 - x2 > 0`` (``"difference"``); a change of rule is a concept change."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    y = x[:, 0] + x[:, 1] > 0 if rule == "sum" else x[:, 0] - x[:, 1] > 0
    return pl.DataFrame({"id": range(first_id, first_id + rows), "x1": x[:, 0], "x2": x[:, 1], "y": y})


def fit(frame: pl.DataFrame) -> Any:
    """A logistic regression of ``y`` on ``x1, x2``: the challenger a retrain step trains."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(frame.select("x1", "x2").to_numpy(), frame.get_column("y").to_numpy())
