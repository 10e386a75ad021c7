"""A plain batch function as a model: for rules, heuristics and models you call yourself.

Many "models" on a stream are a few lines of numpy, or a client object you already hold. Wrapping
the function in a handler gives it what the ``infer`` step offers every model — batching, a name
and version on every output row, warmup, size-failure splitting — without writing a class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from ._arrays import to_matrix
from .base import Batching, Concurrency, ModelHandler

InputMode = Literal["frame", "numpy", "list"]


class BatchFunction(ModelHandler[Callable[[Any], Any]]):
    """Calls ``fn`` once per model batch.

    ``input`` says what ``fn`` receives: ``"frame"`` the polars DataFrame of the input columns,
    ``"numpy"`` a 2-D float64 array of them (rows × features), ``"list"`` the values of the
    single input column as a Python list. ``fn`` returns anything ``as_columns`` understands.
    ``concurrency="thread"`` suits functions that spend their time in numpy or I/O; use
    ``"process"`` for pure-Python loops (``fn`` must then be picklable: a module-level function).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        name: str = "function",
        version: str = "1",
        batching: Batching | None = None,
        concurrency: Concurrency = "thread",
        input: InputMode = "frame",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"BatchFunction needs a callable, got {type(fn).__name__}")
        if input not in ("frame", "numpy", "list"):
            raise ValueError(f"BatchFunction(input={input!r}): use 'frame', 'numpy' or 'list'")
        if concurrency not in ("thread", "process"):
            raise ValueError(f"BatchFunction(concurrency={concurrency!r}): use 'thread' or 'process'")
        self.fn = fn
        self.name = name
        self.version = version
        self.batching = batching
        self.concurrency = concurrency
        self.input = input

    def load(self, device: str) -> Callable[[Any], Any]:
        return self.fn

    def predict_batch(self, model: Callable[[Any], Any], inputs: pl.DataFrame) -> Any:
        if self.input == "frame":
            return model(inputs)
        if self.input == "numpy":
            return model(to_matrix(inputs, "float64"))
        if inputs.width != 1:
            raise ValueError(f"BatchFunction(input='list') takes one input column, got {inputs.columns}")
        return model(inputs.to_series().to_list())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "input": self.input}
