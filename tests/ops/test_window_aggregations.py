"""Every built-in aggregation, incremental or not, equals polars over the window's rows.

The oracle groups all records by (key, window) directly with polars, in arrival order; the
delay is large enough that nothing is late, so the results depend on content alone.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf

AGGREGATIONS = {
    "n": pl.len(),
    "count": pl.col("v").count(),
    "total": pl.col("v").sum(),
    "mean": pl.col("v").mean(),
    "low": pl.col("v").min(),
    "high": (pl.col("v") * 2).max(),
    "std": pl.col("v").std(),
    "var0": pl.col("v").var(ddof=0),
    "first": pl.col("v").first(),
    "last": pl.col("v").last(),
    "median": pl.col("v").median(),
    "distinct": pl.col("v").n_unique(),
    "q90": pl.col("v").quantile(0.9, interpolation="nearest"),
}


def close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {
                "k": st.sampled_from(["a", "b"]),
                "t": st.integers(0, 30_000),
                "v": st.one_of(st.none(), st.integers(-100, 100).map(float)),
            }
        ),
        min_size=1,
        max_size=80,
    ),
    batch_size=st.integers(1, 20),
    sliding=st.booleans(),
)
def test_every_builtin_aggregation_equals_polars_over_the_window_rows(
    records: list[dict[str, Any]], batch_size: int, sliding: bool
) -> None:
    size, every = (10_000, 5_000) if sliding else (10_000, 10_000)
    flow = tdf.Flow("aggs")
    source = tdf.io.MemorySource(records, time="t", batch_size=batch_size)
    stream = flow.source("src", source, watermark=tdf.BoundedOutOfOrder("1h"))  # nothing is late
    assigner = tdf.windows.sliding(size, every) if sliding else tdf.windows.tumbling(size)
    out = tdf.io.MemorySink()
    stream.key_by("k").window("w", assigner).agg(**AGGREGATIONS).sink("out", out)
    flow.run(handle_signals=False)

    frame = pl.DataFrame(records, schema={"k": pl.String, "t": pl.Int64, "v": pl.Float64}).with_row_index("arrival")
    starts = frame.with_columns(
        pl.int_ranges((pl.col("t") // every) * every - size + every, (pl.col("t") // every) * every + 1, every).alias(
            "window_start"
        )
    ).explode("window_start")
    expected = (
        starts.sort("arrival")
        .group_by(["k", "window_start"], maintain_order=True)
        .agg(**AGGREGATIONS)
        .sort("k", "window_start")
    )
    got = out.frame.sort("k", "window_start")
    assert got.select("k", "window_start").rows() == expected.select("k", "window_start").rows()
    for name in AGGREGATIONS:
        pairs = zip(got[name].to_list(), expected[name].to_list(), strict=True)
        assert all(close(a, b) for a, b in pairs), (name, got[name].to_list(), expected[name].to_list())
