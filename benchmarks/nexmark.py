#!/usr/bin/env python
"""NEXMark: every query, tideflow beside Bytewax 0.21.1, side by side in one run, one core each.

For each query (q0–q5, q7, q8, q11, q12 of the Flink suite; the pipelines are in
``src/tideflow/bench/nexmark/queries.py``, the Bytewax versions in ``bytewax_queries.py``):

* ``tideflow``      the events read from the Parquet files into frames before the timer
                    (``MemorySource``, ``--batch-size`` rows per batch);
* ``tideflow-gen``  tideflow with its ``NexmarkSource`` generating the events inside the timed
                    run, as Flink's NEXMark source does (``--no-generator`` to skip);
* ``bytewax``       the same query written with Bytewax 0.21.1 operators, in ``.bench-venv``,
                    over the same events (dicts built before the timer).

How figures are taken (``src/tideflow/bench/nexmark/harness.py``): the events are generated
once from ``--seed`` and written to Parquet; every measurement is a fresh process pinned to one
core (``os.sched_setaffinity``) with ``POLARS_MAX_THREADS=1``, that prepares its inputs, warms up
on the first 50,000 events, freezes the collector and times one whole run. events/s = events of
the stream (all kinds) / seconds; the median of ``--repeats`` runs (interleaved across systems)
is reported with min and max. Every run's result (result rows and a checksum) must agree between
the systems and with DuckDB's answer over the same events.

Flink's figures are its published per-core throughput (Flink 1.13, github.com/nexmark/nexmark;
quoted in shared/PEERS.md), not measured here.

Usage: ``python benchmarks/nexmark.py [--events N] [--queries q0,q5] [--repeats R] [--rate R]
[--batch-size B] [--only tideflow|bytewax] [--no-generator] [--profile] [--markdown FILE] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tideflow.bench.nexmark import harness  # noqa: E402
from tideflow.bench.nexmark.generator import DEFAULT_RATE, KINDS, NexmarkConfig  # noqa: E402
from tideflow.bench.nexmark.queries import KINDS_USED, QUERIES  # noqa: E402

BYTEWAX_TARGET = 5.0
"""tideflow / Bytewax, every query."""
FLINK_TARGET = 10.0
"""tideflow / Flink's published per-core figure, for ``harness.FLINK_TARGETS``."""
SYSTEMS = ("tideflow", "tideflow-gen", "bytewax")


def _tree() -> str:
    """The commit measured, and whether src/ differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


def _measure(system: str, query: str, folder: Path, config: NexmarkConfig, args: argparse.Namespace) -> dict:
    options: dict[str, Any] = {"core": args.core, "batch_size": args.batch_size, "warmup": args.warmup}
    if system == "tideflow-gen":
        return harness.measure_once("tideflow", query, folder, config, source="generator", **options)
    return harness.measure_once(system, query, folder, config, **options)  # type: ignore[arg-type]


def _profile(query: str, config: NexmarkConfig, args: argparse.Namespace) -> dict[str, Any]:
    """cProfile one tideflow run (frames in memory), every thread's calls; the top entries."""
    import cProfile
    import pstats
    import threading

    import tideflow as tdf
    from tideflow.bench.nexmark.harness import read_events
    from tideflow.bench.nexmark.queries import build

    with tempfile.TemporaryDirectory(prefix="tideflow-nexmark-profile-") as tmp:
        harness.write_events(config, KINDS_USED[query], Path(tmp))
        frames = read_events(Path(tmp), KINDS_USED[query])
    profilers: list[cProfile.Profile] = []
    flow = build(query, tdf.io.NullSink(), config=config, frames=frames, batch_size=args.batch_size)
    # The runtime runs each stage on its own thread: one profiler per thread, started by the hook
    # that threading installs in every new thread, merged afterwards.

    def start(*_: Any) -> None:
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()  # replaces this hook for the rest of the thread

    threading.setprofile(start)
    try:
        started = time.perf_counter()
        flow.run(handle_signals=False)
        seconds = time.perf_counter() - started
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    merged = pstats.Stats(profilers[0])
    for profiler in profilers[1:]:
        merged.add(profiler)
    stats = merged.stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, function), (_cc, calls, own, cumulative, _callers) in stats.items():
        if "_thread.lock" in function or "Condition.wait" in function:
            continue  # threads waiting for work: idle, not cost
        short = file.split("/src/", 1)[-1].split("/site-packages/", 1)[-1]
        rows.append({"function": f"{short}:{line}({function})", "calls": calls, "own_s": own, "cum_s": cumulative})
    return {
        "seconds_profiled": seconds,
        "by_own": sorted(rows, key=lambda r: -r["own_s"])[:15],
    }


