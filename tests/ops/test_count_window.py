"""Count windows against a plain-Python oracle, for any batching."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf


def oracle(records: list[dict[str, Any]], n: int) -> list[tuple[Any, ...]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["k"]].append(r)
    out = []
    for key, rows in groups.items():
        for w in range(0, len(rows), n):
            part = rows[w : w + n]
            out.append(
                (
                    key,
                    w // n,
                    min(r["t"] for r in part),
                    max(r["t"] for r in part),
                    len(part),
                    sum(r["v"] for r in part),
                    part[0]["v"],
                    part[-1]["v"],
                )
            )
    return sorted(out)


@settings(max_examples=80, deadline=None)
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {"k": st.sampled_from(["a", "b", "c"]), "t": st.integers(0, 10**6), "v": st.integers(-9, 9)}
        ),
        min_size=1,
        max_size=80,
    ),
    n=st.integers(1, 7),
    batch_size=st.integers(1, 25),
)
def test_count_windows_equal_the_oracle(records: list[dict[str, Any]], n: int, batch_size: int) -> None:
    flow = tdf.Flow("c")
    stream = flow.source("src", tdf.io.MemorySource(records, time="t", batch_size=batch_size))
    out = tdf.io.MemorySink()
    stream.key_by("k").window("every-n", tdf.windows.count(n)).agg(
        n=pl.len(), total=pl.col("v").sum(), first=pl.col("v").first(), last=pl.col("v").last()
    ).sink("out", out)
    flow.run(handle_signals=False)
    got = sorted(
        (r["k"], r["window_index"], r["window_start"], r["window_end"], r["n"], r["total"], r["first"], r["last"])
        for r in out.records
    )
    assert got == oracle(records, n)


def test_global_count_window_without_key_by() -> None:
    flow = tdf.Flow("g")
    out = tdf.io.MemorySink()
    flow.source("src", tdf.io.MemorySource([{"v": i} for i in range(10)], batch_size=3)).window(
        "fours", tdf.windows.count(4)
    ).agg(total=pl.col("v").sum()).sink("out", out)
    flow.run(handle_signals=False)
    assert [(r["window_index"], r["total"]) for r in out.records] == [(0, 6), (1, 22), (2, 17)]
