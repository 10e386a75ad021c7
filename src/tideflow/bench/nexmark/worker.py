"""One timed tideflow run of a NEXMark query; run as a script by the harness (see harness.py).

``python worker.py --query q5 --data DIR --events N [--core C] ...`` pins itself to core ``C``
before anything imports polars, reads the events (``--source memory``: the files the harness
wrote, into frames, before the timer; ``--source generator``: a ``NexmarkSource`` per kind
generates them inside the timed run), warms up on the first ``--warmup`` events, freezes the
collector's view of the prepared inputs, times ``flow.run()``, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time one NEXMark query in tideflow (one core).")
    parser.add_argument("--query", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--source", choices=["memory", "generator"], default="memory")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rate", type=int, default=10_000_000)
    parser.add_argument("--out-of-order", type=int, default=1)
    parser.add_argument("--base-time", type=int, default=None)
    parser.add_argument("--core", type=int, default=None)
    args = parser.parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    _run(args)
    return 0


def _run(args: argparse.Namespace) -> None:
    import gc
    import json
    import platform
    import time
    from pathlib import Path

    import polars as pl

    import tideflow as tdf
    from tideflow.bench.nexmark.generator import DEFAULT_BASE_TIME_MS, NexmarkConfig
    from tideflow.bench.nexmark.harness import read_events, summarize_frame
    from tideflow.bench.nexmark.queries import KINDS_USED, build

    config = NexmarkConfig(
        events=args.events,
        seed=args.seed,
        rate=args.rate,
        base_time_ms=args.base_time if args.base_time is not None else DEFAULT_BASE_TIME_MS,
        out_of_order_group_size=args.out_of_order,
    )
    kinds = KINDS_USED[args.query]
    warm_events = min(args.warmup, args.events)
    prepare_started = time.perf_counter()
    if args.source == "memory":
        frames = read_events(Path(args.data), kinds)
        warm_frames = read_events(Path(args.data), kinds, warm_events)
    else:
        frames = warm_frames = None
    prepare_seconds = time.perf_counter() - prepare_started

    def flow(events_frames: dict | None, events: int) -> tuple[tdf.Flow, tdf.io.MemorySink]:
        sink = tdf.io.MemorySink()
        cfg = config if events == config.events else config.with_(events=events)
        return build(args.query, sink, config=cfg, frames=events_frames, batch_size=args.batch_size), sink

    warm_flow, _ = flow(warm_frames, warm_events)
    warm_flow.run(handle_signals=False)
    del warm_flow, warm_frames
    gc.collect()
    gc.freeze()
    timed, sink = flow(frames, config.events)
    started = time.perf_counter()
    result = timed.run(handle_signals=False)
    seconds = time.perf_counter() - started
    output = sink.frame
    rows_read = sum(f.height for f in frames.values()) if frames is not None else result.records_in
    report = {
        "system": "tideflow",
        "query": args.query,
        "events": config.events,
        "rows_read": rows_read,
        "source": args.source,
        "batch_size": args.batch_size,
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
        "out_rows": output.height,
        "dead_letters": result.dead_letters,
        **summarize_frame(args.query, output),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "polars_threads": pl.thread_pool_size(),
        "versions": {"python": platform.python_version(), "tideflow": tdf.__version__, "polars": pl.__version__},
    }
    if result.dead_letters:
        raise SystemExit(f"{args.query}: {result.dead_letters} dead letters: {result.dead_letter_samples[:3]}")
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    sys.exit(main())
