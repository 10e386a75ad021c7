"""Drift detectors: has the stream (a model's error, a feature) stopped looking like it did?

Two kinds, one protocol (``update(values) -> list[DriftEvent]``, state kept between calls, so
the result does not depend on how the stream is cut):

* **change detectors** on a univariate signal, usually a model's error or loss — River's ADWIN,
  Page-Hinkley and KSWIN, fed one value at a time;
* **distribution tests** of a feature between a *reference* window (the data the model was
  trained on, or the stream's first rows) and the most recent window — population stability
  index and the two-sample Kolmogorov–Smirnov test, evaluated every ``check_every`` values.
"""

from __future__ import annotations

import math
import types
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ._imports import require

Direction = Literal["both", "up", "down"]


@dataclass(frozen=True)
class DriftEvent:
    """A detected change: at which value (0-based, counted per detector) and the evidence."""

    index: int
    detector: str
    evidence: dict[str, float] = field(default_factory=dict)


class DriftDetector(Protocol):
    name: str

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        """Feed consecutive values; return the drifts detected among them."""
        ...


class RiverDrift:
    """Wraps a River drift detector (``update(x)``, ``drift_detected``).

    ``direction="up"`` reports only changes that raise the signal's mean: watching a model's
    error, its improvement while it learns is a change too, but not one to act on. The
    direction is read from the running mean just before and after the detection."""

    def __init__(self, detector: Any, name: str | None = None, direction: Direction = "both") -> None:
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be 'both', 'up' or 'down', got {direction!r}")
        self.detector = detector
        self.name = name or type(detector).__name__
        self.direction = direction
        self.seen = 0
        self.mean = 0.0
        """Mean of the values since the last detection (the level a change departs from)."""
        self.count = 0
        self.recent: deque[float] = deque(maxlen=32)
        """The newest values: their mean is the level after a change."""

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        events = []
        detector, recent = self.detector, self.recent
        for value in np.asarray(values, dtype=np.float64).tolist():
            detector.update(value)
            recent.append(value)
            if detector.drift_detected:
                after = float(np.mean(recent))
                rising = after > self.mean
                if self.direction == "both" or rising == (self.direction == "up"):
                    evidence = {**self._evidence(), "mean_before": self.mean, "mean_recent": after}
                    events.append(DriftEvent(self.seen, self.name, evidence))
                self.mean, self.count = after, len(recent)
                recent.clear()
            else:
                self.count += 1
                self.mean += (value - self.mean) / self.count
            self.seen += 1
        return events

    def _evidence(self) -> dict[str, float]:
        evidence = {}
        for attribute in ("estimation", "width", "variance"):
            value = getattr(self.detector, attribute, None)
            if isinstance(value, int | float):
                evidence[attribute] = float(value)
        return evidence

    def __getstate__(self) -> dict[str, Any]:
        """River's Page-Hinkley keeps a bound method of itself as an attribute (``_test_drift``),
        which pickles as a ``getattr`` call that the checkpoint codec refuses (it could reach
        anything). Such attributes travel as their method's name and are bound again on load."""
        state = self.__dict__.copy()
        fields = getattr(self.detector, "__dict__", None)
        if fields is not None:
            methods = {
                name: value.__func__.__name__
                for name, value in fields.items()
                if isinstance(value, types.MethodType) and value.__self__ is self.detector
            }
            if methods:
                kept = {name: value for name, value in fields.items() if name not in methods}
                state["detector"] = _SelfBound(type(self.detector), kept, methods)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        detector = state["detector"]
        if isinstance(detector, _SelfBound):
            state = {**state, "detector": detector.rebuild()}
        self.__dict__.update(state)


@dataclass
class _SelfBound:
    """An object whose attributes include its own bound methods, as data: its class, its other
    attributes, and ``attribute -> method name`` for the bound ones."""

    cls: type
    fields: dict[str, Any]
    methods: dict[str, str]

    def rebuild(self) -> Any:
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(self.fields)
        for attribute, method in self.methods.items():
            setattr(obj, attribute, getattr(obj, method))
        return obj


def adwin(delta: float = 0.002, *, direction: Direction = "both", **options: Any) -> RiverDrift:
    """ADWIN: adaptive windowing; detects a change in the mean with a bound on false alarms."""
    drift = require("river.drift", "ml", what="adwin()")
    return RiverDrift(drift.ADWIN(delta=delta, **options), "ADWIN", direction)


