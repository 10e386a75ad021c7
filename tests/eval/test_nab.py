"""NAB scoring: hand-computed cases, and agreement with a line-by-line port of NAB's sweeper."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tideflow.eval.nab import (
    REWARD_LOW_FN,
    REWARD_LOW_FP,
    STANDARD,
    FileScore,
    find_windows,
    load_windows,
    point_precision_recall,
    point_weights,
    probation_length,
    scaled_sigmoid,
    score_corpus,
    score_file,
    sweep_threshold,
)

T0 = np.datetime64("2020-01-01T00:00", "us")
MINUTE = np.timedelta64(1, "m")
N = 100
TS = T0 + np.arange(N) * MINUTE
WINDOW = (TS[40], TS[59])  # 20 points, after the probationary period of 15 points
A_FP = STANDARD.fp


def sigma(y: float) -> float:
    """NAB's scaled sigmoid, written out by hand."""
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def detect(*indices: int, n: int = N) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(indices)] = True
    return out


def test_scaled_sigmoid_matches_nab_landmarks() -> None:
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(0.98661, abs=1e-5)
    assert float(scaled_sigmoid(-0.5)) == pytest.approx(0.84828, abs=1e-5)
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert float(scaled_sigmoid(1.0)) == pytest.approx(-0.98661, abs=1e-5)
    assert float(scaled_sigmoid(3.5)) == -1.0


def test_probation_is_fifteen_percent_capped_at_750_points() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750


def test_detection_at_window_start_earns_the_full_tp_weight() -> None:
    score = score_file(TS, detect(40), [WINDOW])
    assert score.raw == pytest.approx(1.0)
    assert (score.null, score.perfect) == (-1.0, 1.0)
    assert score.normalised == pytest.approx(100.0)
    assert (score.detected_windows, score.false_positives) == (1, 0)


def test_detection_at_window_end_earns_almost_nothing() -> None:
    score = score_file(TS, detect(59), [WINDOW])
    # position -(59 - 59 + 1) / 20 = -0.05, scaled so that the window start is worth A_TP
    assert score.raw == pytest.approx(sigma(-0.05) / sigma(-1.0))
    assert 0 < score.raw < 0.13


def test_detection_mid_window() -> None:
    score = score_file(TS, detect(50), [WINDOW])
    assert score.raw == pytest.approx(sigma(-0.5) / sigma(-1.0))  # 0.8598


def test_missed_window_costs_a_fn() -> None:
    assert score_file(TS, detect(), [WINDOW]).raw == -1.0
    assert score_file(TS, detect(), [WINDOW], REWARD_LOW_FN).raw == -2.0


def test_false_positive_without_preceding_window_costs_a_fp() -> None:
    score = score_file(TS, detect(20, 40), [WINDOW])
    assert score.raw == pytest.approx(1.0 - A_FP)
    assert score.false_positives == 1
    assert score_file(TS, detect(20, 40), [WINDOW], REWARD_LOW_FP).raw == pytest.approx(1.0 - 0.22)


def test_false_positive_just_after_a_window_costs_less() -> None:
    near = score_file(TS, detect(40, 60), [WINDOW]).raw - 1.0
    far = score_file(TS, detect(40, 99), [WINDOW]).raw - 1.0
    assert near == pytest.approx(A_FP * sigma(1 / 19))  # |59 - 60| / (20 - 1)
    assert far == pytest.approx(A_FP * sigma(40 / 19))
    assert -A_FP < far < near < 0


def test_false_positive_more_than_three_window_lengths_after_costs_a_fp() -> None:
    short = (TS[40], TS[44])  # 5 points: 99 is 55 / 4 window lengths after
    assert score_file(TS, detect(40, 99), [short]).raw == pytest.approx(1.0 - A_FP)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    once = score_file(TS, detect(45), [WINDOW])
    twice = score_file(TS, detect(45, 50, 58), [WINDOW])
    assert twice.raw == once.raw == pytest.approx(sigma(-15 / 20) / sigma(-1.0))
    assert twice.false_positives == 0 and twice.detections == 3


def test_probationary_period_is_ignored() -> None:
    score = score_file(TS, detect(3, 14), [WINDOW])
    assert score.raw == -1.0
    assert score.detections == 0
    # a window that ends inside the probationary period is not scored at all
    early = score_file(TS, detect(), [(TS[2], TS[10])])
    assert (early.windows, early.raw, early.null, early.perfect) == (0, 0.0, 0.0, 0.0)
    assert math.isnan(early.normalised)


def test_normalisation_maps_null_to_0_and_perfect_to_100_over_the_corpus() -> None:
    two = [(TS[20], TS[29]), WINDOW]
    files = {"a": [WINDOW], "b": two}
    null = score_corpus({k: score_file(TS, detect(), w) for k, w in files.items()})
    perfect = score_corpus({"a": score_file(TS, detect(40), [WINDOW]), "b": score_file(TS, detect(20, 40), two)})
    assert null.normalised == 0.0
    assert perfect.normalised == pytest.approx(100.0)
    # NAB normalises the total: (1 - 2) against null -3 and perfect 3, not the mean of 100 and 0
    mixed = score_corpus({"a": score_file(TS, detect(40), [WINDOW]), "b": score_file(TS, detect(), two)})
    assert (mixed.raw, mixed.null, mixed.perfect) == (-1.0, -3.0, 3.0)
    assert mixed.normalised == pytest.approx(100 * 2 / 6)


