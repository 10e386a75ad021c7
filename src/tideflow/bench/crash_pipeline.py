"""The pipeline of the crash test: every kind of state a checkpoint must carry, three sink kinds.

Run by ``tideflow run`` in a child process that is killed at random moments (see
:mod:`tideflow.bench.recovery`). Where it reads and writes comes from the environment:
``TIDEFLOW_CRASH_DATA`` (made by ``make_crash_data``) and ``TIDEFLOW_CRASH_OUT``.

payments (CSV files) ─ clean ─ dedupe by id ─ score (infer) ─┬─ per-user 10 s totals ─ SQLite
                                                            ├─ scored rows ─ JSON Lines
logins (CSV) ──────────────────────────────────── interval join by user ─ CSV
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

import tideflow as tdf
from tideflow.ai import BatchFunction


def risk(frame: pl.DataFrame) -> np.ndarray:
    """A deterministic stand-in for a fraud model: a logistic curve of the amount."""
    amounts = frame.get_column("amount").to_numpy()
    return np.round(1.0 / (1.0 + np.exp(-(amounts - 50.0) / 10.0)), 6)


def build(data: Path, out: Path) -> tdf.Flow:
    flow = tdf.Flow("crash-test")
    payments = flow.source(
        "payments",
        tdf.io.CsvSource(
            str(data / "payments" / "*.csv"),
            time="ts",
            batch_size=400,
            schema={"id": pl.Int64, "user": pl.String, "ts": pl.Int64, "amount": pl.Float64},
        ),
        watermark=tdf.BoundedOutOfOrder("2s"),
    )
    logins = flow.source(
        "logins",
        tdf.io.CsvSource(str(data / "logins.csv"), time="ts", batch_size=300),
        watermark=tdf.BoundedOutOfOrder("2s"),
    )
    clean = payments.filter("valid", pl.col("amount") >= 0)
    unique = clean.dedupe("dedupe", key="id", within="30s")
    scored = unique.infer(
        "score",
        BatchFunction(risk, name="risk", version="1"),
        inputs=["amount"],
        outputs="risk",
        batching=tdf.Batching(max_size=64, max_wait="2ms"),
        version_column=None,
    )
    totals = (
        scored.key_by("user")
        .window("totals", tdf.windows.tumbling("10s"))
        .agg(n=pl.len(), amount=pl.col("amount").sum().round(6), risk=pl.col("risk").max())
    )
    totals.sink("totals_db", tdf.io.SqliteSink(str(out / "results.db"), table="totals"))
    scored.sink("scored_jsonl", tdf.io.JsonlSink(str(out / "scored.jsonl")))
    joined = scored.interval_join("near_login", logins, on="user", lower="5s", upper="5s")
    joined.sink("joined_csv", tdf.io.CsvSink(str(out / "joined.csv")))
    return flow


def make_crash_data(directory: Path, *, payments: int = 40_000, files: int = 4, seed: int = 7) -> Path:
    """Payments spread over ``files`` CSV files (a few duplicates, a few bad rows, bounded
    disorder) and a login stream: the same input for every trial."""
    rng = np.random.default_rng(seed)
    (directory / "payments").mkdir(parents=True, exist_ok=True)
    ts = np.arange(payments, dtype=np.int64) * 50 + rng.integers(0, 1_500, payments)  # 20/s, ≤1.5 s disorder
    users = rng.integers(0, 200, payments)
    amounts = np.round(rng.gamma(2.0, 20.0, payments), 2)
    ids = np.arange(payments, dtype=np.int64)
    repeat = rng.random(payments) < 0.02  # duplicates of the previous payment, a moment later
    ids[1:][repeat[1:]] = ids[:-1][repeat[1:]]
    frame = pl.DataFrame({"id": ids, "user": [f"u{u}" for u in users], "ts": ts, "amount": amounts.astype(str)})
    bad = rng.random(payments) < 0.001
    frame = frame.with_columns(pl.when(pl.Series(bad)).then(pl.lit("n/a")).otherwise(pl.col("amount")).alias("amount"))
    for index, part in enumerate(np.array_split(np.arange(payments), files)):
        frame[int(part[0]) : int(part[-1]) + 1].write_csv(directory / "payments" / f"part-{index}.csv")
    count = payments // 10
    login_ts = np.sort(rng.integers(0, int(ts.max()), count))
    pl.DataFrame({"user": [f"u{u}" for u in rng.integers(0, 200, count)], "ts": login_ts, "device": "web"}).write_csv(
        directory / "logins.csv"
    )
    return directory


if os.environ.get("TIDEFLOW_CRASH_DATA"):
    flow = build(Path(os.environ["TIDEFLOW_CRASH_DATA"]), Path(os.environ["TIDEFLOW_CRASH_OUT"]))
