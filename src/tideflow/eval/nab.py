"""The Numenta Anomaly Benchmark (NAB) score, for alerts on one series or a corpus of them.

Why this score and not precision/recall alone: an alert is worth more the earlier it comes in an
anomaly, and an alert just after an anomaly is less wrong than one in the middle of calm data.
NAB (Lavin & Ahmad 2015, "Evaluating Real-time Anomaly Detection Algorithms", arXiv:1510.03336;
Ahmad et al. 2017) encodes that with labelled *windows* around each anomaly and a scaled sigmoid
of where in (or after) a window a detection falls. This module reproduces the semantics of
NAB's ``sweeper.py`` (``calcSweepScore`` / ``calcScoreByThreshold``) and ``runner.normalize``:

* Each point gets a weight from its position. Inside a window of ``width`` points ending at
  index ``right``, point ``i`` has the relative position ``y = -(right - i + 1) / width`` (-1 at
  the window's first point, just under 0 at its last) and weight
  ``A_TP * sigma(y) / sigma(-1)``, with ``sigma(y) = 2 / (1 + exp(5 y)) - 1``, so a detection
  at the start of a window earns exactly ``A_TP`` and one at its end about 0.
* Outside windows, a point after a window has ``y = (i - right_prev) / (width_prev - 1)`` and
  weight ``A_FP * sigma(y)`` (negative; ``sigma`` is taken as -1 beyond ``y > 3``), so a
  detection just after a window costs little and a far one costs ``A_FP``. A point with no
  window before it costs ``A_FP`` (weight ``-A_FP``).
* Only the earliest detection in a window counts (the highest weight: weights fall along the
  window); a window without detection costs ``A_FN``; every detection outside windows adds its
  (negative) weight.
* The first ``min(floor(0.15 n), 0.15 * 5000)`` points of a file are its probationary period
  (NAB's ``getProbationPeriod``): detections there are ignored, and a window with no point after
  it is not scored.
* The null detector (never fires) scores ``-A_FN`` per window, the perfect one ``A_TP`` per
  window; NAB sums raw scores over the corpus and reports ``100 (raw - null) / (perfect - null)``.

One difference from NAB's tooling: NAB sweeps a threshold over each detector's anomaly scores
and reports the best corpus score (the threshold is tuned on the labels). Here detections are
given (a boolean per point), as a deployed detector would raise them; ``sweep_threshold`` gives
NAB's tuned figure where that is wanted for comparison.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "PROFILES",
    "REWARD_LOW_FN",
    "REWARD_LOW_FP",
    "STANDARD",
    "CorpusScore",
    "FileScore",
    "PointPrecisionRecall",
    "Profile",
    "Window",
    "find_windows",
    "load_windows",
    "point_precision_recall",
    "point_weights",
    "probation_length",
    "scaled_sigmoid",
    "score_corpus",
    "score_file",
    "sweep_threshold",
]

PROBATION_PERCENT = 0.15
"""NAB's probationary period: the first 15% of a file (at most 750 points) is for learning."""

Window = tuple[np.datetime64, np.datetime64]
"""A labelled anomaly window: first and last timestamp, both included."""


