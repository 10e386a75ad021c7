"""OnnxModel on a small MLP built here with onnx.helper, against numpy with the same weights."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from tideflow.ai import OnnxModel
from tideflow.ai import onnx as onnx_adapter

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(11)
W1 = RNG.normal(size=(16, 8)).astype(np.float32)
B1 = RNG.normal(size=8).astype(np.float32)
W2 = RNG.normal(size=(8, 2)).astype(np.float32)
B2 = RNG.normal(size=2).astype(np.float32)


def mlp_bytes() -> bytes:
    """16 float inputs → Relu(8) → 2 logits; ``hidden`` is exposed as a second output."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 8]),
        ],
        initializer=[
            numpy_helper.from_array(W1, "w1"),
            numpy_helper.from_array(B1, "b1"),
            numpy_helper.from_array(W2, "w2"),
            numpy_helper.from_array(B2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def two_input_bytes() -> bytes:
    """``out = a @ W + b_scale * b`` with two named inputs, to map columns onto inputs."""
    weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "w"], ["aw"]),
            helper.make_node("Add", ["aw", "b"], ["out"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def reference(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.maximum(features @ W1 + B1, 0)
    return hidden @ W2 + B2, hidden


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    features = np.random.default_rng(3).normal(size=(100, 16))
    return pl.DataFrame({f"x{i}": features[:, i] for i in range(16)})


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    path.write_bytes(mlp_bytes())
    return path


def test_one_output_comes_back_as_an_array_equal_to_numpy(frame: pl.DataFrame, model_path) -> None:
    handler = OnnxModel(model_path, output="logits", intra_op_threads=1, inter_op_threads=1)
    assert handler.name == "mlp" and handler.concurrency == "thread"
    model = handler.load("cpu")
    result = handler.predict_batch(model, frame)
    assert result.shape == (100, 2) and result.dtype == np.float32
    expected, _ = reference(frame.to_numpy().astype(np.float32))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert model.session.get_providers() == ["CPUExecutionProvider"]


def test_all_outputs_come_back_as_a_mapping(frame: pl.DataFrame) -> None:
    handler = OnnxModel(mlp_bytes(), graph_optimization="disable", cpu_mem_arena=False)
    assert handler.name == "onnx-model"
    model = handler.load("cpu")
    options = model.session.get_session_options()
    assert not options.enable_cpu_mem_arena
    result = handler.predict_batch(model, frame)
    assert set(result) == {"logits", "hidden"}
    logits, hidden = reference(frame.to_numpy().astype(np.float32))
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["hidden"], hidden, rtol=1e-5, atol=1e-5)


def test_named_inputs_take_the_columns_they_are_given() -> None:
    frame = pl.DataFrame({"p": [1.0, 0.0], "q": [0.0, 2.0], "r": [1.0, 1.0], "s": [5.0, 6.0], "t": [7.0, 8.0]})
    handler = OnnxModel(two_input_bytes(), inputs={"a": ["p", "q", "r"], "b": ["s", "t"]})
    result = handler.predict_batch(handler.load("cpu"), frame)
    weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    expected = frame.select("p", "q", "r").to_numpy() @ weights + frame.select("s", "t").to_numpy()
    np.testing.assert_allclose(result, expected)


def test_a_model_with_several_inputs_needs_an_inputs_mapping() -> None:
    with pytest.raises(ValueError, match=r"inputs=\{\.\.\.\}"):
        OnnxModel(two_input_bytes()).load("cpu")
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        OnnxModel(two_input_bytes(), inputs={"a": ["p", "q", "r"]}).load("cpu")
    with pytest.raises(ValueError, match="not \\['nope'\\]"):
        OnnxModel(mlp_bytes(), output="nope").load("cpu")


def test_cuda_without_a_gpu_provider_warns_once_and_runs_on_the_cpu(
    frame: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    monkeypatch.setattr(onnx_adapter, "_warned_no_cuda", set())
    handler = OnnxModel(mlp_bytes(), output="logits")
    with pytest.warns(RuntimeWarning, match="no CUDAExecutionProvider.*running on the CPU"):
        model = handler.load("cuda")
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handler.load("cuda")  # the second time: silent
    expected, _ = reference(frame.to_numpy().astype(np.float32))
    np.testing.assert_allclose(handler.predict_batch(model, frame), expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="'tpu'"):
        OnnxModel(mlp_bytes()).load("tpu")
