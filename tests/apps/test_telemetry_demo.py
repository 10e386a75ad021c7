"""The demo's telemetry branch on its own, its adaptive detector and the latency stamps."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import tideflow as tdf
from tideflow.ai.drift import PopulationStability
from tideflow.anomaly import RobustZScore, SeasonalBaseline, telemetry_calibrator
from tideflow.apps.adaptive import AdaptiveScorer
from tideflow.apps.latency import INGEST, LatencyRecorder, Stamped, Timed
from tideflow.apps.telemetry import make_scorer, telemetry_branch

from .slices import expected_points, slice_of_bundled


def test_the_branch_scores_each_clean_point_once_in_order_and_never_late(tmp_path: Path) -> None:
    files = slice_of_bundled(tmp_path / "data", rows=2_000, broken=True)
    flow = tdf.Flow("telemetry")
    branch = telemetry_branch(flow, files, tmp_path, LatencyRecorder())
    result = flow.run(handle_signals=False)
    points = pl.read_parquet(tmp_path / "points.parquet")
    expected = expected_points(files)
    # Per series, the points arrive in file order: what the detectors and the forecaster need.
    for name in expected["series"].unique():
        mine = points.filter(pl.col("series") == name).select("timestamp", "value")
        assert mine.equals(expected.filter(pl.col("series") == name).select("timestamp", "value"))
    assert result.dead_letters == 1  # the row that is not a number; nothing is late
    assert branch.sources == [f"nab:{path.stem}" for path in files]
    # The hourly features count every scored point once.
    features = pl.read_parquet(tmp_path / "features.parquet")
    assert features["points"].sum() == points.height
    assert features["alerts"].sum() == points["is_anomaly"].sum()


def test_adaptive_scores_do_not_depend_on_batch_boundaries() -> None:
    rng = np.random.default_rng(11)
    n = 6_000
    times = (np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(5, "m")).astype("datetime64[ms]")
    values = 50 + 10 * np.sin(np.arange(n) * 2 * np.pi / 288) + rng.normal(0, 2, n)
    values[3_000:] += 40  # a new normal: the drift test must notice it
    values[[1_000, 4_500]] += 60
    df = pl.DataFrame({"series": rng.choice(["a", "b"], n), "timestamp": times, "value": values})
    whole = make_scorer()(df)
    scorer = make_scorer()
    cuts = [0, 1, 7, 400, 1_999, 2_000, 3_333, 5_000, n]
    pieces = pl.concat([scorer(df.slice(a, b - a)) for a, b in itertools.pairwise(cuts)])
    assert pieces.equals(whole)
    assert whole["recalibrated"].sum() >= 2  # both series shift
    assert sum(scorer.recalibrations.values()) == whole["recalibrated"].sum()
    assert whole.filter("recalibrated")["drift_evidence"].str.contains('"detector":"PSI"').all()


def test_a_drift_rebuilds_the_detector_so_a_new_level_becomes_normal_sooner() -> None:
    """A lasting level shift: the drift test fires within a window of it, and the rebuilt detector
    (which forgot all but the last window) takes the new level as normal hundreds of points before
    the detector that was never recalibrated, whose trailing median needs half its window to move."""
    rng = np.random.default_rng(5)
    n = 4_000
    values = rng.normal(100, 1, n)
    values[2_000:] += 30
    times = (np.datetime64("2024-01-01") + np.arange(n) * np.timedelta64(5, "m")).astype("datetime64[ms]")
    df = pl.DataFrame({"series": "s", "timestamp": times, "value": values})

    def scorer(window: int) -> AdaptiveScorer:
        drift = lambda: PopulationStability(window, threshold=0.2)  # noqa: E731
        return AdaptiveScorer(lambda: RobustZScore(window=1_500), telemetry_calibrator, drift, rebaseline=window)

    adaptive = scorer(500)(df)
    never = scorer(10**6)(df)  # a drift window longer than the series: never recalibrates
    drifts = adaptive["recalibrated"].arg_true().to_list()
    assert len(drifts) == 1 and 2_000 <= drifts[0] < 2_500
    assert never["recalibrated"].sum() == 0
    assert adaptive["anomaly_score"].slice(2_000, 50).min() > 10  # both see the shift itself
    settled, unsettled = adaptive["anomaly_score"].slice(2_500, 200), never["anomaly_score"].slice(2_500, 200)
    assert settled.mean() < 3 < 10 < unsettled.mean()  # type: ignore[operator]


def test_recalibrate_is_a_hook_that_rebuilds_one_series() -> None:
    scorer = AdaptiveScorer(SeasonalBaseline, telemetry_calibrator, lambda: PopulationStability(100), rebaseline=50)
    times = (np.datetime64("2024-01-01") + np.arange(200) * np.timedelta64(5, "m")).astype("datetime64[ms]")
    scorer(pl.DataFrame({"series": ["a"] * 200, "timestamp": times, "value": np.arange(200.0) % 7}))
    before = scorer.series["a"].detector
    scorer.recalibrate("a")
    assert scorer.series["a"].detector is not before
    assert scorer.recalibrations == {"a": 1}
    with pytest.raises(ValueError, match="finite"):
        scorer(pl.DataFrame({"series": ["a"], "timestamp": times[:1], "value": [float("nan")]}))


def test_stamps_travel_from_source_to_sink_and_are_dropped_there(tmp_path: Path) -> None:
    recorder = LatencyRecorder()
    sink = tdf.io.MemorySink()
    flow = tdf.Flow("stamps")
    source = Stamped(tdf.io.MemorySource([{"t": i, "v": i} for i in range(500)], time="t", batch_size=50))
    assert source.time == "t"
    flow.source("numbers", source, watermark=tdf.Monotonic()).filter("odd", pl.col("v") % 2 == 1).sink(
        "out", Timed(sink, recorder, "numbers")
    )
    flow.run(handle_signals=False)
    assert INGEST not in sink.frame.columns and sink.frame.height == 250
    assert recorder.values("numbers").size == 250
    latency = recorder.percentiles("numbers")
    assert latency is not None and 0 <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert recorder.percentiles("other") is None