@dataclass(frozen=True)
class Profile:
    """NAB's application profile: how much a detected window, a false alarm and a miss weigh."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0


STANDARD = Profile("standard", tp=1.0, fp=0.11, fn=1.0)
REWARD_LOW_FP = Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0)
REWARD_LOW_FN = Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0)
PROFILES: dict[str, Profile] = {p.name: p for p in (STANDARD, REWARD_LOW_FP, REWARD_LOW_FN)}
"""NAB's three profiles (``config/profiles.json``), by their NAB names."""


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's ``scaledSigmoid``: ``2 / (1 + exp(5 y)) - 1``, and -1 for ``y > 3``.

    ``y = -1`` (a window's start) gives 0.987, ``y = 0`` (its end) 0, ``y = 1`` -0.987.
    """
    y = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, value)


def probation_length(n: int, probation_percent: float = PROBATION_PERCENT) -> int:
    """Points at the start of a file whose detections NAB ignores (``util.getProbationPeriod``)."""
    return math.ceil(min(math.floor(probation_percent * n), probation_percent * 5000))


# -- inputs -----------------------------------------------------------------------------------------
def to_datetime64(values: Any) -> np.ndarray:
    """Timestamps as ``datetime64[us]``: datetimes, ISO strings, or integers as epoch milliseconds."""
    if isinstance(values, pl.Series):
        if values.dtype.is_integer():
            return values.to_numpy().astype("datetime64[ms]").astype("datetime64[us]")
        if values.dtype == pl.String:
            values = values.to_list()
        else:
            return values.cast(pl.Datetime("us")).to_numpy()
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        return array.astype("datetime64[ms]").astype("datetime64[us]")
    return array.astype("datetime64[us]")


def _windows_array(windows: Iterable[Sequence[Any]]) -> np.ndarray:
    """``(k, 2)`` datetime64 starts and ends, sorted by start; overlapping windows are an error."""
    pairs = [tuple(w) for w in windows]
    if not pairs:
        return np.empty((0, 2), dtype="datetime64[us]")
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"a window is a (start, end) pair, got {pairs!r}")
    array = np.stack([to_datetime64([p[0] for p in pairs]), to_datetime64([p[1] for p in pairs])], axis=1)
    array = array[np.argsort(array[:, 0], kind="stable")]
    if np.any(array[:, 1] < array[:, 0]):
        raise ValueError("a window ends before it starts")
    if len(array) > 1 and np.any(array[1:, 0] <= array[:-1, 1]):
        raise ValueError("labelled windows overlap; NAB's windows never do")
    return array


def _window_bounds(ts: np.ndarray, windows: Iterable[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """First and last point index of each window that holds at least one point.

    NAB works by position in the file: a window starts at the first row whose timestamp is its
    start and ends at the first row whose timestamp is its end. Rows are located on the running
    maximum of the timestamps, so a file whose clock steps back (one NAB file repeats an hour)
    keeps the rows in file order.
    """
    array = _windows_array(windows)
    envelope = np.maximum.accumulate(ts) if len(ts) else ts
    left = np.searchsorted(envelope, array[:, 0], side="left")
    first_end = np.searchsorted(envelope, array[:, 1], side="left")
    exact = first_end < len(ts)
    exact[exact] = envelope[first_end[exact]] == array[exact, 1]
    right = np.where(exact, first_end, np.searchsorted(envelope, array[:, 1], side="right") - 1)
    keep = right >= left
    return left[keep], right[keep]


def _prepare(timestamps: Any, detections: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    ts = to_datetime64(timestamps)
    if ts.ndim != 1:
        raise ValueError("timestamps must be one-dimensional")
    if detections is None:
        return ts, None
    det = detections.to_numpy() if isinstance(detections, pl.Series) else np.asarray(detections)
    det = det.astype(bool)
    if det.shape != ts.shape:
        raise ValueError(f"{len(det)} detections for {len(ts)} timestamps")
    return ts, det


def point_weights(
    timestamps: Any, windows: Iterable[Sequence[Any]], profile: Profile = STANDARD
) -> tuple[np.ndarray, np.ndarray]:
    """NAB's weight of a detection at every point, and the index of the window holding it (-1: none).

    This is ``calcSweepScore``: positive inside windows (``A_TP`` at a window's first point, about
    0 at its last), negative outside (``-A_FP`` far from any preceding window).
    """
    ts, _ = _prepare(timestamps)
    n = len(ts)
    left, right = _window_bounds(ts, windows)
    index = np.arange(n)
    window_of = np.full(n, -1, dtype=np.int64)
    # The window a point is in or after: the last window starting at or before it.
    last = np.searchsorted(left, index, side="right") - 1
    has_prev = last >= 0
    inside = has_prev & (index <= right[np.maximum(last, 0)] if len(left) else np.zeros(n, bool))
    window_of[inside] = last[inside]
    weights = np.full(n, -profile.fp, dtype=np.float64)
    if len(left):
        width = (right - left + 1).astype(np.float64)
        k = last[inside]
        position = -(right[k] - index[inside] + 1) / width[k]
        weights[inside] = scaled_sigmoid(position) * profile.tp / float(scaled_sigmoid(-1.0))
        after = has_prev & ~inside
        k = last[after]
        # NAB divides by (width - 1); a one-point window would divide by zero there.
        position = np.abs(index[after] - right[k]) / np.maximum(width[k] - 1.0, 1.0)
        weights[after] = scaled_sigmoid(position) * profile.fp
    return weights, window_of


# -- scores -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileScore:
    """NAB's score of one file's detections, with the counts behind it.

    ``raw`` is what NAB sums over a corpus; ``null`` and ``perfect`` are the raw scores of a
    detector that never fires and of one that fires at the start of every window.
    """

    raw: float
    null: float
    perfect: float
    windows: int
    """Windows scored (those with at least one point after the probationary period)."""
    detected_windows: int
    false_positives: int
    """Detections outside every window, after the probationary period."""
    detections: int
    """Detections after the probationary period."""

    @property
    def missed_windows(self) -> int:
        return self.windows - self.detected_windows

    @property
    def normalised(self) -> float:
        """``100 (raw - null) / (perfect - null)``; NaN for a file without windows (nothing to
        normalise by: NAB only normalises a corpus total)."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else float("nan")


def score_file(
    timestamps: Any,
    detections: Any,
    windows: Iterable[Sequence[Any]],
    profile: Profile = STANDARD,
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> FileScore:
    """NAB's score of ``detections`` (a boolean per point) on one file.

    ``timestamps``: the file's datetimes in file order (numpy, polars, ISO strings, or integer
    epoch milliseconds);
    ``windows``: ``(start, end)`` pairs, both ends included. A window that holds no timestamp is
    ignored (NAB's windows always start and end on a timestamp of their file).
    """
    ts, det = _prepare(timestamps, detections)
    assert det is not None
    return _Scorable.of(ts, windows, profile, probation_percent).score(det)


@dataclass(frozen=True)
class _Scorable:
    """One file's point weights and windows, computed once and scored against many detections."""

    weights: np.ndarray
    window_of: np.ndarray
    scored: np.ndarray
    counted_windows: np.ndarray
    profile: Profile

    @classmethod
    def of(cls, ts: np.ndarray, windows: Iterable[Sequence[Any]], profile: Profile, probation: float) -> _Scorable:
        weights, window_of = point_weights(ts, windows, profile)
        scored = np.arange(len(ts)) >= probation_length(len(ts), probation)
        return cls(weights, window_of, scored, np.unique(window_of[scored & (window_of >= 0)]), profile)

    def score(self, det: np.ndarray) -> FileScore:
        fired = det & self.scored
        false_alarm = fired & (self.window_of < 0)
        hit = fired & (self.window_of >= 0)
        # The earliest detection of a window has its highest weight: take the max per window.
        best = np.full(int(self.window_of.max(initial=-1)) + 1, -np.inf)
        np.maximum.at(best, self.window_of[hit], self.weights[hit])
        best = best[self.counted_windows]
        detected = np.isfinite(best)
        fn = self.profile.fn
        window_terms = np.where(detected, np.maximum(best, -fn), -fn)
        count = len(self.counted_windows)
        return FileScore(
            raw=float(window_terms.sum() + self.weights[false_alarm].sum()),
            null=-fn * count,
            perfect=self.profile.tp * count,
            windows=count,
            detected_windows=int(detected.sum()),
            false_positives=int(false_alarm.sum()),
            detections=int(fired.sum()),
        )


@dataclass(frozen=True)
class CorpusScore:
    """NAB's corpus score: raw scores summed over files, then normalised once."""

    raw: float
    null: float
    perfect: float
    files: dict[str, FileScore] = field(default_factory=dict)

    @property
    def normalised(self) -> float:
        """``100 (raw - null) / (perfect - null)``: 0 for the null detector, 100 for the perfect one."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else float("nan")

    @property
    def windows(self) -> int:
        return sum(s.windows for s in self.files.values())

    @property
    def detected_windows(self) -> int:
        return sum(s.detected_windows for s in self.files.values())

    @property
    def false_positives(self) -> int:
        return sum(s.false_positives for s in self.files.values())


def score_corpus(scores: Mapping[str, FileScore] | Iterable[FileScore]) -> CorpusScore:
    """Sum file scores (by name, or a plain iterable) into NAB's normalised corpus score.

    NAB normalises the total, not each file: a file with many windows weighs more, and files
    without windows still count through their false positives.
    """
    named = dict(scores) if isinstance(scores, Mapping) else {str(i): s for i, s in enumerate(scores)}
    return CorpusScore(
        raw=float(sum(s.raw for s in named.values())),
        null=float(sum(s.null for s in named.values())),
        perfect=float(sum(s.perfect for s in named.values())),
        files=named,
    )


def sweep_threshold(
    files: Iterable[tuple[Any, Any, Iterable[Sequence[Any]]]],
    profile: Profile = STANDARD,
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> tuple[float, CorpusScore]:
    """NAB's own protocol (``calcScoreByThreshold``): the one threshold on anomaly scores that
    maximises the corpus score.

    ``files``: ``(timestamps, anomaly_scores, windows)`` per file; a point is a detection when its
    score is at least the threshold (NaN never is). Every distinct score is tried, from the top
    down, plus "no detection at all" (threshold ``inf``). Returns the best threshold and its
    corpus score. The threshold is fitted on the labels, so the figure is optimistic; it is what
    NAB's scoreboard reports. ``score_file`` on alerts decided online, blind to the labels, is
    what a deployed detector gets.
    """
    prepared: list[tuple[np.ndarray, np.ndarray, _Scorable]] = []
    for timestamps, scores, windows in files:
        ts, _ = _prepare(timestamps)
        values = np.asarray(scores.to_numpy() if isinstance(scores, pl.Series) else scores, dtype=np.float64)
        if values.shape != ts.shape:
            raise ValueError(f"{len(values)} scores for {len(ts)} timestamps")
        prepared.append((ts, values, _Scorable.of(ts, windows, profile, probation_percent)))
    # Every scored point of the corpus, highest anomaly score first; windows numbered corpus-wide.
    scores, weights, windows_of = [], [], []
    offset = 0
    for _, values, file in prepared:
        keep = file.scored & np.isfinite(values)
        scores.append(values[keep])
        weights.append(file.weights[keep])
        window_of = file.window_of[keep]
        windows_of.append(np.where(window_of >= 0, window_of + offset, -1))
        offset += int(file.window_of.max(initial=-1)) + 1
    all_scores = np.concatenate(scores) if scores else np.empty(0)
    order = np.argsort(-all_scores, kind="stable")
    all_scores = all_scores[order]
    all_weights = np.concatenate(weights)[order] if weights else np.empty(0)
    all_windows = np.concatenate(windows_of)[order] if windows_of else np.empty(0, dtype=np.int64)
    counted = sum(len(f.counted_windows) for _, _, f in prepared)
    best_in_window = np.full(offset, -profile.fn)
    total = -profile.fn * counted
    best_threshold, best_total = math.inf, total
    n = len(all_scores)
    for i, (weight, window) in enumerate(zip(all_weights.tolist(), all_windows.tolist(), strict=True)):
        if window < 0:
            total += weight
        elif weight > best_in_window[window]:
            total += weight - best_in_window[window]
            best_in_window[window] = weight
        # A threshold detects every point scoring at least it: evaluate after a run of equal scores.
        if (i + 1 == n or all_scores[i + 1] != all_scores[i]) and total > best_total:
            best_threshold, best_total = float(all_scores[i]), total
    corpus = score_corpus(
        {str(i): file.score(values >= best_threshold) for i, (_, values, file) in enumerate(prepared)}
    )
    return best_threshold, corpus


# -- precision and recall ------------------------------------------------------------------------
@dataclass(frozen=True)
class PointPrecisionRecall:
    """Alert points against labelled windows; counts add up over files (``a + b``)."""

    detections: int
    detections_in_windows: int
    windows: int
    detected_windows: int

    @property
    def precision(self) -> float:
        """Share of detections that fall inside a labelled window (NaN without detections)."""
        return self.detections_in_windows / self.detections if self.detections else float("nan")

    @property
    def recall(self) -> float:
        """Share of labelled windows with at least one detection (NaN without windows)."""
        return self.detected_windows / self.windows if self.windows else float("nan")

    def __add__(self, other: PointPrecisionRecall) -> PointPrecisionRecall:
        return PointPrecisionRecall(
            self.detections + other.detections,
            self.detections_in_windows + other.detections_in_windows,
            self.windows + other.windows,
            self.detected_windows + other.detected_windows,
        )


def point_precision_recall(
    timestamps: Any,
    detections: Any,
    windows: Iterable[Sequence[Any]],
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> PointPrecisionRecall:
    """Precision of alert points and recall of windows, over the same points NAB scores.

    precision = detections inside any window / all detections; recall = windows with at least one
    detection / windows. Points are counted, not excursions: ten alerts in one window are ten true
    positive points but one detected window. The probationary period is left out as in
    ``score_file`` (``probation_percent=0`` counts every point).
    """
    ts, det = _prepare(timestamps, detections)
    assert det is not None
    _, window_of = point_weights(ts, windows)
    scored = np.arange(len(ts)) >= probation_length(len(ts), probation_percent)
    fired = det & scored
    counted = np.unique(window_of[scored & (window_of >= 0)])
    hit = np.unique(window_of[fired & (window_of >= 0)])
    return PointPrecisionRecall(
        detections=int(fired.sum()),
        detections_in_windows=int((fired & (window_of >= 0)).sum()),
        windows=len(counted),
        detected_windows=len(hit),
    )


# -- labels ---------------------------------------------------------------------------------------
def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """NAB's ``combined_windows.json``: ``"folder/file.csv" -> [(start, end), ...]``.

    A plain JSON list of ``[start, end]`` pairs (one file's windows) is returned under the key
    ``""``, which ``find_windows`` matches to any file.
    """
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, list):
        raw = {"": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a map of file -> windows, or a list of [start, end] pairs")
    out: dict[str, list[Window]] = {}
    for name, spans in raw.items():
        array = _windows_array(spans)
        out[name] = [(a, b) for a, b in array]
    return out


def find_windows(labels: Mapping[str, list[Window]], path: str | Path) -> list[Window] | None:
    """The windows of the file at ``path``: the label key that is the longest suffix of its path.

    NAB keys are ``folder/file.csv``; a file checked out anywhere matches on its last components.
    None when no key matches (the file is not labelled).
    """
    parts = Path(path).resolve().as_posix()
    best: str | None = None
    for key in labels:
        matches = key == "" or parts == key or parts.endswith("/" + key.lstrip("/"))
        if matches and (best is None or len(key) > len(best)):
            best = key
    if best is None:
        name = Path(path).name
        matches = [k for k in labels if Path(k).name == name]
        best = matches[0] if len(matches) == 1 else None
    return None if best is None else labels[best]
