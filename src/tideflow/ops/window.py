"""Event-time windows over panes: tumbling and sliding, with lateness, updates and late output.

How a batch is processed (see docs/semantics.md for the rules):

* Every row carries the watermark in effect before it (``_tf_wm``). A row belongs to one *pane*
  (``every`` long; for tumbling windows pane = window) and to the windows that contain the pane.
* A row is **dropped to the late output** when every window containing it is past its allowed
  lateness (``wm_before >= pane_start + size + lateness``). It **triggers updates** when some
  window containing it has already fired (``wm_before >= pane_start + every``). Otherwise it is
  on time.
* The batch is cut into segments at the rows after which the watermark crosses a window end and
  at update-triggering rows. Segments are absorbed as one vectorized group-by each; windows fire
  exactly after the row that moves the watermark past their end, and each update is computed
  exactly after its row. So results are the same however the input is cut into batches.
* State is one list of partial frames per pane (compacted as it grows), fired when the watermark
  reaches a window's end (a heap of ends: no scan over keys or panes), and freed when the last
  window containing a pane is past its lateness (a second heap).

Checkpoints split a keyed window's state by key group (``snapshot_groups``): each pane's partial
and kept-row frames are cut by the key group of their key columns, and the timers, which are per
pane and shared by all keys, stay in part ``-1``. The helpers at the end of this module do the
cutting and the rejoining for every frame-holding operator (session and count windows, joins).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..record import WATERMARK, Batch
from ..time.watermarks import END_OF_TIME, NO_WATERMARK, event_time_ms
from ..time.windows import Sliding, Tumbling
from .aggregation import ORDINAL, AggPlan
from .base import OnError, Operator, StepContext
from .keygroups import KEY_GROUP_FUNCTION, key_groups_of_columns, split_by_group

PANE = "__pane"
PROCESSING_TIME = "__ptime"
GLOBAL_KEY = "__global"
COMPACT_AFTER = 16
"""Partial frames a pane may collect before they are merged into one."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


SNAPSHOT_VERSION = 1


@dataclass
class _Pane:
    partials: list[pl.DataFrame] = field(default_factory=list)
    raw: list[pl.DataFrame] = field(default_factory=list)
    rows: int = 0

    def compact(self, plan: AggPlan, by: list[str]) -> None:
        if len(self.partials) > 1:
            self.partials = [plan.merge(pl.concat(self.partials, how="vertical_relaxed"), by)]


