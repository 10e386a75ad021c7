#!/usr/bin/env python
"""The NEXMark queries written with Bytewax 0.21.1, and the worker that times one of them.

This file runs INSIDE the peers' venv (``.bench-venv``: bytewax, polars, pyarrow; no numpy, no
tideflow), as a script: ``.bench-venv/bin/python bytewax_queries.py --query q5 --data DIR``.
It reads the events the harness generated once (``DIR/{person,auction,bid}.parquet``, each row
with its ``position`` in the event stream), so both systems process the same events.

The queries are written the way Bytewax's documentation writes pipelines: per-record Python
functions on dicts (``op.map``, ``op.filter``, ``op.branch``, ``op.key_on``), keyed state
(``op.stateful_flat_map``) and its window operators with an ``EventClock``. Each query follows
the same Flink SQL as the tideflow pipeline in ``queries.py`` and gives the same final results
(the harness checks both against each other and against DuckDB):

* q3, q4 (the unbounded joins) keep per-key state in ``stateful_flat_map``: the join state
  (the person, or the auctions waiting for their seller), the auction and its best bid.
* q4 emits every change of a category's average (Flink's changelog); the last one is final.
* q5 counts per auction in a ``SlidingWindower``; the maximum per window comes from
  ``fold_final`` keyed by window (Bytewax's event clocks are per key, so when every key's count
  of a window is in is only known at the end of input).
* q7 folds each ``TumblingWindower`` window to its best bids; bids in a window's last
  millisecond also go to the next window as candidates (Flink's row time is ``end - 1 ms``).
* q8 is a ``join_window`` of persons and auctions on the seller (``insert_mode="first"``:
  one row per person and window, Flink's ``GROUP BY``).
* q11 folds ``SessionWindower`` sessions to (count, first, last); q12 counts per bidder in a
  ``TumblingWindower`` on a ``SystemClock``.

Inputs: q0–q2, q5, q7, q11, q12 read the bids; q3 and q8 one stream of persons and auctions,
q4 one of auctions and bids, in their original (event) order, split with ``op.branch``: a
single stream keeps each key's items in event order, so Bytewax's per-key event clocks never
see an item behind their watermark. Event times are aware UTC datetimes, built before the timer.
The clock is Bytewax's best case (see docs/benchmarks.md, windows): ``now_getter`` frozen and
``to_system_utc`` returning None, so only event time moves windows.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BATCH = 1000
"""TestingSource batch size: Bytewax's idiomatic in-memory source."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FROZEN = datetime(2020, 1, 1, tzinfo=UTC)
WINDOW = timedelta(seconds=10)
SLIDE = timedelta(seconds=2)
GAP = timedelta(seconds=10)
MS = timedelta(milliseconds=1)
KINDS_USED = {
    "q0": ("bid",),
    "q1": ("bid",),
    "q2": ("bid",),
    "q3": ("person", "auction"),
    "q4": ("auction", "bid"),
    "q5": ("bid",),
    "q7": ("bid",),
    "q8": ("person", "auction"),
    "q11": ("bid",),
    "q12": ("bid",),
}
STATES = frozenset(("OR", "ID", "CA"))


