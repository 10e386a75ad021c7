"""Detectors: chunking never changes a score, injected anomalies are caught, thresholds keep
their false-positive budget."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow.anomaly import (
    DETECTORS,
    Detector,
    EWMAChart,
    HalfSpaceTrees,
    RandomScores,
    RobustZScore,
    SeasonalBaseline,
    SlidingIsolationForest,
    ThresholdCalibrator,
    WindowedGaussian,
)

needs_river = pytest.mark.skipif(importlib.util.find_spec("river") is None, reason="needs River (tideflow[ml])")
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn")
MARKS = {"hst": [needs_river], "iforest": [needs_sklearn]}

FIVE_MINUTES = np.timedelta64(5, "m")
T0 = np.datetime64("2024-01-01T00:00", "us")

# Small settings so that every code path (partial windows, full windows, refits) is crossed
# within a few hundred points.
SMALL: dict[str, Callable[[], Detector]] = {
    "robust-z": lambda: RobustZScore(window=50, min_history=10),
    "ewma": lambda: EWMAChart(min_history=10),
    "seasonal": lambda: SeasonalBaseline(history=16, min_history=4),
    "hst": lambda: HalfSpaceTrees(n_trees=4, height=5, window_size=40),
    "iforest": lambda: SlidingIsolationForest(refit_every=64, train_window=200, min_train=64, n_estimators=8),
    "windowed-gaussian": lambda: WindowedGaussian(window=50, min_history=10),
    "random": lambda: RandomScores(seed=3),
}


def series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A daily cycle with noise, a flat quantized stretch (zero MAD) and a spike."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = 10 + 2 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 0.3, n)
    values[n // 4 : n // 3] = np.round(values[n // 4 : n // 3])
    values[n // 2] += 8
    return values, T0 + t * FIVE_MINUTES


def chunked(factory: Callable[[], Detector], values: np.ndarray, ts: np.ndarray, cuts: list[int]) -> np.ndarray:
    detector = factory()
    edges = [0, *sorted(set(cuts)), len(values)]
    return np.concatenate([detector.score(values[a:b], ts[a:b]) for a, b in itertools.pairwise(edges)])


@pytest.mark.parametrize("name", [pytest.param(name, marks=MARKS.get(name, [])) for name in SMALL])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12), seed=st.integers(0, 3))
def test_scores_do_not_depend_on_chunking(name: str, cuts: list[int], seed: int) -> None:
    values, ts = series(600, seed)
    whole = SMALL[name]().score(values, ts)
    assert whole.shape == values.shape
    np.testing.assert_array_equal(chunked(SMALL[name], values, ts, cuts), whole)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=12),
    cooldown=st.integers(0, 30),
    update_every=st.integers(1, 40),
)
def test_calibrated_flags_do_not_depend_on_chunking(cuts: list[int], cooldown: int, update_every: int) -> None:
    scores = np.abs(np.random.default_rng(1).standard_t(3, 800))
    scores[::97] = np.nan  # unscored points never alert and are not learnt
    make = lambda: ThresholdCalibrator(target_fpr=0.02, warmup=50, cooldown=cooldown, update_every=update_every)  # noqa: E731
    whole = make().update(scores)
    calibrator = make()
    edges = [0, *sorted(set(cuts)), len(scores)]
    parts = np.concatenate([calibrator.update(scores[a:b]) for a, b in itertools.pairwise(edges)])
    np.testing.assert_array_equal(parts, whole)
    assert not whole[np.isnan(scores)].any()


# -- injected anomalies ----------------------------------------------------------------------------
N = 2304  # eight days of 5-minute points
AT = 2000


def injected(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(N)
    values = 10 + 2 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 0.3, N)
    if kind == "spike":
        values[AT] += 6  # 20 noise sigmas, 1.5 x the daily amplitude
    else:
        values[AT:] += 4  # a lasting shift by twice the daily amplitude
    return values, T0 + t * FIVE_MINUTES


CASES = [
    # (detector, anomaly, most points between the anomaly's start and the first alert)
    ("robust-z", "spike", 0),
    ("seasonal", "spike", 0),
    ("hst", "spike", 0),
    ("iforest", "spike", 0),
    ("ewma", "shift", 12),  # an EWMA chart is built for shifts; a lone spike is smoothed away
    ("seasonal", "shift", 12),
    ("hst", "shift", 12),
    ("iforest", "shift", 12),
]


@pytest.mark.parametrize(
    ("name", "kind", "delay"), [pytest.param(*case, marks=MARKS.get(case[0], [])) for case in CASES]
)
def test_detector_flags_an_injected_anomaly(name: str, kind: str, delay: int) -> None:
    values, ts = injected(kind)
    scores = DETECTORS[name]().score(values, ts)
    alerts = np.flatnonzero(ThresholdCalibrator(target_fpr=0.005, warmup=288).update(scores))
    after = alerts[alerts >= AT]
    assert len(after), f"{name} raised no alert after the {kind}"
    assert after[0] - AT <= delay


def test_detectors_need_history_before_scoring() -> None:
    values, ts = series(300, 0)
    assert np.isnan(RobustZScore(window=50, min_history=10).score(values, ts)[:10]).all()
    assert not np.isnan(RobustZScore(window=50, min_history=10).score(values, ts)[10:]).any()
    with pytest.raises(ValueError, match="timestamps"):
        SeasonalBaseline().score(values)


def test_a_flat_history_still_gets_a_finite_score() -> None:
    values = np.r_[np.full(100, 45.0), 45.1, 60.0]
    scores = RobustZScore(window=50, min_history=10).score(values)
    assert np.isfinite(scores[10:]).all()
    assert scores[-1] > scores[-2] > 0  # the floor keeps a 0.2% wiggle far below a real jump
    assert scores[-2] < 1


# -- thresholds ---------------------------------------------------------------------------------------
def test_calibrated_threshold_spends_the_false_positive_budget_on_noise() -> None:
    noise = np.random.default_rng(42).normal(size=20_000)
    scores = RobustZScore().score(noise)
    warmup = 500
    flags = ThresholdCalibrator(target_fpr=0.01, warmup=warmup).update(scores)
    scored = np.flatnonzero(np.isfinite(scores))
    rate = flags[scored[warmup:]].mean()
    assert 0.005 <= rate <= 0.02


def test_no_alert_during_warmup_and_one_per_excursion_with_cooldown() -> None:
    scores = np.zeros(1000)
    scores[[10, 400, 401, 402, 450, 800]] = 100.0
    flags = ThresholdCalibrator(target_fpr=0.01, warmup=100, cooldown=100, update_every=1).update(scores)
    assert np.flatnonzero(flags).tolist() == [400, 800]


def test_calibrator_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        ThresholdCalibrator(target_fpr=0.0)
    with pytest.raises(ValueError):
        ThresholdCalibrator(cooldown=-1)
