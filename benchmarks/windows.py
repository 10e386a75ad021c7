#!/usr/bin/env python
"""Windows throughput and state memory: tideflow beside Bytewax 0.21.1, side by side in one run.

Events: ``key`` (int, 10,000 distinct, uniform), ``t`` (int epoch ms, non-decreasing, 100,000
events per event-second: a 10 s window holds ~1M events), ``v`` (float). Workloads, each a count
per key and window with a 1 s out-of-orderness bound:

* ``tumbling``  10 s tumbling windows.
* ``sliding``   10 s windows every 2 s (each event is in 5 windows).
* ``session``   session windows with a 10 s gap (fewer events: ``--session-events``).
* ``memory``    state bytes per live key: a tumbling window so long that nothing fires, over
                ``--memory-keys`` distinct keys; process RSS growth / keys, sampled after the last
                event was absorbed and before the end-of-input flush.

Systems:

* ``tideflow``  ``MemorySource(df, time="t", batch_size=--batch-size)`` with
                ``watermark=BoundedOutOfOrder("1s")`` → ``key_by("key").window(...).agg(n=pl.len())``
                → a sink that counts result rows and sums ``n``.
* ``bytewax``   idiomatic Bytewax: ``TestingSource(list of dicts, batch_size=1000)`` →
                ``count_window`` keyed by ``str(key)`` with an ``EventClock`` (1 s wait) and a
                ``TumblingWindower``/``SlidingWindower``/``SessionWindower`` → a sink that counts
                results and sums the counts. The dicts carry the event time as an aware datetime,
                built before the timer. The clock's ``now_getter`` is frozen and ``to_system_utc``
                returns None. With the defaults (system time) Bytewax advances each key's
                watermark by the wall time passed since that key's last event, so a replay slower
                than real time turns most events late (dropped from the counts), and every key
                whose window end lies in the past asks to be woken at every activation (~10x
                slower); see docs/benchmarks.md.

How figures are taken (the harness of ``benchmarks/stateless.py``, whose helpers this imports):
events are generated once from ``--seed`` into parquet files in a temporary folder. Every
measurement runs in a fresh subprocess pinned to one core (``os.sched_setaffinity``) with
``POLARS_MAX_THREADS=1``, both set before polars is imported. The subprocess loads the file and
builds its inputs before the timer, runs the pipeline once untimed over the first 131,072 events
(warm-up), calls ``gc.collect(); gc.freeze()``, builds a fresh flow and times only its run.
events/s = events / wall seconds; the median of ``--repeats`` runs is reported with min/max;
repeats are interleaved. Every run is checked: the number of (key, window)
results and the total count must equal what polars computes from the events.

Usage: ``python benchmarks/windows.py [--events N] [--session-events N] [--memory-keys N]
[--memory-events-per-key 1,2] [--bytewax-memory-keys N] [--repeats R] [--batch-size B]
[--workloads tumbling,sliding,session,memory] [--only tideflow|bytewax] [--profile] [--json]``
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

# The script's own folder is on sys.path when it runs as a script (the measured subprocesses do
# too). stateless imports nothing heavy: polars must not load before a worker pins itself.
from stateless import BENCH_PYTHON, ROOT, _bench_venv_problem, _cpu_model, _default_core

KEYS = 10_000
EVENTS_PER_SECOND = 100_000
T0_MS = 1_700_000_000_000
"""First event time; a multiple of 10 s, so the first window is full."""
SIZE_MS, EVERY_MS, GAP_MS, DELAY_MS = 10_000, 2_000, 10_000, 1_000
HUGE = "3650d"
"""The memory workload's window: nothing fires before the end of input."""
BYTEWAX_RECORD_BATCH = 1000
EAGER_JEMALLOC = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0"}
"""polars' jemalloc told to return freed pages at once: RSS then shows what is live, not what the
allocator keeps for reuse (it returns freed pages after ~10 s by default)."""
WARMUP_EVENTS = 131_072
"""The untimed warm-up run takes the first events: two of tideflow's 65,536-row batches, every key."""
WORKLOADS = ("tumbling", "sliding", "session", "memory")
THROUGHPUT = ("tumbling", "sliding", "session")
TARGETS = {"tumbling": 2_000_000, "sliding": 1_000_000, "session": 500_000}
"""tideflow's events/s targets on one core."""
FLINK_NEXMARK = [
    ("q5", "hot items: sliding window (10 s every 2 s) count per auction, then the max", 22_140),
    ("q7", "highest bid: tumbling window (10 s) max price, joined back to the bids", 12_330),
    ("q11", "user sessions: session window (10 s gap) count per bidder", 39_700),
]
"""Flink 1.13's published NEXMark throughput per core (github.com/nexmark/nexmark README: 100M
events, 8 workers, RocksDB, exactly-once checkpoints). Quoted, not measured here."""


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- measured subprocess ---------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> None:
    """Run one measurement and print one JSON line. Pins itself before importing polars."""
    os.sched_setaffinity(0, {args.core})
    os.environ["POLARS_MAX_THREADS"] = "1"
    import polars as pl

    frame = pl.read_parquet(args.data)
    if args.events:
        frame = frame.head(args.events)
    if args.workload == "memory":
        memory = _tideflow_memory if args.system == "tideflow" else _bytewax_memory
        result = memory(pl, frame, args)
    else:
        result = _throughput(pl, frame, args)
    result.update(
        system=args.system,
        workload=args.workload,
        events=frame.height,
        affinity=sorted(os.sched_getaffinity(0)),
        polars_threads=pl.thread_pool_size(),
    )
    result["versions"] = {"python": platform.python_version(), "polars": pl.__version__, **result["versions"]}
    print(json.dumps(result))


