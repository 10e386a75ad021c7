"""``tideflow bench nexmark``: time one NEXMark query, in tideflow or in Bytewax, on one core.

The events are generated once from ``--seed`` and written to Parquet; each run is a fresh
process pinned to one core with ``POLARS_MAX_THREADS=1`` that reads them before its timer
(``--system bytewax`` runs the same query written with Bytewax 0.21.1 in ``.bench-venv``:
``make bench-env``). The figure is the median of ``--repeat`` runs: events (all kinds) per
second. How figures are taken: :mod:`tideflow.bench.nexmark.harness`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

QUERY_NAMES = ("q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11", "q12")


def nexmark_command(
    query: Annotated[str, typer.Option("--query", "-q", help=f"The query: {', '.join(QUERY_NAMES)}.")],
    events: Annotated[int, typer.Option(help="Events in the stream (persons, auctions and bids).")] = 1_000_000,
    system: Annotated[str, typer.Option(help="tideflow, or bytewax (in .bench-venv).")] = "tideflow",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rate: Annotated[
        int, typer.Option(help="Events per second of event time (Flink's NEXMark runs 10,000,000).")
    ] = 10_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the generated events.")] = 42,
    repeat: Annotated[int, typer.Option(help="Runs (fresh processes); the median is reported.")] = 3,
    batch_size: Annotated[int, typer.Option(help="tideflow's rows per batch.")] = 65_536,
    source: Annotated[
        str,
        typer.Option(help="tideflow: 'memory' (events read before the timer) or 'generator' (generated in the run)."),
    ] = "memory",
    out_of_order: Annotated[int, typer.Option(help="Shuffle events within groups of this many (1: in order).")] = 1,
    warmup: Annotated[int, typer.Option(help="Events of the untimed warm-up run in each process.")] = 50_000,
    core: Annotated[int | None, typer.Option(help="Core to pin to (default: the last one allowed).")] = None,
    check: Annotated[bool, typer.Option(help="Also compare the result with DuckDB's (needs duckdb).")] = False,
    bench_python: Annotated[
        Path | None, typer.Option(help="Python of the Bytewax venv (default .bench-venv/bin/python).")
    ] = None,
) -> None:
    """Time one NEXMark query on one core (median of --repeat fresh processes)."""
    from rich.console import Console

    from . import harness
    from .generator import NexmarkConfig
    from .queries import KINDS_USED

    if query not in QUERY_NAMES:
        raise typer.BadParameter(f"choose one of {', '.join(QUERY_NAMES)}", param_hint="--query")
    if system not in ("tideflow", "bytewax"):
        raise typer.BadParameter("choose tideflow or bytewax", param_hint="--system")
    if source not in ("memory", "generator"):
        raise typer.BadParameter("choose memory or generator", param_hint="--source")
    if events < 1 or repeat < 1 or batch_size < 1 or rate < 1:
        raise typer.BadParameter("--events, --repeat, --batch-size and --rate must be at least 1")
    try:
        config = NexmarkConfig(events=events, seed=seed, rate=rate, out_of_order_group_size=out_of_order)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--out-of-order") from error
    python = bench_python or harness.default_bench_python()
    if system == "bytewax":
        problem = harness.bench_venv_problem(python)
        if problem:
            Console(stderr=True).print(f"[red]{problem}[/red]")
            raise typer.Exit(2)
    pinned = harness.pin_core(core)
    err = Console(stderr=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tideflow-nexmark-") as tmp:
        folder = Path(tmp)
        rows = harness.write_events(config, KINDS_USED[query], folder)
        if not as_json:
            read = ", ".join(f"{n:,} {kind}s" for kind, n in rows.items())
            err.print(f"generated {events:,} events (seed {seed}); {query} reads {read}")
        measurement = harness.measure(
            system,  # type: ignore[arg-type]
            query,
            folder,
            config,
            repeat=repeat,
            core=pinned,
            batch_size=batch_size,
            warmup=warmup,
            source=source,  # type: ignore[arg-type]
            bench_python=python,
        )
        oracle = harness.oracle_summary(query, folder) if check else None
    first = measurement.runs[0]
    payload: dict[str, Any] = {
        "system": system,
        "query": query,
        "events": events,
        "seconds": measurement.median_seconds,
        "events_per_s": measurement.events_per_s,
        "cores": 1 if pinned is not None else _cpu_count(),
        "core": pinned,
        "runs_seconds": measurement.seconds,
        "rows_read": first["rows_read"],
        "result_rows": first["rows"],
        "checksum": first["check"],
        "rate": rate,
        "seed": seed,
        "out_of_order": out_of_order,
        "batch_size": batch_size if system == "tideflow" else None,
        "source": source if system == "tideflow" else "memory",
        "flink_per_core_published": harness.FLINK_PER_CORE[query],
        "versions": first["versions"],
        "cpu": harness.cpu_model(),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if oracle is not None:
        payload["oracle"] = oracle
        payload["matches_oracle"] = oracle == {"rows": first["rows"], "check": first["check"]}
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        _print_table(Console(), payload, measurement.rates)
    if oracle is not None and not payload["matches_oracle"]:
        raise typer.Exit(1)


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:,.1f} K"
    return f"{value:,.0f}"


def _print_table(console: Any, payload: dict[str, Any], rates: list[float]) -> None:
    from rich.table import Table

    cores = f"{payload['cores']} core" + (f" (core {payload['core']})" if payload["core"] is not None else "s")
    table = Table(
        title=f"NEXMark {payload['query']}: {payload['events']:,} events, {cores}, median of {len(rates)} runs"
    )
    for column in ("system", "events/s", "min", "max", "seconds", "results", "Flink/core*"):
        table.add_column(column, justify="left" if column == "system" else "right")
    table.add_row(
        payload["system"],
        _rate(payload["events_per_s"]),
        _rate(min(rates)),
        _rate(max(rates)),
        f"{payload['seconds']:.3f}",
        "-" if payload["result_rows"] is None else f"{payload['result_rows']:,}",
        _rate(payload["flink_per_core_published"]),
    )
    console.print(table)
    console.print(
        "* Flink 1.13's published NEXMark throughput per core (github.com/nexmark/nexmark), not measured here"
    )
    if "matches_oracle" in payload:
        console.print("result matches DuckDB" if payload["matches_oracle"] else "[red]result differs from DuckDB[/red]")
