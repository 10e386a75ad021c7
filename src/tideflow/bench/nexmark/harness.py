"""The NEXMark benchmark harness: events written once, each measurement in a fresh pinned process.

How a figure is taken (the same for tideflow and Bytewax):

1. The parent generates the run's events once (:mod:`.generator`, from ``--seed``) and writes
   the kinds the query reads to ``person.parquet`` / ``auction.parquet`` / ``bid.parquet`` in a
   temporary folder, each row with its ``position`` in the event stream.
2. Each measurement is a fresh subprocess, pinned to one core (``os.sched_setaffinity``, first
   thing, before polars loads) with ``POLARS_MAX_THREADS=1``: tideflow's :mod:`.worker` in this
   venv, or :mod:`.bytewax_queries` in ``.bench-venv``. It reads the files and builds its inputs
   (tideflow: frames; Bytewax: dicts with datetimes) **before** its timer: file reading and input
   building are excluded for both. It runs the query once untimed on the first ``warmup`` events,
   calls ``gc.collect(); gc.freeze()``, then times one run of the whole query into a sink that
   keeps every output row (tideflow: ``flow.run()``; Bytewax: ``run_main(flow)``, one worker).
3. ``events_per_s = events / seconds``, where ``events`` counts every event of the stream
   (persons, auctions and bids, as NEXMark and Flink count them), although a query reads only
   the kinds it uses (both systems alike: q3 and q8 read 8% of the events, the others 92–98%).
   The median of the runs is reported.

tideflow can also be measured with ``source="generator"``: its :class:`.NexmarkSource` then
generates the events inside the timed run, as Flink's NEXMark source does.

Every run reports a summary of its output (final result rows and a checksum, see
:func:`summarize_frame`), compared across systems and with DuckDB by the callers.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from .generator import Kind, NexmarkConfig, generate
from .queries import KINDS_USED

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
BYTEWAX_WORKER = HERE / "bytewax_queries.py"
REPO_ROOT = HERE.parents[3]
DEFAULT_WARMUP = 50_000
DEFAULT_BATCH_SIZE = 65_536
FLINK_PER_CORE = {
    "q0": 155_000,
    "q1": 158_000,
    "q2": 175_000,
    "q3": 152_000,
    "q4": 34_000,
    "q5": 22_000,
    "q7": 12_000,
    "q8": 146_000,
    "q11": 40_000,
    "q12": 76_000,
}
"""Flink 1.13's published NEXMark throughput per core (github.com/nexmark/nexmark README: 100M
events, 8 TaskManagers, RocksDB, exactly-once checkpoints), as quoted in shared/PEERS.md."""
FLINK_TARGETS = ("q0", "q1", "q2", "q5", "q7", "q11")
"""Queries with a per-core target of 10x Flink's figure."""

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
"""The column summed into each query's checksum (the same in ``bytewax_queries.py``; q1's float
prices are summed as ``floor(price * 1000)``)."""

System = Literal["tideflow", "bytewax"]


def default_bench_python() -> Path:
    """``.bench-venv/bin/python`` in the current folder, else in the repository's root."""
    local = Path(".bench-venv") / "bin" / "python"
    return local if local.exists() else REPO_ROOT / ".bench-venv" / "bin" / "python"