def _throughput(pl: Any, frame: Any, args: argparse.Namespace) -> dict[str, Any]:
    import gc

    runner = _tideflow_runner if args.system == "tideflow" else _bytewax_runner
    prepare_started = time.perf_counter()
    prepare, build, versions = runner(pl, args.workload, args.batch_size)
    inputs = prepare(frame)
    prepare_seconds = time.perf_counter() - prepare_started
    warm_run, _ = build(inputs[:WARMUP_EVENTS] if isinstance(inputs, list) else inputs.head(WARMUP_EVENTS))
    warm_run()
    del warm_run
    gc.collect()
    gc.freeze()
    run, counter = build(inputs)
    profile = _profile_hook(counter) if args.profile else None
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    result = {
        "results": counter.results,
        "total": counter.total,
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
        "versions": versions,
    }
    if profile is not None:
        result["profile"] = profile()
    return result


class _Counter:
    """What a counting sink saw: result rows and the sum of their counts (plus the operator,
    when a hook asks for it)."""

    def __init__(self) -> None:
        self.results = 0
        self.total = 0
        self.flow: Any = None


def _tideflow_runner(pl: Any, workload: str, batch_size: int):  # type: ignore[no-untyped-def]
    import tideflow as tdf
    from tideflow.io import MemorySource, Sink

    class CountSink(Sink):
        def __init__(self, counter: _Counter) -> None:
            self.counter = counter

        def write(self, df: Any) -> None:
            self.counter.results += df.height
            self.counter.total += int(df.get_column("n").sum())

    assigner = {
        "tumbling": tdf.windows.tumbling(SIZE_MS),
        "sliding": tdf.windows.sliding(SIZE_MS, EVERY_MS),
        "session": tdf.windows.session(GAP_MS),
    }[workload]

    def build(frame):  # type: ignore[no-untyped-def]
        counter = _Counter()
        flow = tdf.Flow("bench-windows")
        source = MemorySource(frame, time="t", batch_size=batch_size)
        stream = flow.source("events", source, watermark=tdf.BoundedOutOfOrder(DELAY_MS))
        stream.key_by("key").window("w", assigner).agg(n=pl.len()).sink("out", CountSink(counter))
        counter.flow = flow
        return (lambda: flow.run(handle_signals=False)), counter

    return (lambda frame: frame), build, {"tideflow": tdf.__version__}


