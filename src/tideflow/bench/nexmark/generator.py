"""The NEXMark event generator, vectorized: columnar batches of persons, auctions and bids.

It follows the reference generator (github.com/nexmark/nexmark, after Apache Beam's
``sdks/java/testing/nexmark``) in everything a query can observe:

* **Event kinds by id.** Event ``id`` is a person when ``id % 50 == 0``, an auction when
  ``id % 50`` is 1–3 and a bid otherwise: 1 : 3 : 46, exactly, in every 50 consecutive ids.
* **Ids.** Person ``id = FIRST_PERSON_ID + id // 50``; auction ``id = FIRST_AUCTION_ID +
  3 * (id // 50) + (id % 50 - 1)``: both dense and increasing in event order.
* **Hot items.** A bid goes to the *hot auction* with probability ``1 - 1/HOT_AUCTION_RATIO``
  (50%), otherwise to a random auction among the last ``NUM_IN_FLIGHT_AUCTIONS`` (plus a lead of
  10 not yet created); a bid comes from the *hot bidder* with probability ``1 -
  1/HOT_BIDDER_RATIO`` (75%), an auction from the *hot seller* with probability ``1 -
  1/HOT_SELLER_RATIO`` (75%), otherwise from a random person among the last
  ``NUM_ACTIVE_PEOPLE`` (plus a lead of 10). The hot auction is the first of the current batch of
  ``HOT_BATCH`` (100) auctions, the hot seller the first and the hot bidder the second person of
  the current batch of 100 persons (the reference's static ``HOT_*_RATIO = 100`` constants, not
  to be confused with the configurable probability ratios 2, 4, 4).
* **Prices** are log-uniform: ``round(10 ** (6 u) * 100)`` cents, 1 to 1,000,000 dollars; an
  auction's reserve is its initial bid plus another such price.
* **Categories** ``FIRST_CATEGORY_ID + [0, NUM_CATEGORIES)``; persons' states from
  ``AZ, CA, ID, OR, WA, WY`` and cities from the reference's ten; names from its first and last
  names; e-mail addresses and credit card numbers of the reference's shapes.
* **Padding.** ``extra`` brings a record's size (8 bytes per number and timestamp, plus its
  strings) to an average of 100 B (bid), 500 B (auction) and 200 B (person): the missing bytes
  ``r``, spread uniformly over ``[r - 0.2 r, r + 0.2 r)`` (``nextExtra``).
* **Event time.** Event number ``n`` has ``dateTime = base_time + n * 1000 // rate`` ms (a
  constant rate of ``rate`` events per second of event time; Flink's setup runs 10,000,000).
  An auction ``expires`` ``1 + U[0, 2h)`` ms after it starts, ``h`` being the event time until
  ``NUM_IN_FLIGHT_AUCTIONS`` more auctions have been created.
* **Out of order.** With ``out_of_order_group_size = g > 1``, the event at position ``k`` of the
  stream is event number ``(k // g) * g + (k * 953) % g``: events are shuffled within groups of
  ``g``, so event times go back by at most the time ``g`` events take.
* **Bids' channel and url** follow Flink's generator: 50% one of four hot channels (Google,
  Facebook, Baidu, Apple), otherwise one of 10,000 ``channel-N``.

What differs: the reference seeds ``java.util.Random`` with each event's id, and its random
strings come from that stream. Here the random draws come from numpy, seeded per block of
events (``BLOCK_EVENTS``) and kind with ``(seed, block, kind)``, and strings are slices of a
pool of random characters; the distributions are the reference's, the exact values are not.
Every value is a function of the seed and the configuration alone: the same seed gives the same
events, however they are read (one kind or all, any batch size).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

Kind = Literal["person", "auction", "bid"]
KINDS: tuple[Kind, ...] = ("person", "auction", "bid")
_KIND_CODE = {"person": 0, "auction": 1, "bid": 2}

# -- the reference's constants --------------------------------------------------------------------
PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
NUM_ACTIVE_PEOPLE = 1000
NUM_IN_FLIGHT_AUCTIONS = 100
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
HOT_AUCTION_RATIO = 2
HOT_BIDDER_RATIO = 4
HOT_SELLER_RATIO = 4
HOT_BATCH = 100
"""The reference's static ``HOT_AUCTION_RATIO``/``HOT_BIDDER_RATIO``/``HOT_SELLER_RATIO`` of the
generator classes: the hot id is the first of the last batch of this many auctions / persons."""
AVG_PERSON_BYTES, AVG_AUCTION_BYTES, AVG_BID_BYTES = 200, 500, 100
OUT_OF_ORDER_PRIME = 953
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
)
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
CHANNELS_NUMBER = 10_000
HOT_CHANNELS_RATIO = 2

BLOCK_EVENTS = 50_000
"""Events per generation block (a multiple of 50): the unit of seeding and of generation."""
DEFAULT_RATE = 10_000_000
"""Events per second of event time: Flink's NEXMark setup (``nexmark.workload.suite.*.tps``)."""
DEFAULT_BASE_TIME_MS = 1_700_000_000_000
"""Event time of event 0: 2023-11-14 22:13:20 UTC, a multiple of 10 s (windows start aligned)."""