class PaneWindowOp(Operator):
    """Tumbling and sliding event-time windows with incremental aggregation."""

    requires_watermark = True

    def __init__(
        self,
        step: str,
        *,
        assigner: Tumbling | Sliding,
        key: list[str] | None,
        time: str,
        plan: AggPlan,
        allowed_lateness_ms: int,
        emit: str,
        update_every: int,
        on_error: OnError,
        processing_time: bool = False,
    ) -> None:
        super().__init__(step, on_error)
        self.processing_time = processing_time
        if processing_time:
            # Windows over arrival time: rows take the wall clock when they reach the step, and
            # the watermark is the wall clock, so nothing is late and windows fire on time even
            # when no data arrives (the runtime ticks the step).
            self.requires_watermark = False
            self.tick_ms = max(10, min(assigner.every_ms // 4, 250))
            time = PROCESSING_TIME
        self.size = assigner.size_ms
        self.every = assigner.every_ms
        self.offset = assigner.offset_ms
        self.lateness = allowed_lateness_ms
        self.time = time
        self.by = list(key) if key else [GLOBAL_KEY]
        self.global_key = not key
        self.plan = plan
        self.emit = emit
        self.update_every = update_every
        self.panes: dict[int, _Pane] = {}
        self.fire_heap: list[int] = []
        self.pending_ends: set[int] = set()
        self.fired: set[int] = set()
        """Starts of windows that fired and are still within their lateness (may get updates)."""
        self.fired_gc: list[tuple[int, int]] = []
        self.gc_heap: list[tuple[int, int]] = []
        self.ordinal = 0
        self.time_dtype: pl.DataType | None = None
        self.late_records = 0
        self.updates_emitted = 0
        self._since_update: dict[int, int] = {}
        self._out: list[pl.DataFrame] = []

    # -- the batch ----------------------------------------------------------------------------
    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        if self.processing_time:
            batch = self._stamp(batch)
        df = batch.df
        self.records_in += df.height
        if self.time_dtype is None:
            self.time_dtype = df.schema[self.time]
        if self.global_key:
            df = df.with_columns(pl.lit(0, pl.Int8).alias(GLOBAL_KEY))
        t = event_time_ms(df.get_column(self.time)).to_numpy()
        before = df.get_column(WATERMARK).to_numpy()
        after = np.append(before[1:], batch.watermark if batch.watermark is not None else before[-1])
        if self.fire_heap and self.fire_heap[0] <= before[0]:
            # The watermark moved on between batches (an upstream window's results carry the
            # watermark of their firing; processing time is the clock): windows it passed fire
            # now, before these rows, and before their panes are freed below.
            self._fire(int(before[0]), getattr(self, "_last_watermark", int(before[0])))
        pane = (t - self.offset) // self.every * self.every + self.offset
        dropped = before >= pane + self.size + self.lateness
        updating = ~dropped & (before >= pane + self.every)
        if dropped.any():
            self.late_records += int(dropped.sum())
            self.emit_side("late", batch.with_df(batch.df.filter(pl.Series(dropped))))
        rows = df.with_columns(pl.Series(PANE, pane), pl.Series("__before", before))
        self._process_segments(rows, pane, before, after, dropped, updating)
        if self.emit == "updates":
            self._emit_early(rows.filter(pl.Series(~dropped & ~updating)))
        self._collect_garbage(int(after[-1]))
        self._last_watermark = int(after[-1])
        return self._flush(batch)

    def _stamp(self, batch: Batch) -> Batch:
        now = _wall_ms()
        self._clock = max(getattr(self, "_clock", now), now)
        df = batch.df.with_columns(
            pl.lit(self._clock, pl.Int64).cast(pl.Datetime("ms", "UTC")).alias(PROCESSING_TIME),
            pl.lit(self._clock, pl.Int64).alias(WATERMARK),
        )
        return Batch(df, batch.origin, self._clock, batch.input, batch.idle_ms)

    def on_watermark(self, watermark: int, ctx: StepContext) -> Batch | None:
        """The watermark moved without rows reaching this step: fire and free what is due."""
        if self.processing_time:
            return None
        before = getattr(self, "_last_watermark", watermark)
        self._fire(watermark, before)
        self._collect_garbage(watermark)
        self._last_watermark = watermark
        return self._flush(Batch(pl.DataFrame(), watermark=watermark))

    def on_tick(self, ctx: StepContext) -> Batch | None:
        """Processing time moved on: fire the windows whose end the wall clock passed."""
        now = _wall_ms()
        self._fire(now, now)
        self._collect_garbage(now)
        return self._flush(Batch(pl.DataFrame(), watermark=now))

    def _process_segments(self, rows, pane, before, after, dropped, updating) -> None:  # type: ignore[no-untyped-def]
        if self.emit == "final" and not updating.any():
            self._absorb_then_fire(rows, before, after, ~dropped)
            return
        first_ends = np.unique(pane) + self.every
        new_ends = (first_ends[:, None] + np.arange(0, self.size, self.every)[None, :]).ravel()
        known = np.fromiter(self.pending_ends, np.int64, len(self.pending_ends))
        ends = np.unique(np.concatenate([known, new_ends]))
        crossing = np.searchsorted(ends, after, "right") > np.searchsorted(ends, before, "right")
        cuts = np.flatnonzero(crossing | updating)
        absorb = ~dropped & ~updating
        start = 0
        for i in cuts.tolist():
            self._absorb(rows, start, i, absorb, before)
            if updating[i]:
                self._absorb(rows, i, i + 1, ~dropped, before)
                self._emit_updates(rows.slice(i, 1), int(pane[i]), int(before[i]))
            else:
                self._absorb(rows, i, i + 1, absorb, before)
            if crossing[i]:
                self._fire(int(after[i]), int(before[i]))
            start = i + 1
        self._absorb(rows, start, len(pane), absorb, before)

    def _absorb_then_fire(self, rows: pl.DataFrame, before: np.ndarray, after: np.ndarray, absorb: np.ndarray) -> None:
        """The common case, without cutting the batch at every window end it crosses.

        With no late-but-allowed row in the batch, an on-time row never belongs to a window that
        fired before it arrived (its earliest window ends after the watermark it came with), and
        a window that fires mid-batch holds no row from after its firing. So absorbing every
        on-time row first, then firing each window the batch's watermark passed, gives the same
        results as cutting row by row; each result keeps the watermark from before the row whose
        arrival fired it."""
        self._absorb(rows, 0, len(after), absorb, before)
        last = int(after[-1])
        while self.fire_heap and self.fire_heap[0] <= last:
            end = self.fire_heap[0]
            crossing = int(np.searchsorted(after, end, "left"))  # the first row whose watermark reached it
            self._fire(int(after[crossing]), int(before[crossing]))

    def _absorb(self, rows: pl.DataFrame, start: int, stop: int, mask: np.ndarray, before: np.ndarray) -> None:
        """Add rows ``start:stop`` selected by ``mask`` to their panes (no window fires inside)."""
        if stop <= start or not mask[start:stop].any():
            return
        watermark = int(before[start])
        part = rows.slice(start, stop - start).filter(pl.Series(mask[start:stop]))
        part = part.with_columns(pl.int_range(self.ordinal, self.ordinal + part.height, dtype=pl.Int64).alias(ORDINAL))
        self.ordinal += part.height
        for (pane_start,), group in part.partition_by(PANE, as_dict=True, maintain_order=True).items():
            self._add_to_pane(int(pane_start), group, watermark)

    def _add_to_pane(self, pane_start: int, rows: pl.DataFrame, watermark: int) -> None:
        state = self.panes.get(pane_start)
        if state is None:
            state = self.panes[pane_start] = _Pane()
            heapq.heappush(self.gc_heap, (pane_start + self.size + self.lateness, pane_start))
            for end in range(pane_start + self.every, pane_start + self.size + 1, self.every):
                if end <= watermark:
                    # Its end already passed (a late row opened the pane): it never fires as
                    # final; the row's update emission reports it.
                    self._mark_fired(end - self.size)
                elif end not in self.pending_ends:
                    self.pending_ends.add(end)
                    heapq.heappush(self.fire_heap, end)
        state.partials.append(self.plan.partial_frame(rows, self.by))
        if self.plan.keeps_rows:
            state.raw.append(self.plan.raw_frame(rows, self.by))
        state.rows += rows.height
        if len(state.partials) > COMPACT_AFTER:
            state.compact(self.plan, self.by)
        if self.emit == "updates":
            for end in range(pane_start + self.every, pane_start + self.size + 1, self.every):
                self._since_update[end] = self._since_update.get(end, 0) + rows.height

    # -- results ------------------------------------------------------------------------------
    def _window(self, start: int, only: pl.DataFrame | None = None) -> pl.DataFrame | None:
        """The aggregate of window ``[start, start + size)``, for all keys or those in ``only``."""
        panes = [self.panes[p] for p in range(start, start + self.size, self.every) if p in self.panes]
        partials = [f for p in panes for f in p.partials]
        if not partials:
            return None
        frame = pl.concat(partials, how="vertical_relaxed")
        raw = pl.concat([f for p in panes for f in p.raw], how="vertical_relaxed") if self.plan.keeps_rows else None
        if only is not None:
            # A batch whose key column was all null arrives typed Null: give it the panes' types.
            only = only.cast({name: frame.schema[name] for name in self.by}, strict=False)
            frame = frame.join(only, on=self.by, how="semi", nulls_equal=True)
            raw = raw.join(only, on=self.by, how="semi", nulls_equal=True) if raw is not None else None
            if frame.height == 0:
                return None
        return self.plan.finalize(self.plan.merge(frame, self.by), raw, self.by)

    def _result(self, start: int, values: pl.DataFrame, is_update: bool, watermark: int) -> None:
        dtype = self.time_dtype
        assert dtype is not None
        bounds = pl.Series([start, start + self.size], dtype=pl.Int64)
        if isinstance(dtype, pl.Datetime):
            bounds = pl.from_epoch(bounds, time_unit="ms").cast(dtype)
        elif dtype == pl.Date:
            bounds = pl.from_epoch(bounds, time_unit="ms").cast(pl.Date)
        out = values.with_columns(
            pl.lit(bounds[0]).cast(bounds.dtype).alias("window_start"),
            pl.lit(bounds[1]).cast(bounds.dtype).alias("window_end"),
            pl.lit(is_update).alias("is_update"),
            pl.lit(watermark, pl.Int64).alias(WATERMARK),
        )
        keys = [] if self.global_key else self.by
        self._out.append(out.select([*keys, "window_start", "window_end", *self.plan.names, "is_update", WATERMARK]))

    def _fire(self, watermark: int, before: int) -> None:
        """Emit the final result of every pending window whose end the watermark reached."""
        while self.fire_heap and self.fire_heap[0] <= watermark:
            end = heapq.heappop(self.fire_heap)
            self.pending_ends.discard(end)
            start = end - self.size
            self._mark_fired(start)
            self._since_update.pop(end, None)
            values = self._window(start)
            if values is not None:
                self._result(start, values, False, before)

    def _mark_fired(self, start: int) -> None:
        if start not in self.fired:
            self.fired.add(start)
            heapq.heappush(self.fired_gc, (start + self.size + self.lateness, start))

    def _emit_updates(self, row: pl.DataFrame, pane_start: int, before: int) -> None:
        """A late row within lateness: re-emit, for its key, each fired window containing it."""
        key = row.select(self.by)
        for end in range(pane_start + self.every, pane_start + self.size + 1, self.every):
            if end <= before < end + self.lateness:
                values = self._window(end - self.size, key)
                if values is not None:
                    self.updates_emitted += values.height
                    self._result(end - self.size, values, True, before)

    def _emit_early(self, on_time: pl.DataFrame) -> None:
        """``emit="updates"``: early results of open windows that took ``update_every`` rows."""
        if on_time.height == 0:
            return
        before = int(on_time.get_column("__before").max())
        for end in sorted(self._since_update):
            if self._since_update[end] >= self.update_every and end in self.pending_ends:
                self._since_update[end] = 0
                values = self._window(end - self.size)
                if values is not None:
                    self._result(end - self.size, values, True, before)

    def _collect_garbage(self, watermark: int) -> None:
        while self.gc_heap and self.gc_heap[0][0] <= watermark:
            _, pane_start = heapq.heappop(self.gc_heap)
            self.panes.pop(pane_start, None)
        while self.fired_gc and self.fired_gc[0][0] <= watermark:
            _, start = heapq.heappop(self.fired_gc)
            self.fired.discard(start)

    def _flush(self, batch: Batch) -> Batch | None:
        if not self._out:
            return None
        out = pl.concat(self._out, how="vertical_relaxed")
        self._out = []
        self.records_out += out.height
        return Batch(out, None, batch.watermark, 0, batch.idle_ms)

    def finish(self, ctx: StepContext) -> Batch | None:
        """End of input: the watermark goes to +∞, every window fires, all state is freed."""
        # The rows' watermark is the last real one: downstream event-time steps must see them as
        # on time (as they would have been, had the input gone on), not as after +∞.
        self._fire(END_OF_TIME, getattr(self, "_last_watermark", NO_WATERMARK))
        self._collect_garbage(END_OF_TIME)
        return self._flush(Batch(pl.DataFrame(), watermark=END_OF_TIME))

    def state_size(self) -> int:
        return sum(sum(f.height for f in p.partials) + sum(f.height for f in p.raw) for p in self.panes.values())

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The window state as plain data: panes (partial aggregates, kept rows), timers,
        fired windows still within their lateness, counters and the last watermark. Frames
        are immutable, so lists of them are copied, not the frames."""
        return {
            "kind": "window",
            "version": SNAPSHOT_VERSION,
            "panes": {start: (list(p.partials), list(p.raw), p.rows) for start, p in self.panes.items()},
            "fire_heap": sorted(self.fire_heap),
            "pending_ends": sorted(self.pending_ends),
            "fired": sorted(self.fired),
            "fired_gc": sorted(self.fired_gc),
            "gc_heap": sorted(self.gc_heap),
            "ordinal": self.ordinal,
            "time_dtype": self.time_dtype,
            "late_records": self.late_records,
            "updates_emitted": self.updates_emitted,
            "since_update": dict(self._since_update),
            "last_watermark": getattr(self, "_last_watermark", None),
            "clock": getattr(self, "_clock", None),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state by ``snapshot`` (from ``snapshot()`` of a window step)."""
        if snapshot.get("kind") != "window" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a window snapshot (kind {snapshot.get('kind')!r})")
        self.panes = {
            start: _Pane(list(partials), list(raw), rows) for start, (partials, raw, rows) in snapshot["panes"].items()
        }
        self.fire_heap = list(snapshot["fire_heap"])  # sorted lists are valid heaps
        self.pending_ends = set(snapshot["pending_ends"])
        self.fired = set(snapshot["fired"])
        self.fired_gc = list(snapshot["fired_gc"])
        self.gc_heap = list(snapshot["gc_heap"])
        self.ordinal = snapshot["ordinal"]
        self.time_dtype = snapshot["time_dtype"]
        self.late_records = snapshot["late_records"]
        self.updates_emitted = snapshot["updates_emitted"]
        self._since_update = dict(snapshot["since_update"])
        for name, key in (("_last_watermark", "last_watermark"), ("_clock", "clock")):
            if snapshot[key] is not None:
                setattr(self, name, snapshot[key])

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """The state split by key group: part ``g`` holds, for each pane, the rows of its partial
        and kept-row frames whose key falls in group ``g`` (``{"panes": {start: (partials, raw)}}``,
        as :data:`Pieces`); part ``-1`` holds everything else (timers, fired windows, counters,
        each pane's start and row count), since those belong to panes, not to keys. A global
        (un-keyed) window has no key to split by: its whole ``snapshot()`` goes under ``-1``."""
        whole = self.snapshot()
        if self.global_key:
            return {-1: whole}
        header = {**whole, "key_groups": key_group_info(groups), "panes": {s: p.rows for s, p in self.panes.items()}}
        parts: dict[int, Any] = {-1: header}
        group_of = groups_by_columns(self.by, groups)
        for start, pane in self.panes.items():
            for side, frames in enumerate((pane.partials, pane.raw)):
                for group, pieces in split_frames(frames, group_of).items():
                    panes = parts.setdefault(group, {"panes": {}})["panes"]
                    panes.setdefault(start, ([], []))[side].extend(pieces)
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the panes' rows of the key groups in ``parts`` (any subset) and part ``-1``.

        Every pane of ``-1`` is restored, even one without rows in these groups, so its timers
        find it: such a pane's windows fire with no rows, and ``_window`` emits nothing for
        them. ``emit="updates"`` counts rows per window for its early results over all keys, so
        a worker that holds some of the groups emits early results at other moments than the
        single step would (final results and late updates are per key: the same)."""
        header = group_header(parts, "window", self.step)
        if header is None:
            self.restore(parts[-1])
            return
        if self.global_key:
            raise ValueError(f"step {self.step!r}: a keyed window's snapshot cannot restore a global window")
        pieces: dict[int, tuple[list[Pieces], list[Pieces]]] = {start: ([], []) for start in header["panes"]}
        for part in group_parts(parts):
            for start, (partials, raw) in part["panes"].items():
                pieces[start][0].append(partials)
                pieces[start][1].append(raw)
        panes = {
            start: (join_frames(pieces[start][0]), join_frames(pieces[start][1]), rows)
            for start, rows in header["panes"].items()
        }
        self.restore({**header, "panes": panes})


# -- key groups: frames split by the key group of their rows ------------------------------------
Pieces = list[tuple[int, np.ndarray | None, pl.DataFrame]]
"""The rows of a list of frames that fall in one key group: ``(index of the frame in the list,
positions of the rows in that frame, the rows)``. Positions are in the smallest unsigned type
that holds them, ``None`` when the piece is the whole frame. They let a restore of several
groups put the rows back in their original order (results of ``group_by(maintain_order=True)``
and as-of joins follow it), so that restoring every group gives back exactly the frames saved."""


def key_group_info(groups: int) -> dict[str, Any]:
    """What part ``-1`` records about the split, as ``stateful_map`` and ``dedupe`` do."""
    return {"groups": groups, "function": KEY_GROUP_FUNCTION}


def groups_by_columns(key: Sequence[str], groups: int) -> Callable[[pl.DataFrame], np.ndarray]:
    """The key group of each row of a frame, from its key columns (the group a row is routed by)."""
    columns = list(key)

    def of(frame: pl.DataFrame) -> np.ndarray:
        return key_groups_of_columns([frame.get_column(c) for c in columns], groups)

    return of


def split_frames(
    frames: Sequence[pl.DataFrame | None], group_of: Callable[[pl.DataFrame], np.ndarray]
) -> dict[int, Pieces]:
    """Each frame's rows by key group (``group_of`` gives a group per row; rows with group ``-1``
    are left out). One gather per frame, then zero-copy slices, which pickle as their own rows."""
    parts: dict[int, Pieces] = {}
    for index, frame in enumerate(frames):
        if frame is None or frame.height == 0:
            continue
        split = split_by_group(group_of(frame))
        if len(split) == 1:  # the whole frame in one group: no copy, no positions
            if split[0][0] >= 0:
                parts.setdefault(split[0][0], []).append((index, None, frame))
            continue
        order = np.concatenate([at for _, at in split])
        ordered = frame[order]
        dtype = np.min_scalar_type(frame.height - 1)  # positions: 1 to 4 bytes a row
        start = 0
        for group, at in split:
            if group >= 0:
                parts.setdefault(group, []).append((index, at.astype(dtype), ordered.slice(start, len(at))))
            start += len(at)
    return parts


def join_frames(pieces: Iterable[Pieces]) -> list[pl.DataFrame]:
    """The frames rebuilt from the pieces of the restored groups, in list order, rows in their
    original order; a frame without rows in these groups is left out of the list."""
    found: dict[int, list[tuple[np.ndarray | None, pl.DataFrame]]] = {}
    for part in pieces:
        for index, at, rows in part:
            found.setdefault(index, []).append((at, rows))
    return [_rejoin(found[index]) for index in sorted(found)]


def join_frame(pieces: Iterable[Pieces]) -> pl.DataFrame | None:
    """A single frame (a buffer) rebuilt from its pieces, or ``None`` without rows in these groups."""
    frames = join_frames(pieces)
    return frames[0] if frames else None


def _rejoin(found: list[tuple[np.ndarray | None, pl.DataFrame]]) -> pl.DataFrame:
    if len(found) == 1:
        return found[0][1]
    frame = pl.concat([rows for _, rows in found], how="vertical")
    positions = np.concatenate([at for at, _ in found if at is not None])
    return frame[np.argsort(positions, kind="stable")]


def group_header(parts: dict[int, Any], kind: str, step: str, version: int = SNAPSHOT_VERSION) -> dict[str, Any] | None:
    """Part ``-1`` of a keyed ``snapshot_groups`` result, checked; ``None`` when the parts are one
    whole ``snapshot()`` under ``-1`` (a global step's, or one taken before state was split),
    which ``restore`` takes as it is."""
    header = parts.get(-1)
    if not isinstance(header, dict):
        raise ValueError(f"step {step!r}: key-group parts without the operator's part -1 (groups {sorted(parts)})")
    stray = [g for g in parts if not isinstance(g, int) or isinstance(g, bool) or g < -1]
    if stray:
        raise ValueError(f"step {step!r}: {stray!r} are not key groups")
    if "key_groups" not in header:
        if len(parts) > 1:
            raise ValueError(f"step {step!r}: a whole snapshot with key-group parts {sorted(parts)}")
        return None
    if header.get("kind") != kind or header.get("version") != version:
        raise ValueError(f"step {step!r}: not a {kind} snapshot (kind {header.get('kind')!r})")
    return header


def group_parts(parts: dict[int, Any]) -> list[Any]:
    """The key-group parts (not ``-1``), in group order."""
    return [part for group, part in sorted(parts.items()) if group != -1]