def _wrap_operator(flow: Any, step: str, wrap: Any) -> None:
    """Have ``wrap(operator)`` see the operator the runtime builds for ``step`` (its factory is
    wrapped; the operator itself is tideflow's, unchanged)."""
    node = flow.nodes[step]
    make = node.params["factory"]

    def factory():  # type: ignore[no-untyped-def]
        operator = make()
        wrap(operator)
        return operator

    node.params["factory"] = factory


def _profile_hook(counter: _Counter):  # type: ignore[no-untyped-def]
    """cProfile the window operator's ``process`` and ``finish`` (they run on the runtime's chain
    thread, which cProfile does not follow by itself); return a function giving the summary."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    seconds = {"process": 0.0, "finish": 0.0}

    def wrap(operator: Any) -> None:
        for name in ("process", "finish"):
            original = getattr(operator, name)

            def timed(*a: Any, _original: Any = original, _name: str = name) -> Any:
                started = time.perf_counter()
                profiler.enable()
                try:
                    return _original(*a)
                finally:
                    profiler.disable()
                    seconds[_name] += time.perf_counter() - started

            setattr(operator, name, timed)

    _wrap_operator(counter.flow, "w", wrap)

    def summary() -> dict[str, Any]:
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        rows = []
        for (file, line, function), (_cc, calls, own, cumulative, _callers) in stats.items():
            where = f"{_short(file)}:{line}({function})" if line else function
            rows.append({"function": where, "calls": calls, "own_s": own, "cumulative_s": cumulative})
        return {
            "operator_seconds": seconds,
            "by_own": sorted(rows, key=lambda r: -r["own_s"])[:14],
            "by_cumulative": sorted(rows, key=lambda r: -r["cumulative_s"])[:14],
        }

    return summary


def _short(file: str) -> str:
    for marker in ("/src/", "/site-packages/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _bytewax_common():  # type: ignore[no-untyped-def]
    """Bytewax imports, the frozen event clock, and dict building shared by its two workers."""
    from datetime import UTC, datetime, timedelta

    from bytewax.operators.windowing import EventClock

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    frozen = datetime(2020, 1, 1, tzinfo=UTC)

    def clock() -> EventClock:
        return EventClock(
            ts_getter=lambda event: event["t"],
            wait_for_system_duration=timedelta(milliseconds=DELAY_MS),
            now_getter=lambda: frozen,
            to_system_utc=lambda _timestamp: None,
        )

    def dicts(frame: Any) -> list[dict[str, Any]]:
        """The events as dicts with an aware datetime (one object per distinct millisecond)."""
        import gc

        gc.disable()
        try:
            stamps: dict[int, datetime] = {}
            keys, ms, values = (frame.get_column(name).to_list() for name in ("key", "t", "v"))
            for m in ms:
                if m not in stamps:
                    stamps[m] = epoch + timedelta(milliseconds=m)
            return [{"key": k, "t": stamps[m], "v": v} for k, m, v in zip(keys, ms, values, strict=True)]
        finally:
            gc.enable()

    return epoch, clock, dicts


def _bytewax_runner(pl: Any, workload: str, batch_size: int):  # type: ignore[no-untyped-def]
    from datetime import timedelta
    from importlib.metadata import version

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import SessionWindower, SlidingWindower, TumblingWindower, count_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    epoch, clock, dicts = _bytewax_common()

    class CountPartition(StatelessSinkPartition):
        def __init__(self, counter: _Counter) -> None:
            self.counter = counter

        def write_batch(self, items: list[Any]) -> None:
            self.counter.results += len(items)
            self.counter.total += sum(count for _key, (_window, count) in items)

    class CountSink(DynamicSink):
        def __init__(self, counter: _Counter) -> None:
            self.counter = counter

        def build(self, step_id: str, worker_index: int, worker_count: int) -> CountPartition:
            return CountPartition(self.counter)

    size, every, gap = (timedelta(milliseconds=ms) for ms in (SIZE_MS, EVERY_MS, GAP_MS))
    windower = {
        "tumbling": lambda: TumblingWindower(length=size, align_to=epoch),
        "sliding": lambda: SlidingWindower(length=size, offset=every, align_to=epoch),
        "session": lambda: SessionWindower(gap=gap),
    }[workload]

    def build(events):  # type: ignore[no-untyped-def]
        counter = _Counter()
        flow = Dataflow("bench_windows")
        stream = op.input("events", flow, TestingSource(events, batch_size=BYTEWAX_RECORD_BATCH))
        windows = count_window("w", stream, clock(), windower(), key=lambda event: str(event["key"]))
        op.output("out", windows.down, CountSink(counter))
        return (lambda: run_main(flow)), counter

    return dicts, build, {"bytewax": version("bytewax")}


# -- memory per live key -----------------------------------------------------------------------------
def _tideflow_memory(pl: Any, frame: Any, args: argparse.Namespace) -> dict[str, Any]:
    """RSS growth while a never-firing window holds every key; sampled in the operator's
    ``finish`` (all input absorbed, nothing flushed yet) through a wrapped factory."""
    import gc

    import tideflow as tdf
    from tideflow.io import MemorySource, NullSink

    def build(source_frame: Any) -> Any:
        flow = tdf.Flow("bench-windows-memory")
        source = MemorySource(source_frame, time="t", batch_size=args.batch_size)
        stream = flow.source("events", source, watermark=tdf.BoundedOutOfOrder(DELAY_MS))
        stream.key_by("key").window("w", tdf.windows.tumbling(HUGE)).agg(n=pl.len()).sink("out", NullSink())
        return flow

    build(frame.head(1_000)).run(handle_signals=False)  # warm-up: imports and first-call costs
    probe: dict[str, Any] = {}

    def wrap(operator: Any) -> None:
        finish = operator.finish

        def probed(ctx: Any) -> Any:
            probe["rss"] = _rss()
            probe["state_rows"] = operator.state_size()
            frames = [f for pane in getattr(operator, "panes", {}).values() for f in [*pane.partials, *pane.raw]]
            probe["state_bytes"] = sum(f.estimated_size() for f in frames)
            probe["state_frames"] = len(frames)
            return finish(ctx)

        operator.finish = probed

    flow = build(frame)
    _wrap_operator(flow, "w", wrap)
    keys = frame.get_column("key").n_unique()
    gc.collect()
    gc.freeze()
    before = _rss()
    started = time.perf_counter()
    flow.run(handle_signals=False)
    seconds = time.perf_counter() - started
    return _memory_result(probe, before, keys, seconds, {"tideflow": tdf.__version__})


def _memory_result(
    probe: dict[str, Any], before: int, keys: int, seconds: float, versions: dict[str, str]
) -> dict[str, Any]:
    result = {
        "keys": keys,
        "rss_before": before,
        "rss_growth": probe["rss"] - before,
        "bytes_per_key": (probe["rss"] - before) / keys,
        "seconds": seconds,
        "versions": versions,
    }
    for name in ("state_rows", "state_bytes", "state_frames", "folded"):
        if name in probe:
            result[name] = probe[name]
    return result


def _bytewax_memory(pl: Any, frame: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The same for Bytewax: its source, once the events are out, yields empty batches until the
    window's folder has taken every event, then samples RSS and ends the input (EOF flushes)."""
    import gc
    import operator as ops
    from datetime import timedelta
    from importlib.metadata import version

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.operators.windowing import TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    epoch, clock, dicts = _bytewax_common()
    probe: dict[str, Any] = {"folded": 0}

    class Partition(StatelessSourcePartition):
        def __init__(self, events: list[dict[str, Any]]) -> None:
            self.events, self.offset, self.deadline = events, 0, None

        def next_batch(self) -> list[Any]:
            if self.offset < len(self.events):
                self.offset += BYTEWAX_RECORD_BATCH
                return self.events[self.offset - BYTEWAX_RECORD_BATCH : self.offset]
            self.deadline = self.deadline or time.monotonic() + 60
            if probe["folded"] < len(self.events) and time.monotonic() < self.deadline:
                return []
            probe["rss"] = _rss()
            raise StopIteration

    class Source(DynamicSource):
        def __init__(self, events: list[dict[str, Any]]) -> None:
            self.events = events

        def build(self, step_id: str, worker_index: int, worker_count: int) -> Partition:
            return Partition(self.events)

    class Discard(StatelessSinkPartition):
        def write_batch(self, items: list[Any]) -> None:
            pass

    class DiscardSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Discard:
            return Discard()

    def count(state: int, _event: Any) -> int:
        probe["folded"] += 1
        return state + 1

    def build(events: list[dict[str, Any]]) -> Any:
        # count_window is exactly key_on + fold_window(ordered=False); spelled out to count folds.
        flow = Dataflow("bench_windows_memory")
        keyed = op.key_on("key", op.input("events", flow, Source(events)), lambda event: str(event["key"]))
        windower = TumblingWindower(length=timedelta(days=3650), align_to=epoch)
        windows = fold_window("w", keyed, clock(), windower, int, count, ops.add, ordered=False)
        op.output("out", windows.down, DiscardSink())
        return flow

    events = dicts(frame)
    run_main(build(events[:1_000]))  # warm-up
    probe["folded"] = 0
    flow = build(events)
    keys = len({event["key"] for event in events})
    del frame
    gc.collect()
    gc.freeze()
    before = _rss()
    started = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started
    if probe["folded"] != len(events):
        raise RuntimeError(f"bytewax folded {probe['folded']} of {len(events)} events before the probe")
    return _memory_result(probe, before, keys, seconds, {"bytewax": version("bytewax")})


