"""Checkpoint figures: the cost of checkpointing every second, and 1 M keyed states.

1. Throughput of a stateful pipeline (dedupe → per-user tumbling windows → SQLite) with a
   checkpoint every second, as a fraction of the same pipeline without checkpoints (medians
   of ``--repeat`` interleaved runs).
2. A checkpoint holding 1 M keyed states (``stateful_map`` with a TTL, and ``dedupe``): its
   size, the time from barrier to durable, and recovery: loading, decoding and restoring it.

    .venv/bin/python benchmarks/checkpoints.py [--events 3000000] [--keys 1000000] [--repeat 3]

Prints Markdown (and writes it to build/checkpoints.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import tideflow as tdf
from tideflow.checkpoint.store import CheckpointWarning, open_store
from tideflow.runtime.checkpointing import CheckpointSettings
from tideflow.runtime.local import LocalRuntime


def events(count: int, users: int, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ts = np.arange(count, dtype=np.int64) // 10 + rng.integers(0, 500, count)  # 10 k events per second of event time
    ids, who = rng.integers(0, count // 2, count), rng.integers(0, users, count)
    return pl.DataFrame({"id": ids, "user": who, "ts": ts, "v": rng.random(count)})


PIPELINES = {
    # name: (users, window). The first writes ~1 % of its input; the second ~60 %: a worst case
    # for a two-phase sink, which writes every row twice (pending, then the table).
    "aggregating": (1_000, "10s"),
    "sink-heavy": (10_000, "1s"),
}


def throughput_flow(frame: pl.DataFrame, out: Path, window: str) -> tdf.Flow:
    flow = tdf.Flow("checkpoint-throughput")
    stream = flow.source(
        "events", tdf.io.MemorySource(frame, time="ts", batch_size=10_000), watermark=tdf.BoundedOutOfOrder("1s")
    )
    unique = stream.dedupe("dedupe", key="id", within="2s")
    per_user = unique.key_by("user").window("per_user", tdf.windows.tumbling(window))
    per_user.agg(n=pl.len(), v=pl.col("v").sum()).sink("out", tdf.io.SqliteSink(str(out / "out.db"), table="windows"))
    return flow


def measure_throughput(frame: pl.DataFrame, window: str, repeat: int) -> dict[str, Any]:
    plain: list[float] = []
    checkpointed: list[float] = []
    stats: list[dict[str, Any]] = []
    written = 0
    for _ in range(repeat):
        for mode in ("plain", "checkpointed"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                flow = throughput_flow(frame, out, window)
                options: dict[str, Any] = {}
                if mode == "checkpointed":
                    options = {"checkpoint_dir": out / "ckpt", "checkpoint_every": "1s"}
                result = flow.run(handle_signals=False, **options)
                written = result.records_out
                (checkpointed if mode == "checkpointed" else plain).append(result.records_per_s)
                if result.checkpoints is not None:
                    stats.append(result.checkpoints)
    return {
        "written": written,
        "plain_per_s": statistics.median(plain),
        "checkpointed_per_s": statistics.median(checkpointed),
        "ratio": statistics.median(checkpointed) / statistics.median(plain),
        "checkpoints_per_run": statistics.median(s["completed"] for s in stats),
        "checkpoint_seconds": statistics.median(s["median_seconds"] or 0 for s in stats),
        "checkpoint_bytes": statistics.median(s["median_bytes"] or 0 for s in stats),
    }


class StopAfter:
    """Stops the flow (a stop-with-checkpoint) once ``rows`` rows went through."""

    def __init__(self, rows: int) -> None:
        self.rows, self.seen, self.flow = rows, 0, None

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        self.seen += df.height
        if self.seen >= self.rows and self.flow is not None:
            self.flow.stop()
        return df


def keyed_flow(keys: int, kind: str, out: Path, total: int) -> tdf.Flow:
    """``total`` rows with ``keys`` distinct keys; stops after ``keys`` rows, when every key holds state."""
    frame = pl.DataFrame({"key": np.arange(total) % keys, "ts": np.arange(total, dtype=np.int64), "v": np.ones(total)})
    flow = tdf.Flow(f"keyed-{kind}")
    stop = StopAfter(keys)
    stop.flow = flow  # type: ignore[assignment]
    stream = flow.source(
        "events", tdf.io.MemorySource(frame, time="ts", batch_size=50_000), watermark=tdf.BoundedOutOfOrder("1s")
    ).map_batches("stop", stop, same_rows=True)
    if kind == "stateful_map":

        def count(state: int | None, row: dict[str, Any]) -> tuple[int, None]:
            return (state or 0) + 1, None

        kept = stream.key_by("key").stateful_map("state", count, ttl="1h")
    else:
        kept = stream.dedupe("state", key="key", within="1h")
    kept.sink("out", tdf.io.NullSink())
    return flow


def measure_keyed(keys: int, kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        flow = keyed_flow(keys, kind, out, 4 * keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            result = flow.run(handle_signals=False, checkpoint_dir=out / "ckpt", checkpoint_every="1h")
        assert result.checkpoints is not None
        store = open_store(out / "ckpt")
        info = store.list()[-1]
        started = time.perf_counter()
        checkpoint = store.load(info.epoch)
        loaded = time.perf_counter() - started
        store.close()
        flow = keyed_flow(keys, kind, out, 4 * keys)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            runtime = LocalRuntime(flow, checkpoints=CheckpointSettings(out / "ckpt", resume=True))
        restored = time.perf_counter() - started
        state_size = next(
            op.state_size() for w in runtime.workers for op in getattr(w, "ops", []) if op.step == "state"
        )
        return {
            "kind": kind,
            "keys": keys,
            "restored_entries": state_size,
            "bytes": info.bytes_total,
            "checkpoint_seconds": result.checkpoints["median_seconds"],
            "save_seconds": result.checkpoints["median_save_seconds"],
            "load_seconds": loaded,
            "recovery_seconds": restored,
            "groups": len(checkpoint.steps["state"]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    throughput = {
        name: measure_throughput(events(args.events, users), window, args.repeat)
        for name, (users, window) in PIPELINES.items()
    }
    keyed = [measure_keyed(args.keys, kind) for kind in ("stateful_map", "dedupe")]
    lines = [
        "### Checkpoint cost",
        "",
        f"dedupe → per-user tumbling windows → SQLite (exactly-once), {args.events:,} events, "
        f"median of {args.repeat} interleaved runs each:",
        "",
        "| pipeline | rows written | no checkpoints, events/s | checkpoint every 1 s, events/s | ratio "
        "| checkpoints per run | barrier → durable | size |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in throughput.items():
        users, window = PIPELINES[name]
        lines.append(
            f"| {name} ({users:,} users, {window} windows) | {row['written']:,} | {row['plain_per_s']:,.0f} "
            f"| {row['checkpointed_per_s']:,.0f} | **{row['ratio']:.3f}** | {row['checkpoints_per_run']:.0f} "
            f"| {row['checkpoint_seconds'] * 1000:.0f} ms | {row['checkpoint_bytes'] / 1e6:.2f} MB |"
        )
    lines += [
        "",
        f"### {args.keys:,} keyed states",
        "",
        "| state | key groups | checkpoint size | barrier → durable | store write | load + verify "
        "| recovery (load, decode, restore) | entries restored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in keyed:
        lines.append(
            f"| {row['kind']} | {row['groups']} | {row['bytes'] / 1e6:.1f} MB | {row['checkpoint_seconds']:.2f} s | "
            f"{row['save_seconds']:.2f} s | {row['load_seconds']:.2f} s | {row['recovery_seconds']:.2f} s | "
            f"{row['restored_entries']:,} |"
        )
    text = "\n".join(lines)
    print(text)
    Path("build").mkdir(exist_ok=True)
    Path("build/checkpoints.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