def _main(args: argparse.Namespace) -> int:
    log = sys.stderr
    systems = list(SYSTEMS)
    if args.only == "tideflow":
        systems = ["tideflow", "tideflow-gen"]
    elif args.only == "bytewax":
        systems = ["bytewax"]
    if args.no_generator and "tideflow-gen" in systems:
        systems.remove("tideflow-gen")
    note = None
    if "bytewax" in systems:
        note = harness.bench_venv_problem(harness.default_bench_python())
        if note:
            print(note, file=log)
            systems.remove("bytewax")
    config = NexmarkConfig(events=args.events, seed=args.seed, rate=args.rate)
    started = time.perf_counter()
    tree = _tree()
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(q, s): [] for q in args.queries for s in systems}
    oracle: dict[str, dict[str, Any]] = {}
    profiles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tideflow-bench-nexmark-") as tmp:
        folder = Path(tmp)
        kinds = [k for k in KINDS if any(k in KINDS_USED[q] for q in args.queries)]
        rows = harness.write_events(config, kinds, folder)
        print(
            f"generated {args.events:,} events (seed {args.seed}, {args.rate:,} events/s of event time): "
            + ", ".join(f"{n:,} {k}s" for k, n in rows.items()),
            file=log,
        )
        for query in args.queries:
            oracle[query] = harness.oracle_summary(query, folder)
        for repeat in range(args.repeats):
            for query in args.queries:
                for system in systems:
                    result = _measure(system, query, folder, config, args)
                    got = {"rows": result["rows"], "check": result["check"]}
                    if got != oracle[query]:
                        raise RuntimeError(f"{system} {query}: result {got} differs from DuckDB's {oracle[query]}")
                    runs[(query, system)].append(result)
                    print(
                        f"  run {repeat + 1}/{args.repeats} {query:<4} {system:<13} "
                        f"{args.events / result['seconds']:>14,.0f} events/s",
                        file=log,
                        flush=True,
                    )
    if args.profile:
        for query in args.queries:
            profiles[query] = _profile(query, config, args)
            print(f"  profiled tideflow {query}", file=log)

    results = []
    for query in args.queries:
        row: dict[str, Any] = {
            "query": query,
            "reads": "+".join(KINDS_USED[query]),
            "rows_read": sum(rows[k] for k in KINDS_USED[query]),
            "result_rows": oracle[query]["rows"],
            "flink_per_core": harness.FLINK_PER_CORE[query],
            "flink_target": query in harness.FLINK_TARGETS,
        }
        for system in systems:
            rates = [args.events / r["seconds"] for r in runs[(query, system)]]
            row[system] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates}
        if "tideflow" in row and "bytewax" in row:
            row["ratio_bytewax"] = row["tideflow"]["median"] / row["bytewax"]["median"]
            row["bytewax_target_met"] = row["ratio_bytewax"] >= BYTEWAX_TARGET
        if "tideflow" in row:
            row["ratio_flink"] = row["tideflow"]["median"] / row["flink_per_core"]
            if row["flink_target"]:
                row["flink_target_met"] = row["ratio_flink"] >= FLINK_TARGET
        if "tideflow-gen" in row:
            row["ratio_flink_gen"] = row["tideflow-gen"]["median"] / row["flink_per_core"]
        results.append(row)
    versions: dict[str, str] = {}
    for (_query, system), measured in runs.items():
        for name, value in measured[0]["versions"].items():
            versions[f"{'bench-venv ' if system == 'bytewax' else ''}{name}"] = value
    report = {
        "benchmark": "nexmark",
        "events": args.events,
        "rate": args.rate,
        "seed": args.seed,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "systems": systems,
        "cores": 1,
        "core": args.core,
        "cpu": harness.cpu_model(),
        "machine_cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "tideflow_tree": tree if _tree() == tree else f"{tree} at the start, {_tree()} at the end: src/ changed",
        "results": results,
        "profiles": profiles,
        "seconds_total": round(time.perf_counter() - started, 1),
        "note": note,
    }
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(report))
        print(f"wrote {args.markdown}", file=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:,.1f} K"
    return f"{value:,.0f}"


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (medians; min–max in brackets)."""
    systems = report["systems"]
    header = ["query", "reads"]
    if "tideflow" in systems:
        header.append("tideflow events/s")
    if "tideflow-gen" in systems:
        header.append("tideflow, generating")
    if "bytewax" in systems:
        header.append("Bytewax 0.21.1 events/s")
    if "tideflow" in systems and "bytewax" in systems:
        header.append("tideflow / Bytewax")
    header += ["Flink 1.13 per core (theirs)", "tideflow / Flink"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + " |"]
    for row in report["results"]:
        cells = [row["query"], row["reads"]]
        for system in ("tideflow", "tideflow-gen", "bytewax"):
            if system in systems:
                m = row[system]
                cells.append(f"**{_rate(m['median'])}** ({_rate(m['min'])}–{_rate(m['max'])})")
        if "ratio_bytewax" in row:
            met = "" if row["bytewax_target_met"] else " (target 5x: missed)"
            cells.append(f"{row['ratio_bytewax']:,.1f}x{met}")
        cells.append(_rate(row["flink_per_core"]))
        if "ratio_flink" in row:
            ratio = f"{row['ratio_flink']:,.0f}x"
            if "ratio_flink_gen" in row:
                ratio += f" ({row['ratio_flink_gen']:,.0f}x generating)"
            if row["flink_target"]:
                ratio += " (target 10x: " + ("met" if row["flink_target_met"] else "missed") + ")"
            cells.append(ratio)
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _print(report: dict[str, Any]) -> None:
    print(
        f"NEXMark, {report['events']:,} events ({report['rate']:,} events/s of event time, seed {report['seed']}), "
        f"median of {report['repeats']} runs, cores: 1 (core {report['core']} of {report['machine_cores']}), "
        "POLARS_MAX_THREADS=1"
    )
    print(f"cpu: {report['cpu']}   python: {report['python']}   tideflow tree: {report['tideflow_tree']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    if report["note"]:
        print(f"note: {report['note']}")
    print()
    print(markdown(report))
    print(
        "Flink: its published figures per core (Flink 1.13, 8 TaskManagers, RocksDB, exactly-once), not measured here."
    )
    for query, profile in report["profiles"].items():
        print(f"\nprofile: tideflow {query} under cProfile, all threads ({profile['seconds_profiled']:.2f} s profiled)")
        print(f"  {'own s':>7} {'cum s':>7} {'calls':>9}  function")
        for row in profile["by_own"]:
            print(f"  {row['own_s']:>7.3f} {row['cum_s']:>7.3f} {row['calls']:>9,}  {row['function']}")
    print(f"\n(total {report['seconds_total']} s)")


def _queries(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in QUERIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"queries are {', '.join(QUERIES)}; got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="NEXMark queries, tideflow beside Bytewax 0.21.1, one core each, median of repeated runs in "
        "fresh processes; Flink's published per-core figures beside them."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the stream (default 1,000,000)")
    parser.add_argument("--queries", type=_queries, default=list(QUERIES), help="comma-separated (default all)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per system and query (default 3)")
    parser.add_argument(
        "--rate", type=int, default=DEFAULT_RATE, help="events per second of event time (default 10,000,000, Flink's)"
    )
    parser.add_argument("--batch-size", type=int, default=harness.DEFAULT_BATCH_SIZE, help="tideflow (65,536)")
    parser.add_argument("--warmup", type=int, default=harness.DEFAULT_WARMUP, help="warm-up events (50,000)")
    parser.add_argument("--only", choices=["tideflow", "bytewax"], help="measure one system only")
    parser.add_argument("--no-generator", action="store_true", help="skip tideflow with the generator in the run")
    parser.add_argument("--profile", action="store_true", help="cProfile one tideflow run per query afterwards")
    parser.add_argument("--markdown", help="also write the results table (Markdown) to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated events (default 42)")
    parser.add_argument("--core", type=int, default=None, help="the core to pin to (default: the last one allowed)")
    args = parser.parse_args(argv)
    args.core = harness.pin_core(args.core)
    if min(args.events, args.repeats, args.batch_size, args.rate) < 1:
        parser.error("--events, --repeats, --batch-size and --rate must be >= 1")
    return _main(args)


if __name__ == "__main__":
    sys.exit(main())
