"""Session windows: per key, records closer than the gap share a window; windows merge.

A record at ``t`` opens the window ``[t, t + gap)``; windows of a key that touch or overlap
(``a.start <= b.end and b.start <= a.end``, Flink's rule) merge into one. A session fires when
the watermark reaches its end. Records are handled one by one in arrival order (merging makes the
order matter), which is exact whatever the batching; each session keeps the rows its aggregations
read, evaluated by polars when it is emitted.

Lateness: a record whose merged session would be past its lateness (``wm_before >= end +
allowed_lateness``) goes to the late output and changes nothing. A record that merges into, or
extends, a session that was already emitted re-emits it with ``is_update=True`` — at once if the
merged session's end is behind the watermark, else when the watermark reaches the new end.
Sessions are freed when the watermark passes ``end + allowed_lateness``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..record import WATERMARK, Batch
from ..time.watermarks import END_OF_TIME, event_time_ms
from .aggregation import ORDINAL, AggPlan
from .base import OnError, Operator, StepContext
from .window import GLOBAL_KEY


@dataclass(eq=False)
class _Session:
    key: Any
    start: int
    end: int
    frames: list[pl.DataFrame] = field(default_factory=list)
    batch_rows: list[int] = field(default_factory=list)
    emitted: bool = False
    version: int = 0


class SessionWindowOp(Operator):
    """Keyed (or global) session windows with exact merging and lateness."""

    requires_watermark = True

    def __init__(
        self,
        step: str,
        *,
        gap_ms: int,
        key: list[str] | None,
        time: str,
        plan: AggPlan,
        allowed_lateness_ms: int,
        on_error: OnError,
    ) -> None:
        super().__init__(step, on_error)
        self.gap = gap_ms
        self.lateness = allowed_lateness_ms
        self.time = time
        self.by = list(key) if key else [GLOBAL_KEY]
        self.global_key = not key
        self.plan = plan
        self.sessions: dict[Any, list[_Session]] = {}
        self.timers: list[tuple[int, int, int, Any]] = []
        """(end, sequence, version, session) — stale entries are skipped when popped."""
        self.expiry: list[tuple[int, int, Any]] = []
        """(end + lateness, sequence, session): when an emitted session may be freed."""
        self._sequence = 0
        self.ordinal = 0
        self.time_dtype: pl.DataType | None = None
        self.late_records = 0
        self._out: list[pl.DataFrame] = []
        self._rows: pl.DataFrame | None = None

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        if self.time_dtype is None:
            self.time_dtype = df.schema[self.time]
        if self.global_key:
            df = df.with_columns(pl.lit(0, pl.Int8).alias(GLOBAL_KEY))
        times = event_time_ms(df.get_column(self.time)).to_list()
        before = df.get_column(WATERMARK).to_list()
        after = [*before[1:], batch.watermark if batch.watermark is not None else before[-1]]
        keys = list(zip(*(df.get_column(c).to_list() for c in self.by), strict=True))
        columns = [*self.by, *[c for c in self.plan.all_columns if c not in self.by]]
        self._rows = df.select(columns).with_columns(
            pl.int_range(self.ordinal, self.ordinal + df.height, dtype=pl.Int64).alias(ORDINAL)
        )
        self.ordinal += df.height
        late = np.zeros(df.height, dtype=bool)
        touched: dict[int, _Session] = {}
        for i, (key, t, wb) in enumerate(zip(keys, times, before, strict=True)):
            session = self._place(key, t, wb, i)
            if session is None:
                late[i] = True
            else:
                touched[id(session)] = session
            self._fire(after[i], wb)
        for session in touched.values():
            self._seal(session)
        if late.any():
            self.late_records += int(late.sum())
            self.emit_side("late", batch.with_df(batch.df.filter(pl.Series(late))))
        self._collect_garbage(after[-1])
        self._rows = None
        return self._flush(batch)

    def _place(self, key: Any, t: int, wm_before: int, row: int) -> _Session | None:
        """Put row ``row`` into its key's sessions (merging), or return None if it is late."""
        sessions = self.sessions.setdefault(key, [])
        start, end = t, t + self.gap
        # Sessions past their lateness are gone even if not yet freed (that happens per batch).
        touching = [s for s in sessions if s.start <= end and start <= s.end and s.end + self.lateness > wm_before]
        merged_start = min([start, *(s.start for s in touching)])
        merged_end = max([end, *(s.end for s in touching)])
        if wm_before >= merged_end + self.lateness:
            if not sessions:
                del self.sessions[key]
            return None
        if touching:
            target = touching[0]
            for other in touching[1:]:
                target.frames.extend(other.frames)
                target.batch_rows.extend(other.batch_rows)
                target.emitted = target.emitted or other.emitted
                sessions.remove(other)
                other.version = -1  # its timers are stale now
        else:
            target = _Session(key, start, end)
            sessions.append(target)
        changed = (merged_start, merged_end) != (target.start, target.end) or not touching
        target.start, target.end = merged_start, merged_end
        target.batch_rows.append(row)
        if wm_before >= target.end:
            # Behind the watermark already: a late record within lateness re-emits at once.
            self._emit(target, True, wm_before)
        elif changed or len(touching) > 1:
            target.version += 1
            self._sequence += 1
            heapq.heappush(self.timers, (target.end, self._sequence, target.version, target))
        return target

    def _fire(self, watermark: int, before: int) -> None:
        while self.timers and self.timers[0][0] <= watermark:
            end, _, version, session = heapq.heappop(self.timers)
            if version != session.version or end != session.end:
                continue
            self._emit(session, session.emitted, before)

    def _emit(self, session: _Session, is_update: bool, watermark: int) -> None:
        frames = list(session.frames)
        if session.batch_rows and self._rows is not None:
            frames.append(self._rows[session.batch_rows])
        values = self.plan.evaluate(pl.concat(frames, how="vertical_relaxed"), self.by)
        session.emitted = True
        self._sequence += 1
        heapq.heappush(self.expiry, (session.end + self.lateness, self._sequence, session))
        dtype = self.time_dtype
        assert dtype is not None
        bounds = pl.Series([session.start, session.end], dtype=pl.Int64)
        if isinstance(dtype, pl.Datetime):
            bounds = pl.from_epoch(bounds, time_unit="ms").cast(dtype)
        out = values.with_columns(
            pl.lit(bounds[0]).cast(bounds.dtype).alias("window_start"),
            pl.lit(bounds[1]).cast(bounds.dtype).alias("window_end"),
            pl.lit(is_update).alias("is_update"),
            pl.lit(watermark, pl.Int64).alias(WATERMARK),
        )
        keys = [] if self.global_key else self.by
        self._out.append(out.select([*keys, "window_start", "window_end", *self.plan.names, "is_update", WATERMARK]))

    def _seal(self, session: _Session) -> None:
        """End of batch: the session's rows from this batch become one kept frame."""
        if session.batch_rows and self._rows is not None and session.version != -1:
            session.frames.append(self._rows[session.batch_rows])
        session.batch_rows = []

    def _collect_garbage(self, watermark: int) -> None:
        """Free sessions past their lateness (an extended session's early entry is skipped)."""
        while self.expiry and self.expiry[0][0] <= watermark:
            _, _, session = heapq.heappop(self.expiry)
            sessions = self.sessions.get(session.key)
            if sessions and session.end + self.lateness <= watermark and session in sessions:
                sessions.remove(session)
                if not sessions:
                    del self.sessions[session.key]

    def _flush(self, batch: Batch) -> Batch | None:
        if not self._out:
            return None
        out = pl.concat(self._out, how="vertical_relaxed")
        self._out = []
        self.records_out += out.height
        return Batch(out, None, batch.watermark, 0, batch.idle_ms)

    def finish(self, ctx: StepContext) -> Batch | None:
        self._fire(END_OF_TIME, END_OF_TIME - 1)
        self.sessions.clear()
        self.timers.clear()
        self.expiry.clear()
        return self._flush(Batch(pl.DataFrame(), watermark=END_OF_TIME))

    def state_size(self) -> int:
        return sum(sum(f.height for f in s.frames) for ss in self.sessions.values() for s in ss)
