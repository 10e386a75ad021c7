"""NEXMark: the generator's properties, every query against DuckDB, the CLI, and the Bytewax side.

Small runs (tens of thousands of events at 1,000 events per second of event time, so that
windows open and close mid-stream, auctions live for seconds and sessions end) whose output must
equal what DuckDB computes from the same events (``tideflow.bench.nexmark.oracle``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import tideflow as tdf
from tideflow.bench.nexmark import harness, oracle
from tideflow.bench.nexmark.generator import (
    FIRST_AUCTION_ID,
    FIRST_PERSON_ID,
    HOT_BATCH,
    KINDS,
    SCHEMAS,
    NexmarkConfig,
    generate,
    record_bytes,
)
from tideflow.bench.nexmark.queries import KINDS_USED, QUERIES, Inputs, build, q12
from tideflow.bench.nexmark.source import NexmarkSource
from tideflow.cli import app

pytest.importorskip("duckdb")

SMALL = NexmarkConfig(events=30_000, rate=1_000, seed=7)
"""30 s of event time: 3 tumbling windows, 15 sliding ones, auctions of up to ~3 s."""
DISORDERED = NexmarkConfig(events=25_000, rate=1_000, seed=11, out_of_order_group_size=200)
"""Events shuffled within groups of 200 (200 ms of event time): watermarks allow 200 ms."""


# -- the generator ---------------------------------------------------------------------------------
def test_deterministic_for_a_seed_whatever_is_read() -> None:
    config = NexmarkConfig(events=120_000, seed=3)
    first = generate(config)
    again = generate(config)
    for kind in KINDS:
        assert first[kind].equals(again[kind])
        assert dict(first[kind].schema) == SCHEMAS[kind]
    alone = generate(config, ["bid"])["bid"]
    assert alone.equals(first["bid"])
    other = generate(config.with_(seed=4), ["bid"])["bid"]
    assert not other.equals(first["bid"])


def test_source_batches_are_the_generated_events() -> None:
    config = NexmarkConfig(events=60_000, seed=5)
    expected = generate(config)
    for kind in KINDS:
        flow = tdf.Flow(f"read-{kind}")
        sink = tdf.io.MemorySink()
        flow.source("events", NexmarkSource(kind, config, batch_size=7_000)).sink("out", sink)
        flow.run(handle_signals=False)
        assert sink.frame.equals(expected[kind])
        assert NexmarkSource(kind, config).progress() == (0, expected[kind].height)


def test_kinds_one_three_forty_six_in_every_fifty_events() -> None:
    config = NexmarkConfig(events=5_000, seed=1)
    frames = generate(config, positions=True)
    assert {kind: frame.height for kind, frame in frames.items()} == {"person": 100, "auction": 300, "bid": 4_600}
    offsets = {kind: set((frame.get_column("position") % 50).to_list()) for kind, frame in frames.items()}
    assert offsets == {"person": {0}, "auction": {1, 2, 3}, "bid": set(range(4, 50))}
    per_cycle = frames["bid"].group_by(pl.col("position") // 50).len().get_column("len")
    assert per_cycle.min() == per_cycle.max() == 46
    # Ids are dense and in event order.
    assert frames["person"].get_column("id").to_list() == list(range(FIRST_PERSON_ID, FIRST_PERSON_ID + 100))
    assert frames["auction"].get_column("id").to_list() == list(range(FIRST_AUCTION_ID, FIRST_AUCTION_ID + 300))
    assert NexmarkConfig(events=5_023).count("bid") == 4_600 + 19


def test_hot_auctions_bidders_and_sellers() -> None:
    frames = generate(NexmarkConfig(events=100_000, seed=2), ["auction", "bid"], positions=True)
    bids = frames["bid"]
    epoch = pl.col("position") // 50
    hot_auction = (epoch * 3 + 2) // HOT_BATCH * HOT_BATCH + FIRST_AUCTION_ID
    hot_bidder = epoch // HOT_BATCH * HOT_BATCH + 1 + FIRST_PERSON_ID
    shares = bids.select(
        auction=(pl.col("auction") == hot_auction).mean(), bidder=(pl.col("bidder") == hot_bidder).mean()
    ).row(0, named=True)
    # 50% hot auctions and 75% hot bidders, plus the few random picks that land on them.
    assert 0.49 < shares["auction"] < 0.52
    assert 0.74 < shares["bidder"] < 0.77
    auctions = frames["auction"]
    hot_seller = epoch // HOT_BATCH * HOT_BATCH + FIRST_PERSON_ID
    assert 0.73 < auctions.select((pl.col("seller") == hot_seller).mean()).item() < 0.78
    # Random picks stay among the recent ones (plus a lead of 10).
    last_auction = (epoch * 3 + 2) + FIRST_AUCTION_ID
    assert bids.select((pl.col("auction") <= last_auction + 10).all()).item()
    assert bids.select((pl.col("auction") >= last_auction - 100).all()).item()
    assert set(auctions.get_column("category").unique().to_list()) == {10, 11, 12, 13, 14}


def test_prices_are_log_uniform() -> None:
    bids = generate(NexmarkConfig(events=100_000, seed=9), ["bid"])["bid"]
    prices = bids.get_column("price").to_numpy()
    assert prices.min() >= 100 and prices.max() <= 100_000_000
    decades = np.log10(prices / 100)
    assert abs(decades.mean() - 3.0) < 0.05
    counts = np.histogram(decades, bins=6, range=(0, 6))[0] / len(decades)
    assert np.all(np.abs(counts - 1 / 6) < 0.01)


def test_records_padded_to_their_average_size() -> None:
    frames = generate(NexmarkConfig(events=100_000, seed=4))
    for kind, target in (("bid", 100), ("auction", 500), ("person", 200)):
        sizes = record_bytes(kind, frames[kind])
        assert abs(sizes.mean() - target) < 0.01 * target, (kind, sizes.mean())
    extra = frames["bid"].get_column("extra").str.len_bytes()
    assert extra.min() >= 54 and extra.max() < 82  # 68 ± 20%


def test_event_time_in_order_or_with_bounded_disorder() -> None:
    config = NexmarkConfig(events=50_000, rate=10_000, seed=6)
    for kind, frame in generate(config).items():
        times = frame.get_column("dateTime")
        assert times.is_sorted(), kind
        assert times.min() >= pl.Series([config.base_time_ms]).cast(pl.Datetime("ms")).item()
    span = generate(config, ["bid"])["bid"].get_column("dateTime").dt.epoch("ms")
    assert span.max() - span.min() == (49_999 * 1000) // 10_000 - 4 * 1000 // 10_000
    shuffled = config.with_(out_of_order_group_size=500)
    assert shuffled.max_disorder_ms == 50
    frames = generate(shuffled, positions=True)
    merged = pl.concat([f.select("position", pl.col("dateTime").dt.epoch("ms").alias("t")) for f in frames.values()])
    t = merged.sort("position").get_column("t")
    assert not t.is_sorted()
    behind = (t.cum_max() - t).max()
    assert 0 < behind <= shuffled.max_disorder_ms
    # Same events, other order: each kind holds the same rows as without disorder.
    assert sum(f.height for f in frames.values()) == 50_000
    in_order = generate(config, ["person"])["person"].get_column("id").sort()
    assert frames["person"].get_column("id").sort().equals(in_order)


# -- every query against DuckDB -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_events() -> dict[str, pl.DataFrame]:
    return generate(SMALL)


@pytest.fixture(scope="module")
def disordered_events() -> dict[str, pl.DataFrame]:
    return generate(DISORDERED)


def _final(query: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The pipeline's final results, comparable with the oracle's batch answer."""
    if query == "q4":
        assert frame.filter(~pl.col("is_update")).height == frame.get_column("category").n_unique()
        return frame.filter(~pl.col("is_update")).drop("is_update")
    if query == "q11":
        # A session extended after it was emitted comes again (is_update): keep its last version.
        return frame.group_by("bidder", "starttime", maintain_order=True).last().drop("is_update")
    if query == "q12":
        # Processing-time windows: only the count per bidder over all windows is deterministic.
        return frame.group_by("bidder").agg(pl.col("bid_count").sum())
    return frame


