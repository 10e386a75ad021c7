"""The demo's telemetry branch: NAB server metrics → clean → dedupe → adaptive detection → alerts.

    one CSV source per series (event time, watermark) ─ union "metrics"
      → "clean":   drop points without a finite value
      → "dedupe":  one point per (series, timestamp): NAB files repeat a clock hour (daylight saving)
      → "detect":  seasonal robust z per series, threshold calibrated to 0.5% of points, PSI drift
                   test per series that re-baselines the detector (``adaptive.AdaptiveScorer``)
      → alerts (SQLite, upsert), recalibrations (SQLite), every scored point (Parquet),
        hourly features per series (SQLite and Parquet): the windowed view of the same stream

Why one source per file: the series cover different months, and a source reading the files one
after the other would make every series after the first arrive behind the watermark (late for
any window). Each file is its own source with its own watermark; the union's watermark is the
minimum of theirs, so no point is ever late and each series keeps its order.

The labelled anomaly windows shipped with the data are read only after the run, to score the
alerts (``scoring.py``); nothing in the flow sees them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import polars as pl

from ..ai.drift import PopulationStability
from ..anomaly import SeasonalBaseline, telemetry_calibrator
from ..flow import Flow, Stream
from ..io import CsvSource, ParquetSink, Schema, SqliteSink
from ..time import windows
from ..time.watermarks import Monotonic
from .adaptive import AdaptiveScorer
from .latency import LatencyRecorder, Stamped, Timed

DATA = "data/nab"
SCHEMA = Schema({"timestamp": pl.String, "value": pl.Float64}, required=["timestamp"])
"""Only the timestamp is required: a missing value reaches the ``clean`` step, which drops it as a
gap in the series rather than as a broken record (a line that does not parse is a dead letter)."""
SOURCE_BATCH = 1_000
"""Rows per source batch (3.5 days of 5-minute data): small enough for a live progress display
and low latency, large enough that per-batch costs vanish."""
DRIFT_WINDOW = 576
"""Points per PSI window: two days of 5-minute data, so a daily cycle never looks like a drift."""
PSI_THRESHOLD = 0.2
"""The customary "significant shift" level of the population stability index (not tuned here)."""
FEATURE_WINDOW = "1h"


def bundled_series() -> list[Path]:
    """The NAB CSV files shipped inside the package."""
    folder = Path(str(resources.files("tideflow") / DATA))
    return sorted(folder.glob("*.csv"))


def labelled_windows() -> dict[str, list[tuple[datetime, datetime]]]:
    """NAB's labelled anomaly windows for the bundled series, keyed by series name."""
    raw = json.loads((resources.files("tideflow") / DATA / "combined_windows.json").read_text())
    return {
        name.removesuffix(".csv"): [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in windows]
        for name, windows in raw.items()
    }


def drift_test() -> PopulationStability:
    """The per-series drift test: PSI between a two-day reference and the last two days."""
    return PopulationStability(DRIFT_WINDOW, threshold=PSI_THRESHOLD)


def make_scorer() -> AdaptiveScorer:
    """The detection policy, fixed before any scoring and the same for every series: the seasonal
    baseline (the best of the engine's detectors on NAB, docs/benchmarks.md), the alerting policy of
    ``telemetry_calibrator`` (0.5% of points, a day of warm-up, one alert per day at most), and a
    PSI drift test that re-baselines the detector on the latest two days."""
    return AdaptiveScorer(SeasonalBaseline, telemetry_calibrator, drift_test, rebaseline=DRIFT_WINDOW)


@dataclass
class TelemetryBranch:
    """What the rest of the demo needs from this branch."""

    points: Stream
    """Cleaned, deduplicated points (still carrying ``ingest_ns``): the forecast branch reads them."""
    scorer: AdaptiveScorer
    sources: list[str]


def metric_sources(flow: Flow, files: list[Path], *, speed: float | None) -> tuple[Stream, list[str]]:
    """One stamped CSV source per file, merged into one stream of ``series, timestamp, value``."""
    streams, names = [], []
    for path in files:
        name = f"nab:{path.stem}"
        csv = CsvSource(
            str(path), time="timestamp", schema=SCHEMA, file_column="series", replay=speed, batch_size=SOURCE_BATCH
        )
        streams.append(flow.source(name, Stamped(csv), watermark=Monotonic()))
        names.append(name)
    merged = streams[0].union("metrics", *streams[1:]) if len(streams) > 1 else streams[0]
    return merged, names


def telemetry_branch(
    flow: Flow, files: list[Path], out_dir: Path, latency: LatencyRecorder, *, speed: float | None = None
) -> TelemetryBranch:
    """Add the telemetry steps and sinks to ``flow``; tables go to ``out_dir/demo.db`` and Parquet."""
    database = str(out_dir / "demo.db")
    metrics, sources = metric_sources(flow, files, speed=speed)
    clean = metrics.filter("clean", pl.col("value").is_not_null() & pl.col("value").is_finite())
    unique = clean.dedupe("dedupe", key=["series", "timestamp"], within="1h")
    unique.duplicates().select("duplicate-columns", "series", "timestamp", "value").sink(
        "duplicates", ParquetSink(out_dir / "duplicates.parquet")
    )

    scorer = make_scorer()
    scored = unique.map_batches("detect", scorer, same_rows=True, stateful=True)
    scored.sink("points-out", Timed(ParquetSink(out_dir / "points.parquet"), latency, "telemetry"))
    scored.filter("alerts", pl.col("is_anomaly")).select(
        "alert-columns", "series", "timestamp", "value", "anomaly_score"
    ).sink("alerts-out", SqliteSink(database, "alerts", key=["series", "timestamp"]))
    scored.filter("drifts", pl.col("recalibrated")).select(
        "recalibration-columns", "series", "timestamp", "value", "drift_evidence"
    ).sink("recalibrations-out", SqliteSink(database, "recalibrations", key=["series", "timestamp"]))

    features = (
        scored.key_by("series")
        .window("features", windows.tumbling(FEATURE_WINDOW))
        .agg(
            points=pl.len(),
            mean=pl.col("value").mean(),
            std=pl.col("value").std(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
            max_score=pl.col("anomaly_score").max(),
            alerts=pl.col("is_anomaly").sum(),
        )
    )
    features.sink("features-db", SqliteSink(database, "features", key=["series", "window_start"]))
    features.sink("features-out", ParquetSink(out_dir / "features.parquet"))
    return TelemetryBranch(unique, scorer, sources)
