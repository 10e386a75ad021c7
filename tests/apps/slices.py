"""Small slices of the bundled NAB series for the demo's tests, and the cleaning rules as a reference.

The slices keep the first rows of two series, which include labelled anomaly windows (the first
window of each starts within 2,100 rows), so NAB scores, precision and recall are real numbers.
Optionally a few broken rows are appended, one of each kind the pipeline must handle.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tideflow.apps.telemetry import bundled_series

SERIES = ("ec2_request_latency_system_failure", "machine_temperature_system_failure")
BROKEN_ROWS = {
    "not-a-number": "2014-03-18 00:00:00,n/a\n",  # a dead letter: the schema wants a number
    "missing-value": "2014-03-18 00:05:00,\n",  # dropped by the cleaning step
}


def slice_of_bundled(folder: Path, rows: int = 3_000, *, broken: bool = False) -> list[Path]:
    """The first ``rows`` points of the two series in ``SERIES``; with ``broken``, the first series
    gets a repeat of its last point, a row that is not a number and a row without a value."""
    folder.mkdir(parents=True, exist_ok=True)
    by_name = {path.stem: path for path in bundled_series()}
    out = []
    for i, name in enumerate(SERIES):
        lines = by_name[name].read_text().splitlines(keepends=True)[: rows + 1]
        if broken and i == 0:
            lines += [lines[-1], BROKEN_ROWS["not-a-number"], BROKEN_ROWS["missing-value"]]
        target = folder / f"{name}.csv"
        target.write_text("".join(lines))
        out.append(target)
    return out


def expected_points(files: list[Path]) -> pl.DataFrame:
    """What the flow should score, computed directly: rows whose value is a finite number, the
    first of each (series, timestamp), in file order."""
    frames = []
    for path in files:
        raw = pl.read_csv(path, schema={"timestamp": pl.String, "value": pl.String})
        frames.append(
            raw.with_columns(
                series=pl.lit(path.stem),
                timestamp=pl.col("timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S"),
                value=pl.col("value").cast(pl.Float64, strict=False),
            )
            .filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
            .unique(["series", "timestamp"], keep="first", maintain_order=True)
        )
    return pl.concat(frames).select("series", "timestamp", "value")
