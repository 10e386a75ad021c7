"""Forecasters against oracles: coefficients, exact baselines, recurrences, coverage, chunking."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow.forecast import (
    EWMA,
    Forecaster,
    Holt,
    HorizonErrors,
    LastValue,
    RLSAutoRegressive,
    SeasonalNaive,
)


def ar2(n: int, seed: int, c: float = 0.5, a1: float = 0.6, a2: float = -0.3, sigma: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma, n)
    y = np.zeros(n)
    for t in range(2, n):
        y[t] = c + a1 * y[t - 1] + a2 * y[t - 2] + noise[t]
    return y


def test_rls_recovers_the_coefficients_of_an_ar2_process() -> None:
    y = ar2(5_000, seed=1)
    model = RLSAutoRegressive(2, forgetting=1.0, max_horizon=1)
    model.learn(y)
    np.testing.assert_allclose(model.coef, [0.6, -0.3], atol=0.05)
    assert model.intercept == pytest.approx(0.5, abs=0.1)
    assert model.lags.tolist() == [1, 2]


def test_rls_forecasts_by_iterating_its_one_step_model() -> None:
    y = ar2(500, seed=2)
    model = RLSAutoRegressive(2, seasonal_lags=(4,), max_horizon=3)
    model.learn(y)
    c, (a1, a2, a4) = model.intercept, model.coef
    history = list(y[-4:])
    expected = []
    for _ in range(3):
        nxt = c + a1 * history[-1] + a2 * history[-2] + a4 * history[-4]
        expected.append(nxt)
        history.append(nxt)
    np.testing.assert_allclose(model.forecast(3).mean, expected, rtol=1e-12)


def test_rls_starts_as_a_random_walk_and_frozen_stops_learning() -> None:
    model = RLSAutoRegressive(3, max_horizon=2)
    model.learn([5.0])
    np.testing.assert_allclose(model.forecast(2).mean, [5.0, 5.0])
    model.learn(ar2(300, seed=3))
    model.frozen = True
    theta = model.theta.copy()
    model.learn(ar2(50, seed=4))
    np.testing.assert_array_equal(model.theta, theta)


def test_seasonal_naive_is_exact_on_a_periodic_series() -> None:
    period, horizon = 24, 30
    pattern = np.random.default_rng(5).normal(size=period)
    y = np.tile(pattern, 12)
    f = SeasonalNaive(period, max_horizon=horizon).predict_learn(y, horizon)
    for step in range(1, horizon + 1):
        # Row j forecasts y[j + step - 1]; from row `period` on, a whole season has been seen.
        rows = np.arange(period, y.shape[0] - step + 1)
        np.testing.assert_array_equal(f.mean[rows, step - 1], y[rows + step - 1])


def test_last_value_repeats_the_last_value() -> None:
    y = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    f = LastValue(max_horizon=3).learn_forecast(y, 3)
    np.testing.assert_array_equal(f.mean, np.repeat(y[:, None], 3, axis=1))


def test_ewma_matches_the_explicit_weighted_mean() -> None:
    alpha = 0.2
    y = np.random.default_rng(6).normal(10.0, 3.0, 200)
    f = EWMA(alpha, max_horizon=4).learn_forecast(y, 4)
    for t in range(y.shape[0]):
        # level_t = (1 - a)^t y_0 + sum_{k=1..t} a (1 - a)^(t - k) y_k
        weights = np.array([(1 - alpha) ** t] + [alpha * (1 - alpha) ** (t - k) for k in range(1, t + 1)])
        oracle = float(weights @ y[: t + 1])
        np.testing.assert_allclose(f.mean[t], np.full(4, oracle), rtol=1e-10)


def test_holt_continues_a_line_exactly() -> None:
    y = 2.0 + 0.5 * np.arange(50)
    model = Holt(alpha=1.0, beta=1.0, damping=1.0, max_horizon=5)
    model.learn(y)
    np.testing.assert_allclose(model.forecast(5).mean, y[-1] + 0.5 * np.arange(1, 6), rtol=1e-12)


def test_horizon_errors_equal_the_brute_force_rms_per_step() -> None:
    rng = np.random.default_rng(7)
    n, horizon = 60, 3
    values, paths = rng.normal(size=n), rng.normal(size=(n, horizon))
    rms = HorizonErrors(horizon, forgetting=1.0).update(values, paths)
    for j in range(n):
        for h in range(1, horizon + 1):
            errors = [values[k] - paths[k - h, h - 1] for k in range(h, j + 1)]
            expected = np.sqrt(np.mean(np.square(errors))) if errors else np.inf
            assert rms[j, h - 1] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RLSAutoRegressive(2, max_horizon=5),
        lambda: EWMA(0.5, max_horizon=5),  # misspecified: the empirical errors still calibrate it
    ],
    ids=["rls", "ewma"],
)
def test_intervals_cover_near_nominal_on_a_stationary_ar_process(make: Callable[[], Forecaster]) -> None:
    y = ar2(20_000, seed=8)
    f = make().predict_learn(y, 5)
    warm = 2_000
    for step in (1, 5):
        rows = np.arange(warm, y.shape[0] - step + 1)
        actual = y[rows + step - 1]
        inside = (actual >= f.lower[rows, step - 1]) & (actual <= f.upper[rows, step - 1])
        assert 0.85 <= inside.mean() <= 0.95, (step, inside.mean())


def test_predict_learn_forecasts_each_value_before_learning_it() -> None:
    y = ar2(40, seed=9)
    whole = RLSAutoRegressive(3, seasonal_lags=(5,), max_horizon=2).predict_learn(y, 2)
    after = RLSAutoRegressive(3, seasonal_lags=(5,), max_horizon=2).learn_forecast(y, 2)
    for j in (0, 1, 7, 39):
        model = RLSAutoRegressive(3, seasonal_lags=(5,), max_horizon=2)
        model.learn(y[:j])
        before = model.forecast(2)
        np.testing.assert_allclose(whole.mean[j], before.mean, equal_nan=True)
        np.testing.assert_allclose(whole.upper[j], before.upper, equal_nan=True)
        model.learn(y[j : j + 1])
        np.testing.assert_allclose(after.mean[j], model.forecast(2).mean)


def test_bad_input_is_refused_without_changing_state() -> None:
    model = EWMA(0.5, max_horizon=2)
    model.learn([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        model.learn([3.0, float("nan")])
    assert model.level == 1.5 and model.n_seen == 2
    with pytest.raises(ValueError, match="max_horizon"):
        model.forecast(3)
    assert np.isnan(EWMA().forecast(1).mean).all()


FACTORIES: dict[str, Callable[[], Forecaster]] = {
    "rls": lambda: RLSAutoRegressive(3, seasonal_lags=(6,), forgetting=0.98, max_horizon=4),
    "seasonal-naive": lambda: SeasonalNaive(5, max_horizon=4),
    "last-value": lambda: LastValue(max_horizon=4),
    "ewma": lambda: EWMA(0.4, max_horizon=4, error_forgetting=0.9),
    "holt": lambda: Holt(0.5, 0.2, 0.9, max_horizon=4),
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(FACTORIES)),
    values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=6),
    horizon=st.integers(1, 4),
)
def test_results_do_not_depend_on_how_the_series_is_cut(
    name: str, values: list[float], cuts: list[int], horizon: int
) -> None:
    y = np.array(values)
    whole = FACTORIES[name]()
    expected = whole.predict_learn(y, horizon)
    chunked = FACTORIES[name]()
    bounds = [0, *sorted(c for c in cuts if c < len(y)), len(y)]
    parts = [chunked.predict_learn(y[a:b], horizon) for a, b in itertools.pairwise(bounds)]
    for field in ("mean", "lower", "upper"):
        got = np.vstack([getattr(p, field) for p in parts])
        np.testing.assert_allclose(got, getattr(expected, field), rtol=1e-9, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(
            getattr(chunked.forecast(horizon), field), getattr(whole.forecast(horizon), field), rtol=1e-9, atol=1e-9
        )


def test_rls_with_forgetting_stays_finite_on_a_constant_stretch() -> None:
    # Without excitation P grows by 1/forgetting per point (0.9^-20000 overflows); its trace is capped.
    model = RLSAutoRegressive(2, forgetting=0.9, max_horizon=3)
    model.learn(np.concatenate([ar2(500, seed=10), np.full(20_000, 4.0)]))
    assert np.isfinite(model.P).all() and np.isfinite(model.theta).all()
    np.testing.assert_allclose(model.forecast(3).mean, 4.0, atol=1e-6)


def test_rls_forecasts_the_last_value_until_it_has_learned_enough_points() -> None:
    """On a real CPU series, an AR(12) fitted on its first dozen points iterated 12 steps ahead
    once forecast 2.5e7 for values in 0–100; the warm-up keeps forecasts on the data's scale."""
    from importlib import resources
    from pathlib import Path

    import polars as pl

    from tideflow.forecast import RLSAutoRegressive

    series = Path(str(resources.files("tideflow") / "data/nab")) / "cpu_utilization_asg_misconfiguration.csv"
    values = pl.read_csv(series).get_column("value").to_numpy()
    model = RLSAutoRegressive(12, max_horizon=12)
    forecast = model.learn_forecast(values, 12)
    warmup = model.warmup
    assert np.all(forecast.mean[: warmup - 1 - 12] == values[: warmup - 1 - 12, None])  # the prior: last value
    assert np.abs(forecast.mean).max() < 5 * np.abs(values).max()
