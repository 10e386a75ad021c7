"""The NEXMark queries as tideflow pipelines, written after the Flink suite's SQL.

Each ``qN(flow, inputs, sink)`` adds a query to ``flow``: ``inputs`` hands out one source
stream per event kind (``inputs.bids`` and so on, created on first use), and the query ends in
``sink``. :func:`build` makes a whole flow from generated events (:class:`NexmarkSource`) or
from frames already in memory. Every step is columnar (polars expressions, windows, joins): no
per-record Python runs in any query.

Where Flink's SQL (github.com/nexmark/nexmark, ``queries/*.sql``; what its published figures
measure) differs from the original Beam definition, the Flink version is followed; each query's
docstring says how, and what its output holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import polars as pl

import tideflow as tdf

from ...io.base import Sink, Source
from ...io.memory import MemorySource
from .generator import TIME, Kind, NexmarkConfig
from .source import NexmarkSource

QUERIES = ("q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11", "q12")
KINDS_USED: dict[str, tuple[Kind, ...]] = {
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
"""The event kinds each query reads."""
FOREVER = "36500d"
"""An interval join's bound that never expires: the unbounded (regular) join of Flink's SQL."""
WINDOW = "10s"
SLIDE = "2s"
SESSION_GAP = "10s"
Q2_MODULUS = 123
Q3_STATES = ("OR", "ID", "CA")
Q3_CATEGORY = 10
DOLLAR_TO_EURO = 0.908


class Inputs:
    """One source stream per event kind, created on first use (a query reading only bids has
    only a bids source). ``source(kind)`` builds the tideflow source of a kind."""

    STEPS: ClassVar[dict[Kind, str]] = {"person": "persons", "auction": "auctions", "bid": "bids"}

    def __init__(self, flow: tdf.Flow, source: Callable[[Kind], Source], *, watermark_delay_ms: int = 0) -> None:
        self.flow = flow
        self._source = source
        self._delay = watermark_delay_ms
        self._streams: dict[Kind, tdf.Stream] = {}

    def stream(self, kind: Kind) -> tdf.Stream:
        if kind not in self._streams:
            watermark = tdf.BoundedOutOfOrder(self._delay)
            self._streams[kind] = self.flow.source(self.STEPS[kind], self._source(kind), watermark=watermark)
        return self._streams[kind]

    @property
    def persons(self) -> tdf.Stream:
        return self.stream("person")

    @property
    def auctions(self) -> tdf.Stream:
        return self.stream("auction")

    @property
    def bids(self) -> tdf.Stream:
        return self.stream("bid")


def q0(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Pass-through: ``SELECT auction, bidder, price, dateTime, extra FROM bid``."""
    inputs.bids.select("q0", "auction", "bidder", "price", TIME, "extra").sink("sink", sink)


