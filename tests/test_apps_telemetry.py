"""``tideflow apps telemetry`` on a real NAB file with its labels (the copy bundled with the package)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
from typer.testing import CliRunner

from tideflow.anomaly import RobustZScore, telemetry_calibrator
from tideflow.apps.telemetry_cli import apps_app
from tideflow.eval.nab import find_windows, load_windows, score_file

NAB = Path(str(resources.files("tideflow") / "data" / "nab"))
SERIES = NAB / "ec2_cpu_utilization_24ae8d.csv"  # 4,032 points, two labelled windows
LABELS = NAB / "combined_windows.json"
runner = CliRunner()


def test_prints_alerts_and_the_nab_score_of_the_file() -> None:
    result = runner.invoke(apps_app, ["telemetry", "--data", str(SERIES), "--labels", str(LABELS)])
    assert result.exit_code == 0, result.output
    assert "detector robust-z, 4032 points" in result.output
    assert "NAB score (this file" in result.output and "standard" in result.output
    assert "precision" in result.output and "recall" in result.output


def test_json_report_matches_the_detector_run_directly() -> None:
    result = runner.invoke(
        apps_app, ["telemetry", "--data", str(SERIES), "--labels", str(LABELS), "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"file", "detector", "points", "alerts", "nab", "precision", "recall", "windows"}
    assert set(report["nab"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert report["windows"] == 2

    # The flow's alerts are those of the detector and calibrator on the whole series.
    frame = pl.read_csv(SERIES, try_parse_dates=True)
    scores = RobustZScore().score(frame["value"].to_numpy())
    alerts = telemetry_calibrator().update(scores)
    assert [a["timestamp"] for a in report["alerts"]] == [str(t) for t in frame["timestamp"].filter(alerts)]
    windows = find_windows(load_windows(LABELS), SERIES)
    expected = score_file(frame["timestamp"], alerts, windows)
    assert report["nab"]["standard"]["raw"] == round(expected.raw, 4)
    assert report["nab"]["standard"]["score"] == round(expected.normalised, 2)


def test_labels_as_a_plain_list_other_detectors_and_no_labels(tmp_path: Path) -> None:
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps([["2014-02-26 13:45:00", "2014-02-27 06:25:00"]]))
    args = ["telemetry", "--data", str(SERIES), "--labels", str(windows), "--detector", "ewma", "--json"]
    report = json.loads(runner.invoke(apps_app, args).output)
    assert (report["detector"], report["windows"]) == ("ewma", 1)
    plain = json.loads(runner.invoke(apps_app, ["telemetry", "--data", str(SERIES), "--json"]).output)
    assert "nab" not in plain and plain["points"] == 4032
    assert np.isfinite([a["anomaly_score"] for a in plain["alerts"]]).all()


def test_unlabelled_file_and_missing_file_are_usage_errors(tmp_path: Path) -> None:
    other = tmp_path / "unknown.csv"
    other.write_text("timestamp,value\n2014-01-01 00:00:00,1.0\n")
    result = runner.invoke(apps_app, ["telemetry", "--data", str(other), "--labels", str(LABELS)])
    assert result.exit_code == 2 and "no windows" in result.output
    assert runner.invoke(apps_app, ["telemetry", "--data", str(tmp_path / "nope.csv")]).exit_code == 2
