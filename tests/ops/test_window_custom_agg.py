"""Custom aggregators (sketches and user-written ones) inside windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

import tideflow as tdf
from tideflow.agg import Aggregator


class Spread(Aggregator[tuple[float, float] | None]):
    """max - min, written with init/add/merge/result as a user would."""

    dtype = pl.Float64

    def __init__(self, column: str) -> None:
        self.column = column

    def init(self) -> tuple[float, float] | None:
        return None

    def add(self, state: Any, values: pl.Series) -> Any:
        present = values.drop_nulls()
        if present.len() == 0:
            return state
        low, high = float(present.min()), float(present.max())
        return (low, high) if state is None else (min(state[0], low), max(state[1], high))

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return a if b is None else b
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, state: Any) -> float | None:
        return None if state is None else state[1] - state[0]


def test_sketches_and_a_custom_aggregator_match_exact_values_in_sliding_windows() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    data = pl.DataFrame(
        {
            "k": rng.integers(0, 3, n),
            "t": np.sort(rng.integers(0, 60_000, n)),
            "lat": rng.lognormal(3, 1, n),
            "user": rng.integers(0, 5_000, n),
        }
    )
    flow = tdf.Flow("sketch")
    out = tdf.io.MemorySink()
    stream = flow.source("src", tdf.io.MemorySource(data, time="t", batch_size=777), watermark=tdf.Monotonic())
    stream.key_by("k").window("w", tdf.windows.sliding("20s", "10s")).agg(
        p99=tdf.agg.approx_quantile("lat", 0.99),
        users=tdf.agg.approx_distinct("user"),
        spread=Spread("lat"),
        exact_p99=pl.col("lat").quantile(0.99, interpolation="lower"),
        exact_users=pl.col("user").n_unique(),
        exact_spread=pl.col("lat").max() - pl.col("lat").min(),
    ).sink("out", out)
    flow.run(handle_signals=False)
    f = out.frame
    assert f.height == 3 * 7  # 3 keys × windows starting at -10 s, 0 s, ..., 50 s
    assert (((f["p99"] - f["exact_p99"]).abs() / f["exact_p99"]) <= 0.01).all()
    assert (f["users"] == f["exact_users"].cast(pl.Int64)).all()  # exact while the sketch is sparse
    assert ((f["spread"] - f["exact_spread"]).abs() < 1e-9).all()
