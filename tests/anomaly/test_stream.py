"""detect_anomalies in a flow: per-series state, same scores as the detector called directly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import tideflow as tdf
from tideflow.anomaly import RobustZScore, SeasonalBaseline, ThresholdCalibrator, detect_anomalies

T0_MS = 1_700_000_000_000
STEP_MS = 300_000


def make_records(n: int = 900) -> list[dict]:
    """Three series, interleaved unevenly (so batches hold uneven runs of each), each with a spike."""
    rng = np.random.default_rng(5)
    records = []
    counts = {"a": 0, "b": 0, "c": 0}
    for i in range(n):
        name = "abc"[int(rng.integers(0, 3))]
        k = counts[name]
        counts[name] += 1
        value = {"a": 10.0, "b": 100.0, "c": 0.5}[name] + rng.normal(0, 1) + (25.0 if k == 200 else 0.0)
        records.append({"series": name, "timestamp": T0_MS + k * STEP_MS, "value": value, "i": i})
    return records


def detector() -> RobustZScore:
    return RobustZScore(window=60, min_history=20)


def calibrator() -> ThresholdCalibrator:
    return ThresholdCalibrator(target_fpr=0.02, warmup=50, cooldown=10)


def run(records: list[dict], *, batch_size: int, **options: object) -> pl.DataFrame:
    flow = tdf.Flow("anomalies")
    stream = flow.source("points", tdf.io.MemorySource(records, time="timestamp", batch_size=batch_size))
    out = tdf.io.MemorySink()
    detect_anomalies(stream, "detect", options.pop("factory", detector), calibrator=calibrator, **options).sink(
        "out", out
    )
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0
    return out.frame


@pytest.mark.parametrize("batch_size", [1, 37, 10_000])
def test_flow_scores_equal_the_detector_called_per_series(batch_size: int) -> None:
    records = make_records()
    frame = run(records, batch_size=batch_size)
    assert frame["i"].to_list() == list(range(len(records)))  # row order preserved
    for name, part in frame.partition_by("series", as_dict=True, maintain_order=True).items():
        values = part["value"].to_numpy()
        expected = detector().score(values, part["timestamp"].to_numpy())
        flags = calibrator().update(expected)
        got = part["anomaly_score"].fill_null(np.nan).to_numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"series {name}")
        assert part["is_anomaly"].to_list() == flags.tolist()
    top = frame.filter(pl.col("anomaly_score") == pl.col("anomaly_score").max().over("series"))
    assert sorted(top["timestamp"].to_list()) == [T0_MS + 200 * STEP_MS] * 3  # each series' spike


def test_time_aware_detector_and_a_single_unkeyed_series() -> None:
    records = [r for r in make_records() if r["series"] == "a"]
    for r in records:
        del r["series"]
    frame = run(records, batch_size=50, key=None, factory=SeasonalBaseline)
    expected = SeasonalBaseline().score(frame["value"].to_numpy(), frame["timestamp"].to_numpy())
    np.testing.assert_array_equal(frame["anomaly_score"].fill_null(np.nan).to_numpy(), expected)


def test_missing_values_get_no_score_and_are_not_learnt() -> None:
    records = [r for r in make_records() if r["series"] == "b"]
    holes = {50, 51, 120}
    with_holes = [{**r, "value": None if k in holes else r["value"]} for k, r in enumerate(records)]
    frame = run(with_holes, batch_size=64)
    assert frame["anomaly_score"].gather(sorted(holes)).is_null().all()
    assert not frame["is_anomaly"].gather(sorted(holes)).any()
    kept = [r["value"] for k, r in enumerate(records) if k not in holes]
    expected = detector().score(np.array(kept))
    got = frame.filter(pl.col("value").is_not_null())["anomaly_score"].fill_null(np.nan).to_numpy()
    np.testing.assert_array_equal(got, expected)


def test_stream_methods_forward_to_the_detector_and_forecaster_steps() -> None:
    import tideflow as tdf

    rows = [{"series": "a", "timestamp": i * 60_000, "value": float(i % 10)} for i in range(600)]
    rows[500]["value"] = 1000.0
    flow = tdf.Flow("methods")
    scored, forecasts = tdf.io.MemorySink(), tdf.io.MemorySink()
    source = flow.source("s", tdf.io.MemorySource(rows, time="timestamp"), watermark=tdf.Monotonic())
    source.detect_anomalies("detect", tdf.anomaly.RobustZScore).sink("scored", scored)
    source.forecast(
        "forecast",
        lambda: tdf.forecast.SeasonalNaive(period=10),
        interval="1m",
        key="series",
        time="timestamp",
        horizon=2,
    ).sink("forecasts", forecasts)
    flow.run(handle_signals=False)
    flagged = scored.frame.filter("is_anomaly").get_column("timestamp").to_list()
    assert flagged == [500 * 60_000]
    assert forecasts.frame.height == 2 * 600
