"""The model protocol: what an ``infer`` step needs from a model, and nothing more.

Following Beam's model handlers, a *handler* describes a model (where it lives, how to call it)
and is cheap to copy; ``load`` builds the live model once per worker, on a device, and
``predict_batch`` calls it on a micro-batch. Keeping the two apart is what lets the engine load
a model in several workers (or processes), warm it up before traffic, and swap in a new version
at a batch boundary while the old one is still serving.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import polars as pl

from .._duration import Duration, to_seconds

M = TypeVar("M")

Concurrency = Literal["thread", "process"]


@dataclass(frozen=True)
class Batching:
    """How an ``infer`` step groups records into model calls.

    A model batch is cut when ``max_size`` rows are waiting, or when the oldest waiting row has
    waited ``max_wait`` (so a trickle of records is not held back). ``bucket_by`` (a column, or
    a polars expression giving a length) groups rows of similar length — texts, sequences — so
    that padding to the longest row of a batch wastes little compute; rows are then batched per
    bucket, and each model batch is sorted by length.
    """

    max_size: int = 64
    max_wait: Duration = "10ms"
    bucket_by: str | pl.Expr | None = None
    bucket_growth: float = 1.5
    """Ratio between consecutive bucket edges (8, 12, 18, 27, ... for 1.5)."""
    max_in_flight: int | None = None
    """Model batches submitted but not finished, at most; default two per worker. A full
    pipeline of batches blocks the step, which is backpressure for everything upstream."""

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"Batching(max_size={self.max_size}): must be at least 1")
        if self.bucket_growth <= 1.0:
            raise ValueError(f"Batching(bucket_growth={self.bucket_growth}): must be above 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"Batching(max_in_flight={self.max_in_flight}): must be at least 1")
        to_seconds(self.max_wait, what="Batching(max_wait=...)")  # fails at build time, not mid-run

    @property
    def max_wait_s(self) -> float:
        return to_seconds(self.max_wait, what="Batching(max_wait=...)")


class ModelHandler(ABC, Generic[M]):
    """Describes a model; ``load`` makes the live model ``M`` that ``predict_batch`` calls.

    Subclasses set ``name`` and ``version`` (carried by every output row as ``model_version``)
    and may set ``batching`` (a default policy the step uses when it is given none) and
    ``concurrency``: ``"thread"`` for runtimes that release the GIL while computing (ONNX
    Runtime, PyTorch, scikit-learn's compiled code), ``"process"`` for Python-heavy models.
    """

    name: str = "model"
    version: str = "1"
    batching: Batching | None = None
    concurrency: Concurrency = "thread"
    frameworks: tuple[str, ...] | None = None
    """Frameworks asked whether a GPU is usable under ``device="auto"`` (None: those imported)."""

    @abstractmethod
    def load(self, device: str) -> M:
        """Build the live model on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""

    @abstractmethod
    def predict_batch(self, model: M, inputs: pl.DataFrame) -> Any:
        """Predict for every row of ``inputs`` (the step's input columns, in order).

        Return one of: a 1-D array/list/Series (one value per row); a 2-D array (one vector per
        row, e.g. an embedding, or one column per output name); a mapping or DataFrame of
        named columns. ``as_columns`` turns any of these into output columns.
        """

    def learn_batch(self, model: M, inputs: pl.DataFrame, labels: pl.Series) -> None:
        """Update the model with labelled rows (online learning); not every model can."""
        raise NotImplementedError(f"{type(self).__name__} does not learn online")

    def fitted(self, model: M) -> bool:
        """Whether the model can predict yet. A model that learns online from nothing (a fresh
        ``partial_fit`` estimator) cannot until its first update: ``learn`` gives its first
        rows a null prediction instead of failing them."""
        return True

    @property
    def can_learn(self) -> bool:
        return type(self).learn_batch is not ModelHandler.learn_batch

    def example(self, model: M) -> pl.DataFrame | None:
        """A tiny input this model accepts, to warm it up as soon as it is loaded (before any
        traffic). None: the step warms it up on one row of the first batch instead."""
        return None

    def warmup(self, model: M, sample: pl.DataFrame) -> None:
        """Run the model once before traffic, so that the first real batch does not pay for
        lazy initialisation (graph optimisation, kernel selection, allocations)."""
        if sample.height:
            self.predict_batch(model, sample)

    def describe(self) -> dict[str, Any]:
        """What the run summary shows about this model."""
        return {"name": self.name, "version": self.version, "handler": type(self).__name__}


class BatchTooLarge(Exception):
    """Raised by a model (or its handler) when a batch is too big to run as a whole: the step
    splits it and retries the halves, and lowers its batch size for what follows."""


def is_size_failure(error: BaseException) -> bool:
    """Whether ``error`` means *this batch was too big* (out of memory, oversize), not *a row is
    bad*: such batches are split and retried, and the step caps later batches."""
    if isinstance(error, BatchTooLarge | MemoryError):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return any(
        marker in text
        for marker in ("out of memory", "outofmemory", "failed to allocate", "cudnn_status_alloc", "oversize")
    )


def resolve_device(device: str, frameworks: Sequence[str] | None = None) -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is visible to the model's framework, else ``"cpu"``.

    ``frameworks`` names what to ask (``"torch"``, ``"onnxruntime"``); by default only those
    already imported are asked, because importing torch just to probe costs about a second.
    Anything but ``"auto"`` is returned as given.
    """
    if device != "auto":
        return device
    names = list(frameworks) if frameworks is not None else [n for n in ("torch", "onnxruntime") if n in sys.modules]
    for name in names:
        try:
            if name == "torch":
                import torch

                if torch.cuda.is_available():
                    return "cuda"
            elif name == "onnxruntime":
                import onnxruntime

                if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                    return "cuda"
        except ImportError:
            continue
    return "cpu"


def as_columns(predictions: Any, outputs: Sequence[str], rows: int) -> dict[str, pl.Series]:
    """Turn what ``predict_batch`` returned into named output columns of ``rows`` values.

    ``outputs`` names the columns: one name for a vector per row (kept as one fixed-size array
    column) or for a single value per row; several names to split a 2-D result by column or
    to pick from a mapping.
    """
    if isinstance(predictions, pl.DataFrame):
        predictions = {name: predictions.get_column(name) for name in predictions.columns}
    if isinstance(predictions, Mapping):
        missing = [name for name in outputs if name not in predictions]
        if missing:
            raise ValueError(f"the model returned columns {list(predictions)}, not {missing}")
        columns = {name: _series(name, predictions[name]) for name in outputs}
    else:
        array = predictions
        if isinstance(array, pl.Series):
            columns = {outputs[0]: array.alias(outputs[0])} if len(outputs) == 1 else None
            if columns is None:
                raise ValueError(f"the model returned one column, but outputs= names {len(outputs)}")
        else:
            array = _to_numpy(array)
            if len(outputs) == 1:
                columns = {outputs[0]: _series(outputs[0], array)}
            elif array.ndim == 2 and array.shape[1] == len(outputs):
                columns = {name: pl.Series(name, array[:, i]) for i, name in enumerate(outputs)}
            else:
                raise ValueError(
                    f"the model returned shape {array.shape}, which does not split into outputs {list(outputs)}"
                )
    for name, series in columns.items():
        if series.len() != rows:
            raise ValueError(f"the model returned {series.len()} values for output {name!r} on a batch of {rows} rows")
    return columns


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)  # torch tensors, without importing torch
    if detach is not None:
        return detach().cpu().numpy()
    return np.asarray(value)


def _series(name: str, value: Any) -> pl.Series:
    if isinstance(value, pl.Series):
        return value.alias(name)
    if isinstance(value, list):
        return pl.Series(name, value)
    array = _to_numpy(value)
    if array.ndim == 1:
        return pl.Series(name, array)
    if array.ndim == 2:
        # One vector per row (an embedding): a fixed-size array column, zero-copy from numpy.
        return pl.Series(name, array)
    raise ValueError(f"output {name!r}: cannot store an array of shape {array.shape} as a column")