def test_a_file_without_windows_counts_through_its_false_positives() -> None:
    quiet = score_file(TS, detect(50), [])
    assert quiet.raw == pytest.approx(-A_FP)
    corpus = score_corpus([score_file(TS, detect(40), [WINDOW]), quiet])
    assert corpus.normalised == pytest.approx(100 * (1 - A_FP + 1) / 2)


def nab_calc_sweep_score(timestamps: list, windows: list, tp: float, fp: float) -> list[tuple[float, object]]:
    """NAB's ``Sweeper.calcSweepScore`` loop, ported line by line (weights and window names)."""
    windows = list(windows)
    out = []
    max_tp = sigma(-1.0)
    cur = cur_right = cur_width = prev_right = prev_width = None
    for i, t in enumerate(timestamps):
        if windows and t == windows[0][0]:
            cur = windows.pop(0)
            cur_right = timestamps.index(cur[1])
            cur_width = float(cur_right - timestamps.index(cur[0]) + 1)
        if cur is not None:
            weight = sigma(-(cur_right - i + 1) / cur_width) * tp / max_tp
        elif prev_right is None:
            weight = -1.0 * fp
        else:
            weight = sigma(abs(prev_right - i) / float(prev_width - 1)) * fp
        out.append((weight, None if cur is None else cur[0]))
        if cur is not None and t == cur[1]:
            prev_right, prev_width, cur = i, cur_width, None
    return out


@pytest.mark.parametrize("seed", range(5))
def test_point_weights_agree_with_a_port_of_nab(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    ts = T0 + np.cumsum(rng.integers(1, 4, n)) * MINUTE
    edges = np.sort(rng.choice(np.arange(n), size=6, replace=False))
    windows = [(ts[a], ts[b]) for a, b in edges.reshape(-1, 2)]
    expected = nab_calc_sweep_score(list(ts), windows, STANDARD.tp, STANDARD.fp)
    weights, window_of = point_weights(ts, windows)
    np.testing.assert_allclose(weights, [w for w, _ in expected], rtol=1e-12)
    starts = {start: k for k, (start, _) in enumerate(windows)}
    assert window_of.tolist() == [-1 if name is None else starts[name] for _, name in expected]


def test_sweep_finds_the_best_threshold_a_brute_force_finds() -> None:
    rng = np.random.default_rng(7)
    files = []
    for k in range(3):
        scores = rng.random(N)
        scores[41 + k] = 2.0 + k  # a high score early in the window
        files.append((TS, scores, [WINDOW]))
    threshold, corpus = sweep_threshold(files)
    brute = max(
        score_corpus([score_file(ts, s >= t, w) for ts, s, w in files]).raw
        for t in [math.inf, *np.unique(np.concatenate([s for _, s, _ in files]))]
    )
    assert corpus.raw == pytest.approx(brute)
    assert threshold == pytest.approx(2.0)  # the three early spikes and nothing else


def test_point_precision_recall() -> None:
    windows = [(TS[20], TS[29]), WINDOW]
    result = point_precision_recall(TS, detect(5, 21, 22, 70, 80), windows)
    # index 5 is in the probationary period; 21 and 22 are in the first window; 70, 80 outside
    assert (result.detections, result.detections_in_windows) == (4, 2)
    assert (result.windows, result.detected_windows) == (2, 1)
    assert (result.precision, result.recall) == (0.5, 0.5)
    total = result + point_precision_recall(TS, detect(45), [WINDOW])
    assert (total.precision, total.recall) == (3 / 5, 2 / 3)
    assert math.isnan(point_precision_recall(TS, detect(), []).precision)


def test_windows_from_nab_labels_and_from_a_plain_list(tmp_path: Path) -> None:
    labels_file = tmp_path / "combined_windows.json"
    labels_file.write_text(
        json.dumps(
            {
                "realKnownCause/nyc_taxi.csv": [["2014-10-30 15:30:00.000000", "2014-11-03 22:30:00.000000"]],
                "artificialNoAnomaly/art_flatline.csv": [],
            }
        )
    )
    labels = load_windows(labels_file)
    windows = find_windows(labels, tmp_path / "data" / "realKnownCause" / "nyc_taxi.csv")
    assert windows == [(np.datetime64("2014-10-30T15:30", "us"), np.datetime64("2014-11-03T22:30", "us"))]
    assert find_windows(labels, "elsewhere/art_flatline.csv") == []
    assert find_windows(labels, "unknown.csv") is None
    plain = tmp_path / "windows.json"
    plain.write_text(json.dumps([["2014-01-01 00:00:00", "2014-01-01 01:00:00"]]))
    assert len(find_windows(load_windows(plain), "any.csv") or []) == 1


def test_a_clock_that_steps_back_keeps_file_order() -> None:
    """One NAB file repeats an hour (02:00-02:55 twice): rows are scored in file order."""
    ts = np.concatenate([TS[:50], TS[44:50], TS[50:]])  # six timestamps repeated after index 49
    window = (TS[60], TS[69])
    weights, window_of = point_weights(ts, [window])
    expected = nab_calc_sweep_score(list(ts), [window], STANDARD.tp, STANDARD.fp)
    np.testing.assert_allclose(weights, [w for w, _ in expected])
    assert np.flatnonzero(window_of >= 0).tolist() == list(range(66, 76))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        score_file(TS, detect(), [(TS[10], TS[30]), (TS[20], TS[40])])
    with pytest.raises(ValueError, match="detections"):
        score_file(TS, np.zeros(3, bool), [WINDOW])
    assert isinstance(score_file(TS.astype("datetime64[ms]").astype(np.int64), detect(40), [WINDOW]), FileScore)
