"""Session windows against a record-by-record oracle, for any batching (docs/semantics.md)."""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf

from .test_window_oracle import aggregate

NO_WM = -(2**63)


def oracle(records: list[dict[str, Any]], delay: int, gap: int, lateness: int):  # type: ignore[no-untyped-def]
    wm = NO_WM
    sessions: dict[str, list[dict[str, Any]]] = {}
    out, late = [], []

    def emit(key: str, s: dict[str, Any], is_update: bool) -> None:
        out.append((key, s["start"], s["end"], *aggregate(s["values"]).values(), is_update))
        s["emitted"] = True

    for index, record in enumerate(records):
        key, t = record["k"], record["t"]
        live = [s for s in sessions.get(key, []) if s["end"] + lateness > wm]
        touching = [s for s in live if s["start"] <= t + gap and t <= s["end"]]
        start = min([t, *(s["start"] for s in touching)])
        end = max([t + gap, *(s["end"] for s in touching)])
        if wm >= end + lateness:
            late.append(index)
        else:
            merged = {
                "start": start,
                "end": end,
                "values": [v for s in touching for v in s["values"]] + [record["v"]],
                "emitted": any(s["emitted"] for s in touching),
                "fired_end": None,
            }
            sessions[key] = [s for s in live if s not in touching] + [merged]
            if wm >= end:
                emit(key, merged, True)
                merged["fired_end"] = end
        before, wm = wm, max(wm, t - delay)
        for k, ss in sessions.items():
            for s in ss:
                if before < s["end"] <= wm and s["fired_end"] != s["end"]:
                    emit(k, s, s["emitted"])
                    s["fired_end"] = s["end"]
    for k, ss in sessions.items():
        for s in ss:
            if s["fired_end"] != s["end"] and s["end"] + lateness > wm:
                emit(k, s, s["emitted"])
    return sorted(out, key=repr), late


def run(records, delay, gap, lateness, batch_size):  # type: ignore[no-untyped-def]
    flow = tdf.Flow("s")
    source = tdf.io.MemorySource([{**r, "i": i} for i, r in enumerate(records)], time="t", batch_size=batch_size)
    stream = flow.source("src", source, watermark=tdf.BoundedOutOfOrder(delay))
    windowed = stream.key_by("k").window("sessions", tdf.windows.session(gap), allowed_lateness=lateness)
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
    {"k": st.sampled_from(["a", "b"]), "t": st.integers(0, 40_000), "v": st.one_of(st.none(), st.integers(-9, 9))}
)


@settings(max_examples=120, deadline=None)
@given(
    records=st.lists(record, min_size=1, max_size=60),
    delay=st.integers(0, 10_000),
    gap=st.sampled_from([1_000, 5_000]),
    lateness=st.sampled_from([0, 4_000]),
    batch_size=st.integers(1, 25),
)
def test_sessions_equal_the_record_by_record_oracle(records, delay, gap, lateness, batch_size) -> None:  # type: ignore[no-untyped-def]
    expected, expected_late = oracle(records, delay, gap, lateness)
    got, got_late = run(records, delay, gap, lateness, batch_size)
    assert got_late == expected_late
    assert got == expected