def _ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact: integer arithmetic on the timedelta)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# -- inputs ------------------------------------------------------------------------------------------
def load(folder: Path, kinds: tuple[str, ...], events: int | None = None) -> list[dict[str, Any]]:
    """The events of ``kinds`` as dicts (``kind`` added), in their order in the event stream.

    Times become aware UTC datetimes, one object per distinct millisecond."""
    import polars as pl

    stamps: dict[int, datetime] = {}

    def stamp(ms: int) -> datetime:
        moment = stamps.get(ms)
        if moment is None:
            moment = stamps[ms] = EPOCH + timedelta(milliseconds=ms)
        return moment

    records: list[tuple[int, dict[str, Any]]] = []
    gc.disable()
    try:
        for kind in kinds:
            frame = pl.read_parquet(folder / f"{kind}.parquet")
            if events is not None:
                frame = frame.filter(pl.col("position") < events)
            times = [c for c, t in frame.schema.items() if isinstance(t, pl.Datetime)]
            frame = frame.with_columns([pl.col(c).dt.epoch("ms") for c in times])
            names = [c for c in frame.columns if c != "position"]
            columns = [frame.get_column(c).to_list() for c in names]
            for i, c in enumerate(names):
                if c in times:
                    columns[i] = [stamp(ms) for ms in columns[i]]
            positions = frame.get_column("position").to_list()
            for position, values in zip(positions, zip(*columns, strict=True), strict=True):
                record = dict(zip(names, values, strict=True))
                record["kind"] = kind
                records.append((position, record))
        if len(kinds) > 1:
            records.sort(key=lambda item: item[0])
        return [record for _position, record in records]
    finally:
        gc.enable()