SCHEMAS: dict[Kind, dict[str, pl.DataType]] = {
    "person": {
        "id": pl.Int64(),
        "name": pl.String(),
        "emailAddress": pl.String(),
        "creditCard": pl.String(),
        "city": pl.String(),
        "state": pl.String(),
        "dateTime": pl.Datetime("ms"),
        "extra": pl.String(),
    },
    "auction": {
        "id": pl.Int64(),
        "itemName": pl.String(),
        "description": pl.String(),
        "initialBid": pl.Int64(),
        "reserve": pl.Int64(),
        "dateTime": pl.Datetime("ms"),
        "expires": pl.Datetime("ms"),
        "seller": pl.Int64(),
        "category": pl.Int64(),
        "extra": pl.String(),
    },
    "bid": {
        "auction": pl.Int64(),
        "bidder": pl.Int64(),
        "price": pl.Int64(),
        "channel": pl.String(),
        "url": pl.String(),
        "dateTime": pl.Datetime("ms"),
        "extra": pl.String(),
    },
}
"""Columns of each kind, as in the reference (Flink's bid has ``channel`` and ``url``)."""
TIME = "dateTime"
"""The event-time column of every kind."""


@dataclass(frozen=True)
class NexmarkConfig:
    """What decides the events: how many, the seed, the event-time rate and disorder."""

    events: int = 1_000_000
    seed: int = 42
    rate: int = DEFAULT_RATE
    """Events per second of event time."""
    base_time_ms: int = DEFAULT_BASE_TIME_MS
    out_of_order_group_size: int = 1
    """1: event times never go back; ``g``: events shuffled within groups of ``g``."""

    def __post_init__(self) -> None:
        if self.events < 0:
            raise ValueError("events must be >= 0")
        if self.rate < 1:
            raise ValueError("rate must be >= 1 event per second")
        g = self.out_of_order_group_size
        if g < 1 or g % OUT_OF_ORDER_PRIME == 0:
            raise ValueError(f"out_of_order_group_size must be >= 1 and not a multiple of {OUT_OF_ORDER_PRIME}")

    def with_(self, **changes: object) -> NexmarkConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def block_events(self) -> int:
        """Events per block: a multiple of 50 and of the out-of-order group size."""
        unit = math.lcm(TOTAL_PROPORTION, self.out_of_order_group_size)
        return unit * max(1, -(-BLOCK_EVENTS // unit))

    @property
    def max_disorder_ms(self) -> int:
        """How far an event's time can be behind an earlier event's: the watermark delay to use."""
        g = self.out_of_order_group_size
        return 0 if g == 1 else (g * 1000 + self.rate - 1) // self.rate

    @property
    def max_auction_length_ms(self) -> int:
        """An upper bound of ``expires - dateTime`` (for joins bounded in time)."""
        horizon = self.timestamp(np.array([NUM_EVENTS_FOR_AUCTIONS]))[0] - self.timestamp(np.array([0]))[0] + 1
        return int(2 * horizon + 1)

    def timestamp(self, numbers: np.ndarray) -> np.ndarray:
        """Event time (epoch ms) of event numbers."""
        return self.base_time_ms + numbers * 1000 // self.rate

    def count(self, kind: Kind) -> int:
        """How many events of ``kind`` the stream holds."""
        if self.out_of_order_group_size == 1:
            full, rest = divmod(self.events, TOTAL_PROPORTION)
            low, high = _OFFSETS[kind]
            return full * (high - low) + max(0, min(rest, high) - low)
        return int(sum(_mask(kind, _event_ids(self, s, e)).sum() for s, e in _blocks(self)))


_OFFSETS: dict[Kind, tuple[int, int]] = {
    "person": (0, PERSON_PROPORTION),
    "auction": (PERSON_PROPORTION, PERSON_PROPORTION + AUCTION_PROPORTION),
    "bid": (PERSON_PROPORTION + AUCTION_PROPORTION, TOTAL_PROPORTION),
}
"""Each kind's range of ``id % 50``."""
NUM_EVENTS_FOR_AUCTIONS = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION // AUCTION_PROPORTION
"""Events until ``NUM_IN_FLIGHT_AUCTIONS`` more auctions exist (1,666): an auction's horizon."""


def _blocks(config: NexmarkConfig) -> Iterator[tuple[int, int]]:
    size = config.block_events
    for start in range(0, config.events, size):
        yield start, min(start + size, config.events)


def _event_ids(config: NexmarkConfig, start: int, end: int) -> np.ndarray:
    """The event numbers (ids) at stream positions ``start..end``, shuffled within groups."""
    positions = np.arange(start, end, dtype=np.int64)
    g = config.out_of_order_group_size
    if g == 1:
        return positions
    return positions // g * g + positions * OUT_OF_ORDER_PRIME % g


def _mask(kind: Kind, ids: np.ndarray) -> np.ndarray:
    offset = ids % TOTAL_PROPORTION
    low, high = _OFFSETS[kind]
    return (offset >= low) & (offset < high)


# -- random helpers ----------------------------------------------------------------------------------
def _price(rng: np.random.Generator, n: int) -> np.ndarray:
    """``PriceGenerator.nextPrice``: round(10^(6u) * 100) cents."""
    return np.floor(np.power(10.0, rng.random(n) * 6.0) * 100.0 + 0.5).astype(np.int64)


def _below(rng: np.random.Generator, bound: np.ndarray | int, n: int) -> np.ndarray:
    """Uniform integers in ``[0, bound)`` (bound per row or one for all)."""
    return rng.integers(0, bound, size=n, dtype=np.int64)


def _next_person(rng: np.random.Generator, last_person: np.ndarray) -> np.ndarray:
    """``nextBase0PersonId``: one of the last NUM_ACTIVE_PEOPLE persons, or up to 10 ahead."""
    people = last_person + 1
    active = np.minimum(people, NUM_ACTIVE_PEOPLE)
    return people - active + _below(rng, active + PERSON_ID_LEAD, len(people))


def _next_auction(rng: np.random.Generator, last_auction: np.ndarray) -> np.ndarray:
    """``nextBase0AuctionId``: one of the last NUM_IN_FLIGHT_AUCTIONS auctions, or up to 10 ahead."""
    low = np.maximum(last_auction - NUM_IN_FLIGHT_AUCTIONS, 0)
    return low + _below(rng, last_auction - low + 1 + AUCTION_ID_LEAD, len(last_auction))


def _extra_sizes(rng: np.random.Generator, current: np.ndarray, average: int) -> np.ndarray:
    """``nextExtra``: pad ``current`` bytes to ``average`` on average (±20% of the padding)."""
    missing = np.maximum(average - current, 0)
    delta = np.floor(missing * 0.2 + 0.5).astype(np.int64)
    spread = np.where(delta > 0, rng.integers(0, np.maximum(2 * delta, 1), size=len(current)), 0)
    return np.where(current > average, 0, missing - delta + spread)


@dataclass
class _Pools:
    letters: np.ndarray
    """Random lowercase letters: padding (``nextExactString``)."""
    words: np.ndarray
    """Random lowercase letters with 1 in 13 a space: names and descriptions (``nextString``)."""


@lru_cache(maxsize=8)
def _pools(seed: int) -> _Pools:
    rng = np.random.default_rng([seed, 0x9E3779B9])
    size = 1 << 23  # 8 MiB: more than the padding of one block of bids (~3.5 MB)
    letters = rng.integers(ord("a"), ord("z") + 1, size=size, dtype=np.uint8)
    words = rng.integers(ord("a"), ord("z") + 1, size=1 << 20, dtype=np.uint8)
    words[rng.random(words.size) < 1 / 13] = ord(" ")
    return _Pools(letters, words)


def _pool_strings(rng: np.random.Generator, pool: np.ndarray, lengths: np.ndarray, name: str) -> pl.Series:
    """Strings of the given lengths, consecutive slices of ``pool`` from a random start."""
    n = len(lengths)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total > pool.size:  # more than the pool holds: repeat it (never for one block)
        pool = np.resize(pool, total)
    start = int(rng.integers(0, pool.size - total + 1))
    array = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(pool[start : start + total]))
    return pl.Series(name, array, dtype=pl.String)


def _next_strings(rng: np.random.Generator, pools: _Pools, max_length: int, n: int, name: str) -> pl.Series:
    """``nextString(maxLength)``: 3 to ``max_length - 1`` characters (1 in 13 a space), trimmed."""
    lengths = 3 + _below(rng, max_length - 3, n)
    return _pool_strings(rng, pools.words, lengths, name).str.strip_chars(" ")


@lru_cache(maxsize=8)
def _channels(seed: int) -> tuple[pl.Series, pl.Series]:
    """Flink's channels: four hot ones, then ``channel-0`` .. ``channel-9999``, with their urls."""
    rnd = random.Random(seed)

    def segment() -> str:
        return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(3 + rnd.randrange(2)))

    def base_url() -> str:
        return f"https://www.nexmark.com/{segment()}/{segment()}/{segment()}/item.htm?query=1"

    names = list(HOT_CHANNELS)
    urls = [base_url() for _ in HOT_CHANNELS]
    for number in range(CHANNELS_NUMBER):
        url = base_url()
        if rnd.randrange(10) > 0:
            url += f"&channel_id={abs(_reverse32(number))}"
        names.append(f"channel-{number}")
        urls.append(url)
    return pl.Series("channel", names), pl.Series("url", urls)


