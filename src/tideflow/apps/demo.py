"""``tideflow demo``: a data-center AI pipeline on bundled real data, as one flow with three branches.

    telemetry  NAB server metrics (6 series) → clean → dedupe → adaptive anomaly detection
               → alerts, recalibrations, hourly features (SQLite), scored points (Parquet)
    forecast   one CPU series → forecast 1 h ahead with intervals → joined with actuals (Parquet)
    text       held-out tweets → MiniLM embeddings → sentiment head → per-minute counts (SQLite)

Steps, in order: the sentiment head is loaded from its cache or trained (a small flow of its
own), the demo flow runs, then the figures are computed from what it wrote and the charts drawn.
Each part that needs an optional extra degrades on its own: without the ``ml`` extra the text
branch is skipped (``text_accuracy`` is null), without matplotlib the charts are. Every table and
column is described in ``docs/demo.md``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from ..ai._imports import MissingExtra
from ..flow import Flow
from ..io import ParquetSink
from ..runtime.local import RunResult, StepStats
from . import forecasting, scoring
from .charts import draw_charts
from .latency import LatencyRecorder
from .telemetry import bundled_series, labelled_windows, telemetry_branch
from .text import HeadCache, cache_dir, require_text_extras, sentiment_branch, sentiment_head

Runner = Callable[[Flow], RunResult]
Say = Callable[[str], None]

PRIMARY_LATENCY = ("telemetry", "text")
"""Branches whose result rows are one per input event: ``latency_ms`` is over these. Forecast
pairs (up to 12 per event) are reported apart, in ``latency_by_branch``."""


def quiet_run(flow: Flow) -> RunResult:
    """The default runner: no progress display, no signal handler (tests, notebooks)."""
    return flow.run(handle_signals=False)


def fresh_out_dir(root: Path = Path("tideflow-out")) -> Path:
    """``tideflow-out/demo-YYYYmmdd-HHMMSS`` (with a suffix if that exists already)."""
    base = root / datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@dataclass
class DemoSettings:
    """What a demo run reads and how much; the defaults are the full demo."""

    out_dir: Path | None = None
    """Where results go (default: a new folder under ``./tideflow-out``)."""
    speed: float | None = None
    """Replay speed relative to event time (None: as fast as possible)."""
    files: list[Path] | None = None
    """NAB-format CSV files (default: the six bundled series)."""
    forecast_series: str | None = None
    """The series to forecast (default: the bundled CPU series if it is read, else the first file's)."""
    text: bool = True
    train: int = 4_000
    """Training tweets for the sentiment head (4,000: accuracy within 0.005 of training on 12,000)."""
    test: int = 1_000
    """Held-out tweets streamed through the flow."""
    seed: int = 7
    cache: Path | None = None
    """Folder of the cached sentiment head (default: ``text.cache_dir()``)."""
    use_cache: bool = True
    charts: bool = True


@dataclass
class Demo:
    """One run of the demo: ``run`` does every step and returns the summary."""

    settings: DemoSettings = field(default_factory=DemoSettings)
    say: Say = field(default=lambda line: None)

    def __post_init__(self) -> None:
        self.out_dir = self.settings.out_dir or fresh_out_dir()
        self.files = list(self.settings.files) if self.settings.files is not None else bundled_series()
        stems = [path.stem for path in self.files]
        default = forecasting.FORECAST_SERIES if forecasting.FORECAST_SERIES in stems or not stems else stems[0]
        self.forecast_series = self.settings.forecast_series or default
        self.latency = LatencyRecorder()
        self.text_note: str | None = None
        """What happened to the text branch, for the summary (trained, loaded, skipped and why)."""
        self.stopped_while_training = False
        self.encoder: Any = None
        self.head: Any = None
        self.scorer: Any = None
        self.flow: Flow | None = None

    @property
    def database(self) -> Path:
        return self.out_dir / "demo.db"

    # -- steps ----------------------------------------------------------------------------------------
    def run(self, runner: Runner = quiet_run) -> tuple[dict[str, Any], RunResult | None]:
        """Prepare the text branch, run the flow, compute the figures, draw the charts.

        ``runner`` runs a flow (the CLI's shows a progress bar and handles Ctrl-C). If the head's
        training is interrupted the demo flow does not start; the summary says so.
        """
        started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_previous_outputs(self.out_dir)
        test = self.prepare_text(runner)
        result = None
        if not self.stopped_while_training:
            self.flow = self.build_flow(test)
            result = runner(self.flow)
        outputs = Outputs.read(self.out_dir, text=test is not None)
        charts = self.draw_charts(outputs)
        return self.summary(result, outputs, charts, started), result

    def prepare_text(self, runner: Runner) -> pl.DataFrame | None:
        """The held-out tweets, with ``self.head`` ready; None when the text branch is off."""
        settings = self.settings
        if not settings.text:
            self.text_note = "off"
            return None
        try:
            require_text_extras()
            from ..ai.text import MiniLMOnnxEncoder
            from ..ai.tweets import split_tweets

            split = split_tweets(settings.train, settings.test, seed=settings.seed)
            self.encoder = MiniLMOnnxEncoder()
            cache = HeadCache(settings.cache or cache_dir()) if settings.use_cache else None
            if cache is not None:
                path = cache.path(self.encoder.version, settings.train, settings.seed)
                if not path.is_file():
                    self.say(f"training the sentiment head on {settings.train:,} tweets (cached afterwards in {path})")
            else:
                self.say(f"training the sentiment head on {settings.train:,} tweets")
            head = sentiment_head(split.train, self.encoder, cache, seed=settings.seed, run=runner)
        except MissingExtra as error:
            self.text_note = f"skipped: {error}"
            self.say(f"text branch skipped: {error}")
            return None
        if head.interrupted:
            self.stopped_while_training = True
            self.text_note = "stopped while training the head"
            return None
        self.head = head
        if head.source == "cached":
            self.text_note = f"trained on {settings.train:,} tweets, loaded from {head.path}"
        else:
            cached = f", cached in {head.path}" if head.path else " (not cached)"
            self.text_note = f"trained on {settings.train:,} tweets{cached}"
        return split.test

    def build_flow(self, test: pl.DataFrame | None) -> Flow:
        """The demo flow: the telemetry and forecast branches, and the text branch given tweets."""
        flow = Flow("demo")
        telemetry = telemetry_branch(flow, self.files, self.out_dir, self.latency, speed=self.settings.speed)
        self.scorer = telemetry.scorer
        forecasting.forecast_branch(telemetry.points, self.out_dir, self.latency, series=self.forecast_series)
        if test is not None and self.head is not None:
            sentiment_branch(
                flow, test, self.encoder, self.head.model, self.out_dir, self.latency, speed=self.settings.speed
            )
        flow.dead_letters().sink("dead-letters", ParquetSink(self.out_dir / "dead_letters.parquet"))
        return flow

    # -- results ----------------------------------------------------------------------------------------
    def draw_charts(self, outputs: Outputs) -> Charts:
        """The PNG charts (``charts.py``); none, with the reason, when matplotlib is missing."""
        if not self.settings.charts:
            return Charts([], "off")
        try:
            paths = draw_charts(
                self.out_dir,
                outputs.points,
                outputs.labels,
                outputs.pairs,
                outputs.per_minute,
                horizon_step=forecasting.HORIZON,
            )
        except MissingExtra as error:
            self.say(f"charts skipped: {error}")
            return Charts([], f"skipped: {error}")
        return Charts(paths, None)

    def summary(self, result: RunResult | None, outputs: Outputs, charts: Charts, started: float) -> dict[str, Any]:
        """The JSON contract (docs/demo.md), then details and where everything is."""
        telemetry = scoring.telemetry_figures(outputs.points, outputs.labels)
        forecast = scoring.forecast_figures(outputs.pairs)
        text = scoring.text_figures(outputs.tweets)
        events = result.records_in if result else 0
        seconds = result.seconds if result else 0.0
        latency = self.latency.percentiles(*PRIMARY_LATENCY)
        summary: dict[str, Any] = {
            "events": events,
            "seconds": round(seconds, 2),
            "events_per_s": round(events / seconds, 1) if seconds > 0 else 0.0,
            "latency_ms": None if latency is None else {"p50": latency["p50"], "p99": latency["p99"]},
            "alerts": telemetry.alerts,
            "nab_score": telemetry.nab_score,
            "precision": telemetry.precision,
            "recall": telemetry.recall,
            "forecast_mae": forecast["mae"],
            "text_accuracy": text["accuracy"],
            "dead_letters": result.dead_letters if result else 0,
            "interrupted": bool(result.interrupted) if result else self.stopped_while_training,
            "series": len(self.files),
            "windows_detected": f"{telemetry.detected_windows}/{telemetry.windows}",
            "false_positives": telemetry.false_positives,
            "nab_by_series": telemetry.per_series,
            "recalibrations": sum(self.scorer.recalibrations.values()) if self.scorer else 0,
            "duplicates": _dropped(result, "dedupe"),
            "invalid_values": _filtered(result, "clean"),
            "forecast": {"series": self.forecast_series, "horizon": forecasting.HORIZON, **forecast},
            "text": {**text, "head": self.text_note},
            "latency_by_branch": {label: self.latency.percentiles(label) for label in sorted(self.latency.labels())},
            "total_seconds": round(time.perf_counter() - started, 1),
            "out_dir": str(self.out_dir),
            "database": str(self.database),
            "tables": self._tables(),
            "charts": [str(path) for path in charts.paths],
        }
        if charts.note:
            summary["charts_note"] = charts.note
        return summary

    def _tables(self) -> dict[str, str]:
        """Every output that exists: SQLite tables as ``demo.db:table``, Parquet files by name."""
        tables = {}
        for table in ("alerts", "recalibrations", "features", "sentiment_per_minute"):
            if _has_table(self.database, table):
                tables[table] = f"{self.database}:{table}"
        for name in PARQUET_OUTPUTS:
            path = self.out_dir / f"{name}.parquet"
            if path.is_file():
                tables[f"{name}.parquet"] = str(path)
        return tables


@dataclass
class Charts:
    paths: list[Path]
    note: str | None
    """Why there are none (``"off"``, or ``"skipped: ..."`` naming the extra to install)."""


@dataclass
class Outputs:
    """What the run wrote, read back once for the figures and the charts (None: not written)."""

    points: pl.DataFrame | None
    pairs: pl.DataFrame | None
    tweets: pl.DataFrame | None
    per_minute: pl.DataFrame | None
    labels: dict[str, list[tuple[datetime, datetime]]]

    @classmethod
    def read(cls, out_dir: Path, *, text: bool) -> Outputs:
        """``text``: whether the text branch ran (``demo.db`` keeps the tables of earlier runs)."""
        return cls(
            points=scoring.read_parquet(out_dir / "points.parquet"),
            pairs=scoring.read_parquet(out_dir / "forecast.parquet"),
            tweets=scoring.read_parquet(out_dir / "tweets.parquet") if text else None,
            per_minute=_sqlite_table(out_dir / "demo.db", "sentiment_per_minute") if text else None,
            labels=labelled_windows(),
        )


PARQUET_OUTPUTS = ("points", "forecast", "tweets", "features", "duplicates", "dead_letters")


def remove_previous_outputs(out_dir: Path) -> None:
    """Remove the Parquet files and charts an earlier run left in ``out_dir``, so that the summary
    and the charts only ever describe this run. ``demo.db`` is kept: its tables are upserted by
    key, so running the same data again changes nothing there."""
    for name in PARQUET_OUTPUTS:
        (out_dir / f"{name}.parquet").unlink(missing_ok=True)
    for chart in (out_dir / "charts").glob("*.png"):
        chart.unlink()


def _has_table(database: Path, table: str) -> bool:
    if not database.is_file():
        return False
    with closing(sqlite3.connect(database)) as db:
        found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return found is not None


def _sqlite_table(database: Path, table: str) -> pl.DataFrame | None:
    """A table of the demo's database as a DataFrame; None if there is no such table."""
    if not _has_table(database, table):
        return None
    with closing(sqlite3.connect(database)) as db:
        cursor = db.execute(f'SELECT * FROM "{table}"')  # a fixed name from this module, not input
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    frame = pl.DataFrame(rows, schema=columns, orient="row") if rows else pl.DataFrame(schema=columns)
    if "window_start" in frame.columns and frame.height:
        frame = frame.with_columns(pl.col("window_start").str.to_datetime(time_zone="UTC", strict=False))
    return frame


def _step(result: RunResult | None, step: str) -> StepStats | None:
    if result is None:
        return None
    try:
        return result.step(step)
    except KeyError:
        return None


def _dropped(result: RunResult | None, step: str) -> int:
    """Records a step dropped by design (dedupe's duplicates)."""
    stats = _step(result, step)
    if stats is None:
        return 0
    return sum((stats.dropped or {}).values()) or max(0, (stats.records_in or 0) - (stats.records_out or 0))


def _filtered(result: RunResult | None, step: str) -> int:
    """Records a filter step kept out (the cleaning step's invalid values)."""
    stats = _step(result, step)
    if stats is None or stats.records_in is None or stats.records_out is None:
        return 0
    return stats.records_in - stats.records_out
