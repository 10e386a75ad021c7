#!/usr/bin/env python
"""Stateless throughput: tideflow beside Bytewax 0.21.1, side by side in one run.

Pipeline, for every system: keep the events with ``value > 0.5``, add ``doubled = value * 2``,
count what comes out. Variants measured:

* ``tideflow-vec``   tideflow, polars expressions (``filter`` + ``with_columns``), MemorySource
                     of the loaded frame, NullSink; once per ``--batch-size`` value.
* ``tideflow-rec``   tideflow, per-record Python functions (``filter`` + ``map`` on dicts).
* ``bytewax-rec``    Bytewax, idiomatic: TestingSource(list of dicts, batch_size=1000),
                     ``op.filter`` + ``op.map``, a sink partition that only counts.
* ``bytewax-vec``    Bytewax at its best: items are polars DataFrames of ``batch_size`` rows,
                     filtered and extended by polars inside ``op.map``.

How figures are taken: the events (columns ``id``, ``key`` in 0..9999, ``value`` in [0, 1),
``ts`` epoch ms) are generated once from ``--seed`` into a parquet file in a temporary folder.
Every measurement runs in a fresh subprocess pinned to one core (``os.sched_setaffinity``) with
``POLARS_MAX_THREADS=1`` in its environment, both before polars is imported. The subprocess
loads the file and builds its inputs (dicts, frames) before the timer starts, runs the whole
pipeline once untimed (warm-up: imports, first-call costs, and the heap grown to hold the
batches in flight, which a long-running stream pays once), freezes the garbage collector's view
of the prepared inputs (``gc.freeze()``, for every system alike, so the 2M input objects are
not rescanned by collections during the run), builds a fresh flow, and times only its run
(tideflow: ``flow.run(handle_signals=False)``; Bytewax: ``bytewax.testing.run_main(flow)``, one
worker).
events/s = events / wall seconds; the median of ``--repeats`` runs is reported, with min/max.
Repeats are interleaved (a, b, c, d, a, b, c, d, ...) so drift hits every system alike. Every
run's output count is checked against the expected count.

Bytewax runs in ``.bench-venv`` (``make bench-env``), which also needs polars and pyarrow to
load the events and for the vectorized variant.

Usage: ``python benchmarks/stateless.py [--events N] [--repeats R] [--batch-size B[,B2...]]
[--only tideflow|bytewax] [--json]``
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

# Nothing above imports polars: a measured subprocess must set its core and POLARS_MAX_THREADS
# before polars loads. The parent imports polars and numpy only to generate the events.

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".bench-venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
BYTEWAX_RECORD_BATCH = 1000
"""TestingSource batch size of the idiomatic Bytewax variant."""
TARGETS = {"tideflow-vec": 10_000_000, "tideflow-rec": 1_000_000}
"""events/s on one core that the engine aims at."""


# -- measured subprocess ---------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> None:
    """Run one measurement and print one JSON line. Pins itself before importing polars."""
    os.sched_setaffinity(0, {args.core})
    os.environ["POLARS_MAX_THREADS"] = "1"
    import gc

    import polars as pl

    frame = pl.read_parquet(args.data)
    events = frame.height
    prepare_started = time.perf_counter()
    if args.system.startswith("tideflow"):
        run, count, versions = _tideflow_runner(pl, frame, args.system, args.batch_size)
    else:
        run, count, versions = _bytewax_runner(pl, frame, args.system, args.batch_size)
    prepare_seconds = time.perf_counter() - prepare_started
    warm_run, _ = run()
    warm_run()
    del warm_run
    del frame
    gc.collect()
    gc.freeze()
    timed_run, counter = run()
    started = time.perf_counter()
    timed_run()
    seconds = time.perf_counter() - started
    result = {
        "system": args.system,
        "batch_size": args.batch_size,
        "events": events,
        "out": count(counter),
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
        "affinity": sorted(os.sched_getaffinity(0)),
        "polars_threads": pl.thread_pool_size(),
        "versions": {"python": platform.python_version(), "polars": pl.__version__, **versions},
    }
    print(json.dumps(result))


def _tideflow_runner(pl: Any, frame: Any, system: str, batch_size: int):  # type: ignore[no-untyped-def]
    import tideflow as tdf
    from tideflow.io import MemorySource, NullSink

    def build():  # type: ignore[no-untyped-def]
        flow = tdf.Flow("bench-stateless")
        stream = flow.source("events", MemorySource(frame, batch_size=batch_size))
        if system == "tideflow-vec":
            stream = stream.filter("f", pl.col("value") > 0.5).with_columns("w", doubled=pl.col("value") * 2)
        else:
            stream = stream.filter("f", lambda r: r["value"] > 0.5).map("w", lambda r: {**r, "doubled": r["value"] * 2})
        sink = NullSink()
        stream.sink("out", sink)
        return (lambda: flow.run(handle_signals=False)), sink

    return build, (lambda sink: sink.count), {"tideflow": tdf.__version__}


def _dicts(frame: Any) -> list[dict[str, Any]]:
    """The events as dicts, built the fastest way plain Python allows (a dict display per row).

    The cyclic collector is paused meanwhile, as tideflow pauses it around its own conversions.
    """
    import gc

    gc.disable()
    try:
        ids, keys, values, stamps = (frame.get_column(name).to_list() for name in ("id", "key", "value", "ts"))
        return [{"id": i, "key": k, "value": v, "ts": t} for i, k, v, t in zip(ids, keys, values, stamps, strict=True)]
    finally:
        gc.enable()


def _bytewax_runner(pl: Any, frame: Any, system: str, batch_size: int):  # type: ignore[no-untyped-def]
    from importlib.metadata import version

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    class _Counter:
        count = 0

    class CountPartition(StatelessSinkPartition):
        def __init__(self, counter: _Counter, rows: bool) -> None:
            self.counter, self.rows = counter, rows

        def write_batch(self, items: list[Any]) -> None:
            if self.rows:
                self.counter.count += sum(item.height for item in items)
            else:
                self.counter.count += len(items)

    class CountSink(DynamicSink):
        """Counts what arrives: cheaper than TestingSink, which keeps every output item alive in a list."""

        def __init__(self, counter: _Counter, rows: bool) -> None:
            self.counter, self.rows = counter, rows

        def build(self, step_id: str, worker_index: int, worker_count: int) -> CountPartition:
            return CountPartition(self.counter, self.rows)

    # Inputs are built before the timer: dicts for the idiomatic variant, frames for the other.
    if system == "bytewax-rec":
        prepared = _dicts(frame)
    else:
        prepared = [frame.slice(offset, batch_size) for offset in range(0, frame.height, batch_size)]

    def build():  # type: ignore[no-untyped-def]
        counter = _Counter()
        flow = Dataflow("bench_stateless")
        if system == "bytewax-rec":
            stream = op.input("events", flow, TestingSource(prepared, batch_size=BYTEWAX_RECORD_BATCH))
            stream = op.filter("f", stream, lambda r: r["value"] > 0.5)
            stream = op.map("w", stream, lambda r: {**r, "doubled": r["value"] * 2})
        else:
            stream = op.input("events", flow, TestingSource(prepared, batch_size=1))
            stream = op.map("f", stream, lambda df: df.filter(pl.col("value") > 0.5))
            stream = op.map("w", stream, lambda df: df.with_columns(doubled=pl.col("value") * 2))
        op.output("out", stream, CountSink(counter, rows=system == "bytewax-vec"))
        return (lambda: run_main(flow)), counter

    return build, (lambda counter: counter.count), {"bytewax": version("bytewax"), "pyarrow": version("pyarrow")}


# -- parent: data, scheduling, report --------------------------------------------------------------
def _generate(path: Path, events: int, seed: int) -> int:
    """Write the events; return how many pass the filter (every system must output that many)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "id": np.arange(events, dtype=np.int64),
            "key": rng.integers(0, 10_000, size=events, dtype=np.int64),
            "value": rng.random(events),
            "ts": 1_700_000_000_000 + np.cumsum(rng.integers(0, 3, size=events, dtype=np.int64)),
        }
    )
    frame.write_parquet(path)
    return int((frame.get_column("value") > 0.5).sum())


