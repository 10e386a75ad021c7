"""ONNX models through ONNX Runtime: the fast, torch-free way to serve an exported network.

ONNX Runtime releases the GIL while it computes, so one session serves several threads at once
(``InferenceSession.run`` is thread-safe); the handler runs in threads. Threads *inside* the
runtime (``intra_op_threads``) multiply with the step's workers: with several workers, one or two
intra-op threads each usually beat one worker with many.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ._arrays import to_matrix
from ._imports import require
from .base import Batching, ModelHandler

GraphOptimization = Literal["disable", "basic", "extended", "all"]

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_warned_no_cuda: set[str] = set()


@dataclass
class OnnxSession:
    """What :meth:`OnnxModel.load` builds: the session and the plan for feeding it."""

    session: Any
    feeds: dict[str, tuple[list[str] | None, np.dtype]]
    """ONNX input name → (its columns, or None for all of them; the array dtype it takes)."""
    outputs: list[str]


class OnnxModel(ModelHandler[OnnxSession]):
    """An ``.onnx`` file (or its bytes) run by ONNX Runtime.

    ``inputs`` maps ONNX input names to column names (a name, or a list of names stacked into a
    2-D array); by default the model's single input gets all input columns as one 2-D array of
    the dtype the model declares (float32 for almost every exported network). ``output`` picks
    output names (default: all); one output comes back as an array, several as a mapping that
    the step's ``outputs=`` names pick from.

    On ``device="cuda"`` the CUDA execution provider is used when this ONNX Runtime build has it;
    otherwise the handler warns once and runs on the CPU — a CPU-only install of the ``ml`` extra
    should still run a pipeline written for a GPU machine. ``providers`` overrides the choice.
    """

    concurrency = "thread"
    frameworks = ("onnxruntime",)

    def __init__(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        inputs: Mapping[str, str | Sequence[str]] | None = None,
        output: str | Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: GraphOptimization = "all",
        cpu_mem_arena: bool = True,
        spin: bool | None = None,
        providers: Sequence[Any] | None = None,
        name: str | None = None,
        version: str = "1",
        batching: Batching | None = None,
    ) -> None:
        if graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ValueError(f"OnnxModel(graph_optimization={graph_optimization!r}): disable, basic, extended or all")
        if isinstance(path_or_bytes, bytes | bytearray):
            self.source: Path | bytes = bytes(path_or_bytes)
            default_name = "onnx-model"
        else:
            self.source = Path(path_or_bytes)
            default_name = self.source.stem
        self.inputs = None if inputs is None else {key: _names(value) for key, value in inputs.items()}
        self.output = [output] if isinstance(output, str) else (None if output is None else list(output))
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.graph_optimization = graph_optimization
        self.cpu_mem_arena = cpu_mem_arena
        self.spin = spin
        self.providers = None if providers is None else list(providers)
        self.name = name or default_name
        self.version = version
        self.batching = batching

    def load(self, device: str) -> OnnxSession:
        ort = require("onnxruntime", "ml", what="OnnxModel")
        options = session_options(
            ort,
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            graph_optimization=self.graph_optimization,
            cpu_mem_arena=self.cpu_mem_arena,
            spin=self.spin,
        )
        providers = self.providers or execution_providers(ort, device)
        source = self.source if isinstance(self.source, bytes) else str(self.source)
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
        declared = {node.name: node for node in session.get_inputs()}
        if self.inputs is None:
            if len(declared) != 1:
                raise ValueError(
                    f"{self.name}: the model has inputs {list(declared)}; "
                    "say which columns feed each one with inputs={...}"
                )
            (only,) = declared.values()
            feeds = {only.name: (None, _dtype(only))}
        else:
            unknown = sorted(set(self.inputs) - set(declared))
            missing = sorted(set(declared) - set(self.inputs))
            if unknown or missing:
                raise ValueError(
                    f"{self.name}: inputs= must name the model's inputs {list(declared)}"
                    + (f"; unknown {unknown}" if unknown else "")
                    + (f"; missing {missing}" if missing else "")
                )
            feeds = {key: (columns, _dtype(declared[key])) for key, columns in self.inputs.items()}
        available = [node.name for node in session.get_outputs()]
        outputs = self.output or available
        unknown_outputs = [name for name in outputs if name not in available]
        if unknown_outputs:
            raise ValueError(f"{self.name}: the model has outputs {available}, not {unknown_outputs}")
        return OnnxSession(session=session, feeds=feeds, outputs=outputs)

    def predict_batch(self, model: OnnxSession, inputs: pl.DataFrame) -> np.ndarray | dict[str, np.ndarray]:
        feed = {
            key: to_matrix(inputs if columns is None else inputs.select(columns), dtype)
            for key, (columns, dtype) in model.feeds.items()
        }
        results = model.session.run(model.outputs, feed)
        if len(results) == 1:
            return results[0]
        return dict(zip(model.outputs, results, strict=True))

    def describe(self) -> dict[str, Any]:
        source = "bytes" if isinstance(self.source, bytes) else str(self.source)
        return {**super().describe(), "source": source}


def session_options(
    ort: Any,
    *,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    graph_optimization: GraphOptimization = "all",
    cpu_mem_arena: bool = True,
    spin: bool | None = None,
) -> Any:
    """ONNX Runtime session options; thread counts are set only when given (the runtime's own
    default is one intra-op thread per core).

    ``spin=False`` stops idle intra-op threads from busy-waiting for work: on a machine where
    the pipeline's own threads share the cores with the model, spinning threads take CPU from
    them (None keeps ONNX Runtime's default, which spins)."""
    options = ort.SessionOptions()
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = {
        "disable": levels.ORT_DISABLE_ALL,
        "basic": levels.ORT_ENABLE_BASIC,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "all": levels.ORT_ENABLE_ALL,
    }[graph_optimization]
    options.enable_cpu_mem_arena = cpu_mem_arena
    return options


def execution_providers(ort: Any, device: str) -> list[Any]:
    """Providers for ``device``: CUDA first when asked for and present, else the CPU (with one
    warning per device string, so a CPU-only machine runs a GPU pipeline without a flood)."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind != "cuda":
        raise ValueError(f"ONNX Runtime device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    if device not in _warned_no_cuda:
        _warned_no_cuda.add(device)
        warnings.warn(
            f"device {device!r}: this ONNX Runtime has no CUDAExecutionProvider "
            f"(it has {ort.get_available_providers()}); running on the CPU. "
            "Install onnxruntime-gpu for GPU inference.",
            RuntimeWarning,
            stacklevel=3,
        )
    return ["CPUExecutionProvider"]


def _names(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _dtype(node: Any) -> np.dtype:
    try:
        return np.dtype(_ONNX_DTYPES[node.type])
    except KeyError:
        raise ValueError(f"ONNX input {node.name!r} has type {node.type}, which a column cannot feed") from None
