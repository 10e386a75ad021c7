"""Event-time joins of two streams: tumbling-window, interval and temporal (as-of) joins.

All three follow one rule for lateness, the engine's: a row is *late* when its event time is
below the combined watermark in effect before it arrived (``_tf_wm``; for the window join,
when its window's end is). Late rows never join; they go to the side output ``"late"`` (rows of
the left / stream input) or ``"late_right"`` (rows of the right / table input), with all their
columns, so that nothing is lost. Every on-time row joins exactly as it would in a batch join
over all on-time rows of both inputs, however the inputs are cut into batches and interleaved:

* :func:`window_join`: rows with equal keys in the same tumbling window ``[start, end)``; a
  window's result comes out when the watermark reaches ``end``.
* :func:`interval_join`: left ``a`` and right ``b`` with equal keys and
  ``a.t - lower <= b.t <= a.t + upper`` (both bounds inclusive); a pair comes out as soon as its
  second row arrives.
* :func:`temporal_join`: each stream row with the table row of its key having the greatest
  event time ``<=`` its own (as-of), computed once the watermark has passed the row's time.

Keys compare like SQL: a null key matches nothing (a left join keeps the row, with nulls).
Rows without an event time, and batches lacking a key or time column, are rejected (dead
letters, or a failure under ``on_error="fail"``).

Results are never late for the next event-time step: each output row carries (``_tf_wm``) the
join's watermark before the batch that produced it, and its event time (window join:
``window_end``; interval join: the left time; temporal join: the stream time) is at or after
it. The interval join's output watermark trails its input's by ``upper`` for that.
Output columns: the left (stream) columns, then the right (table) columns except the key
columns, a right column whose name the left side already uses gets the suffix ``_right``.

State is plain attributes (polars frames in dicts and lists, ints), so ``snapshot()`` and
``restore()`` are shallow copies: polars frames are immutable values. ``snapshot_groups()``
splits every buffered row by the key group of its ``on`` columns (a join is always keyed), so
that a scale-out hands each worker the rows of its keys; part ``-1`` keeps the watermark, types
and counters, and the starts of open windows of the window join. (The interval left join numbers
its left rows by step, from part ``-1``: workers restored from complementary groups hand out the
same ids, so their later snapshots cannot be merged into one operator as they are.)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from .._duration import Duration, to_millis
from ..errors import BatchRejected, FlowDefinitionError
from ..record import HIDDEN_PREFIX, POSITION, WATERMARK, Batch, Origin
from ..time.watermarks import END_OF_TIME, NO_WATERMARK, event_time_ms
from .base import OnError, Operator, StepContext
from .window import (
    Pieces,
    group_header,
    group_parts,
    groups_by_columns,
    join_frame,
    join_frames,
    key_group_info,
    split_frames,
)

if TYPE_CHECKING:
    from ..flow import Stream

LEFT, RIGHT = 0, 1
LATE_PORTS = ("late", "late_right")
"""Side output of late rows of the left (stream) input, and of the right (table) input."""

# Working columns (hidden: stripped before sinks, never confused with user columns).
_T = "_tf_jt"  # event time, Int64 ms (left / stream / table)
_RT = "_tf_jrt"  # event time of a right row in the interval join
_E = "_tf_je"  # effective watermark before the row
_WS = "_tf_jws"  # window start (window join)
_B = "_tf_jb"  # time bucket (interval join)
_ID = "_tf_jid"  # left row id (interval left join)
_M = "_tf_jm"  # left row matched yet (interval left join)
_HIT = "_tf_jhit"  # marks a table row that matched (temporal join)

How = Literal["inner", "left"]
SNAPSHOT_VERSION = 1
"""Version of the key-group parts (``snapshot_groups``) of the joins."""


class JoinOperator(Operator):
    """What the three joins share: input checks, per-row lateness, watermark, output."""

    requires_watermark = True

    def __init__(self, step: str, *, on: list[str], times: tuple[str, str], on_error: OnError) -> None:
        super().__init__(step, on_error)
        self.on = on
        self.times = times
        self.watermark = NO_WATERMARK
        """Combined watermark after the last batch (the max seen: it never goes back)."""
        self.origins: list[Origin | None] = [None, None]
        self.key_types: dict[str, pl.DataType] = {}
        """Key column types fixed by the first batch; later batches (either input) are cast to them."""
        self.time_dtype: pl.DataType | None = None
        """Type of the left time column (for window bounds)."""
        self.right_schema: pl.Schema | None = None
        """Schema of stored right rows: gives the right columns of unmatched left rows."""
        self.hold_back = 0
        """How far the output watermark trails the input's, so that no result comes out late
        for the next event-time step (results are timed by the output's event-time column)."""

    # -- input ------------------------------------------------------------------------------
    def _prepare(self, batch: Batch, ctx: StepContext) -> pl.DataFrame | None:
        """Validate a batch; return it with ``_T`` (time ms) and ``_E`` (effective watermark
        before each row). Rows without a time, or batches without the needed columns, are
        rejected (dead letters or failure, by ``on_error``)."""
        side = batch.input
        if side not in (LEFT, RIGHT):
            raise ValueError(f"join {self.step!r} has two inputs, got a batch for input {side}")
        df = batch.df
        self.records_in += df.height
        if batch.origin is not None:
            self.origins[side] = batch.origin
        if df.height == 0:
            return None
        what = "left" if side == LEFT else "right"
        time = self.times[side]
        missing = [c for c in (*self.on, time) if c not in df.columns]
        if missing:
            error = BatchRejected(f"join {self.step!r}: the {what} input lacks column(s) {missing}")
            ctx.reject_rows(self.step, self.on_error, error, df, batch.origin)
            return None
        try:
            times = event_time_ms(df.get_column(time))
            df = self._conform_keys(df, what)
        except (TypeError, pl.exceptions.PolarsError) as error:
            ctx.reject_rows(self.step, self.on_error, BatchRejected(str(error)), df, batch.origin)
            return None
        if side == LEFT and self.time_dtype is None:
            self.time_dtype = df.schema[time]
        before = pl.col(WATERMARK) if WATERMARK in df.columns else pl.lit(NO_WATERMARK, pl.Int64)
        # The max with the operator's own watermark only matters when the combined watermark
        # goes back (an idle input that resumes): rows are then judged against what already fired.
        df = df.with_columns(times.alias(_T), pl.max_horizontal(before, pl.lit(self.watermark, pl.Int64)).alias(_E))
        if times.null_count():
            null = pl.col(_T).is_null()
            error = ValueError(f"join {self.step!r}: event time {time!r} is null")
            ctx.reject_rows(self.step, self.on_error, error, df.filter(null).select(batch.df.columns), batch.origin)
            df = df.filter(~null)
        return df if df.height else None

    def _conform_keys(self, df: pl.DataFrame, what: str) -> pl.DataFrame:
        casts = []
        for key in self.on:
            dtype = df.schema[key]
            known = self.key_types.setdefault(key, dtype)
            if dtype != known:
                if dtype == pl.Null:
                    casts.append(pl.col(key).cast(known))
                    continue
                try:
                    casts.append(df.get_column(key).cast(known, strict=True))
                except pl.exceptions.PolarsError as error:
                    raise pl.exceptions.SchemaError(
                        f"join {self.step!r}: key {key!r} of the {what} input is {dtype}, the other batches' is "
                        f"{known}, and its values do not convert"
                    ) from error
        return df.with_columns(casts) if casts else df

    def _split_late(self, batch: Batch, df: pl.DataFrame, late: pl.Expr) -> pl.DataFrame:
        """Send late rows (original columns) to the side output; return the on-time rows."""
        mask = df.select(late.alias("late")).to_series()
        if not mask.any():
            return df
        self.emit_side(LATE_PORTS[batch.input], batch.with_df(df.filter(mask).select(batch.df.columns)))
        return df.filter(~mask)

    def _matchable(self, df: pl.DataFrame, side: int, how: str) -> pl.DataFrame:
        """Rows worth keeping: a null key matches nothing, so only left-join left rows keep one."""
        if side == LEFT and how == "left":
            return df
        return df.drop_nulls(self.on)

    def _advance(self, batch: Batch) -> int:
        """Take the batch's watermark; return the one before (stamped on rows fired now)."""
        before = self.watermark
        if batch.watermark is not None:
            self.watermark = max(self.watermark, batch.watermark)
        return before

    @staticmethod
    def _user_columns(df: pl.DataFrame, *, keep: Sequence[str] = ()) -> list[str]:
        return [c for c in df.columns if not c.startswith(HIDDEN_PREFIX) or c in keep]

    # -- output -----------------------------------------------------------------------------
    def _held(self, watermark: int) -> int:
        """The output watermark for an input watermark (``hold_back`` earlier, never below -inf)."""
        if watermark == END_OF_TIME:
            return watermark
        return max(NO_WATERMARK, watermark - self.hold_back)

    def _finish_rows(self, joined: pl.DataFrame, watermark: int, extra: Sequence[pl.Expr] = ()) -> pl.DataFrame:
        """User columns in join order (left, then right), then the position and the watermark
        before the rows: the operator's before the batch (held back), the same for every row of
        an output batch, so it never goes back from one row to the next."""
        joined = joined.with_columns(pl.lit(self._held(watermark), pl.Int64).alias(WATERMARK))
        names = [c for c in joined.columns if not c.startswith(HIDDEN_PREFIX)]
        hidden = [c for c in (POSITION, WATERMARK) if c in joined.columns]
        return joined.select([*names, *extra, *hidden])

    def _emit(self, parts: list[pl.DataFrame]) -> Batch | None:
        parts = [p for p in parts if p.height]
        if not parts:
            return None
        out = _concat(parts)
        self.records_out += out.height
        return Batch(out, self.origins[LEFT], self._held(self.watermark), LEFT)

    def _empty_right(self) -> pl.DataFrame | None:
        return None if self.right_schema is None else pl.DataFrame(schema=self.right_schema)

    def _base_snapshot(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "origins": list(self.origins),
            "key_types": dict(self.key_types),
            "time_dtype": self.time_dtype,
            "right_schema": self.right_schema,
        }

    def _group_header(self, kind: str, groups: int) -> dict[str, Any]:
        """Part ``-1`` of a join's ``snapshot_groups``: the scalars of ``_base_snapshot``."""
        return {
            "kind": kind,
            "version": SNAPSHOT_VERSION,
            "key_groups": key_group_info(groups),
            **self._base_snapshot(),
        }

    def _split(self, frames: Sequence[pl.DataFrame | None], groups: int) -> dict[int, Pieces]:
        """Buffered rows by the key group of their ``on`` columns (what routes an input row)."""
        return split_frames(frames, groups_by_columns(self.on, groups))

    def _base_restore(self, state: dict[str, Any]) -> None:
        self.watermark = state["watermark"]
        self.origins = list(state["origins"])
        self.key_types = dict(state["key_types"])
        self.time_dtype = state["time_dtype"]
        self.right_schema = state["right_schema"]


def _concat(frames: list[pl.DataFrame], how: Literal["vertical", "diagonal_relaxed"] = "vertical") -> pl.DataFrame:
    if len(frames) == 1:
        return frames[0]
    if how == "vertical":
        try:
            return pl.concat(frames, how="vertical")
        except pl.exceptions.PolarsError:
            pass  # a batch with other column types or order: relax
    return pl.concat(frames, how="diagonal_relaxed")


def _time_values(ms: pl.Expr, dtype: pl.DataType | None) -> pl.Expr:
    """Epoch milliseconds as values of the time column's type."""
    if isinstance(dtype, pl.Datetime):
        return pl.from_epoch(ms, time_unit="ms").cast(dtype)
    if dtype == pl.Date:
        return pl.from_epoch(ms, time_unit="ms").cast(pl.Date)
    return ms.cast(dtype) if dtype is not None else ms


# -- window join ------------------------------------------------------------------------------
class WindowJoin(JoinOperator):
    """Rows of both inputs with equal keys in the same tumbling window; fired at its end.

    State: per window start, the on-time rows of each input (lists of frames), freed when the
    window fires. A row is late when the watermark before it had reached its window's end
    (``_tf_wm >= end``): the window fired, or fires with the batch that carries the row.
    """

    def __init__(
        self, step: str, *, on: list[str], times: tuple[str, str], size_ms: int, how: How, on_error: OnError
    ) -> None:
        super().__init__(step, on=on, times=times, on_error=on_error)
        self.size = size_ms
        self.how = how
        self.windows: dict[int, tuple[list[pl.DataFrame], list[pl.DataFrame]]] = {}
        self.starts: list[int] = []
        """Heap of the starts of open windows."""

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = self._prepare(batch, ctx)
        if df is not None:
            df = df.with_columns((pl.col(_T) // self.size * self.size).alias(_WS))
            df = self._split_late(batch, df, pl.col(_WS) + self.size <= pl.col(_E))
            self._store(batch.input, self._matchable(df, batch.input, self.how))
        before = self._advance(batch)
        return self._emit([self._fire(self.watermark, before)])

    def on_watermark(self, watermark: int, ctx: StepContext) -> Batch | None:
        """The watermark moved without rows: fire the windows whose end it reached."""
        before = self._advance(Batch(pl.DataFrame(), watermark=watermark))
        return self._emit([self._fire(self.watermark, before)])

    def _store(self, side: int, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        keep = [POSITION, _WS] if side == LEFT else [_WS]
        df = df.select(self._user_columns(df, keep=keep))
        if side == RIGHT:
            self.right_schema = df.schema
        for (start,), part in df.partition_by(_WS, as_dict=True, maintain_order=True).items():
            window = self.windows.get(start)
            if window is None:
                window = self.windows[start] = ([], [])
                heapq.heappush(self.starts, start)
            window[side].append(part)

    def _fire(self, watermark: int, before: int) -> pl.DataFrame:
        lefts: list[pl.DataFrame] = []
        rights: list[pl.DataFrame] = []
        while self.starts and self.starts[0] + self.size <= watermark:
            left, right = self.windows.pop(heapq.heappop(self.starts))
            lefts.extend(left)
            rights.extend(right)
        if not lefts or (not rights and self.how == "inner"):
            return pl.DataFrame()
        left = _concat(lefts)
        right = _concat(rights) if rights else self._empty_right()
        # right is None when nothing ever came on the right: there are no right columns to fill.
        joined = left if right is None else left.join(right, on=[*self.on, _WS], how=self.how, suffix="_right")
        start = pl.col(_WS)
        bounds = [
            _time_values(start, self.time_dtype).alias("window_start"),
            _time_values(start + self.size, self.time_dtype).alias("window_end"),
        ]
        return self._finish_rows(joined, before, bounds)

    def finish(self, ctx: StepContext) -> Batch | None:
        before, self.watermark = self.watermark, END_OF_TIME
        return self._emit([self._fire(END_OF_TIME, before)])

    def state_size(self) -> int:
        return sum(f.height for left, right in self.windows.values() for f in (*left, *right))

    def snapshot(self) -> dict[str, Any]:
        state = self._base_snapshot()
        state["windows"] = {s: (list(left), list(right)) for s, (left, right) in self.windows.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._base_restore(state)
        self.windows = {s: (list(left), list(right)) for s, (left, right) in state["windows"].items()}
        self.starts = list(self.windows)
        heapq.heapify(self.starts)

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """Part ``g``: ``{"windows": {start: (left, right)}}``, the buffered rows of its keys per
        open window (:data:`~tideflow.ops.window.Pieces`); part ``-1``: the scalars and the starts
        of every open window."""
        parts: dict[int, Any] = {-1: {**self._group_header("window_join", groups), "windows": sorted(self.windows)}}
        for start, sides in self.windows.items():
            for side, frames in enumerate(sides):
                for group, pieces in self._split(frames, groups).items():
                    windows = parts.setdefault(group, {"windows": {}})["windows"]
                    windows.setdefault(start, ([], []))[side].extend(pieces)
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the rows of the key groups in ``parts`` (any subset) and part ``-1``. Every
        open window comes back, with or without rows here: one without rows (or without right
        rows, for an inner join) fires nothing."""
        header = group_header(parts, "window_join", self.step, SNAPSHOT_VERSION)
        if header is None:
            self.restore(parts[-1])
            return
        pieces: dict[int, tuple[list[Pieces], list[Pieces]]] = {start: ([], []) for start in header["windows"]}
        for part in group_parts(parts):
            for start, (left, right) in part["windows"].items():
                pieces[start][0].append(left)
                pieces[start][1].append(right)
        windows = {start: (join_frames(left), join_frames(right)) for start, (left, right) in pieces.items()}
        self.restore({**header, "windows": windows})


# -- interval join ----------------------------------------------------------------------------
class IntervalJoin(JoinOperator):
    """Left ``a`` and right ``b`` with equal keys and ``a.t - lower <= b.t <= a.t + upper``.

    A pair is emitted when its second row arrives. Each input's on-time rows are buffered while
    they can still match a row to come: a left row until the watermark passes ``a.t + upper``, a
    right row until it passes ``b.t + lower`` ("passes": ``watermark > ...``; rows at or after the
    watermark are on time). Under ``how="left"`` a left row that never matched is emitted with
    nulls when it leaves the buffer.

    Matching is a hash join on (key, time bucket): buckets are ``lower + upper + 1`` ms wide, so
    a probing row looks into at most two buckets and the work is bounded by the rows that are
    close in time, not by all the rows of the key.
    """

    def __init__(
        self,
        step: str,
        *,
        on: list[str],
        times: tuple[str, str],
        lower_ms: int,
        upper_ms: int,
        how: How,
        on_error: OnError,
    ) -> None:
        super().__init__(step, on=on, times=times, on_error=on_error)
        self.lower = lower_ms
        self.upper = upper_ms
        self.width = lower_ms + upper_ms + 1
        # A pair or an unmatched left row can come out when the watermark is up to ``upper``
        # past its left time: trailing by ``upper`` keeps it on time downstream.
        self.hold_back = upper_ms
        self.how = how
        self.buffers: list[pl.DataFrame | None] = [None, None]
        self.next_id = 0

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = self._prepare(batch, ctx)
        before = self.watermark
        out: list[pl.DataFrame] = []
        if df is not None:
            df = self._matchable(self._split_late(batch, df, pl.col(_T) < pl.col(_E)), batch.input, self.how)
            if df.height:
                out.append(self._probe_left(df, before) if batch.input == LEFT else self._probe_right(df, before))
        self._advance(batch)
        out.append(self._evict(self.watermark, before))
        return self._emit(out)

    def on_watermark(self, watermark: int, ctx: StepContext) -> Batch | None:
        """The watermark moved without rows: evict (and, for ``left``, emit unmatched) rows."""
        before = self._advance(Batch(pl.DataFrame(), watermark=watermark))
        return self._emit([self._evict(self.watermark, before)])

    def _in_interval(self) -> pl.Expr:
        return pl.col(_RT).is_between(pl.col(_T) - self.lower, pl.col(_T) + self.upper)

    def _buckets(self, df: pl.DataFrame, time: str, back: int, ahead: int) -> pl.DataFrame:
        """``df`` once per bucket that ``[time - back, time + ahead]`` overlaps (one or two)."""
        first = (pl.col(time) - back) // self.width
        last = (pl.col(time) + ahead) // self.width
        return _concat([df.with_columns(first.alias(_B)), df.filter(first != last).with_columns(last.alias(_B))])

    def _probe_left(self, df: pl.DataFrame, before: int) -> pl.DataFrame:
        if self.how == "left":
            df = df.with_columns(pl.int_range(self.next_id, self.next_id + df.height, dtype=pl.Int64).alias(_ID))
            self.next_id += df.height
        right = self.buffers[RIGHT]
        pairs = None
        if right is not None and right.height:
            probe = self._buckets(df, _T, self.lower, self.upper)
            pairs = probe.join(right, on=[*self.on, _B], how="inner", suffix="_right").filter(self._in_interval())
        stored = df.select(self._user_columns(df, keep=[POSITION, _T, _ID])).with_columns(
            (pl.col(_T) // self.width).alias(_B)
        )
        if self.how == "left":
            matched = pl.col(_ID).is_in(pairs.get_column(_ID).implode()) if pairs is not None else pl.lit(False)
            stored = stored.with_columns(matched.alias(_M))
        self._append(LEFT, stored)
        return self._finish_rows(pairs, before) if pairs is not None else pl.DataFrame()

    def _probe_right(self, df: pl.DataFrame, before: int) -> pl.DataFrame:
        df = df.rename({_T: _RT})
        stored = df.select(self._user_columns(df, keep=[_RT])).with_columns((pl.col(_RT) // self.width).alias(_B))
        self.right_schema = stored.schema
        self._append(RIGHT, stored)
        left = self.buffers[LEFT]
        if left is None or left.height == 0:
            return pl.DataFrame()
        probe = self._buckets(df.select(stored.columns[:-1]), _RT, self.upper, self.lower)
        pairs = left.join(probe, on=[*self.on, _B], how="inner", suffix="_right").filter(self._in_interval())
        if self.how == "left" and pairs.height:
            ids = pairs.get_column(_ID).implode()
            self.buffers[LEFT] = left.with_columns((pl.col(_M) | pl.col(_ID).is_in(ids)).alias(_M))
        return self._finish_rows(pairs, before)

    def _append(self, side: int, df: pl.DataFrame) -> None:
        held = self.buffers[side]
        self.buffers[side] = df if held is None or held.height == 0 else _concat([held, df])

    def _evict(self, watermark: int, before: int) -> pl.DataFrame:
        """Drop rows that can no longer match; under ``how="left"`` emit unmatched left rows."""
        out = pl.DataFrame()
        left = self.buffers[LEFT]
        if left is not None and left.height:
            oldest = left.get_column(_T).min()
            if oldest is not None and oldest + self.upper < watermark:  # type: ignore[operator]
                expired = pl.col(_T) + self.upper < watermark
                if self.how == "left":
                    unmatched = left.filter(expired & ~pl.col(_M))
                    if unmatched.height:
                        out = self._null_filled(unmatched, before)
                self.buffers[LEFT] = left.filter(~expired)
        right = self.buffers[RIGHT]
        if right is not None and right.height:
            oldest = right.get_column(_RT).min()
            if oldest is not None and oldest + self.lower < watermark:  # type: ignore[operator]
                self.buffers[RIGHT] = right.filter(pl.col(_RT) + self.lower >= watermark)
        return out

    def _null_filled(self, left: pl.DataFrame, watermark: int) -> pl.DataFrame:
        empty = self._empty_right()
        joined = left if empty is None else left.join(empty, on=[*self.on, _B], how="left", suffix="_right")
        return self._finish_rows(joined, watermark)

    def finish(self, ctx: StepContext) -> Batch | None:
        before, self.watermark = self.watermark, END_OF_TIME
        out = self._emit([self._evict(END_OF_TIME, before)])
        self.buffers = [None, None]
        return out

    def state_size(self) -> int:
        return sum(b.height for b in self.buffers if b is not None)

    def snapshot(self) -> dict[str, Any]:
        state = self._base_snapshot()
        state["buffers"] = list(self.buffers)
        state["next_id"] = self.next_id
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._base_restore(state)
        self.buffers = list(state["buffers"])
        self.next_id = state["next_id"]

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """Part ``g``: ``{"left", "right"}``, the buffered rows of its keys on each side
        (:data:`~tideflow.ops.window.Pieces`; left rows with their match flag under
        ``how="left"``); part ``-1``: the scalars, the next left row id and each buffer's columns."""
        header = {
            **self._group_header("interval_join", groups),
            "next_id": self.next_id,
            "buffers": [None if b is None else b.clear() for b in self.buffers],
        }
        parts: dict[int, Any] = {-1: header}
        for side, name in ((LEFT, "left"), (RIGHT, "right")):
            for group, pieces in self._split([self.buffers[side]], groups).items():
                parts.setdefault(group, {"left": [], "right": []})[name] = pieces
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the buffered rows of the key groups in ``parts`` (any subset) and part ``-1``."""
        header = group_header(parts, "interval_join", self.step, SNAPSHOT_VERSION)
        if header is None:
            self.restore(parts[-1])
            return
        buffers = []
        for side, name in ((LEFT, "left"), (RIGHT, "right")):
            rows = join_frame(part[name] for part in group_parts(parts))
            buffers.append(header["buffers"][side] if rows is None else rows)
        self.restore({**header, "buffers": buffers})


# -- temporal join ----------------------------------------------------------------------------
class TemporalJoin(JoinOperator):
    """Each stream row with the latest table version of its key at the row's event time.

    A stream row waits until the watermark passes its time (``watermark > t``): every table
    version with a time ``<= t`` has then arrived (a later one would be late). Table versions
    with time ``<= watermark`` are pruned to the latest per key (and dropped when older than
    ``ttl`` before the watermark): later stream rows have times ``>= watermark`` and can use
    nothing older. Pruning runs when the table has doubled since the last one (amortized).
    """

    def __init__(
        self, step: str, *, on: list[str], times: tuple[str, str], ttl_ms: int | None, how: How, on_error: OnError
    ) -> None:
        super().__init__(step, on=on, times=times, on_error=on_error)
        self.ttl = ttl_ms
        self.how = how
        self.pending: pl.DataFrame | None = None
        """Stream rows waiting for the watermark to pass their time."""
        self.table: pl.DataFrame | None = None
        """Table versions: user columns, ``_T`` and ``_HIT``; sorted by ``_T`` when ``table_sorted``."""
        self.table_sorted = True
        self.pruned_size = 0

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = self._prepare(batch, ctx)
        if df is not None:
            df = self._split_late(batch, df, pl.col(_T) < pl.col(_E))
            if df.height:
                if batch.input == LEFT:
                    self._hold(df)
                else:
                    self._add_versions(df)
        before = self._advance(batch)
        released = self._release(self.watermark, before)
        self._prune(self.watermark)
        return self._emit([released])

    def on_watermark(self, watermark: int, ctx: StepContext) -> Batch | None:
        """The watermark moved without rows: join the held rows whose time it passed."""
        before = self._advance(Batch(pl.DataFrame(), watermark=watermark))
        released = self._release(self.watermark, before)
        self._prune(self.watermark)
        return self._emit([released])

    def _hold(self, df: pl.DataFrame) -> None:
        rows = df.select(self._user_columns(df, keep=[POSITION, _T]))
        self.pending = rows if self.pending is None or self.pending.height == 0 else _concat([self.pending, rows])

    def _add_versions(self, df: pl.DataFrame) -> None:
        rows = df.select(self._user_columns(df, keep=[_T])).with_columns(pl.lit(True).alias(_HIT))
        rows = rows.drop_nulls(self.on)  # a null key matches nothing
        self.right_schema = rows.schema
        if rows.height == 0:
            return
        self.table = rows if self.table is None or self.table.height == 0 else _concat([self.table, rows])
        self.table_sorted = False

    def _release(self, watermark: int, before: int) -> pl.DataFrame:
        pending = self.pending
        if pending is None or pending.height == 0:
            return pl.DataFrame()
        oldest = pending.get_column(_T).min()
        if oldest is None or oldest >= watermark:  # type: ignore[operator]
            return pl.DataFrame()
        due = pl.col(_T) < watermark
        ready = pending.filter(due).sort(_T, maintain_order=True)
        self.pending = pending.filter(~due)
        table = self._sorted_table()
        if table is None:
            joined = ready if self.how == "left" else ready.head(0)
        else:
            joined = ready.join_asof(
                table,
                on=_T,
                by=self.on,
                strategy="backward",
                tolerance=self.ttl,
                suffix="_right",
                check_sortedness=False,
            )
            if self.how == "inner":
                joined = joined.filter(pl.col(_HIT).is_not_null())
        return self._finish_rows(joined, before)

    def _sorted_table(self) -> pl.DataFrame | None:
        if self.table is None:
            empty = self._empty_right()
            return None if empty is None else empty
        if not self.table_sorted:
            self.table = self.table.sort(_T, maintain_order=True)
            self.table_sorted = True
        return self.table

    def _prune(self, watermark: int, *, force: bool = False) -> None:
        table = self.table
        if table is None or (not force and table.height < 2 * self.pruned_size + 1024):
            return
        old = pl.col(_T) <= watermark
        latest = (
            table.filter(old)
            .filter(pl.col(_T) == pl.col(_T).max().over(self.on))
            .unique(subset=self.on, keep="last", maintain_order=True)
        )
        if self.ttl is not None:
            latest = latest.filter(pl.col(_T) >= watermark - self.ttl)
        self.table = _concat([latest, table.filter(~old)])
        self.table_sorted = False
        self.pruned_size = self.table.height

    def finish(self, ctx: StepContext) -> Batch | None:
        before, self.watermark = self.watermark, END_OF_TIME
        out = self._emit([self._release(END_OF_TIME, before)])
        self.pending, self.table, self.pruned_size = None, None, 0
        return out

    def state_size(self) -> int:
        return sum(f.height for f in (self.pending, self.table) if f is not None)

    def snapshot(self) -> dict[str, Any]:
        state = self._base_snapshot()
        state.update(pending=self.pending, table=self.table, table_sorted=self.table_sorted, pruned=self.pruned_size)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._base_restore(state)
        self.pending, self.table = state["pending"], state["table"]
        self.table_sorted, self.pruned_size = state["table_sorted"], state["pruned"]

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """Part ``g``: ``{"pending", "table"}``, the waiting stream rows and the table versions of
        its keys (:data:`~tideflow.ops.window.Pieces`, in their order, so a sorted table stays
        sorted); part ``-1``: the scalars, the pruning threshold and each frame's columns."""
        header = {
            **self._group_header("temporal_join", groups),
            "pending": None if self.pending is None else self.pending.clear(),
            "table": None if self.table is None else self.table.clear(),
            "table_sorted": self.table_sorted,
            "pruned": self.pruned_size,
        }
        parts: dict[int, Any] = {-1: header}
        for name, frame in (("pending", self.pending), ("table", self.table)):
            for group, pieces in self._split([frame], groups).items():
                parts.setdefault(group, {"pending": [], "table": []})[name] = pieces
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the waiting rows and table versions of the key groups in ``parts`` (any
        subset) and part ``-1``. The pruning threshold is the step's: a worker with fewer
        versions prunes later, which changes no result (pruning keeps what can still match)."""
        header = group_header(parts, "temporal_join", self.step, SNAPSHOT_VERSION)
        if header is None:
            self.restore(parts[-1])
            return
        frames = {}
        for name in ("pending", "table"):
            rows = join_frame(part[name] for part in group_parts(parts))
            frames[name] = header[name] if rows is None else rows
        self.restore({**header, **frames})


# -- builders (wired as Stream methods) -------------------------------------------------------
def _keys(step: str, on: str | Sequence[str]) -> list[str]:
    keys = [on] if isinstance(on, str) else list(on)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise FlowDefinitionError(f"join {step!r}: on= takes a column name or a list of them, got {on!r}")
    return keys


def _check_how(step: str, how: str, allowed: tuple[str, ...]) -> None:
    if how not in allowed:
        raise FlowDefinitionError(f"join {step!r}: how must be one of {allowed}, got {how!r}")


def _times(step: str, left: Stream, right: Stream) -> tuple[str, str]:
    if left.node is right.node:
        # The runtime tells a step's inputs apart by the worker that sent a batch, so one stream
        # on both sides would arrive as the left input twice.
        raise FlowDefinitionError(
            f"join {step!r}: both inputs are the stream {left.name!r}; to join a stream with itself, "
            f"join it with a copy: stream.filter('{left.name}-copy', pl.lit(True))"
        )
    for stream in (left, right):
        if stream.time is None or not stream.watermarked:
            raise FlowDefinitionError(
                f"join {step!r} works in event time, but its input {stream.name!r} has "
                + ("no event-time column" if stream.time is None else "no watermark")
                + "; give its source time=... and watermark=tdf.BoundedOutOfOrder('5s')"
            )
    assert left.time is not None and right.time is not None
    return left.time, right.time


def window_join(
    left: Stream,
    right: Stream,
    step: str,
    *,
    on: str | Sequence[str],
    window: Duration,
    how: How = "inner",
    on_error: OnError | None = None,
) -> Stream:
    """Join rows with equal ``on`` keys in the same tumbling event-time window ``[start, end)``.

    A window's rows come out when the combined watermark reaches its end; under ``how="left"``
    left rows without a match come out then too, with nulls for the right columns. Output: the
    left columns, the right ones (clashes suffixed ``_right``), ``window_start`` and
    ``window_end`` (the left time column's type); the output's event time is ``window_end``.
    Rows arriving when their window already closed (``watermark >= end``) go to ``"late"``
    (left input) or ``"late_right"`` (right input).
    """
    keys = _keys(step, on)
    _check_how(step, how, ("inner", "left"))
    size = to_millis(window, what="window size")
    if size <= 0:
        raise FlowDefinitionError(f"join {step!r}: the window size must be positive")
    times = _times(step, left, right)
    policy: OnError = on_error or left.flow.on_error
    return left._operator(
        step,
        lambda: WindowJoin(step, on=keys, times=times, size_ms=size, how=how, on_error=policy),
        on_error=on_error,
        others=(right,),
        requires_watermark=True,
        time="window_end",
    )


def interval_join(
    left: Stream,
    right: Stream,
    step: str,
    *,
    on: str | Sequence[str],
    lower: Duration,
    upper: Duration,
    how: How = "inner",
    on_error: OnError | None = None,
) -> Stream:
    """Join left ``a`` and right ``b`` with equal keys and ``a.t - lower <= b.t <= a.t + upper``.

    Both bounds are inclusive and non-negative spans: ``lower`` reaches back from the left row's
    time, ``upper`` forward. A pair comes out as soon as both rows have arrived; under
    ``how="left"`` a left row that matched nothing comes out with nulls once the watermark passes
    ``a.t + upper``. Output: left columns, then right columns (clashes suffixed ``_right``); the
    output's event time is the left time column, and its watermark trails the inputs' by
    ``upper`` (a result can come out that long after its left time). Rows older than the
    combined watermark when they arrive (some of their partners may be gone) go to ``"late"``
    / ``"late_right"``.
    """
    keys = _keys(step, on)
    _check_how(step, how, ("inner", "left"))
    lower_ms = to_millis(lower, what="lower bound")
    upper_ms = to_millis(upper, what="upper bound")
    times = _times(step, left, right)
    policy: OnError = on_error or left.flow.on_error
    return left._operator(
        step,
        lambda: IntervalJoin(
            step, on=keys, times=times, lower_ms=lower_ms, upper_ms=upper_ms, how=how, on_error=policy
        ),
        on_error=on_error,
        others=(right,),
        requires_watermark=True,
    )


def temporal_join(
    stream: Stream,
    table: Stream,
    step: str,
    *,
    on: str | Sequence[str],
    ttl: Duration | None = None,
    how: How = "left",
    on_error: OnError | None = None,
) -> Stream:
    """Enrich each ``stream`` row with the ``table`` version of its key valid at its event time.

    ``table`` is a stream of versioned rows (a changelog): a row's version is the table row of
    the same key with the greatest event time ``<=`` the row's (an as-of join); it waits until
    the combined watermark passes its time, so late-arriving versions cannot change it. With
    ``ttl``, a version more than ``ttl`` older than the row does not match. Of versions with equal
    key and time, the last received wins. ``how="left"`` keeps
    unmatched rows with nulls; ``"inner"`` drops them. Output: stream columns, then table
    columns (clashes suffixed ``_right``); event time stays the stream's. Late stream rows go
    to ``"late"``, late table rows (which would change results already out) to ``"late_right"``.
    """
    keys = _keys(step, on)
    _check_how(step, how, ("inner", "left"))
    ttl_ms = None if ttl is None else to_millis(ttl, what="ttl")
    times = _times(step, stream, table)
    policy: OnError = on_error or stream.flow.on_error
    return stream._operator(
        step,
        lambda: TemporalJoin(step, on=keys, times=times, ttl_ms=ttl_ms, how=how, on_error=policy),
        on_error=on_error,
        others=(table,),
        requires_watermark=True,
    )
