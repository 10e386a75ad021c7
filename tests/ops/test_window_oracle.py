"""Tumbling and sliding windows against a record-by-record oracle, for any batching.

The oracle advances the watermark after every record and applies the rules of
docs/semantics.md literally: a record is dropped to the late output when every window
containing it is past its lateness; otherwise it joins every window containing it; a window
fires (final) when the watermark reaches its end; a record arriving after a window fired but
within its lateness re-emits that window for its key (update).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf

NO_WM = -(2**63)


def aggregate(values: list[int]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    return {
        "n": len(values),
        "total": sum(present),
        "low": min(present) if present else None,
        "high": max(present) if present else None,
        "avg": sum(present) / len(present) if present else None,
    }


def oracle(records: list[dict[str, Any]], delay: int, size: int, every: int, lateness: int):  # type: ignore[no-untyped-def]
    wm = NO_WM
    state: dict[tuple[str, int], list[int]] = defaultdict(list)
    fired: set[tuple[str, int]] = set()
    born_late: set[tuple[str, int]] = set()
    out, late = [], []
    for index, record in enumerate(records):
        t, key = record["t"], record["k"]
        pane = t // every * every
        starts = range(pane - size + every, pane + 1, every)
        if wm >= pane + size + lateness:
            late.append(index)
        else:
            for s in starts:
                if (key, s) not in state and s + size <= wm:
                    born_late.add((key, s))
                state[(key, s)].append(record["v"])
            for s in starts:
                if s + size <= wm < s + size + lateness:
                    out.append((key, s, s + size, *aggregate(state[(key, s)]).values(), True))
        before, wm = wm, max(wm, t - delay)
        for (k, s), values in list(state.items()):
            if before < s + size <= wm and (k, s) not in fired and (k, s) not in born_late:
                fired.add((k, s))
                out.append((k, s, s + size, *aggregate(values).values(), False))
    for (k, s), values in state.items():
        if (k, s) not in fired and (k, s) not in born_late:
            out.append((k, s, s + size, *aggregate(values).values(), False))
    return sorted(out, key=repr), late


def run(records, delay, assigner, lateness, batch_size):  # type: ignore[no-untyped-def]
    flow = tdf.Flow("w")
    source = tdf.io.MemorySource([{**r, "i": i} for i, r in enumerate(records)], time="t", batch_size=batch_size)
    stream = flow.source("src", source, watermark=tdf.BoundedOutOfOrder(delay))
    windowed = stream.key_by("k").window("w", assigner, allowed_lateness=lateness)
    results = windowed.agg(
        n=pl.len(), total=pl.col("v").sum(), low=pl.col("v").min(), high=pl.col("v").max(), avg=pl.col("v").mean()
    )
    out, late = tdf.io.MemorySink(), tdf.io.MemorySink()
    results.sink("out", out)
    windowed.late().sink("late", late)
    flow.run(handle_signals=False)
    rows = [
        (r["k"], r["window_start"], r["window_end"], r["n"], r["total"], r["low"], r["high"], r["avg"], r["is_update"])
        for r in out.records
    ]
    return sorted(rows, key=repr), sorted(r["i"] for r in late.records)


record = st.fixed_dictionaries(
    {
        "k": st.sampled_from(["a", "b", "c"]),
        "t": st.integers(0, 60_000),
        "v": st.one_of(st.none(), st.integers(-50, 50)),
    }
)


@settings(max_examples=120, deadline=None)
@given(
    records=st.lists(record, min_size=1, max_size=80),
    delay=st.integers(0, 15_000),
    lateness=st.sampled_from([0, 3_000, 20_000]),
    size_panes=st.sampled_from([(10_000, 10_000), (10_000, 2_000), (6_000, 3_000)]),
    batch_size=st.integers(1, 30),
)
def test_windows_equal_the_record_by_record_oracle(records, delay, lateness, size_panes, batch_size) -> None:  # type: ignore[no-untyped-def]
    size, every = size_panes
    assigner = tdf.windows.tumbling(size) if size == every else tdf.windows.sliding(size, every)
    expected, expected_late = oracle(records, delay, size, every, lateness)
    got, got_late = run(records, delay, assigner, lateness, batch_size)
    assert got == expected
    assert got_late == expected_late