def _comparable(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    out = frame.select(columns)
    out = out.with_columns([pl.col(c).dt.epoch("ms") for c, t in out.schema.items() if isinstance(t, pl.Datetime)])
    out = out.with_columns([pl.col(c).cast(pl.Int64) for c, t in out.schema.items() if isinstance(t, pl.Decimal)])
    return out.sort(out.columns)


def _check_against_oracle(query: str, frame: pl.DataFrame, events: dict[str, pl.DataFrame]) -> int:
    got = _final(query, frame)
    expected = oracle.run(query, {kind: events[kind] for kind in KINDS_USED[query]})
    assert sorted(got.columns) == sorted(expected.columns), (got.columns, expected.columns)
    got, expected = _comparable(got, expected.columns), _comparable(expected, expected.columns)
    assert got.height == expected.height
    assert expected.height > 0, f"{query}: the oracle found nothing: the check would prove nothing"
    if query == "q1":
        assert got.drop("price").equals(expected.drop("price"))
        assert np.allclose(got.get_column("price").to_numpy(), expected.get_column("price").to_numpy(), rtol=1e-12)
    else:
        assert got.equals(expected), f"{query}: differs from DuckDB"
    return got.height


@pytest.mark.parametrize("query", QUERIES)
def test_query_equals_duckdb(query: str, small_events: dict[str, pl.DataFrame]) -> None:
    """Generated in the run (a NexmarkSource per kind, batches of 4,000 rows)."""
    sink = tdf.io.MemorySink()
    result = build(query, sink, config=SMALL, batch_size=4_000).run(handle_signals=False)
    assert result.dead_letters == 0, result.dead_letter_samples[:3]
    rows = _check_against_oracle(query, sink.frame, small_events)
    if query in ("q5", "q7", "q11"):
        assert rows >= 3  # several windows or sessions closed, not one at the end


@pytest.mark.parametrize("query", QUERIES)
def test_query_equals_duckdb_with_disorder(query: str, disordered_events: dict[str, pl.DataFrame]) -> None:
    """Events shuffled within groups (watermarks allow the disorder), read from frames in memory
    (MemorySource, odd batch size)."""
    sink = tdf.io.MemorySink()
    flow = build(query, sink, config=DISORDERED, frames=disordered_events, batch_size=1_777)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0, result.dead_letter_samples[:3]
    _check_against_oracle(query, sink.frame, disordered_events)


def test_q12_counts_every_bid_when_windows_close_during_the_run() -> None:
    """Processing-time windows of 100 ms over a source that takes ~0.5 s: several windows close
    while bids keep coming, and every bid is counted once."""
    bids = generate(NexmarkConfig(events=20_000, seed=8), ["bid"])["bid"]

    def slowly():  # type: ignore[no-untyped-def]
        for offset in range(0, bids.height, 500):
            time.sleep(0.012)
            yield bids.slice(offset, 500)

    flow = tdf.Flow("q12-paced")
    inputs = Inputs(flow, lambda kind: tdf.io.IterableSource(slowly(), time="dateTime"))
    sink = tdf.io.MemorySink()
    q12(flow, inputs, sink, window="100ms")
    flow.run(handle_signals=False)
    frame = sink.frame
    assert frame.get_column("bid_count").sum() == bids.height
    assert frame.get_column("starttime").n_unique() >= 3
    per_bidder = frame.group_by("bidder").agg(pl.col("bid_count").sum()).sort("bidder")
    assert per_bidder.equals(bids.group_by("bidder").agg(pl.len().alias("bid_count")).sort("bidder"))


def test_q4_emits_updates_before_its_final_values(small_events: dict[str, pl.DataFrame]) -> None:
    sink = tdf.io.MemorySink()
    build("q4", sink, config=SMALL, batch_size=2_000).run(handle_signals=False)
    frame = sink.frame
    assert frame.filter(pl.col("is_update")).height > frame.filter(~pl.col("is_update")).height


# -- the command ----------------------------------------------------------------------------------------
def test_cli_json_on_q0() -> None:
    result = CliRunner().invoke(
        app, ["bench", "nexmark", "--query", "q0", "--events", "5000", "--repeat", "1", "--json", "--check"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"system", "query", "events", "seconds", "events_per_s", "cores"} <= set(payload)
    assert payload["system"] == "tideflow" and payload["query"] == "q0" and payload["events"] == 5000
    assert payload["seconds"] > 0 and math.isclose(payload["events_per_s"], 5000 / payload["seconds"])
    assert payload["cores"] == 1
    assert payload["result_rows"] == 4_600 and payload["matches_oracle"] is True


def test_cli_rejects_unknown_query() -> None:
    result = CliRunner().invoke(app, ["bench", "nexmark", "--query", "q6", "--events", "100"])
    assert result.exit_code != 0


# -- Bytewax, side by side (only where .bench-venv exists) ---------------------------------------------------
BENCH_PYTHON = harness.default_bench_python()


@pytest.fixture(scope="module")
def written_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nexmark")
    harness.write_events(SMALL, KINDS, folder)
    return folder


@pytest.mark.skipif(
    harness.bench_venv_problem(BENCH_PYTHON) is not None,
    reason=f"no Bytewax venv at {BENCH_PYTHON} (make bench-env); the CI machine has none",
)
@pytest.mark.parametrize("query", QUERIES)
def test_bytewax_query_agrees_with_duckdb(query: str, written_events: Path) -> None:
    result = harness.measure_once("bytewax", query, written_events, SMALL, core=None, warmup=2_000, timeout=120)
    assert {"rows": result["rows"], "check": result["check"]} == harness.oracle_summary(query, written_events)
    assert result["seconds"] > 0


def test_harness_tideflow_worker_agrees_with_duckdb(written_events: Path) -> None:
    for source in ("memory", "generator"):
        result = harness.measure_once(
            "tideflow", "q5", written_events, SMALL, core=None, warmup=2_000, batch_size=3_000, source=source
        )
        assert {"rows": result["rows"], "check": result["check"]} == harness.oracle_summary("q5", written_events)


def test_bench_venv_problem_names_the_fix(tmp_path: Path) -> None:
    problem = harness.bench_venv_problem(tmp_path / "missing" / "python")
    assert problem is not None and "make bench-env" in problem


# -- q7's row time, Flink's way ---------------------------------------------------------------------------
T0 = 1_700_000_000_000


def _bids(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    """Bids ``(ms after T0, auction, price)``, with the other columns filled in."""
    return pl.DataFrame(
        {
            "auction": [a for _t, a, _p in rows],
            "bidder": [1001] * len(rows),
            "price": [p for _t, _a, p in rows],
            "channel": ["Google"] * len(rows),
            "url": ["u"] * len(rows),
            "dateTime": pl.Series([T0 + t for t, _a, _p in rows]).cast(pl.Datetime("ms")),
            "extra": ["x"] * len(rows),
        },
        schema=SCHEMAS["bid"],
    )


Q7_BIDS = [(1_000, 1, 5), (9_999, 2, 7), (12_000, 3, 7), (15_000, 4, 3), (25_000, 5, 9), (29_999, 6, 2)]
"""Window [0, 10 s) has max 7 at 9.999 s, its last millisecond; window [10 s, 20 s) has max 7 too:
Flink's row time (end - 1 ms) makes the 9.999 s bid match both windows."""


def test_q7_joins_the_max_on_the_window_row_time_like_flink() -> None:
    bids = _bids(Q7_BIDS)
    sink = tdf.io.MemorySink()
    build("q7", sink, frames={"bid": bids}, batch_size=2).run(handle_signals=False)
    got = sink.frame.select("auction", "price").sort("auction").rows()
    assert got == [(2, 7), (2, 7), (3, 7), (5, 9)]
    expected = oracle.run("q7", {"bid": bids}).select("auction", "price").sort("auction").rows()
    assert got == expected


@pytest.mark.skipif(
    harness.bench_venv_problem(BENCH_PYTHON) is not None,
    reason=f"no Bytewax venv at {BENCH_PYTHON} (make bench-env); the CI machine has none",
)
def test_bytewax_q7_joins_on_the_row_time_too(tmp_path: Path) -> None:
    bids = _bids(Q7_BIDS).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("position"))
    bids.write_parquet(tmp_path / "bid.parquet")
    config = NexmarkConfig(events=len(Q7_BIDS))
    result = harness.measure_once("bytewax", "q7", tmp_path, config, core=None, warmup=2, timeout=120)
    assert (result["rows"], result["check"]) == (4, 7 + 7 + 7 + 9)
