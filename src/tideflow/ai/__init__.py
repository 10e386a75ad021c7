"""Models on streams: the handler protocol and adapters for the common frameworks.

Every adapter imports its framework only when a model is loaded, so ``import tideflow.ai`` works
on the core install; a missing framework raises :class:`MissingExtra` naming the extra to install.
"""

from . import drift
from ._imports import MissingExtra
from .base import Batching, BatchTooLarge, ModelHandler
from .function import BatchFunction
from .labels import LabelledPredictions, join_labels
from .onnx import OnnxModel
from .registry import ModelRegistry, ModelVersion, RegisteredModel
from .retrain import RetrainPolicy
from .river import RiverModel
from .sklearn import SklearnModel
from .text import MiniLMOnnxEncoder, SentenceTransformerEncoder, minilm_int8_onnx_path, minilm_tokenizer_path
from .torch import TorchModel

__all__ = [
    "BatchFunction",
    "BatchTooLarge",
    "Batching",
    "LabelledPredictions",
    "MiniLMOnnxEncoder",
    "MissingExtra",
    "ModelHandler",
    "ModelRegistry",
    "ModelVersion",
    "OnnxModel",
    "RegisteredModel",
    "RetrainPolicy",
    "RiverModel",
    "SentenceTransformerEncoder",
    "SklearnModel",
    "TorchModel",
    "drift",
    "join_labels",
    "minilm_int8_onnx_path",
    "minilm_tokenizer_path",
]