def _reverse32(value: int) -> int:
    """Java's ``Integer.reverse``: the bits of a 32-bit int reversed, as a signed int."""
    reversed_bits = int(f"{value & 0xFFFFFFFF:032b}"[::-1], 2)
    return reversed_bits - (1 << 32) if reversed_bits >= 1 << 31 else reversed_bits


@lru_cache(maxsize=1)
def _tables() -> tuple[pl.Series, pl.Series]:
    names = pl.Series("name", [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES])
    digits = pl.Series("digits", [f"{i:04d}" for i in range(10_000)])
    return names, digits


# -- the three kinds -----------------------------------------------------------------------------
def _times(config: NexmarkConfig, ids: np.ndarray) -> pl.Series:
    return pl.Series(TIME, config.timestamp(ids), dtype=pl.Int64).cast(pl.Datetime("ms"))


def _persons(config: NexmarkConfig, rng: np.random.Generator, ids: np.ndarray) -> pl.DataFrame:
    n = len(ids)
    pools = _pools(config.seed)
    names, digits = _tables()
    name = names.gather(_below(rng, len(names), n))
    email_user = _next_strings(rng, pools, 7, n, "u")
    email_host = _next_strings(rng, pools, 5, n, "h")
    cards = [digits.gather(_below(rng, 10_000, n)) for _ in range(4)]
    frame = pl.DataFrame(
        {
            "id": ids // TOTAL_PROPORTION + FIRST_PERSON_ID,
            "name": name,
            "u": email_user,
            "h": email_host,
            "c0": cards[0],
            "c1": cards[1],
            "c2": cards[2],
            "c3": cards[3],
            "city": pl.Series(US_CITIES).gather(_below(rng, len(US_CITIES), n)),
            "state": pl.Series(US_STATES).gather(_below(rng, len(US_STATES), n)),
            TIME: _times(config, ids),
        }
    ).select(
        "id",
        "name",
        pl.concat_str("u", pl.lit("@"), "h", pl.lit(".com")).alias("emailAddress"),
        pl.concat_str("c0", "c1", "c2", "c3", separator=" ").alias("creditCard"),
        "city",
        "state",
        TIME,
    )
    current = frame.select(
        8
        + pl.col("name").str.len_bytes()
        + pl.col("emailAddress").str.len_bytes()
        + pl.col("creditCard").str.len_bytes()
        + pl.col("city").str.len_bytes()
        + pl.col("state").str.len_bytes()
    ).to_series()
    sizes = _extra_sizes(rng, current.to_numpy().astype(np.int64), AVG_PERSON_BYTES)
    return frame.with_columns(_pool_strings(rng, pools.letters, sizes, "extra"))


