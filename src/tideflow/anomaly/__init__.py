"""Anomaly detection on streams: online per-series detectors, calibrated thresholds, a flow step.

A detector (``Detector``) scores a chunk of one series against its past and learns it;
``ThresholdCalibrator`` turns scores into alerts at a target false-positive rate;
``detect_anomalies`` runs both per series inside a flow. ``DETECTORS`` names the detectors (the
``tideflow apps telemetry --detector`` choices), ``BASELINES`` the reference ones.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Detector
from .baselines import RandomScores, WindowedGaussian
from .ewma import EWMAChart
from .hst import HalfSpaceTrees
from .iforest import SlidingIsolationForest
from .robust import RobustZScore
from .seasonal import SeasonalBaseline
from .stream import AnomalyScorer, detect_anomalies
from .threshold import ThresholdCalibrator

DETECTORS: dict[str, Callable[[], Detector]] = {
    "robust-z": RobustZScore,
    "ewma": EWMAChart,
    "seasonal": SeasonalBaseline,
    "hst": HalfSpaceTrees,
    "iforest": SlidingIsolationForest,
}
"""The detectors by name, each with its default parameters."""

BASELINES: dict[str, Callable[[], Detector]] = {
    "windowed-gaussian": WindowedGaussian,
    "random": RandomScores,
}
"""Reference detectors that the others should beat."""


def telemetry_calibrator() -> ThresholdCalibrator:
    """The alerting policy of the telemetry app and the NAB benchmark, fixed before any scoring:
    0.5% of points over threshold at most, no alert in the first 288 scored points (a day of
    5-minute data), then at most one alert per 288 points (one per excursion)."""
    return ThresholdCalibrator(target_fpr=0.005, warmup=288, cooldown=288)


__all__ = [
    "BASELINES",
    "DETECTORS",
    "AnomalyScorer",
    "Detector",
    "EWMAChart",
    "HalfSpaceTrees",
    "RandomScores",
    "RobustZScore",
    "SeasonalBaseline",
    "SlidingIsolationForest",
    "ThresholdCalibrator",
    "WindowedGaussian",
    "detect_anomalies",
    "telemetry_calibrator",
]
