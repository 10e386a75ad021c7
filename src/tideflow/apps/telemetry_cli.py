"""``tideflow apps telemetry``: anomaly alerts on one NAB-format CSV, scored when labels are given.

The pipeline is the one a deployment would run: the CSV is read as a stream in event time,
cleaned, scored point by point by an online detector (no lookahead), and alerts are decided by a
threshold calibrated on the series' own past scores. Labels, when given, are read only after the
run, to score the alerts with NAB's measure and with precision/recall; they change nothing in
the run. Output conventions follow ``tideflow run``: results on stdout (a table, or one JSON
object with ``--json``), problems on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from ..anomaly import DETECTORS, ThresholdCalibrator, detect_anomalies, telemetry_calibrator
from ..errors import TideflowError
from ..eval.nab import PROFILES, STANDARD, find_windows, load_windows, point_precision_recall, score_file
from ..flow import Flow
from ..io import CsvSource, MemorySink, Schema
from ..time.watermarks import BoundedOutOfOrder

apps_app = typer.Typer(
    name="apps",
    help="Reference applications built on tideflow: telemetry anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
)


@apps_app.callback()
def _apps() -> None:
    """Reference applications built on tideflow: telemetry anomaly detection."""


DetectorName = Enum("DetectorName", {name.replace("-", "_"): name for name in DETECTORS}, type=str)  # type: ignore[misc]
DEFAULT_DETECTOR = DetectorName("robust-z")


def build_flow(
    path: Path, detector: str, calibrator: Callable[[], ThresholdCalibrator] = telemetry_calibrator
) -> tuple[Flow, MemorySink, MemorySink]:
    """CSV (event time) → clean → detector + calibrated threshold → every scored point in memory.

    Returns the flow, the sink of scored points and the sink of dead letters.
    """
    flow = Flow("telemetry")
    metrics = flow.source(
        "metrics",
        CsvSource(
            str(path),
            time="timestamp",
            schema=Schema({"timestamp": pl.String, "value": pl.Float64}, required=["timestamp"]),
            file_column="series",
        ),
        watermark=BoundedOutOfOrder("0s"),
    )
    clean = metrics.filter("clean", pl.col("value").is_not_null() & pl.col("value").is_finite())
    scored = detect_anomalies(clean, "detect", DETECTORS[detector], key="series", calibrator=calibrator)
    points, dead = MemorySink(), MemorySink()
    scored.sink("points", points)
    flow.dead_letters().sink("dead-letters", dead)
    return flow, points, dead


def evaluate(points: pl.DataFrame, windows: list[Any]) -> dict[str, Any]:
    """NAB scores (normalised between null and perfect for this file) and precision/recall."""
    ts, alerts = points["timestamp"], points["is_anomaly"]
    nab = {}
    for name, profile in PROFILES.items():
        s = score_file(ts, alerts, windows, profile)
        nab[name] = {
            "score": None if s.normalised != s.normalised else round(s.normalised, 2),
            "raw": round(s.raw, 4),
            "null": s.null,
            "perfect": s.perfect,
        }
    pr = point_precision_recall(ts, alerts, windows)
    standard = score_file(ts, alerts, windows, STANDARD)
    return {
        "nab": nab,
        "windows": pr.windows,
        "windows_detected": pr.detected_windows,
        "false_positives": standard.false_positives,
        "precision": None if pr.precision != pr.precision else round(pr.precision, 4),
        "recall": None if pr.recall != pr.recall else round(pr.recall, 4),
    }


@apps_app.command("telemetry")
def telemetry_command(
    data: Annotated[Path, typer.Option("--data", help="A CSV with columns timestamp,value (NAB format).")],
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="Anomaly windows: NAB's combined_windows.json, or a JSON list of \\[start, end] pairs."
        ),
    ] = None,
    detector: Annotated[DetectorName, typer.Option("--detector", help="The anomaly detector.")] = DEFAULT_DETECTOR,
    target_fpr: Annotated[
        float, typer.Option("--target-fpr", help="Share of points allowed over the threshold.")
    ] = 0.005,
    warmup: Annotated[int, typer.Option("--warmup", help="Scored points before the first alert.")] = 288,
    cooldown: Annotated[int, typer.Option("--cooldown", help="Points without alert after an alert.")] = 288,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Detect anomalies in a metric (CSV → clean → detector → alerts) and score them against labels."""
    if not data.is_file():
        raise typer.BadParameter(f"{data} is not a file", param_hint="--data")
    windows = None
    if labels is not None:
        try:
            windows = find_windows(load_windows(labels), data)
        except (OSError, ValueError) as error:
            raise typer.BadParameter(f"cannot read {labels}: {error}", param_hint="--labels") from error
        if windows is None:
            raise typer.BadParameter(f"{labels} has no windows for {data.name}", param_hint="--labels")
    settings = {"target_fpr": target_fpr, "warmup": warmup, "cooldown": cooldown}
    try:
        ThresholdCalibrator(**settings)  # refuses bad settings before the run
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    flow, points_sink, _ = build_flow(data, detector.value, lambda: ThresholdCalibrator(**settings))
    try:
        result = flow.run(handle_signals=False)
    except TideflowError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    points = points_sink.frame
    alerts = points.filter("is_anomaly") if points.height else points
    report: dict[str, Any] = {
        "file": str(data),
        "detector": detector.value,
        "points": points.height,
        "dead_letters": result.dead_letters,
        "alerts": [
            {"timestamp": str(r["timestamp"]), "value": r["value"], "anomaly_score": r["anomaly_score"]}
            for r in alerts.select("timestamp", "value", "anomaly_score").to_dicts()
        ]
        if alerts.height
        else [],
    }
    if windows is not None:
        report.update(evaluate(points, windows) if points.height else {})
    if as_json:
        typer.echo(json.dumps(report, default=str))
    else:
        _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    typer.echo(
        f"{report['file']}: detector {report['detector']}, {report['points']} points, "
        f"{len(report['alerts'])} alerts, {report['dead_letters']} dead letters"
    )
    for alert in report["alerts"]:
        typer.echo(f"  ALERT {alert['timestamp']}  value={alert['value']:.6g}  score={alert['anomaly_score']:.3f}")
    if "nab" not in report:
        return
    nab = report["nab"]
    shown = ", ".join(f"{name} {v['score'] if v['score'] is not None else 'n/a'}" for name, v in nab.items())
    typer.echo(
        f"NAB score (this file; 0 = never alerting, 100 = perfect): {shown}; "
        f"{report['windows_detected']}/{report['windows']} windows detected, "
        f"{report['false_positives']} false positives"
    )
    typer.echo(
        f"precision {_num(report['precision'])} (alert points inside a labelled window), "
        f"recall {_num(report['recall'])} (labelled windows with an alert)"
    )


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