def page_hinkley(threshold: float = 50.0, *, direction: Direction = "both", **options: Any) -> RiverDrift:
    """Page-Hinkley: cumulative deviation from the running mean beyond ``threshold``."""
    drift = require("river.drift", "ml", what="page_hinkley()")
    return RiverDrift(drift.PageHinkley(threshold=threshold, **options), "PageHinkley", direction)


def kswin(
    alpha: float = 0.005, window_size: int = 100, stat_size: int = 30, seed: int = 0, *, direction: Direction = "both"
) -> RiverDrift:
    """KSWIN: Kolmogorov–Smirnov test between the newest values and a sample of older ones."""
    drift = require("river.drift", "ml", what="kswin()")
    detector = drift.KSWIN(alpha=alpha, window_size=window_size, stat_size=stat_size, seed=seed)
    return RiverDrift(detector, "KSWIN", direction)


class _WindowTest(ABC):
    """Compares a fixed reference window with a sliding recent one, every ``check_every`` values.

    Without an explicit reference, the first ``window`` values become it. After a drift the
    next ``window`` values become the reference (the new normal), so one change is reported once.
    """

    name = "window-test"

    def __init__(self, window: int, check_every: int, reference: np.ndarray | None) -> None:
        if window < 10 or check_every < 1:
            raise ValueError("window must be at least 10 and check_every at least 1")
        self.window = window
        self.check_every = check_every
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float64)
        self.recent = np.empty(0)
        """The newest values, at most ``window`` (while no reference: the values filling it)."""
        self.seen = 0

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        """Values are taken in slices that end where something happens — the reference is
        full, or a check is due — so the work is per slice, not per value."""
        values = np.asarray(values, dtype=np.float64)
        events, i = [], 0
        while i < len(values):
            if self.reference is None:
                take = values[i : i + self.window - len(self.recent)]
            else:
                take = values[i : i + self.check_every - self.seen % self.check_every]
            i += len(take)
            self.seen += len(take)
            self.recent = np.concatenate([self.recent, take])[-self.window :]
            if self.reference is None:
                if len(self.recent) == self.window:
                    self.reference, self.recent = self.recent, np.empty(0)
                continue
            if len(self.recent) == self.window and self.seen % self.check_every == 0:
                drifted, evidence = self.compare(self.reference, self.recent)
                if drifted:
                    events.append(DriftEvent(self.seen - 1, self.name, evidence))
                    # The next full window, all after the change, is the new normal.
                    self.reference, self.recent = None, np.empty(0)
        return events

    @abstractmethod
    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[bool, dict[str, float]]:
        """Whether ``recent`` drifted from ``reference``, and the statistics that say so."""


class PopulationStability(_WindowTest):
    """Population stability index over the reference's quantile bins; > 0.2 is the usual
    "significant shift" threshold in credit-risk practice (0.1–0.2: moderate)."""

    name = "PSI"

    def __init__(
        self,
        window: int = 500,
        *,
        bins: int = 10,
        threshold: float = 0.2,
        check_every: int = 50,
        reference: np.ndarray | None = None,
    ) -> None:
        super().__init__(window, check_every, reference)
        self.bins = bins
        self.threshold = threshold

    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[bool, dict[str, float]]:
        value = psi(reference, recent, self.bins)
        return value > self.threshold, {"psi": value}


class KolmogorovSmirnov(_WindowTest):
    """Two-sample Kolmogorov–Smirnov test; drift when the p-value falls below ``alpha``."""

    name = "KS"

    def __init__(
        self, window: int = 500, *, alpha: float = 0.001, check_every: int = 50, reference: np.ndarray | None = None
    ) -> None:
        super().__init__(window, check_every, reference)
        self.alpha = alpha

    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[bool, dict[str, float]]:
        statistic, p_value = ks_2samp(reference, recent)
        return p_value < self.alpha, {"ks": statistic, "p_value": p_value}


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Σ (recent% − reference%) · ln(recent% / reference%) over the reference's quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=len(edges) + 1)
    floor = 1e-4  # an empty bin would make the logarithm infinite
    p = np.maximum(expected / expected.sum(), floor)
    q = np.maximum(actual / actual.sum(), floor)
    return float(((q - p) * np.log(q / p)).sum())


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-sample KS statistic and its asymptotic p-value (Kolmogorov distribution)."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, side="right") / a.size
    cdf_b = np.searchsorted(b, values, side="right") / b.size
    statistic = float(np.abs(cdf_a - cdf_b).max())
    n = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * statistic
    terms = [2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101)]
    return statistic, float(min(1.0, max(0.0, sum(terms))))