def _auctions(config: NexmarkConfig, rng: np.random.Generator, ids: np.ndarray) -> pl.DataFrame:
    n = len(ids)
    pools = _pools(config.seed)
    epoch, offset = ids // TOTAL_PROPORTION, ids % TOTAL_PROPORTION
    last_person = epoch * PERSON_PROPORTION + (PERSON_PROPORTION - 1)
    hot = _below(rng, HOT_SELLER_RATIO, n) > 0
    seller = np.where(hot, last_person // HOT_BATCH * HOT_BATCH, _next_person(rng, last_person))
    initial = _price(rng, n)
    reserve = initial + _price(rng, n)
    start = config.timestamp(ids)
    horizon = config.timestamp(ids + NUM_EVENTS_FOR_AUCTIONS) - start
    expires = start + 1 + _below(rng, np.maximum(horizon * 2, 1), n)
    item = _next_strings(rng, pools, 20, n, "itemName")
    description = _next_strings(rng, pools, 100, n, "description")
    current = 8 + item.str.len_bytes().to_numpy() + description.str.len_bytes().to_numpy() + 5 * 8
    sizes = _extra_sizes(rng, current.astype(np.int64), AVG_AUCTION_BYTES)
    return pl.DataFrame(
        {
            "id": epoch * AUCTION_PROPORTION + (offset - PERSON_PROPORTION) + FIRST_AUCTION_ID,
            "itemName": item,
            "description": description,
            "initialBid": initial,
            "reserve": reserve,
            TIME: _times(config, ids),
            "expires": pl.Series(expires, dtype=pl.Int64).cast(pl.Datetime("ms")),
            "seller": seller + FIRST_PERSON_ID,
            "category": FIRST_CATEGORY_ID + _below(rng, NUM_CATEGORIES, n),
            "extra": _pool_strings(rng, pools.letters, sizes, "extra"),
        }
    )


def _bids(config: NexmarkConfig, rng: np.random.Generator, ids: np.ndarray) -> pl.DataFrame:
    n = len(ids)
    pools = _pools(config.seed)
    epoch = ids // TOTAL_PROPORTION
    last_auction = epoch * AUCTION_PROPORTION + (AUCTION_PROPORTION - 1)
    last_person = epoch * PERSON_PROPORTION + (PERSON_PROPORTION - 1)
    hot_auction = _below(rng, HOT_AUCTION_RATIO, n) > 0
    auction = np.where(hot_auction, last_auction // HOT_BATCH * HOT_BATCH, _next_auction(rng, last_auction))
    hot_bidder = _below(rng, HOT_BIDDER_RATIO, n) > 0
    bidder = np.where(hot_bidder, last_person // HOT_BATCH * HOT_BATCH + 1, _next_person(rng, last_person))
    price = _price(rng, n)
    hot_channel = _below(rng, HOT_CHANNELS_RATIO, n) > 0
    channel = np.where(
        hot_channel, _below(rng, len(HOT_CHANNELS), n), len(HOT_CHANNELS) + _below(rng, CHANNELS_NUMBER, n)
    )
    channels, urls = _channels(config.seed)
    sizes = _extra_sizes(rng, np.full(n, 4 * 8, dtype=np.int64), AVG_BID_BYTES)
    return pl.DataFrame(
        {
            "auction": auction + FIRST_AUCTION_ID,
            "bidder": bidder + FIRST_PERSON_ID,
            "price": price,
            "channel": channels.gather(channel),
            "url": urls.gather(channel),
            TIME: _times(config, ids),
            "extra": _pool_strings(rng, pools.letters, sizes, "extra"),
        }
    )


_MAKERS = {"person": _persons, "auction": _auctions, "bid": _bids}


def generate_block(config: NexmarkConfig, kind: Kind, start: int, end: int) -> tuple[pl.DataFrame, np.ndarray]:
    """The events of ``kind`` at stream positions ``start..end`` (one block), and their positions."""
    ids = _event_ids(config, start, end)
    mask = _mask(kind, ids)
    block = start // config.block_events
    rng = np.random.default_rng([config.seed, block, _KIND_CODE[kind]])
    kind_ids = ids[mask]
    positions = np.arange(start, end, dtype=np.int64)[mask]
    if len(kind_ids) == 0:
        return pl.DataFrame(schema=SCHEMAS[kind]), positions
    return _MAKERS[kind](config, rng, kind_ids), positions


def blocks(config: NexmarkConfig, kind: Kind) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
    """Every block of ``kind`` in stream order: ``(frame, stream positions of its rows)``."""
    for start, end in _blocks(config):
        yield generate_block(config, kind, start, end)


def generate(
    config: NexmarkConfig, kinds: Sequence[Kind] = KINDS, *, positions: bool = False
) -> dict[Kind, pl.DataFrame]:
    """All events of each of ``kinds`` as one frame per kind, in stream order.

    With ``positions=True`` each frame also has ``position``: the event's place in the whole
    stream (to interleave the kinds again in their original order)."""
    out: dict[Kind, pl.DataFrame] = {}
    for kind in kinds:
        parts = []
        for frame, where in blocks(config, kind):
            parts.append(frame.with_columns(pl.Series("position", where)) if positions else frame)
        if not parts:
            schema = dict(SCHEMAS[kind])
            if positions:
                schema["position"] = pl.Int64()
            out[kind] = pl.DataFrame(schema=schema)
        else:
            out[kind] = pl.concat(parts, how="vertical", rechunk=True)
    return out


def record_bytes(kind: Kind, frame: pl.DataFrame) -> pl.Series:
    """Each record's size as the reference counts it: 8 bytes per number or time, plus strings.

    (Flink's bid counts only its four numbers and times, not ``channel`` and ``url``.)"""
    strings = {
        "person": ["name", "emailAddress", "creditCard", "city", "state", "extra"],
        "auction": ["itemName", "description", "extra"],
        "bid": ["extra"],
    }[kind]
    numbers = {"person": 1, "auction": 6, "bid": 4}[kind]
    size = pl.lit(8 * numbers, pl.Int64)
    for column in strings:
        size = size + pl.col(column).str.len_bytes().cast(pl.Int64)
    return frame.select(size.alias("bytes")).to_series()