# -- the queries -----------------------------------------------------------------------------------
def build(query: str, events: list[dict[str, Any]], sink: Any, *, wait_ms: int = 0) -> Any:
    """The Bytewax dataflow of ``query`` over ``events``, writing to ``sink``."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import (
        EventClock,
        SessionWindower,
        SlidingWindower,
        SystemClock,
        TumblingWindower,
        count_window,
        fold_window,
        join_window,
    )
    from bytewax.testing import TestingSource

    flow = Dataflow(f"nexmark_{query}")
    wait = wait_ms
    stream = op.input("events", flow, TestingSource(events, batch_size=BATCH))

    def clock(ts_getter: Any = lambda e: e["dateTime"]) -> Any:
        return EventClock(
            ts_getter=ts_getter,
            wait_for_system_duration=timedelta(milliseconds=wait),
            now_getter=lambda: FROZEN,
            to_system_utc=lambda _timestamp: None,
        )

    if query == "q0":
        out = op.map(
            "q0",
            stream,
            lambda b: {
                "auction": b["auction"],
                "bidder": b["bidder"],
                "price": b["price"],
                "dateTime": b["dateTime"],
                "extra": b["extra"],
            },
        )
    elif query == "q1":
        out = op.map(
            "q1",
            stream,
            lambda b: {
                "auction": b["auction"],
                "bidder": b["bidder"],
                "price": b["price"] * 0.908,
                "dateTime": b["dateTime"],
                "extra": b["extra"],
            },
        )
    elif query == "q2":
        kept = op.filter("q2-filter", stream, lambda b: b["auction"] % 123 == 0)
        out = op.map("q2", kept, lambda b: {"auction": b["auction"], "price": b["price"]})
    elif query == "q3":
        kinds = op.branch("kinds", stream, lambda e: e["kind"] == "person")
        persons = op.filter("q3-states", kinds.trues, lambda p: p["state"] in STATES)
        auctions = op.filter("q3-category", kinds.falses, lambda a: a["category"] == 10)
        merged = op.merge(
            "q3-merge",
            op.key_on("q3-person-key", persons, lambda p: str(p["id"])),
            op.key_on("q3-seller-key", auctions, lambda a: str(a["seller"])),
        )
        out = op.key_rm("q3-unkey", op.stateful_flat_map("q3-join", merged, _q3_join))
    elif query == "q4":
        kinds = op.branch("kinds", stream, lambda e: e["kind"] == "auction")
        merged = op.merge(
            "q4-merge",
            op.key_on("q4-auction-key", kinds.trues, lambda a: str(a["id"])),
            op.key_on("q4-bid-key", kinds.falses, lambda b: str(b["auction"])),
        )
        winning = op.key_rm("q4-unkey", op.stateful_flat_map("q4-winning", merged, _q4_winning))
        by_category = op.key_on("q4-category-key", winning, lambda w: str(w[0]))
        out = op.key_rm("q4-unkey-avg", op.stateful_flat_map("q4-average", by_category, _q4_average))
    elif query == "q5":
        windower = SlidingWindower(length=WINDOW, offset=SLIDE, align_to=EPOCH)
        counts = count_window("q5-counts", stream, clock(), windower, key=lambda b: str(b["auction"]))
        by_window = op.map("q5-by-window", counts.down, lambda kv: (str(kv[1][0]), (int(kv[0]), kv[1][1])))
        best = op.fold_final("q5-max", by_window, lambda: [0, []], _q5_fold)
        out = op.flat_map("q5", best, _q5_rows)
    elif query == "q7":
        tagged = op.flat_map("q7-candidates", stream, _q7_tag)
        keyed = op.key_on("q7-all", tagged, lambda _item: "all")
        windower = TumblingWindower(length=WINDOW, align_to=EPOCH)
        best = fold_window(
            "q7-max", keyed, clock(_q7_time), windower, lambda: [None, [], []], _q7_fold, _q7_merge, ordered=False
        )
        out = op.flat_map("q7", best.down, _q7_rows)
    elif query == "q8":
        # After op.branch, the persons and the auctions of one input batch reach the join as two
        # streams, in either order; the join's per-key clock must wait for the later one.
        wait = max(wait_ms, batch_span_ms(events))
        kinds = op.branch("kinds", stream, lambda e: e["kind"] == "person")
        persons = op.key_on("q8-person-key", kinds.trues, lambda p: str(p["id"]))
        sellers = op.key_on("q8-seller-key", kinds.falses, lambda a: str(a["seller"]))
        windower = TumblingWindower(length=WINDOW, align_to=EPOCH)
        joined = join_window("q8-join", clock(), windower, persons, sellers, insert_mode="first", emit_mode="final")
        out = op.filter_map("q8", joined.down, _q8_row)
    elif query == "q11":
        keyed = op.key_on("q11-bidder", stream, lambda b: str(b["bidder"]))
        sessions = fold_window(
            "q11-sessions",
            keyed,
            clock(),
            SessionWindower(gap=GAP),
            lambda: [0, None, None],
            _q11_fold,
            _q11_merge,
            ordered=False,
        )
        out = op.map("q11", sessions.down, _q11_row)
    elif query == "q12":
        windower = TumblingWindower(length=WINDOW, align_to=FROZEN)
        counts = count_window("q12-windows", stream, SystemClock(), windower, key=lambda b: str(b["bidder"]))
        out = op.map("q12", counts.down, lambda kv: {"bidder": int(kv[0]), "bid_count": kv[1][1]})
    else:
        raise ValueError(f"unknown query {query!r}")
    op.output("sink", out, sink)
    return flow


def batch_span_ms(events: list[dict[str, Any]]) -> int:
    """The most event time that two consecutive input batches span (+1 ms)."""
    span = 0
    for start in range(0, len(events), BATCH):
        last = events[min(start + 2 * BATCH, len(events)) - 1]["dateTime"]
        span = max(span, _ms(last) - _ms(events[start]["dateTime"]))
    return span + 1


def _q3_join(state: list[Any] | None, item: dict[str, Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """State per person id: ``[person or None, auctions waiting for it]`` (person ids are unique)."""
    if state is None:
        state = [None, []]
    if item["kind"] == "person":
        state[0] = item
        waiting, state[1] = state[1], []
        return state, [_q3_row(item, auction) for auction in waiting]
    if state[0] is None:
        state[1].append(item)
        return state, []
    return state, [_q3_row(state[0], item)]


def _q3_row(person: dict[str, Any], auction: dict[str, Any]) -> dict[str, Any]:
    return {"name": person["name"], "city": person["city"], "state": person["state"], "id": auction["id"]}


def _q4_winning(state: list[Any] | None, item: dict[str, Any]) -> tuple[list[Any], list[tuple[int, int, int]]]:
    """State per auction id: ``[auction or None, best price or None, bids that came first]``;
    emits ``(category, auction, best price)`` whenever the best price goes up."""
    if state is None:
        state = [None, None, []]
    if item["kind"] == "auction":
        state[0] = item
        early, state[2] = state[2], []
        before = state[1]
        for bid in early:
            _q4_take(state, bid)
        return state, ([(item["category"], item["id"], state[1])] if state[1] != before else [])
    if state[0] is None:
        state[2].append(item)
        return state, []
    before = state[1]
    _q4_take(state, item)
    auction = state[0]
    return state, ([(auction["category"], auction["id"], state[1])] if state[1] != before else [])


def _q4_take(state: list[Any], bid: dict[str, Any]) -> None:
    auction = state[0]
    if auction["dateTime"] <= bid["dateTime"] <= auction["expires"] and (state[1] is None or bid["price"] > state[1]):
        state[1] = bid["price"]


def _q4_average(state: list[Any] | None, item: tuple[int, int, int]) -> tuple[list[Any], list[dict[str, Any]]]:
    """State per category: ``[best price per auction, their sum]``; emits the new average."""
    if state is None:
        state = [{}, 0]
    category, auction, price = item
    best = state[0]
    state[1] += price - best.get(auction, 0)
    best[auction] = price
    return state, [{"category": category, "final": state[1] // len(best)}]


def _q5_fold(state: list[Any], item: tuple[int, int]) -> list[Any]:
    auction, num = item
    if num > state[0]:
        return [num, [auction]]
    if num == state[0]:
        state[1].append(auction)
    return state


def _q5_rows(kv: tuple[str, list[Any]]) -> list[dict[str, Any]]:
    window, (num, auctions) = kv
    start = EPOCH + int(window) * SLIDE
    return [{"auction": a, "num": num, "starttime": start, "endtime": start + WINDOW} for a in auctions]


def _q7_tag(bid: dict[str, Any]) -> list[tuple[bool, dict[str, Any]]]:
    """Each bid for its own window; a bid in a window's last millisecond also as a candidate of
    the next window (Flink joins the max on ``B.dateTime BETWEEN rowtime - 10 s AND rowtime``,
    ``rowtime = end - 1 ms``)."""
    if _ms(bid["dateTime"]) % 10_000 == 9_999:
        return [(False, bid), (True, bid)]
    return [(False, bid)]


def _q7_time(item: tuple[bool, dict[str, Any]]) -> datetime:
    candidate, bid = item
    return bid["dateTime"] + MS if candidate else bid["dateTime"]


def _q7_fold(state: list[Any], item: tuple[bool, dict[str, Any]]) -> list[Any]:
    """``[best price of the window's own bids, those bids, candidates from the window before]``."""
    candidate, bid = item
    price = bid["price"]
    if candidate:
        if state[0] is None or price >= state[0]:
            state[2].append(bid)
    elif state[0] is None or price > state[0]:
        state[0], state[1] = price, [bid]
    elif price == state[0]:
        state[1].append(bid)
    return state


def _q7_merge(a: list[Any], b: list[Any]) -> list[Any]:
    merged = a if a[0] is not None and (b[0] is None or a[0] >= b[0]) else b
    best = merged[0]
    own = [x for x in (*a[1], *b[1]) if x["price"] == best] if best is not None else []
    return [best, own, [*a[2], *b[2]]]


def _q7_rows(kv: tuple[str, tuple[int, list[Any]]]) -> list[dict[str, Any]]:
    _key, (_window, (best, own, candidates)) = kv
    if best is None:
        return []
    bids = [*own, *(c for c in candidates if c["price"] == best)]
    return [
        {
            "auction": b["auction"],
            "price": b["price"],
            "bidder": b["bidder"],
            "dateTime": b["dateTime"],
            "extra": b["extra"],
        }
        for b in bids
    ]


def _q8_row(kv: tuple[str, tuple[int, tuple[Any, Any]]]) -> dict[str, Any] | None:
    _key, (window, (person, auction)) = kv
    if person is None or auction is None:
        return None
    return {"id": person["id"], "name": person["name"], "starttime": EPOCH + window * WINDOW}


def _q11_fold(state: list[Any], bid: dict[str, Any]) -> list[Any]:
    t = bid["dateTime"]
    state[0] += 1
    if state[1] is None or t < state[1]:
        state[1] = t
    if state[2] is None or t > state[2]:
        state[2] = t
    return state


def _q11_merge(a: list[Any], b: list[Any]) -> list[Any]:
    return [a[0] + b[0], min(a[1], b[1]), max(a[2], b[2])]


def _q11_row(kv: tuple[str, tuple[int, list[Any]]]) -> dict[str, Any]:
    bidder, (_window, (count, first, last)) = kv
    return {"bidder": int(bidder), "bid_count": count, "starttime": first, "endtime": last + GAP}


# -- results ---------------------------------------------------------------------------------------
def summarize(query: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the harness compares across systems: final result rows and one checksum.

    Final rows: q4 the last average per category; q11 the last version of each session;
    q12 (processing time) only its total count is comparable."""
    if query == "q4":
        last: dict[Any, dict[str, Any]] = {}
        for row in rows:
            last[row["category"]] = row
        rows = list(last.values())
    if query == "q11":
        sessions: dict[Any, dict[str, Any]] = {}
        for row in rows:
            sessions[(row["bidder"], _ms(row["starttime"]))] = row
        rows = list(sessions.values())
    column = CHECK_COLUMN[query]
    # q1's float prices: each in thousandths, floored, summed exactly.
    values = (math.floor(row[column] * 1000) for row in rows) if query == "q1" else (row[column] for row in rows)
    total = sum(values)
    return {"rows": None if query == "q12" else len(rows), "check": total}


CHECK_COLUMN = {
    "q0": "price",
    "q1": "price",
    "q2": "price",
    "q3": "id",
    "q4": "final",
    "q5": "auction",
    "q7": "price",
    "q8": "id",
    "q11": "bid_count",
    "q12": "bid_count",
}
"""The column summed into each query's checksum (q1's float prices as ``floor(price * 1000)``)."""


# -- the worker --------------------------------------------------------------------------------------
def _collecting_sink(into: list[Any]) -> Any:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class Partition(StatelessSinkPartition):
        def write_batch(self, items: list[Any]) -> None:
            into.extend(items)

    class Collect(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Partition:
            return Partition()

    return Collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time one NEXMark query in Bytewax 0.21.1 (one worker).")
    parser.add_argument("--query", required=True, choices=sorted(KINDS_USED))
    parser.add_argument("--data", required=True, type=Path, help="folder with {person,auction,bid}.parquet")
    parser.add_argument("--events", type=int, required=True, help="events in the stream (all kinds)")
    parser.add_argument("--warmup", type=int, default=50_000, help="events of the untimed warm-up run")
    parser.add_argument("--wait-ms", type=int, default=0, help="the event clock's allowed disorder")
    parser.add_argument("--core", type=int, default=None, help="pin to this core (before polars loads)")
    args = parser.parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    os.environ.setdefault("POLARS_MAX_THREADS", "1")

    from importlib.metadata import version

    import polars as pl
    from bytewax.testing import run_main

    kinds = KINDS_USED[args.query]
    prepare_started = time.perf_counter()
    events = load(args.data, kinds)
    warm = load(args.data, kinds, min(args.warmup, args.events))
    prepare_seconds = time.perf_counter() - prepare_started
    run_main(build(args.query, warm, _collecting_sink([]), wait_ms=args.wait_ms))
    del warm
    gc.collect()
    gc.freeze()
    out: list[Any] = []
    flow = build(args.query, events, _collecting_sink(out), wait_ms=args.wait_ms)
    started = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started
    result = {
        "system": "bytewax",
        "query": args.query,
        "events": args.events,
        "rows_read": len(events),
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
        "out_rows": len(out),
        **summarize(args.query, out),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "polars_threads": pl.thread_pool_size(),
        "versions": {"python": platform.python_version(), "bytewax": version("bytewax"), "polars": pl.__version__},
    }
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
