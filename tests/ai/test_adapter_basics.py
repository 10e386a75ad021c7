"""The adapters' shared parts: lazy framework imports, MissingExtra, input conversion, BatchFunction."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from tideflow.ai import BatchFunction, MissingExtra, ModelHandler, OnnxModel, SklearnModel
from tideflow.ai._arrays import to_matrix
from tideflow.ai._imports import require
from tideflow.ai.base import as_columns
from tideflow.errors import TideflowError

FRAMES = pl.DataFrame({"a": [1.0, 2.0, 3.0], "b": [10, 20, 30]})


def test_importing_the_adapters_imports_no_framework() -> None:
    code = (
        "import sys, tideflow.ai\n"
        "heavy = ['torch', 'sklearn', 'onnxruntime', 'river', 'tokenizers', 'sentence_transformers', 'pandas']\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_require_names_the_extra_when_a_module_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtra, match=r"pip install 'tideflow\[ml\]'") as caught:
        require("onnxruntime", "ml", what="OnnxModel")
    assert "OnnxModel needs the 'onnxruntime' module" in str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert isinstance(caught.value, TideflowError)


def test_a_handler_whose_framework_is_missing_fails_at_load_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = OnnxModel(b"not loaded")  # construction is cheap config: no import yet
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtra, match=r"tideflow\[ml\]"):
        handler.load("cpu")


def test_a_missing_torch_names_the_torch_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tideflow.ai import TorchModel

    handler = TorchModel("model.pt")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra, match=r"pip install 'tideflow\[torch\]'"):
        handler.load("cpu")


def test_a_joblib_path_needs_scikit_learn(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    handler = SklearnModel(tmp_path / "model.joblib")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingExtra, match=r"'sklearn'.*tideflow\[ml\]"):
        handler.load("cpu")


def test_to_matrix_keeps_column_order_and_flattens_vector_columns() -> None:
    frame = pl.DataFrame(
        {"x": [1, 2], "vec": pl.Series([[0.5, 0.25], [1.5, 2.5]], dtype=pl.Array(pl.Float64, 2)), "flag": [True, False]}
    )
    matrix = to_matrix(frame, "float32")
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix, [[1, 0.5, 0.25, 1], [2, 1.5, 2.5, 0]])
    np.testing.assert_array_equal(to_matrix(FRAMES.select("b", "a"), "float64"), [[10, 1], [20, 2], [30, 3]])


def test_to_matrix_names_a_non_numeric_column() -> None:
    with pytest.raises(TypeError, match="name: String"):
        to_matrix(pl.DataFrame({"x": [1.0], "name": ["a"]}))


def test_batch_function_frame_mode_gets_the_polars_frame() -> None:
    handler = BatchFunction(lambda frame: frame["a"] * 2 + frame["b"], name="double", version="7")
    assert isinstance(handler, ModelHandler) and handler.concurrency == "thread"
    model = handler.load("cpu")
    result = handler.predict_batch(model, FRAMES)
    assert result.to_list() == [12.0, 24.0, 36.0]
    assert handler.describe() == {"name": "double", "version": "7", "handler": "BatchFunction", "input": "frame"}


def test_batch_function_numpy_mode_gets_a_2d_float_array() -> None:
    seen = []

    def norm(matrix: np.ndarray) -> np.ndarray:
        seen.append(matrix)
        return np.sqrt((matrix**2).sum(axis=1))

    handler = BatchFunction(norm, input="numpy")
    result = handler.predict_batch(handler.load("cpu"), FRAMES)
    assert seen[0].dtype == np.float64 and seen[0].shape == (3, 2)
    np.testing.assert_allclose(result, np.sqrt(np.array([101.0, 404.0, 909.0])))
    assert as_columns(result, ["norm"], 3)["norm"].to_list() == pytest.approx(list(np.sqrt([101.0, 404.0, 909.0])))


def test_batch_function_list_mode_gets_the_single_column_as_a_list() -> None:
    handler = BatchFunction(lambda values: [len(value) for value in values], input="list", concurrency="process")
    frame = pl.DataFrame({"text": ["a", "bcd", ""]})
    assert handler.predict_batch(handler.load("cpu"), frame) == [1, 3, 0]
    assert handler.concurrency == "process"
    with pytest.raises(ValueError, match="one input column"):
        handler.predict_batch(handler.load("cpu"), FRAMES)


def test_batch_function_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        BatchFunction("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input="):
        BatchFunction(len, input="rows")  # type: ignore[arg-type]