# -- parent: data, scheduling, report --------------------------------------------------------------
def _generate(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the event files; return the expected (results, total) of every throughput workload."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(args.seed)
    rows = max(args.events, args.session_events)
    frame = pl.DataFrame(
        {
            "key": rng.integers(0, KEYS, size=rows, dtype=np.int64),
            "t": T0_MS + np.arange(rows, dtype=np.int64) * 1000 // EVENTS_PER_SECOND,
            "v": rng.random(rows),
        }
    )
    frame.write_parquet(folder / "events.parquet")
    memory_keys = np.concatenate([rng.permutation(args.memory_keys) for _ in range(max(args.memory_events_per_key))])
    memory = pl.DataFrame(
        {
            "key": memory_keys.astype(np.int64),
            "t": T0_MS + np.arange(len(memory_keys), dtype=np.int64) * 1000 // EVENTS_PER_SECOND,
            "v": rng.random(len(memory_keys)),
        }
    )
    memory.write_parquet(folder / "memory.parquet")

    events, sessions = frame.head(args.events), frame.head(args.session_events)
    panes = events.select("key", pane=pl.col("t") // EVERY_MS).unique()
    per_window = SIZE_MS // EVERY_MS
    sliding = panes.select("key", start=pl.int_ranges(pl.col("pane") - per_window + 1, pl.col("pane") + 1))
    gaps = sessions.sort("key", "t", maintain_order=True).select((pl.col("t").diff().over("key") > GAP_MS).sum())
    return {
        "tumbling": (events.select("key", pl.col("t") // SIZE_MS).unique().height, events.height),
        "sliding": (sliding.explode("start").unique().height, events.height * per_window),
        "session": (sessions.get_column("key").n_unique() + int(gaps.item()), sessions.height),
    }


def _measure(
    python: Path | str,
    system: str,
    workload: str,
    data: Path,
    events: int,
    args: argparse.Namespace,
    profile: bool = False,
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    env = dict(os.environ, POLARS_MAX_THREADS="1", PYTHONHASHSEED="0", **(env_extra or {}))
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", system, "--workload", workload]
    cmd += ["--data", str(data), "--events", str(events), "--core", str(args.core)]
    cmd += ["--batch-size", str(args.batch_size)]
    if profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} {workload} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["polars_threads"] != 1 or result["affinity"] != [args.core]:
        pinning = f"cores {result['affinity']}, {result['polars_threads']} polars threads"
        raise RuntimeError(f"{system} {workload}: not pinned as asked ({pinning})")
    return result


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


def _label(system: str, batch_size: int) -> str:
    if system == "tideflow":
        return f"tideflow (batch {batch_size:,})"
    return f"bytewax (TestingSource batch {BYTEWAX_RECORD_BATCH})"


def _main(args: argparse.Namespace) -> int:
    log = sys.stderr
    systems = ["tideflow", "bytewax"] if args.only is None else [args.only]
    bytewax_note = None
    if "bytewax" in systems:
        bytewax_note = _bench_venv_problem()
        if bytewax_note:
            print(bytewax_note, file=log)
            systems = ["tideflow"]
    python = {"tideflow": sys.executable, "bytewax": BENCH_PYTHON}
    throughput = [w for w in THROUGHPUT if w in args.workloads]
    plan = [(w, s) for w in throughput for s in systems]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {entry: [] for entry in plan}
    memory: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    started = time.perf_counter()
    tree = _tree()
    with tempfile.TemporaryDirectory(prefix="tideflow-bench-windows-") as tmp:
        data = Path(tmp) / "events.parquet"
        expected = _generate(Path(tmp), args)
        print(f"generated {max(args.events, args.session_events):,} events (seed {args.seed})", file=log)
        for repeat in range(args.repeats):
            for workload, system in plan:
                events = args.session_events if workload == "session" else args.events
                result = _measure(python[system], system, workload, data, events, args)
                got = (result["results"], result["total"])
                if got != expected[workload]:
                    raise RuntimeError(
                        f"{system} {workload}: {got[0]:,} results counting {got[1]:,} events, expected "
                        f"{expected[workload][0]:,} counting {expected[workload][1]:,}"
                    )
                runs[(workload, system)].append(result)
                rate = events / result["seconds"]
                print(f"  run {repeat + 1}/{args.repeats} {workload:<9} {system:<9} {rate:>14,.0f} events/s", file=log)
        if "memory" in args.workloads:
            # (system, live keys, events per key, allocator setting)
            memory_plan = [("tideflow", args.memory_keys, p, "default") for p in args.memory_events_per_key]
            memory_plan += [("tideflow", args.memory_keys, p, "eager") for p in args.memory_events_per_key]
            memory_plan += [("bytewax", min(args.bytewax_memory_keys, args.memory_keys), 1, "default")]
            for system, keys, per_key, allocator in memory_plan:
                if system not in systems:
                    continue
                env = EAGER_JEMALLOC if allocator == "eager" else None
                result = _measure(
                    python[system], system, "memory", Path(tmp) / "memory.parquet", keys * per_key, args, env_extra=env
                )
                if result["keys"] != keys:
                    raise RuntimeError(f"{system} memory: {result['keys']:,} live keys, expected {keys:,}")
                result.update(events_per_key=per_key, allocator=allocator)
                memory.append(result)
                print(
                    f"  memory {system:<9} {keys:,} keys, {per_key} event(s) per key, {allocator} allocator: "
                    f"{result['bytes_per_key']:,.0f} bytes/key ({result['seconds']:.1f} s)",
                    file=log,
                )
        if args.profile:
            for workload in throughput:
                events = args.session_events if workload == "session" else args.events
                result = _measure(python["tideflow"], "tideflow", workload, data, events, args, profile=True)
                profiles[workload] = {"events_per_s": events / result["seconds"], **result["profile"]}
                print(f"  profiled tideflow {workload}", file=log)

    rows = []
    for workload, system in plan:
        results = runs[(workload, system)]
        events = results[0]["events"]
        rates = [events / r["seconds"] for r in results]
        rows.append(
            {
                "workload": workload,
                "system": system,
                "label": _label(system, args.batch_size),
                "events": events,
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "runs": rates,
                "results": results[0]["results"],
                "total": results[0]["total"],
                "prepare_seconds": statistics.median(r["prepare_seconds"] for r in results),
                "target": TARGETS[workload] if system == "tideflow" else None,
                "versions": results[0]["versions"],
            }
        )
    medians = {(row["workload"], row["system"]): row["median"] for row in rows}
    ratios = [
        {"workload": w, "ratio": medians[(w, "tideflow")] / medians[(w, "bytewax")]}
        for w in throughput
        if (w, "tideflow") in medians and (w, "bytewax") in medians
    ]
    versions: dict[str, str] = {}
    for row in [*rows, *memory]:
        prefix = "bench-venv " if row["system"] == "bytewax" else ""
        for name, value in row["versions"].items():
            versions[f"{prefix}{name}"] = value
    report = {
        "benchmark": "windows",
        "events": args.events,
        "session_events": args.session_events,
        "memory_keys": args.memory_keys,
        "bytewax_memory_keys": min(args.bytewax_memory_keys, args.memory_keys),
        "tideflow_tree": tree if _tree() == tree else f"{tree} at the start, {_tree()} at the end: src/ changed",
        "repeats": args.repeats,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "cores": 1,
        "core": args.core,
        "cpu": _cpu_model(),
        "machine_cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "results": rows,
        "ratios": ratios,
        "memory": memory,
        "flink_nexmark_published": [
            {"query": q, "what": what, "events_per_s_per_core": rate} for q, what, rate in FLINK_NEXMARK
        ],
        "profiles": profiles,
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
        f"windows: count per key, {report['events']:,} events ({report['session_events']:,} for sessions), "
        f"10,000 keys, 100,000 events per event-second, median of {report['repeats']} runs, "
        f"cores: 1 (core {report['core']} of {report['machine_cores']}), POLARS_MAX_THREADS=1"
    )
    print(f"cpu: {report['cpu']}   python: {report['python']}   tideflow tree: {report['tideflow_tree']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    if report["note"]:
        print(f"note: {report['note']}")
    if report["results"]:
        print()
        header = f"{'workload':<9} {'system':<36} {'median ev/s':>13} {'min':>13} {'max':>13} {'results':>9}  target"
        print(header)
        print("-" * len(header))
        for row in report["results"]:
            target = ""
            if row["target"]:
                met = "met" if row["median"] >= row["target"] else "MISSED"
                target = f">= {row['target'] / 1e6:g} M: {met}"
            print(
                f"{row['workload']:<9} {row['label']:<36} {row['median']:>13,.0f} {row['min']:>13,.0f} "
                f"{row['max']:>13,.0f} {row['results']:>9,}  {target}"
            )
    for ratio in report["ratios"]:
        print(f"{ratio['workload']}: tideflow / bytewax = {ratio['ratio']:,.1f}x")
    if report["memory"]:
        print("\nmemory per live key: RSS growth / keys, sampled with every event absorbed, before the end-of-input")
        print("flush (a tumbling window that never fires); allocator 'eager': jemalloc returns freed pages at once")
        header = f"{'system':<9} {'live keys':>10} {'ev/key':>6} {'allocator':>9} {'bytes/key':>10} {'RSS growth':>11}"
        print(header + "  tideflow state frames (polars estimated_size)")
        print("-" * (len(header) + 46))
        for row in report["memory"]:
            line = (
                f"{row['system']:<9} {row['keys']:>10,} {row['events_per_key']:>6} {row['allocator']:>9} "
                f"{row['bytes_per_key']:>10,.0f} {row['rss_growth'] / 2**20:>7,.0f} MiB"
            )
            if "state_bytes" in row:
                line += (
                    f"  {row['state_bytes'] / row['keys']:,.1f} bytes/key: {row['state_rows']:,} partial rows "
                    f"in {row['state_frames']} frames"
                )
            print(line)
    print("\nFlink 1.13 NEXMark, published per-core throughput (github.com/nexmark/nexmark; not measured here):")
    for q in report["flink_nexmark_published"]:
        print(f"  {q['query']:<4} {q['events_per_s_per_core']:>8,} events/s/core  {q['what']}")
    for workload, profile in report["profiles"].items():
        seconds = profile["operator_seconds"]
        print(
            f"\nprofile: tideflow {workload} under cProfile ({profile['events_per_s']:,.0f} events/s profiled); "
            f"window operator: process {seconds['process']:.2f} s, "
            f"finish (end-of-input flush) {seconds['finish']:.2f} s"
        )
        print(f"  {'own s':>7} {'cum s':>7} {'calls':>9}  function")
        for row in profile["by_own"]:
            print(f"  {row['own_s']:>7.2f} {row['cumulative_s']:>7.2f} {row['calls']:>9,}  {row['function']}")
        print("  by cumulative time:")
        for row in profile["by_cumulative"]:
            print(f"  {row['own_s']:>7.2f} {row['cumulative_s']:>7.2f} {row['calls']:>9,}  {row['function']}")
    print(f"\n(total {report['seconds_total']} s)")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _workloads(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"workloads are {', '.join(WORKLOADS)}; got {text!r}")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Windows throughput (tumbling, sliding, session count per key) and state bytes per live "
        "key, tideflow beside Bytewax 0.21.1, one core, median of repeated runs in fresh subprocesses.",
    )
    parser.add_argument("--events", type=int, default=2_000_000, help="events per tumbling/sliding run (2,000,000)")
    parser.add_argument("--session-events", type=int, default=300_000, help="events per session run (default 300,000)")
    parser.add_argument(
        "--memory-keys", type=int, default=1_000_000, help="live keys of the memory workload (default 1,000,000)"
    )
    parser.add_argument(
        "--memory-events-per-key",
        type=_int_list,
        default=[1, 2],
        help="tideflow's events per key in the memory workload, comma-separated, one run each (default 1,2; "
        "Bytewax gets 1: its per-key count state does not grow with events)",
    )
    parser.add_argument(
        "--bytewax-memory-keys",
        type=int,
        default=250_000,
        help="Bytewax's live keys in the memory workload (default 250,000; 1,000,000 takes ~2 minutes)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per system and workload (default 3)")
    parser.add_argument(
        "--workloads",
        type=_workloads,
        default=list(WORKLOADS),
        help="comma-separated subset of tumbling,sliding,session,memory (default all)",
    )
    parser.add_argument("--batch-size", type=int, default=65_536, help="tideflow's source batch size (65,536)")
    parser.add_argument("--only", choices=["tideflow", "bytewax"], help="measure one system only")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, run tideflow once more per throughput workload under cProfile and print "
        "where the window operator's time goes",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated events (default 42)")
    parser.add_argument("--core", type=int, default=None, help="the core to pin to (default: the last one allowed)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.core is None:
        args.core = _default_core()
    if args.worker:
        args.system = args.worker
        _worker(args)
        return 0
    if min(args.events, args.session_events, args.memory_keys, args.bytewax_memory_keys, args.repeats) < 1:
        parser.error("--events, --session-events, --memory-keys, --bytewax-memory-keys and --repeats must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return _main(args)


if __name__ == "__main__":
    sys.exit(main())
