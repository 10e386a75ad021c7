"""The demo pipeline on a slice of the bundled data, and its detector's invariants."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
from typer.testing import CliRunner

from tideflow.apps.robust_z import RollingRobustZ
from tideflow.apps.telemetry import TelemetryDemo, bundled_series
from tideflow.cli import app


def slice_of_bundled(folder: Path, rows: int = 3_000) -> list[Path]:
    """The first ``rows`` lines of two bundled series (keeps the test fast)."""
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for source in bundled_series()[:2]:
        target = folder / source.name
        lines = source.read_text().splitlines()[: rows + 1]
        target.write_text("\n".join(lines) + "\n")
        out.append(target)
    return out


def test_demo_flow_writes_alerts_scores_and_accounts_for_every_row(tmp_path: Path) -> None:
    files = slice_of_bundled(tmp_path / "data")
    demo = TelemetryDemo.create(out_dir=tmp_path / "out", files=files)
    result = demo.flow.run(handle_signals=False)
    expected_rows = sum(len(f.read_text().splitlines()) - 1 for f in files)
    assert result.records_in == expected_rows
    assert result.dead_letters == 0

    scores = pl.read_parquet(demo.out_dir / "scores.parquet")
    assert scores.height == expected_rows
    assert set(scores.columns) >= {"series", "timestamp", "value", "baseline", "spread", "z", "is_alert"}
    with sqlite3.connect(demo.database) as db:
        stored = db.execute("SELECT series, timestamp, value FROM alerts ORDER BY series, timestamp").fetchall()
    alerts = scores.filter("is_alert").sort("series", "timestamp")
    assert len(stored) == alerts.height
    assert [row[0] for row in stored] == alerts["series"].to_list()

    report = demo.report(result)
    assert report["alerts"] == alerts.height
    assert report["series"] == 2


def test_demo_rerun_into_the_same_folder_does_not_duplicate_alerts(tmp_path: Path) -> None:
    files = slice_of_bundled(tmp_path / "data", rows=2_000)
    for _ in range(2):
        demo = TelemetryDemo.create(out_dir=tmp_path / "out", files=files)
        demo.flow.run(handle_signals=False)
    with sqlite3.connect(demo.database) as db:
        total, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT series || timestamp) FROM alerts"
        ).fetchone()
    assert total == distinct


def test_demo_command_prints_the_json_summary(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files = slice_of_bundled(tmp_path / "data", rows=1_500)
    monkeypatch.setattr("tideflow.apps.telemetry.bundled_series", lambda: files)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["records_in"] == 3_000
    assert summary["series"] == 2
    assert {"alerts", "labelled_windows_hit", "results", "dead_letters", "seconds"} <= summary.keys()


def test_robust_z_scores_do_not_depend_on_batch_boundaries() -> None:
    rng = np.random.default_rng(7)
    n = 4_000
    values = rng.normal(50, 5, n)
    values[[500, 1_700, 3_100]] += 80  # three excursions
    df = pl.DataFrame({"series": rng.choice(["a", "b", "c"], n), "value": values})
    whole = RollingRobustZ(window=100, min_history=20)(df)
    detector = RollingRobustZ(window=100, min_history=20)
    cuts = [0, 1, 7, 333, 1_000, 2_500, 2_501, n]
    pieces = pl.concat([detector(df.slice(a, b - a)) for a, b in itertools.pairwise(cuts)])
    assert pieces["z"].to_list() == whole["z"].to_list()
    assert pieces["is_alert"].to_list() == whole["is_alert"].to_list()
    assert whole["is_alert"].sum() >= 3


def test_robust_z_matches_a_brute_force_trailing_window() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(10, 2, 300)
    window, history = 50, 10
    scored = RollingRobustZ(window=window, min_history=history, min_spread_ratio=0.0)(
        pl.DataFrame({"series": ["s"] * 300, "value": values})
    )
    for i in (10, 49, 50, 51, 299):
        past = values[max(0, i - window) : i]
        median = float(np.median(past))
        q1, q3 = np.quantile(past, [0.25, 0.75])
        expected = (values[i] - median) / ((q3 - q1) / 1.349)
        assert abs(scored["z"][i] - expected) < 1e-9
    assert scored["z"][:history].null_count() == history


def test_cooldown_keeps_one_alert_per_excursion() -> None:
    values = [10.0] * 200 + [500.0] * 5 + [10.0] * 100 + [500.0]
    scored = RollingRobustZ(window=100, min_history=20, cooldown=50)(
        pl.DataFrame({"series": ["s"] * len(values), "value": values})
    )
    assert scored["is_alert"].arg_true().to_list() == [200, 305]