def q1(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Currency conversion: ``SELECT auction, bidder, 0.908 * price AS price, dateTime, extra
    FROM bid`` (``price`` becomes a float)."""
    price = (pl.col("price") * DOLLAR_TO_EURO).alias("price")
    inputs.bids.select("q1", "auction", "bidder", price, TIME, "extra").sink("sink", sink)


def q2(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Selection: ``SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0`` (Flink's
    predicate; Beam's original keeps a few fixed auction ids instead)."""
    bids = inputs.bids.filter("q2-filter", pl.col("auction") % Q2_MODULUS == 0)
    bids.select("q2", "auction", "price").sink("sink", sink)


def q3(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Local item suggestion: ``SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person
    P ON A.seller = P.id WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')``.

    A regular (unbounded, incremental) join as in Flink: an interval join whose bounds never
    expire, so a pair comes out as soon as its second side arrives, whichever side that is (the
    generator picks some sellers up to 10 persons ahead, so an auction can precede its seller).
    """
    auctions = inputs.auctions.filter("q3-category", pl.col("category") == Q3_CATEGORY).select(
        "q3-auctions", "id", "seller", TIME
    )
    persons = inputs.persons.filter("q3-states", pl.col("state").is_in(list(Q3_STATES))).select(
        "q3-persons", pl.col("id").alias("seller"), "name", "city", "state", TIME
    )
    joined = auctions.interval_join("q3-join", persons, on="seller", lower=FOREVER, upper=FOREVER)
    joined.select("q3", "name", "city", "state", "id").sink("sink", sink)


def q4(flow: tdf.Flow, inputs: Inputs, sink: Sink, *, max_auction_ms: int | None = None) -> None:
    """Average closing price per category::

        SELECT Q.category, AVG(Q.final) FROM (
            SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
            WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
            GROUP BY A.id, A.category) Q
        GROUP BY Q.category

    Flink runs this as an updating aggregation over an unbounded join. Here the join is an
    interval join bounded by the longest auction (``max_auction_ms``, from the generator's
    configuration) plus the ``expires`` filter; an auction's winning bid is final once the
    watermark passes its time (every pair of an auction carries the auction's time, so a window
    on it holds them all); the average per category is a window over all time that emits an
    update (``is_update = True``) per batch and its final value at the end, Flink's changelog at
    batch granularity. ``final`` is an integer, as Flink's ``AVG`` of a ``BIGINT`` is (``sum //
    count``). Output: ``category``, ``final``, ``is_update``.
    """
    upper = max_auction_ms if max_auction_ms is not None else NexmarkConfig().max_auction_length_ms
    auctions = inputs.auctions.select("q4-auctions", pl.col("id").alias("auction"), "category", TIME, "expires")
    bids = inputs.bids.select("q4-bids", "auction", "price", TIME)
    pairs = auctions.interval_join("q4-join", bids, on="auction", lower=0, upper=upper)
    pairs = pairs.filter("q4-lifetime", pl.col(f"{TIME}_right") <= pl.col("expires"))
    winning = pairs.key_by(["auction", "category"]).window("q4-winning", tdf.windows.tumbling(WINDOW))
    closed = winning.agg(final=pl.col("price").max())
    average = closed.key_by("category").window(
        "q4-average", tdf.windows.tumbling(FOREVER), emit="updates", update_every=1
    )
    totals = average.agg(total=pl.col("final").sum(), auctions=pl.len())
    totals.select("q4", "category", (pl.col("total") // pl.col("auctions")).alias("final"), "is_update").sink(
        "sink", sink
    )


def q5(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Hot items: the auctions with the most bids in each sliding window (10 s every 2 s)::

        SELECT AuctionBids.auction, AuctionBids.num FROM (count per auction and HOP window)
        AuctionBids JOIN (max of those counts per window) MaxBids
        ON same window AND AuctionBids.num >= MaxBids.maxn

    The counts per (auction, window) are a sliding window; each window's results all carry its
    end as their time, so a tumbling window of one slide over them holds exactly one sliding
    window, and keeps the auctions whose count is the maximum (ties: all of them). Output:
    ``auction``, ``num``, and the window's ``starttime`` and ``endtime``.
    """
    counts = inputs.bids.key_by("auction").window("q5-counts", tdf.windows.sliding(WINDOW, SLIDE))
    hot = counts.agg(num=pl.len()).window("q5-max", tdf.windows.tumbling(SLIDE))
    top = hot.agg(
        auction=pl.col("auction").filter(pl.col("num") == pl.col("num").max()),
        num=pl.col("num").max(),
    )
    exploded = top.map_batches("q5-explode", lambda df: df.explode("auction"))
    window = pl.duration(milliseconds=tdf.windows.tumbling(WINDOW).size_ms)
    exploded.select(
        "q5",
        "auction",
        "num",
        (pl.col("window_start") - window).alias("starttime"),
        pl.col("window_start").alias("endtime"),
    ).sink("sink", sink)


def q7(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Highest bid: the bids whose price is the highest of a 10 s tumbling window::

        SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra FROM bid B
        JOIN (SELECT MAX(price) AS maxprice, TUMBLE_ROWTIME(dateTime, INTERVAL '10' SECOND) AS dateTime
              FROM bid GROUP BY TUMBLE(dateTime, INTERVAL '10' SECOND)) B1
        ON B.price = B1.maxprice
        WHERE B.dateTime BETWEEN B1.dateTime - INTERVAL '10' SECOND AND B1.dateTime

    As in Flink, the window's max is joined back to the bids by an interval join: the window's
    row time is its last millisecond (``end - 1 ms``), so a bid in the last millisecond of the
    *previous* window with the same price also matches (Beam's original compares within the
    window only).
    """
    maxes = inputs.bids.window("q7-max", tdf.windows.tumbling(WINDOW)).agg(maxprice=pl.col("price").max())
    rowtime = maxes.select(
        "q7-rowtime",
        pl.col("maxprice").alias("price"),
        (pl.col("window_end") - pl.duration(milliseconds=1)).alias("window_end"),
    )
    bids = inputs.bids.select("q7-bids", "auction", "price", "bidder", TIME, "extra")
    joined = bids.interval_join("q7-join", rowtime, on="price", lower=0, upper=WINDOW)
    joined.select("q7", "auction", "price", "bidder", TIME, "extra").sink("sink", sink)


def q8(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """Monitor new users: persons who opened an auction in the 10 s window they joined in::

        SELECT P.id, P.name, P.starttime FROM
          (SELECT id, name, TUMBLE_START(dateTime, ...) AS starttime, ... FROM person
           GROUP BY id, name, TUMBLE(dateTime, INTERVAL '10' SECOND)) P
        JOIN (SELECT seller, TUMBLE_START(dateTime, ...) AS starttime, ... FROM auction
              GROUP BY seller, TUMBLE(dateTime, INTERVAL '10' SECOND)) A
        ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime

    The auction side's ``GROUP BY seller, window`` is a dedupe on (seller, window); persons are
    unique by id, so the person side's is a no-op. Then a window join on id.
    """
    persons = inputs.persons.select("q8-persons", "id", "name", TIME)
    sellers = inputs.auctions.select(
        "q8-sellers", pl.col("seller").alias("id"), TIME, pl.col(TIME).dt.truncate(WINDOW).alias("starttime")
    ).dedupe("q8-distinct-sellers", key=["id", "starttime"], within=WINDOW)
    joined = persons.window_join("q8-join", sellers, on="id", window=WINDOW)
    joined.select("q8", "id", "name", "starttime").sink("sink", sink)


def q11(flow: tdf.Flow, inputs: Inputs, sink: Sink) -> None:
    """User sessions: bids per bidder in session windows with a 10 s gap::

        SELECT bidder, count(*) AS bid_count, SESSION_START(...) AS starttime,
               SESSION_END(...) AS endtime FROM bid GROUP BY bidder, SESSION(dateTime, INTERVAL '10' SECOND)

    ``endtime`` is the last bid's time plus the gap, as in Flink; bids exactly the gap apart share
    a session (Flink's windows merge when they touch). A session that a later bid extends after it
    was emitted is emitted again with ``is_update = True``.
    """
    sessions = inputs.bids.key_by("bidder").window("q11-sessions", tdf.windows.session(SESSION_GAP))
    sessions.agg(bid_count=pl.len()).select(
        "q11",
        "bidder",
        "bid_count",
        pl.col("window_start").alias("starttime"),
        pl.col("window_end").alias("endtime"),
        "is_update",
    ).sink("sink", sink)


def q12(flow: tdf.Flow, inputs: Inputs, sink: Sink, *, window: str = WINDOW) -> None:
    """Processing-time windows: bids per bidder in 10 s tumbling windows of processing time::

        SELECT bidder, count(*) AS bid_count, TUMBLE_START(p_time, ...) AS starttime,
               TUMBLE_END(p_time, ...) AS endtime
        FROM (SELECT *, PROCTIME() AS p_time FROM bid) GROUP BY bidder, TUMBLE(p_time, INTERVAL '10' SECOND)

    The windows run on the wall clock as rows reach the step and fire on time even while the
    input is idle; results depend on timing, so the oracle checks counts per bidder only.
    """
    windows = inputs.bids.key_by("bidder").window("q12-windows", tdf.windows.tumbling(window), time="processing")
    windows.agg(bid_count=pl.len()).select(
        "q12",
        "bidder",
        "bid_count",
        pl.col("window_start").alias("starttime"),
        pl.col("window_end").alias("endtime"),
    ).sink("sink", sink)


QUERY_FUNCTIONS: dict[str, Callable[..., None]] = {
    "q0": q0,
    "q1": q1,
    "q2": q2,
    "q3": q3,
    "q4": q4,
    "q5": q5,
    "q7": q7,
    "q8": q8,
    "q11": q11,
    "q12": q12,
}


def build(
    query: str,
    sink: Sink,
    *,
    config: NexmarkConfig | None = None,
    frames: Mapping[Kind, pl.DataFrame] | None = None,
    batch_size: int | None = None,
    name: str | None = None,
) -> tdf.Flow:
    """A flow running ``query`` into ``sink``.

    Events come from ``frames`` (one frame per kind, e.g. read from the files the benchmark
    writes: a ``MemorySource`` each, ``batch_size`` rows per batch, default 10,000) or else are
    generated by a :class:`NexmarkSource` per kind from ``config`` (``batch_size``: default one
    batch per generated block). Watermarks allow ``config.max_disorder_ms`` of disorder.
    """
    if query not in QUERY_FUNCTIONS:
        raise ValueError(f"unknown query {query!r}; NEXMark queries here: {', '.join(QUERIES)}")
    config = config or NexmarkConfig()
    flow = tdf.Flow(name or f"nexmark-{query}")

    def source(kind: Kind) -> Source:
        if frames is not None:
            options: dict[str, Any] = {"time": TIME}
            if batch_size is not None:
                options["batch_size"] = batch_size
            return MemorySource(frames[kind], **options)
        return NexmarkSource(kind, config, batch_size=batch_size)

    inputs = Inputs(flow, source, watermark_delay_ms=config.max_disorder_ms)
    if query == "q4":
        q4(flow, inputs, sink, max_auction_ms=config.max_auction_length_ms)
    else:
        QUERY_FUNCTIONS[query](flow, inputs, sink)
    return flow
