"""Forecasters in a flow: the same forecasts as calling them directly; online MAE via the join."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

import tideflow as tdf
from tideflow.forecast import EWMA, RLSAutoRegressive, forecast_stream, join_actuals, running_errors

T0 = 1_700_000_000_000
STEP_MS = 60_000


def series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 20 + 3 * np.sin(2 * np.pi * t / 12) + np.cumsum(rng.normal(0, 0.3, n))


def rls() -> RLSAutoRegressive:
    return RLSAutoRegressive(3, seasonal_lags=(12,), max_horizon=4)


def direct(values: np.ndarray, horizon: int, every: int) -> dict[str, np.ndarray]:
    """What the step should emit for one key: the forecaster called on the whole series."""
    f = rls().learn_forecast(values, horizon)
    emitted = np.flatnonzero((np.arange(values.shape[0]) + 1) % every == 0)
    return {
        "row": np.repeat(emitted, horizon),
        "horizon_step": np.tile(np.arange(1, horizon + 1), emitted.shape[0]),
        "forecast": f.mean[emitted].ravel(),
        "lower": f.lower[emitted].ravel(),
        "upper": f.upper[emitted].ravel(),
    }


@pytest.mark.parametrize("every", [1, 2])
def test_forecast_stream_equals_calling_the_forecaster_per_key(every: int) -> None:
    n, horizon = 60, 3
    data = {"a": series(n, 1), "b": series(n, 2)}
    records = [{"host": k, "ts": T0 + i * STEP_MS, "value": float(data[k][i])} for i in range(n) for k in ("a", "b")]
    flow = tdf.Flow("forecast")
    readings = flow.source("readings", tdf.io.MemorySource(records, time="ts", batch_size=7))
    out = tdf.io.MemorySink()
    forecasts = forecast_stream(
        readings.key_by("host"), "forecast", rls, interval=STEP_MS, on="value", horizon=horizon, every=every
    )
    forecasts.sink("out", out)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0
    frame = out.frame
    assert frame.columns == [
        "host",
        "ts",
        "made_at",
        "target_time",
        "horizon_step",
        "forecast",
        "lower",
        "upper",
    ]
    for key, values in data.items():
        got = frame.filter(pl.col("host") == key).sort("made_at", "horizon_step")
        expected = direct(values, horizon, every)
        made_at = T0 + expected["row"] * STEP_MS
        np.testing.assert_array_equal(got["made_at"].to_numpy(), made_at)
        np.testing.assert_array_equal(got["ts"].to_numpy(), made_at)
        np.testing.assert_array_equal(got["horizon_step"].to_numpy(), expected["horizon_step"])
        np.testing.assert_array_equal(got["target_time"].to_numpy(), made_at + expected["horizon_step"] * STEP_MS)
        for column in ("forecast", "lower", "upper"):
            np.testing.assert_allclose(got[column].to_numpy(), expected[column], rtol=1e-9, atol=1e-9)


def test_datetime_times_give_datetime_targets() -> None:
    start = datetime(2016, 7, 1)
    records = [{"date": start + timedelta(hours=i), "OT": float(v)} for i, v in enumerate(series(30, 3))]
    flow = tdf.Flow("hourly")
    readings = flow.source("readings", tdf.io.MemorySource(records, time="date", batch_size=5))
    out = tdf.io.MemorySink()
    forecast_stream(readings, "forecast", lambda: EWMA(0.5, max_horizon=2), interval="1h", on="OT", horizon=2).sink(
        "out", out
    )
    flow.run(handle_signals=False)
    last = out.frame.sort("made_at", "horizon_step").tail(2)
    assert last["target_time"].dtype == pl.Datetime
    assert last["target_time"].to_list() == [start + timedelta(hours=30), start + timedelta(hours=31)]


def test_bad_points_go_to_dead_letters_and_are_not_learned() -> None:
    values = series(40, 4)
    records: list[dict[str, object]] = [{"ts": T0 + i * STEP_MS, "value": float(v)} for i, v in enumerate(values)]
    records.insert(10, {"ts": T0 + 10 * STEP_MS + 1, "value": None})
    records.insert(20, {"ts": T0 + 20 * STEP_MS + 1, "value": float("nan")})
    records.insert(30, {"ts": T0, "value": 1.0})  # not after the previous point
    flow = tdf.Flow("bad")
    readings = flow.source("readings", tdf.io.MemorySource(records, time="ts", batch_size=8))
    out = tdf.io.MemorySink()
    forecast_stream(readings, "forecast", rls, interval=STEP_MS, horizon=1).sink("out", out)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 3
    got = out.frame.sort("made_at")
    np.testing.assert_allclose(got["forecast"].to_numpy(), direct(values, 1, 1)["forecast"], rtol=1e-9)


def test_forecast_stream_refuses_a_horizon_beyond_the_forecasters() -> None:
    flow = tdf.Flow("too-far")
    readings = flow.source("readings", tdf.io.MemorySource([{"ts": T0, "value": 1.0}], time="ts"))
    with pytest.raises(tdf.FlowDefinitionError, match="max_horizon"):
        forecast_stream(readings, "forecast", rls, interval=STEP_MS, horizon=5)


def test_joined_with_actuals_the_online_mae_equals_numpy_on_the_same_pairs() -> None:
    n, horizon = 200, 4
    values = series(n, 5)
    records = [{"ts": T0 + i * STEP_MS, "value": float(v)} for i, v in enumerate(values)]
    flow = tdf.Flow("online-mae")
    readings = flow.source(
        "readings", tdf.io.MemorySource(records, time="ts", batch_size=16), watermark=tdf.Monotonic()
    )
    forecasts = forecast_stream(readings, "forecast", rls, interval=STEP_MS, horizon=horizon)
    pairs = join_actuals(forecasts, readings, "vs-actual", interval=STEP_MS, horizon=horizon)
    pair_sink, error_sink = tdf.io.MemorySink(), tdf.io.MemorySink()
    pairs.sink("pairs", pair_sink)
    running_errors(pairs, "online-mae").sink("errors", error_sink)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0

    f = rls().learn_forecast(values, horizon)
    joined = pair_sink.frame
    assert joined.height == sum(n - h for h in range(1, horizon + 1))
    assert (joined["target_time"] == joined["ts_right"]).all()
    errors = error_sink.frame
    for h in range(1, horizon + 1):
        origins = np.arange(n - h)
        error = f.mean[origins, h - 1] - values[origins + h]
        inside = (values[origins + h] >= f.lower[origins, h - 1]) & (values[origins + h] <= f.upper[origins, h - 1])
        final = errors.filter(pl.col("horizon_step") == h).sort("n").row(-1, named=True)
        assert final["n"] == n - h
        assert final["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-9)
        assert final["mse"] == pytest.approx(np.square(error).mean(), rel=1e-9)
        assert final["coverage"] == pytest.approx(inside.mean())
