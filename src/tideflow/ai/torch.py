"""PyTorch modules on streams: an ``nn.Module``, a TorchScript file, or a factory of modules.

PyTorch releases the GIL inside its kernels, so the handler runs in threads and one module serves
them all under ``torch.inference_mode()`` (no autograd bookkeeping). Inputs go from polars to
numpy to a tensor without a copy on the CPU (``torch.from_numpy``); outputs come back as numpy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ..errors import TideflowError
from ._arrays import to_matrix
from ._imports import require
from .base import Batching, ModelHandler

TorchDtype = Literal["float32", "float64", "float16", "bfloat16"]


class DeviceUnavailable(TideflowError, RuntimeError):
    """The model was asked to run on a device this machine does not have."""


class TorchModel(ModelHandler[Any]):
    """A PyTorch model: ``module_or_path`` is an ``nn.Module``, the path of a TorchScript file
    (``torch.jit.save``; loaded with ``torch.jit.load`` straight onto the device), or a callable
    that returns a module.

    ``load`` moves the module to the device and puts it in eval mode. An ``nn.Module`` instance
    is shared by the workers of a process (fine for threads on one device); pass a factory when
    each worker must build its own, e.g. one per GPU. Under ``concurrency="process"`` the handler
    is pickled, so the instance or factory must pickle (a module-level function, not a lambda).

    ``dtype`` is the floating type of the inputs, and of the module's parameters when it is not
    float32. ``jit=True`` scripts and freezes an ``nn.Module`` (``torch.jit`` is deprecated in
    recent PyTorch releases, so it is off by default). ``num_threads`` sets
    ``torch.set_num_threads`` when the model loads — a process-wide setting, so only on request.
    """

    concurrency = "thread"
    frameworks = ("torch",)

    def __init__(
        self,
        module_or_path: Any,
        *,
        name: str | None = None,
        version: str = "1",
        dtype: TorchDtype = "float32",
        batching: Batching | None = None,
        jit: bool = False,
        num_threads: int | None = None,
    ) -> None:
        if dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise ValueError(f"TorchModel(dtype={dtype!r}): use float32, float64, float16 or bfloat16")
        self.path: Path | None = None
        self.module: Any = None
        self.factory: Callable[[], Any] | None = None
        if isinstance(module_or_path, str | os.PathLike):
            self.path = Path(module_or_path)
            default_name = self.path.stem
        elif _is_module(module_or_path):
            self.module = module_or_path
            default_name = type(module_or_path).__name__
        elif callable(module_or_path):
            self.factory = module_or_path
            default_name = getattr(module_or_path, "__name__", "torch-model")
        else:
            raise TypeError(f"TorchModel needs an nn.Module, a TorchScript path or a factory, got {module_or_path!r}")
        self.name = name or default_name
        self.version = version
        self.dtype = dtype
        self.batching = batching
        self.jit = jit
        self.num_threads = num_threads

    def load(self, device: str) -> Any:
        torch = require("torch", "torch", what="TorchModel")
        device = check_device(torch, device)
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.path is not None:
            module = torch.jit.load(str(self.path), map_location=device)
        elif self.factory is not None:
            module = self.factory()
        else:
            module = self.module
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"{self.name}: expected an nn.Module, got {type(module).__name__}")
        module = module.to(device=device, dtype=getattr(torch, self.dtype)).eval()
        if self.jit and not isinstance(module, torch.jit.ScriptModule):
            module = torch.jit.freeze(torch.jit.script(module))
        return module

    def predict_batch(self, model: Any, inputs: pl.DataFrame) -> np.ndarray | dict[str, np.ndarray]:
        import torch

        features = torch.from_numpy(to_matrix(inputs, "float64" if self.dtype == "float64" else "float32"))
        device = _module_device(model)
        with torch.inference_mode():
            tensor = features.to(device=device, dtype=getattr(torch, self.dtype), non_blocking=True)
            result = model(tensor)
        if isinstance(result, Mapping):
            return {key: _numpy(value) for key, value in result.items()}
        if isinstance(result, tuple | list):
            if len(result) == 1:
                return _numpy(result[0])
            raise TypeError(
                f"{self.name} returned {len(result)} tensors; return one tensor, or a dict of named tensors"
            )
        return _numpy(result)

    def describe(self) -> dict[str, Any]:
        source = str(self.path) if self.path else ("factory" if self.factory else "instance")
        return {**super().describe(), "source": source, "dtype": self.dtype}


def check_device(torch: Any, device: str) -> str:
    """``device`` if this machine has it; otherwise :class:`DeviceUnavailable` that says why."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                why = "is a CPU-only build"
            else:
                why = f"is built for CUDA {torch.version.cuda}, but sees no GPU"
            raise DeviceUnavailable(
                f"device {device!r}: PyTorch {torch.__version__} {why}. "
                "Run on device='cpu' (or 'auto'), or install a CUDA build of torch."
            )
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device {device!r}: MPS is not available on this machine")
    return device


def _is_module(value: Any) -> bool:
    # Whoever holds an nn.Module has imported torch already, so this never imports it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _module_device(module: Any) -> Any:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return "cpu"


def _numpy(value: Any) -> np.ndarray:
    import torch

    value = value.detach()
    if value.dtype in (torch.bfloat16,):
        value = value.float()
    return value.cpu().numpy()
