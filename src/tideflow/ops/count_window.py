"""Count windows: per key, every ``n`` records in arrival order form a window.

Count windows do not use time: a window fires as soon as its n-th record arrives, and at the end
of input the last, partial window of each key fires with fewer records. ``window_start`` and
``window_end`` hold the earliest and latest event time of the window's records when the stream
has an event-time column (``window_end`` is then inclusive); ``window_index`` numbers a key's
windows from 0. Vectorized: per batch, the open rows of every key plus the batch's rows are
numbered per key in one polars expression, and complete windows are aggregated in one group-by.

The state is the open rows (one frame), the records seen per key, the running ordinal and the
event-time type: ``snapshot()`` / ``restore()`` round-trip it as plain data for checkpoints, and
``snapshot_groups()`` splits a keyed count window's open rows and counts by key group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from ..record import WATERMARK, Batch
from ..time.watermarks import event_time_ms
from .aggregation import ORDINAL, AggPlan
from .base import OnError, Operator, StepContext
from .keygroups import key_groups, pick, split_by_group
from .window import (
    GLOBAL_KEY,
    Pieces,
    group_header,
    group_parts,
    groups_by_columns,
    join_frame,
    key_group_info,
    split_frames,
)

INDEX = "__index"
_TIME = "__t"
SNAPSHOT_VERSION = 1


class CountWindowOp(Operator):
    """Windows of ``n`` records per key (global without ``key_by``)."""

    def __init__(
        self, step: str, *, n: int, key: list[str] | None, time: str | None, plan: AggPlan, on_error: OnError
    ) -> None:
        super().__init__(step, on_error)
        self.n = n
        self.by = list(key) if key else [GLOBAL_KEY]
        self.global_key = not key
        self.time = time
        self.plan = plan
        self.open: pl.DataFrame | None = None
        """Rows of every key's unfinished window, with their per-key index."""
        self.counts: dict[tuple[object, ...], int] = {}
        self.ordinal = 0
        self.time_dtype: pl.DataType | None = None

    def _rows(self, df: pl.DataFrame) -> pl.DataFrame:
        if self.global_key:
            df = df.with_columns(pl.lit(0, pl.Int8).alias(GLOBAL_KEY))
        columns = [*self.by, *[c for c in self.plan.all_columns if c not in self.by]]
        extra = []
        if self.time is not None:
            if self.time_dtype is None:
                self.time_dtype = df.schema[self.time]
            extra.append(event_time_ms(df.get_column(self.time)).alias(_TIME))
        rows = df.select(columns).with_columns(
            *extra, pl.int_range(self.ordinal, self.ordinal + df.height, dtype=pl.Int64).alias(ORDINAL)
        )
        self.ordinal += df.height
        return rows

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        self.records_in += batch.df.height
        rows = self._rows(batch.df)
        seen = self._offsets(rows)
        numbered = (
            rows.join(seen, on=self.by, how="left", nulls_equal=True)
            .with_columns((pl.col("__offset").fill_null(0) + pl.int_range(pl.len()).over(self.by)).alias(INDEX))
            .drop("__offset")
        )
        pending = numbered if self.open is None else pl.concat([self.open, numbered], how="vertical_relaxed")
        pending = pending.with_columns((pl.col(INDEX) // self.n).alias("window_index"))
        sizes = pending.group_by([*self.by, "window_index"]).agg(pl.len().alias("__size"))
        pending = pending.join(sizes, on=[*self.by, "window_index"], how="left", nulls_equal=True)
        complete = pending.filter(pl.col("__size") == self.n).drop("__size")
        self.open = pending.filter(pl.col("__size") < self.n).drop("__size", "window_index")
        self._remember(numbered)
        out = self._results(complete, batch.watermark)
        return Batch(out, None, batch.watermark, 0, batch.idle_ms) if out is not None else None

    def _offsets(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Records seen so far per key (as a frame, joined instead of looked up row by row)."""
        keys = rows.select(self.by).unique()
        counts = [self.counts.get(tuple(k), 0) for k in keys.iter_rows()]
        return keys.with_columns(pl.Series("__offset", counts, dtype=pl.Int64))

    def _remember(self, numbered: pl.DataFrame) -> None:
        last = numbered.group_by(self.by).agg(pl.col(INDEX).max())
        for *key, index in last.iter_rows():
            self.counts[tuple(key)] = index + 1

    def _results(self, complete: pl.DataFrame, watermark: int | None) -> pl.DataFrame | None:
        if complete.height == 0:
            return None
        by = [*self.by, "window_index"]
        values = self.plan.evaluate(complete, by)
        if self.time is not None:
            bounds = complete.group_by(by).agg(
                pl.col(_TIME).min().alias("window_start"), pl.col(_TIME).max().alias("window_end")
            )
            dtype = self.time_dtype
            if isinstance(dtype, pl.Datetime):
                bounds = bounds.with_columns(
                    pl.from_epoch(pl.col(c), time_unit="ms").cast(dtype) for c in ("window_start", "window_end")
                )
            values = values.join(bounds, on=by, how="left", nulls_equal=True)
        keys = [] if self.global_key else self.by
        times = ["window_start", "window_end"] if self.time is not None else []
        out = values.sort(by).with_columns(
            pl.lit(False).alias("is_update"), pl.lit(watermark, pl.Int64).alias(WATERMARK)
        )
        self.records_out += out.height
        return out.select([*keys, "window_index", *times, *self.plan.names, "is_update", WATERMARK])

    def finish(self, ctx: StepContext) -> Batch | None:
        """End of input: each key's last, partial window fires."""
        if self.open is None or self.open.height == 0:
            return None
        rest = self.open.with_columns((pl.col(INDEX) // self.n).alias("window_index"))
        self.open = None
        out = self._results(rest, None)
        return Batch(out) if out is not None else None

    def state_size(self) -> int:
        return (self.open.height if self.open is not None else 0) + len(self.counts)

    def snapshot(self) -> dict[str, Any]:
        """The state as plain data: the open rows (a frame: immutable, so not copied), the
        records seen per key, the ordinal of the next row and the event-time type."""
        return {
            "kind": "count_window",
            "version": SNAPSHOT_VERSION,
            "n": self.n,
            "open": self.open,
            "counts": dict(self.counts),
            "ordinal": self.ordinal,
            "time_dtype": self.time_dtype,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state by ``snapshot`` (from ``snapshot()`` of a count-window step). A
        snapshot taken with another ``n`` is refused: its open rows were numbered for that ``n``."""
        if snapshot.get("kind") != "count_window" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a count_window snapshot (kind {snapshot.get('kind')!r})")
        if snapshot["n"] != self.n:
            raise ValueError(f"step {self.step!r}: the snapshot has windows of {snapshot['n']} records, not {self.n}")
        self.open = snapshot["open"]
        self.counts = dict(snapshot["counts"])
        self.ordinal = snapshot["ordinal"]
        self.time_dtype = snapshot["time_dtype"]

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """The state split by key group: part ``g`` holds ``{"open", "keys", "counts"}``, the open
        rows of its keys (:data:`~tideflow.ops.window.Pieces`) and their records seen (an int64
        array aligned with ``keys``); part ``-1`` holds ``n``, the ordinal and the event-time
        type. A global (un-keyed) count window has no key to split by: its whole ``snapshot()``
        goes under ``-1``."""
        whole = self.snapshot()
        if self.global_key:
            return {-1: whole}
        # The open frame's columns stay in -1 (no rows): a worker without open rows keeps them.
        empty = None if self.open is None else self.open.clear()
        header = {**whole, "key_groups": key_group_info(groups), "open": empty, "counts": None}
        parts: dict[int, Any] = {-1: header}

        def part(group: int) -> dict[str, Any]:
            if group not in parts:
                parts[group] = {"open": [], "keys": [], "counts": np.empty(0, dtype=np.int64)}
            return parts[group]  # type: ignore[no-any-return]

        for group, pieces in split_frames([self.open], groups_by_columns(self.by, groups)).items():
            part(group)["open"] = pieces
        keys = list(self.counts)
        counts = np.fromiter(self.counts.values(), dtype=np.int64, count=len(keys))
        # Counts are keyed by row tuples; rows are routed by their key values (one column: the value).
        values = [k[0] for k in keys] if len(self.by) == 1 else keys
        for group, at in split_by_group(key_groups(values, groups)):
            part(group).update(keys=pick(keys, at), counts=counts[at])
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the open rows and counts of the key groups in ``parts`` (any subset) and the
        scalars of ``-1``."""
        header = group_header(parts, "count_window", self.step, SNAPSHOT_VERSION)
        if header is None:
            self.restore(parts[-1])
            return
        if self.global_key:
            raise ValueError(f"step {self.step!r}: a keyed count window's snapshot cannot restore a global one")
        opened: list[Pieces] = []
        counts: dict[tuple[object, ...], int] = {}
        for part in group_parts(parts):
            opened.append(part["open"])
            counts.update(zip(part["keys"], np.asarray(part["counts"], dtype=np.int64).tolist(), strict=True))
        rows = join_frame(opened)
        self.restore({**header, "open": header["open"] if rows is None else rows, "counts": counts})