def bench_venv_problem(python: Path) -> str | None:
    """Why Bytewax cannot be measured with ``python``, or None."""
    if not python.exists():
        return f"{python} is missing: run `make bench-env` (creates .bench-venv with bytewax==0.21.1)"
    proc = subprocess.run(
        [str(python), "-c", "import bytewax, polars, pyarrow"], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return None
    reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "import failed"
    return f"{python} cannot run the Bytewax worker ({reason}): run `make bench-env`"


def pin_core(requested: int | None = None) -> int | None:
    """The core measurements run on: ``requested``, else the last one this process may use (core 0
    stays for the rest of the machine); None where affinity cannot be set (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    if requested is not None:
        return requested
    return sorted(os.sched_getaffinity(0))[-1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_events(config: NexmarkConfig, kinds: Sequence[Kind], folder: Path) -> dict[Kind, int]:
    """Generate the events once and write the ``kinds`` asked for; returns rows per kind."""
    frames = generate(config, kinds, positions=True)
    for kind, frame in frames.items():
        frame.write_parquet(folder / f"{kind}.parquet", compression="lz4", statistics=False)
    return {kind: frame.height for kind, frame in frames.items()}


def read_events(folder: Path, kinds: Sequence[Kind], events: int | None = None) -> dict[Kind, pl.DataFrame]:
    """The written events (``position`` dropped), optionally only the first ``events`` of the stream."""
    frames = {}
    for kind in kinds:
        frame = pl.read_parquet(folder / f"{kind}.parquet")
        if events is not None:
            frame = frame.filter(pl.col("position") < events)
        frames[kind] = frame.drop("position")
    return frames


def summarize_frame(query: str, frame: pl.DataFrame) -> dict[str, Any]:
    """Final result rows and a checksum of a query's output (what the systems must agree on).

    q4: the rows with ``is_update`` false (the final average per category); q11: the last version
    of each session (a session extended after it was emitted comes again as an update); q12, in
    processing time, only its total count is comparable (``rows`` is None)."""
    if frame.height and query == "q4" and "is_update" in frame.columns:
        frame = frame.filter(~pl.col("is_update"))
    if frame.height and query == "q11":
        frame = frame.group_by("bidder", "starttime", maintain_order=True).last()
    column = CHECK_COLUMN[query]
    if not frame.height:
        total = 0
    elif query == "q1":  # floats: each row's price in thousandths, floored, summed exactly
        total = frame.select((pl.col(column) * 1000).floor().cast(pl.Int64).sum()).item()
    else:
        total = frame.get_column(column).sum()
    return {"rows": None if query == "q12" else frame.height, "check": int(total)}


def oracle_summary(query: str, folder: Path) -> dict[str, Any]:
    """The same summary of DuckDB's result over the written events (needs duckdb)."""
    from . import oracle

    frames = read_events(folder, KINDS_USED[query])
    return summarize_frame(query, oracle.run(query, frames))


@dataclass
class Measurement:
    system: str
    query: str
    events: int
    runs: list[dict[str, Any]]

    @property
    def seconds(self) -> list[float]:
        return [run["seconds"] for run in self.runs]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def events_per_s(self) -> float:
        return self.events / self.median_seconds

    @property
    def rates(self) -> list[float]:
        return [self.events / s for s in self.seconds]

    @property
    def summary(self) -> dict[str, Any]:
        return {"rows": self.runs[0]["rows"], "check": self.runs[0]["check"]}


def measure_once(
    system: System,
    query: str,
    folder: Path,
    config: NexmarkConfig,
    *,
    core: int | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    warmup: int = DEFAULT_WARMUP,
    source: Literal["memory", "generator"] = "memory",
    bench_python: Path | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """One measurement in a fresh subprocess; returns the worker's JSON result."""
    env = dict(os.environ, POLARS_MAX_THREADS="1", PYTHONHASHSEED="0")
    warm = str(min(warmup, config.events))
    if system == "tideflow":
        cmd = [sys.executable, str(WORKER), "--query", query, "--data", str(folder), "--events", str(config.events)]
        cmd += ["--warmup", warm, "--batch-size", str(batch_size), "--source", source, "--seed", str(config.seed)]
        cmd += ["--rate", str(config.rate), "--out-of-order", str(config.out_of_order_group_size)]
        cmd += ["--base-time", str(config.base_time_ms)]
    elif system == "bytewax":
        python = bench_python or default_bench_python()
        cmd = [str(python), str(BYTEWAX_WORKER), "--query", query, "--data", str(folder)]
        cmd += ["--events", str(config.events), "--warmup", warm, "--wait-ms", str(config.max_disorder_ms)]
    else:
        raise ValueError(f"system must be 'tideflow' or 'bytewax', got {system!r}")
    if core is not None:
        cmd += ["--core", str(core)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} {query} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if core is not None and result.get("affinity") not in (None, [core]):
        raise RuntimeError(f"{system} {query}: ran on cores {result['affinity']}, not [{core}] as asked")
    return result


def measure(
    system: System,
    query: str,
    folder: Path,
    config: NexmarkConfig,
    *,
    repeat: int = 3,
    **options: Any,
) -> Measurement:
    """``repeat`` measurements (fresh processes); their summaries must agree."""
    runs = [measure_once(system, query, folder, config, **options) for _ in range(repeat)]
    first = runs[0]
    for run in runs[1:]:
        if (run["rows"], run["check"]) != (first["rows"], first["check"]):
            raise RuntimeError(f"{system} {query}: runs disagree: {first} vs {run}")
    return Measurement(system, query, config.events, runs)
