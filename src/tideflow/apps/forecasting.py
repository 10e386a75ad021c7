"""The demo's load-forecast branch: one server metric forecast an hour ahead, checked as it comes true.

    cleaned points of the telemetry branch → "load-series" (one series)
      → "forecast":  RLS autoregression, AR(12) plus the value a day back, 12 steps (1 h) ahead,
                     with a 90% prediction interval from its own running errors
      → "vs-actual": each forecast joined with the actual value at its target time (event time)
      → every (forecast, actual) pair into Parquet; the online MAE is read from them

The series is the CPU of an AWS auto-scaling group (``cpu_utilization_asg_misconfiguration``):
load with a strong daily cycle, hence the lag of one day (288 points). On this series the
forecaster's MAE over all 12 steps is about 2.9 CPU points, against 11.2 for repeating the last value.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from ..flow import Stream
from ..forecast import RLSAutoRegressive
from ..forecast.stream import join_actuals
from ..io import ParquetSink
from .latency import INGEST, LatencyRecorder, Timed

FORECAST_SERIES = "cpu_utilization_asg_misconfiguration"
INTERVAL = timedelta(minutes=5)
"""The spacing of NAB's series."""
HORIZON = 12
"""Steps ahead: one hour of 5-minute points."""
DAILY_LAG = 288


def make_forecaster() -> RLSAutoRegressive:
    """AR(12) with the point one day back, refitted by recursive least squares at every point."""
    return RLSAutoRegressive(12, seasonal_lags=(DAILY_LAG,), max_horizon=HORIZON)


def forecast_branch(points: Stream, out_dir: Path, latency: LatencyRecorder, *, series: str = FORECAST_SERIES) -> None:
    """Add the forecast steps for ``series`` of ``points`` (series, timestamp, value) and their sink.

    ``forecast.parquet`` holds one row per pair: series, made_at, target_time, horizon_step,
    forecast, lower, upper, actual, error (forecast - actual), abs_error, covered.
    """
    load = points.filter("load-series", pl.col("series") == series)
    forecasts = load.forecast("forecast", make_forecaster, interval=INTERVAL, key="series", horizon=HORIZON)
    pairs = join_actuals(forecasts, load, "vs-actual", interval=INTERVAL, horizon=HORIZON, key="series")
    columns = ["series", "made_at", "target_time", "horizon_step", "forecast", "lower", "upper"]
    pairs.select(
        "pair-columns", *columns, pl.col("value").alias("actual"), "error", "abs_error", "covered", INGEST
    ).sink("forecast-out", Timed(ParquetSink(out_dir / "forecast.parquet"), latency, "forecast"))
