"""The demo: anomaly alerts on real server metrics (NAB), replayed in event time.

parse (CSV, event time) → clean (drop missing / non-finite values) → per-series rolling robust
z-score → alerts into SQLite (upsert by series and timestamp, so a re-run never duplicates),
every scored point into Parquet, dead letters into JSON lines. The labelled anomaly windows
shipped with the data are used only afterwards, to say how many the alerts found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from ..flow import Flow
from ..io import CsvSource, JsonlSink, ParquetSink, Schema, SqliteSink
from ..runtime.local import RunResult
from ..time.watermarks import BoundedOutOfOrder
from .robust_z import RollingRobustZ

DATA = "data/nab"


def bundled_series() -> list[Path]:
    """The NAB CSV files shipped inside the package."""
    folder = Path(str(resources.files("tideflow") / DATA))
    return sorted(folder.glob("*.csv"))


def labelled_windows() -> dict[str, list[tuple[datetime, datetime]]]:
    """NAB's labelled anomaly windows for the bundled series, keyed by series name."""
    raw = json.loads((resources.files("tideflow") / DATA / "combined_windows.json").read_text())
    return {
        name.removesuffix(".csv"): [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in windows]
        for name, windows in raw.items()
    }


def default_out_dir() -> Path:
    return Path("tideflow-out") / datetime.now().strftime("demo-%Y%m%d-%H%M%S")


@dataclass
class TelemetryDemo:
    """The demo's flow and where it writes; ``report`` reads the results back for the summary."""

    flow: Flow
    out_dir: Path
    files: list[Path]

    @property
    def database(self) -> Path:
        return self.out_dir / "telemetry.db"

    @classmethod
    def create(
        cls, *, out_dir: Path | None = None, speed: float | None = None, files: list[Path] | None = None
    ) -> TelemetryDemo:
        out = out_dir or default_out_dir()
        out.mkdir(parents=True, exist_ok=True)
        series = files or bundled_series()
        return cls(build_flow(series, out, speed=speed), out, series)

    def report(self, result: RunResult) -> dict[str, Any]:
        """Alerts found, labelled windows hit, and where to look."""
        scores_path = self.out_dir / "scores.parquet"
        alerts = pl.read_parquet(scores_path).filter("is_alert") if scores_path.exists() else pl.DataFrame()
        windows = labelled_windows()
        total = hit = inside = 0
        for name, spans in windows.items():
            mine = alerts.filter(pl.col("series") == name) if alerts.height else alerts
            for start, end in spans:
                total += 1
                count = mine.filter(pl.col("timestamp").is_between(start, end)).height if mine.height else 0
                inside += count
                hit += count > 0
        return {
            "series": len(self.files),
            "alerts": alerts.height,
            "alerts_in_labelled_windows": inside,
            "labelled_windows_hit": f"{hit}/{total}",
            "results": str(self.out_dir),
            "query": f'sqlite3 {self.database} "SELECT series, COUNT(*) FROM alerts GROUP BY series"',
        }


def build_flow(files: list[Path], out_dir: Path, *, speed: float | None = None) -> Flow:
    """The demo pipeline over ``files`` (NAB-format CSV: timestamp,value)."""
    flow = Flow("dc-telemetry")
    metrics = flow.source(
        "metrics",
        CsvSource(
            [str(f) for f in files],
            time="timestamp",
            # Only the timestamp is required: a missing value reaches the `clean` step, which
            # drops it as a gap in the series rather than as a broken record.
            schema=Schema({"timestamp": pl.String, "value": pl.Float64}, required=["timestamp"]),
            file_column="series",
            replay=speed,
        ),
        watermark=BoundedOutOfOrder("0s"),
    )
    clean = metrics.filter("clean", pl.col("value").is_not_null() & pl.col("value").is_finite())
    scored = clean.map_batches("robust-z", RollingRobustZ(key="series", value="value"))
    scored.filter("alerts", pl.col("is_alert")).select(
        "alert-columns", "series", "timestamp", "value", "baseline", "z"
    ).sink("alerts-db", SqliteSink(str(out_dir / "telemetry.db"), "alerts", key=["series", "timestamp"]))
    scored.sink("scores", ParquetSink(str(out_dir / "scores.parquet")))
    flow.dead_letters().sink("dead-letters", JsonlSink(str(out_dir / "dead_letters.jsonl")))
    return flow
