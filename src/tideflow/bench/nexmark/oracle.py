"""The NEXMark queries in DuckDB SQL, over the same generated events: the oracle for the tests.

Each query is a batch query over all events of the run, giving what the streaming pipeline must
have emitted once its input has ended (final results only: q4's updates and q11's re-emitted
sessions are left out of the comparison; q12, in processing time, is checked as its total count
per bidder). Times are compared as epoch milliseconds. Needs ``duckdb`` (a test dependency).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from .generator import Kind

WINDOW_MS = 10_000
SLIDE_MS = 2_000
GAP_MS = 10_000

SQL: dict[str, str] = {
    "q0": "SELECT auction, bidder, price, dateTime, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908::DOUBLE * price AS price, dateTime, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """
        SELECT P.name, P.city, P.state, A.id
        FROM auction A JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')
    """,
    "q4": """
        SELECT category, CAST(SUM(final) // COUNT(*) AS BIGINT) AS final FROM (
            SELECT A.id, A.category, MAX(B.price) AS final
            FROM auction A JOIN bid B ON A.id = B.auction
            WHERE B.dateTime BETWEEN A.dateTime AND A.expires
            GROUP BY A.id, A.category
        ) GROUP BY category
    """,
    "q5": f"""
        WITH windows AS (
            SELECT auction, (epoch_ms(dateTime) // {SLIDE_MS} - k) * {SLIDE_MS} AS starttime
            FROM bid, range(0, {WINDOW_MS // SLIDE_MS}) AS r(k)
        ), counts AS (
            SELECT auction, starttime, COUNT(*) AS num FROM windows GROUP BY auction, starttime
        )
        SELECT auction, num, starttime, starttime + {WINDOW_MS} AS endtime
        FROM counts
        WHERE num >= (SELECT MAX(num) FROM counts C WHERE C.starttime = counts.starttime)
    """,
    "q7": f"""
        WITH maxes AS (
            SELECT MAX(price) AS maxprice,
                   (epoch_ms(dateTime) // {WINDOW_MS}) * {WINDOW_MS} + {WINDOW_MS} - 1 AS rowtime
            FROM bid GROUP BY rowtime
        )
        SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra
        FROM bid B JOIN maxes M ON B.price = M.maxprice
        WHERE epoch_ms(B.dateTime) BETWEEN M.rowtime - {WINDOW_MS} AND M.rowtime
    """,
    "q8": f"""
        WITH P AS (
            SELECT id, name, (epoch_ms(dateTime) // {WINDOW_MS}) * {WINDOW_MS} AS starttime
            FROM person GROUP BY id, name, starttime
        ), A AS (
            SELECT seller, (epoch_ms(dateTime) // {WINDOW_MS}) * {WINDOW_MS} AS starttime
            FROM auction GROUP BY seller, starttime
        )
        SELECT P.id, P.name, P.starttime FROM P JOIN A ON P.id = A.seller AND P.starttime = A.starttime
    """,
    "q11": f"""
        WITH ordered AS (
            SELECT bidder, epoch_ms(dateTime) AS t,
                   CASE WHEN epoch_ms(dateTime) - LAG(epoch_ms(dateTime)) OVER w > {GAP_MS}
                        THEN 1 ELSE 0 END AS opens
            FROM bid WINDOW w AS (PARTITION BY bidder ORDER BY epoch_ms(dateTime))
        ), numbered AS (
            SELECT bidder, t, SUM(opens) OVER (PARTITION BY bidder ORDER BY t ROWS UNBOUNDED PRECEDING) AS session
            FROM ordered
        )
        SELECT bidder, COUNT(*) AS bid_count, MIN(t) AS starttime, MAX(t) + {GAP_MS} AS endtime
        FROM numbered GROUP BY bidder, session
    """,
    "q12": "SELECT bidder, COUNT(*) AS bid_count FROM bid GROUP BY bidder",
}
"""Each query's batch SQL, in DuckDB's dialect, over tables ``person``, ``auction``, ``bid``."""

TABLES: dict[Kind, str] = {"person": "person", "auction": "auction", "bid": "bid"}


def run(query: str, frames: Mapping[Kind, pl.DataFrame]) -> pl.DataFrame:
    """The oracle's result of ``query`` over ``frames`` (one frame per event kind)."""
    import duckdb

    if query not in SQL:
        raise ValueError(f"no oracle for {query!r}")
    con = duckdb.connect()
    try:
        for kind, frame in frames.items():
            con.register(TABLES[kind], frame.to_arrow())
        return con.sql(SQL[query]).pl()
    finally:
        con.close()
