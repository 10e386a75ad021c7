"""PNG charts of the demo's results, drawn after the run from the tables it wrote.

* one per telemetry series: the values, the labelled anomaly windows shaded (scoring only: the
  detector never saw them), alerts as red markers, recalibrations as dashed lines;
* the load forecast: actuals, the forecast made an hour earlier and its 90% interval, over the
  last day of the series;
* tweets per predicted sentiment per minute.

matplotlib is an optional dependency (the ``demo`` extra); without it :func:`draw_charts` raises
``MissingExtra`` and the demo reports that charts were skipped. The Agg backend draws to files
only: no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from ..ai._imports import MissingExtra

LAST_DAYS = 1
"""Days of the forecast chart: more 5-minute points than a day's 288 merge into a solid block."""
_SIZE = (11, 3.2)
_DPI = 90


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise MissingExtra(
            f"charts need matplotlib, which is not installed ({error}). Install the 'demo' extra: "
            "pip install 'tideflow[demo]'"
        ) from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_charts(
    out_dir: Path,
    points: pl.DataFrame | None,
    labels: Mapping[str, Sequence[tuple[datetime, datetime]]],
    pairs: pl.DataFrame | None,
    per_minute: pl.DataFrame | None,
    *,
    horizon_step: int,
) -> list[Path]:
    """Draw every chart there is data for into ``out_dir/charts``; returns their paths."""
    plt = _pyplot()
    folder = out_dir / "charts"
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if points is not None and points.height:
        for (name,), series in points.partition_by("series", as_dict=True, maintain_order=True).items():
            paths.append(series_chart(plt, folder / f"{name}.png", str(name), series, labels.get(str(name), [])))
    if pairs is not None and pairs.height:
        paths.append(forecast_chart(plt, folder / "forecast.png", pairs, horizon_step))
    if per_minute is not None and per_minute.height:
        paths.append(sentiment_chart(plt, folder / "sentiment.png", per_minute))
    return paths


def series_chart(
    plt: Any, path: Path, name: str, series: pl.DataFrame, windows: Sequence[tuple[datetime, datetime]]
) -> Path:
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    ts, values = series.get_column("timestamp").to_list(), series.get_column("value").to_numpy()
    ax.plot(ts, values, color="#34495e", linewidth=0.6, label="value")
    for i, (start, end) in enumerate(windows):
        ax.axvspan(start, end, color="#f5b041", alpha=0.3, label="labelled anomaly window" if i == 0 else None)
    for i, at in enumerate(series.filter(pl.col("recalibrated")).get_column("timestamp").to_list()):
        ax.axvline(
            at, color="#7f8c8d", linestyle="--", linewidth=0.7, label="recalibration (drift)" if i == 0 else None
        )
    alerts = series.filter(pl.col("is_anomaly"))
    ax.scatter(
        alerts.get_column("timestamp").to_list(),
        alerts.get_column("value").to_numpy(),
        color="#e74c3c",
        s=28,
        zorder=3,
        label=f"alert ({alerts.height})",
    )
    ax.set_title(name, fontsize=10, loc="left")
    ax.margins(x=0.01)
    _legend(ax, 4)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def forecast_chart(plt: Any, path: Path, pairs: pl.DataFrame, horizon_step: int) -> Path:
    chosen = pairs.filter(pl.col("horizon_step") == horizon_step).sort("target_time")
    if chosen.height:
        end = chosen.get_column("target_time").max()
        chosen = chosen.filter(pl.col("target_time") > end - timedelta(days=LAST_DAYS))  # type: ignore[operator]
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    ts = chosen.get_column("target_time").to_list()
    lower = chosen.get_column("lower").to_numpy()
    upper = chosen.get_column("upper").to_numpy()
    ax.fill_between(ts, lower, upper, color="#85c1e9", alpha=0.45, linewidth=0, label="90% interval")
    ax.plot(ts, chosen.get_column("actual").to_numpy(), color="#34495e", linewidth=0.8, label="actual")
    ax.plot(ts, chosen.get_column("forecast").to_numpy(), color="#2874a6", linewidth=0.9, label="forecast")
    name = chosen.get_column("series")[0] if chosen.height else ""
    minutes = horizon_step * 5
    days = "day" if LAST_DAYS == 1 else f"{LAST_DAYS} days"
    ax.set_title(f"{name}: forecast made {minutes} min before, last {days}", fontsize=10, loc="left")
    ax.margins(x=0.01)
    _legend(ax, 3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sentiment_chart(plt: Any, path: Path, per_minute: pl.DataFrame) -> Path:
    from .text import LABELS, minute_table

    table = minute_table(per_minute)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    ts = table.get_column("window_start").to_list()
    bottom = None
    colours = {"negative": "#e74c3c", "neutral": "#bdc3c7", "positive": "#27ae60"}
    for label in LABELS:
        counts = table.get_column(label).to_numpy()
        ax.bar(ts, counts, width=timedelta(seconds=50), align="edge", bottom=bottom, color=colours[label], label=label)
        bottom = counts if bottom is None else bottom + counts
    ax.set_title("tweets per predicted sentiment per minute", fontsize=10, loc="left")
    _legend(ax, 3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _legend(ax: Any, columns: int) -> None:
    """Above the plot, right-aligned: inside it, a legend hides the data it describes."""
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False, ncols=columns)