def _bench_venv_problem() -> str | None:
    """Why Bytewax cannot be measured, or None when ``.bench-venv`` has what the workers import."""
    if not BENCH_PYTHON.exists():
        return f"{BENCH_VENV} is missing: run `make bench-env` to measure Bytewax; measuring tideflow only"
    check = "import bytewax, polars, pyarrow"
    proc = subprocess.run([str(BENCH_PYTHON), "-c", check], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    missing = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "import failed"
    return (
        f"{BENCH_VENV} cannot run the Bytewax workers ({missing}); it needs bytewax==0.21.1, polars and "
        f"pyarrow: run `make bench-env` (or {BENCH_VENV}/bin/pip install polars pyarrow); measuring tideflow only"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _measure(python: Path | str, system: str, data: Path, batch_size: int, core: int) -> dict[str, Any]:
    env = dict(os.environ, POLARS_MAX_THREADS="1", PYTHONHASHSEED="0")
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker",
        system,
        "--data",
        str(data),
        "--batch-size",
        str(batch_size),
        "--core",
        str(core),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} (batch {batch_size}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _default_core() -> int:
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1]  # keep core 0 for the rest of the machine


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers, got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


def _label(system: str, batch_size: int) -> str:
    if system == "tideflow-vec":
        return f"tideflow-vec (batch {batch_size})"
    if system == "bytewax-rec":
        return f"bytewax-rec (TestingSource batch {BYTEWAX_RECORD_BATCH})"
    return f"{system} (batch {batch_size})"


def _main(args: argparse.Namespace) -> int:
    sizes: list[int] = args.batch_size
    headline = sizes[0]
    log = sys.stderr
    want_tideflow = args.only in (None, "tideflow")
    want_bytewax = args.only in (None, "bytewax")
    bytewax_note = None
    if want_bytewax:
        bytewax_note = _bench_venv_problem()
        if bytewax_note:
            print(bytewax_note, file=log)
            want_bytewax = False
            want_tideflow = True
    plan: list[tuple[str, str, int, Path | str]] = []  # (label, system, batch size, python)
    if want_tideflow:
        plan += [(_label("tideflow-vec", b), "tideflow-vec", b, sys.executable) for b in sizes]
        plan.append((_label("tideflow-rec", headline), "tideflow-rec", headline, sys.executable))
    if want_bytewax:
        plan += [(_label("bytewax-vec", b), "bytewax-vec", b, BENCH_PYTHON) for b in sizes]
        plan.append((_label("bytewax-rec", headline), "bytewax-rec", headline, BENCH_PYTHON))

    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in plan}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tideflow-bench-") as tmp:
        data = Path(tmp) / "events.parquet"
        expected = _generate(data, args.events, args.seed)
        print(f"generated {args.events:,} events (seed {args.seed}) -> {expected:,} pass the filter", file=log)
        for repeat in range(args.repeats):
            for label, system, batch_size, python in plan:
                result = _measure(python, system, data, batch_size, args.core)
                if result["out"] != expected:
                    raise RuntimeError(f"{label}: {result['out']} events out, expected {expected}")
                if result["polars_threads"] != 1 or result["affinity"] != [args.core]:
                    pinning = f"cores {result['affinity']}, {result['polars_threads']} polars threads"
                    raise RuntimeError(f"{label}: not pinned as asked ({pinning})")
                runs[label].append(result)
                rate = args.events / result["seconds"]
                print(f"  run {repeat + 1}/{args.repeats} {label:<44} {rate / 1e6:8.2f} M events/s", file=log)

    rows = []
    for label, system, batch_size, _python in plan:
        rates = [args.events / r["seconds"] for r in runs[label]]
        rows.append(
            {
                "label": label,
                "system": system,
                "batch_size": batch_size,
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "runs": rates,
                "prepare_seconds": statistics.median(r["prepare_seconds"] for r in runs[label]),
                "target": TARGETS.get(system),
                "versions": runs[label][0]["versions"],
            }
        )
    by_label = {row["label"]: row for row in rows}

    def median_of(system: str, batch_size: int) -> float | None:
        row = by_label.get(_label(system, batch_size))
        return row["median"] if row else None

    ratios = []
    pairs = [("tideflow-vec", "bytewax-vec", b) for b in sizes]
    pairs += [("tideflow-vec", "bytewax-rec", headline), ("tideflow-rec", "bytewax-rec", headline)]
    for a, b, size in pairs:
        top, bottom = median_of(a, size), median_of(b, size)
        if top and bottom:
            ratios.append({"tideflow": _label(a, size), "bytewax": _label(b, size), "ratio": top / bottom})

    versions: dict[str, str] = {}
    for row in rows:
        prefix = "bench-venv " if row["system"].startswith("bytewax") else ""
        for name, value in row["versions"].items():
            versions[f"{prefix}{name}"] = value
    report = {
        "benchmark": "stateless",
        "events": args.events,
        "repeats": args.repeats,
        "seed": args.seed,
        "cores": 1,
        "core": args.core,
        "cpu": _cpu_model(),
        "machine_cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "results": rows,
        "ratios": ratios,
        "seconds_total": round(time.perf_counter() - started, 1),
        "note": bytewax_note,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _print_table(report: dict[str, Any]) -> None:
    print(
        f"stateless throughput: {report['events']:,} events, median of {report['repeats']} runs, "
        f"cores: 1 (core {report['core']} of {report['machine_cores']}), POLARS_MAX_THREADS=1"
    )
    print(f"cpu: {report['cpu']}   python: {report['python']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    if report["note"]:
        print(f"note: {report['note']}")
    print()
    header = f"{'system':<44} {'median ev/s':>13} {'min':>13} {'max':>13}  target"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        target = ""
        if row["target"]:
            met = "met" if row["median"] >= row["target"] else "MISSED"
            target = f">= {row['target'] / 1e6:g} M: {met}"
        print(f"{row['label']:<44} {row['median']:>13,.0f} {row['min']:>13,.0f} {row['max']:>13,.0f}  {target}")
    if report["ratios"]:
        print()
        for ratio in report["ratios"]:
            print(f"{ratio['tideflow']} / {ratio['bytewax']}: {ratio['ratio']:.2f}x")
    for row in report["results"]:
        if row["system"] == "bytewax-rec":
            seconds = report["events"] / row["median"] + row["prepare_seconds"]
            print(
                f"\nnote: bytewax-rec builds its {report['events']:,} input dicts before the timer "
                f"({row['prepare_seconds']:.2f} s, median); counted in, it would make "
                f"{report['events'] / seconds:,.0f} events/s. tideflow-rec converts columns to dicts "
                "and back inside its timed run."
            )
    print(f"\n(total {report['seconds_total']} s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Stateless throughput (filter + with_columns), tideflow beside Bytewax 0.21.1, "
        "one core, median of repeated runs in fresh subprocesses.",
    )
    parser.add_argument("--events", type=int, default=2_000_000, help="events per run (default 2,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per system; the median is reported (default 5)")
    parser.add_argument(
        "--batch-size",
        type=_parse_batch_sizes,
        default=[10_000, 65_536],
        help="batch size(s), comma-separated; tideflow-vec and bytewax-vec run at each; the first is the "
        "headline figure, also used by tideflow-rec (default 10000,65536: tideflow's default, and a big one)",
    )
    parser.add_argument("--only", choices=["tideflow", "bytewax"], help="measure one system only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated events (default 42)")
    parser.add_argument("--core", type=int, default=None, help="the core to pin to (default: the last one allowed)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.core is None:
        args.core = _default_core()
    if args.worker:
        args.system = args.worker
        args.batch_size = args.batch_size[0]
        _worker(args)
        return 0
    if args.events < 1 or args.repeats < 1:
        _parser().error("--events and --repeats must be at least 1")
    return _main(args)


if __name__ == "__main__":
    sys.exit(main())
