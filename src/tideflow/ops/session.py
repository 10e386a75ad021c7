"""Session windows: per key, records closer than the gap share a window; windows merge.

A record at ``t`` opens the window ``[t, t + gap)``; windows of a key that touch or overlap
(``a.start <= b.end and b.start <= a.end``, Flink's rule) merge into one. A session fires when
the watermark reaches its end.

Lateness: a record whose merged session would be past its lateness (``wm_before >= end +
allowed_lateness``) goes to the late output and changes nothing. A record that merges into, or
extends, a session that was already emitted re-emits it with ``is_update=True`` — at once if the
merged session's end is behind the watermark, else when the watermark reaches the new end.
Sessions are freed when the watermark passes ``end + allowed_lateness``.

How: records are placed one at a time in arrival order (merging makes the order matter) by a
lean loop that only decides membership, merges, lateness and *when* to emit. Aggregation is
vectorized: each session is a set of ids whose partial aggregates live in one store frame, and
all emissions of a batch are computed together — earlier batches' partials joined by id, plus
this batch's rows up to the record after which each emission happens. Exact whatever the batching.

Checkpoints split a keyed session window's state by key group (``snapshot_groups``): a session,
its timers and expiry entries and the rows of its ids go to the group of its key. Ids are numbered
by the whole step (part ``-1`` holds the next one), so workers restored from complementary groups
hand out the same new ids: that is fine while each runs alone, but their later snapshots cannot be
merged into one operator as they are (a scale-in would have to renumber one side's ids).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..record import WATERMARK, Batch
from ..time.watermarks import END_OF_TIME, NO_WATERMARK, event_time_ms
from .aggregation import ORDINAL, AggPlan
from .base import OnError, Operator, StepContext
from .keygroups import key_groups
from .window import (
    GLOBAL_KEY,
    Pieces,
    group_header,
    group_parts,
    join_frames,
    key_group_info,
    split_frames,
)

SID = "__sid"
REQUEST = "__req"
CUTOFF = "__cut"


@dataclass(eq=False)
class _Session:
    key: Any
    start: int
    end: int
    members: list[int] = field(default_factory=list)
    """Ids whose rows and partials make up this session (several after merges)."""
    emitted: bool = False
    version: int = 0
    """-1 once merged into another session: its timers are then stale."""
    timer_pending: bool = False
    """A timer at or before ``end`` is in the heap (re-pushed at the new end if it grew)."""


@dataclass
class _Request:
    members: list[int]
    cutoff: int
    session: _Session
    start: int
    end: int
    is_update: bool
    watermark: int


SNAPSHOT_VERSION = 1


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
        self.timers: list[tuple[int, int, int, _Session]] = []
        """(end, sequence, version, session): stale entries are skipped when popped."""
        self.expiry: list[tuple[int, int, _Session]] = []
        """(end + lateness, sequence, session): when an emitted session may be freed."""
        self.partials: list[pl.DataFrame] = []
        """Partial aggregates of earlier batches, one row per (id, batch), compacted by merging."""
        self.raw: list[pl.DataFrame] = []
        """Rows kept for aggregations that cannot be merged (median, quantiles, ...)."""
        self.partial_rows = 0
        self.dead: set[int] = set()
        self._sequence = 0
        self._next_id = 0
        self.ordinal = 0
        self.time_dtype: pl.DataType | None = None
        self.late_records = 0
        self._requests: list[_Request] = []
        self._out: list[pl.DataFrame] = []

    # -- the batch ----------------------------------------------------------------------------
    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        if self.time_dtype is None:
            self.time_dtype = df.schema[self.time]
        if self.global_key:
            df = df.with_columns(pl.lit(0, pl.Int8).alias(GLOBAL_KEY))
        first = self.ordinal
        self.ordinal += df.height
        times = event_time_ms(df.get_column(self.time)).to_list()
        before = df.get_column(WATERMARK).to_list()
        after = [*before[1:], batch.watermark if batch.watermark is not None else before[-1]]
        keys = (
            df.get_column(self.by[0]).to_list()
            if len(self.by) == 1
            else list(zip(*(df.get_column(c).to_list() for c in self.by), strict=True))
        )
        ids = np.full(df.height, -1, dtype=np.int64)
        place, fire = self._place, self._fire
        for i, (key, t, wb) in enumerate(zip(keys, times, before, strict=True)):
            ids[i] = place(key, t, wb, first + i)
            if self.timers and self.timers[0][0] <= after[i]:
                fire(after[i], wb, first + i)
        late = ids < 0
        rows = self._rows(df, first, ids)
        self._evaluate(rows)
        self._store(rows.filter(pl.Series(~late)))
        if late.any():
            self.late_records += int(late.sum())
            self.emit_side("late", batch.with_df(batch.df.filter(pl.Series(late))))
        self._collect_garbage(after[-1])
        self._last_watermark = after[-1]
        return self._flush(batch.watermark, batch.idle_ms)

    def on_watermark(self, watermark: int, ctx: StepContext) -> Batch | None:
        """The watermark moved without rows reaching this step: fire and free what is due."""
        before = getattr(self, "_last_watermark", watermark)
        self._fire(watermark, before, self.ordinal - 1)
        self._evaluate(None)
        self._collect_garbage(watermark)
        self._last_watermark = watermark
        return self._flush(watermark, None)

    def _rows(self, df: pl.DataFrame, first: int, ids: np.ndarray) -> pl.DataFrame:
        columns = [*self.by, *[c for c in self.plan.all_columns if c not in self.by]]
        return df.select(columns).with_columns(
            pl.int_range(first, first + df.height, dtype=pl.Int64).alias(ORDINAL), pl.Series(SID, ids)
        )

    def _place(self, key: Any, t: int, wm_before: int, ordinal: int) -> int:
        """The id for a record (merging sessions as needed), or -1 if it is late."""
        sessions = self.sessions.get(key)
        end = t + self.gap
        if sessions is not None and len(sessions) == 1:
            # The common case, kept lean: the key's only session, and the record touches it.
            only = sessions[0]
            if only.start <= end and t <= only.end and only.end + self.lateness > wm_before:
                if t < only.start:
                    only.start = t
                if end > only.end:
                    only.end = end
                return self._placed(only, wm_before, ordinal)
        touching = (
            [s for s in sessions if s.start <= end and t <= s.end and s.end + self.lateness > wm_before]
            if sessions
            else []
        )
        merged_start = min(t, *(s.start for s in touching)) if touching else t
        merged_end = max(end, *(s.end for s in touching)) if touching else end
        if wm_before >= merged_end + self.lateness:
            return -1
        if not touching:
            target = _Session(key, t, end, [self._new_id()])
            self.sessions.setdefault(key, []).append(target)
        else:
            target = touching[0]
            for other in touching[1:]:
                target.members.extend(other.members)
                target.emitted = target.emitted or other.emitted
                sessions.remove(other)  # type: ignore[union-attr]
                other.version = -1
            target.start, target.end = merged_start, merged_end
        return self._placed(target, wm_before, ordinal)

    def _placed(self, session: _Session, wm_before: int, ordinal: int) -> int:
        if wm_before >= session.end:
            # Already behind the watermark: a late record within lateness re-emits at once.
            self._request(session, True, wm_before, ordinal)
        elif not session.timer_pending:
            self._sequence += 1
            heapq.heappush(self.timers, (session.end, self._sequence, session.version, session))
            session.timer_pending = True
        return session.members[0]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _fire(self, watermark: int, before: int, cutoff: int) -> None:
        while self.timers and self.timers[0][0] <= watermark:
            _, _, version, session = heapq.heappop(self.timers)
            if version != session.version:
                continue  # merged into another session
            if session.end > watermark:
                # It grew since the timer was set: wait for its new end (one timer per session,
                # not one per record that extends it).
                self._sequence += 1
                heapq.heappush(self.timers, (session.end, self._sequence, session.version, session))
                continue
            session.timer_pending = False
            self._request(session, session.emitted, before, cutoff)

    def _request(self, session: _Session, is_update: bool, watermark: int, cutoff: int) -> None:
        """Ask for the session's result over its rows up to ``cutoff`` (computed per batch)."""
        self._requests.append(
            _Request(list(session.members), cutoff, session, session.start, session.end, is_update, watermark)
        )
        session.emitted = True
        self._sequence += 1
        heapq.heappush(self.expiry, (session.end + self.lateness, self._sequence, session))

    # -- aggregation, vectorized per batch ----------------------------------------------------
    def _evaluate(self, rows: pl.DataFrame | None) -> None:
        """Compute every requested result of this batch at once."""
        if not self._requests:
            return
        requests, self._requests = self._requests, []
        ids = pl.DataFrame(
            {
                REQUEST: np.repeat(np.arange(len(requests)), [len(r.members) for r in requests]),
                SID: np.concatenate([np.asarray(r.members, dtype=np.int64) for r in requests]),
            }
        )
        cutoffs = pl.DataFrame({REQUEST: np.arange(len(requests)), CUTOFF: [r.cutoff for r in requests]})
        partials, raws = [], []
        earlier = self._partials()
        if earlier is not None:
            partials.append(earlier.join(ids, on=SID).select(REQUEST, pl.exclude(SID, REQUEST)))
        if rows is not None and rows.height:
            current = rows.join(ids, on=SID).join(cutoffs, on=REQUEST).filter(pl.col(ORDINAL) <= pl.col(CUTOFF))
            if current.height:
                partials.append(self.plan.partial_frame(current, [REQUEST]))
                if self.plan.keeps_rows:
                    raws.append(self.plan.raw_frame(current, [REQUEST]))
        if self.plan.keeps_rows and self.raw:
            raws.append(
                pl.concat(self.raw, how="vertical_relaxed").join(ids, on=SID).select(REQUEST, pl.exclude(SID, REQUEST))
            )
        if not partials:
            return
        merged = self.plan.merge(pl.concat(partials, how="vertical_relaxed"), [REQUEST])
        raw = pl.concat(raws, how="vertical_relaxed") if raws else None
        values = self.plan.finalize(merged, raw, [REQUEST])
        self._emit(values, requests)

    def _emit(self, values: pl.DataFrame, requests: list[_Request]) -> None:
        meta = {
            REQUEST: np.arange(len(requests)),
            "window_start": [r.start for r in requests],
            "window_end": [r.end for r in requests],
            "is_update": [r.is_update for r in requests],
            WATERMARK: [r.watermark for r in requests],
        }
        frame = pl.DataFrame(meta, schema_overrides={"window_start": pl.Int64, "window_end": pl.Int64})
        keys = []
        if not self.global_key:
            key_values = [r.session.key for r in requests]
            if len(self.by) == 1:
                frame = frame.with_columns(pl.Series(self.by[0], key_values))
            else:
                for position, name in enumerate(self.by):
                    frame = frame.with_columns(pl.Series(name, [k[position] for k in key_values]))
            keys = self.by
        dtype = self.time_dtype
        if isinstance(dtype, pl.Datetime):
            frame = frame.with_columns(
                pl.from_epoch(pl.col(c), time_unit="ms").cast(dtype) for c in ("window_start", "window_end")
            )
        out = frame.join(values, on=REQUEST).sort(REQUEST)
        self._out.append(out.select([*keys, "window_start", "window_end", *self.plan.names, "is_update", WATERMARK]))

    def _store(self, rows: pl.DataFrame) -> None:
        """Keep this batch's rows as partials per id (and raw rows where needed)."""
        if rows.height == 0:
            return
        part = self.plan.partial_frame(rows, [SID])
        self.partials.append(part)
        self.partial_rows += part.height
        if self.plan.keeps_rows:
            self.raw.append(self.plan.raw_frame(rows, [SID]))
        if len(self.partials) > 16:
            self._compact()

    def _partials(self) -> pl.DataFrame | None:
        if not self.partials:
            return None
        if len(self.partials) > 1:
            self.partials = [pl.concat(self.partials, how="vertical_relaxed")]
        return self.partials[0]

    def _compact(self) -> None:
        """Drop freed ids and merge each id's partials into one row."""
        frame = self._partials()
        assert frame is not None
        if self.dead:
            dead = pl.Series(list(self.dead), dtype=pl.Int64)
            frame = frame.filter(~pl.col(SID).is_in(dead))
            if self.raw:
                self.raw = [pl.concat(self.raw, how="vertical_relaxed").filter(~pl.col(SID).is_in(dead))]
            self.dead.clear()
        self.partials = [self.plan.merge(frame, [SID])]
        self.partial_rows = self.partials[0].height

    def _collect_garbage(self, watermark: int) -> None:
        """Free sessions past their lateness (an extended session's early entry is skipped)."""
        while self.expiry and self.expiry[0][0] <= watermark:
            _, _, session = heapq.heappop(self.expiry)
            sessions = self.sessions.get(session.key)
            if sessions and session.end + self.lateness <= watermark and session in sessions:
                sessions.remove(session)
                self.dead.update(session.members)
                if not sessions:
                    del self.sessions[session.key]

    def _flush(self, watermark: int | None, idle_ms: int | None) -> Batch | None:
        out_parts, self._out = self._out, []
        if not out_parts:
            return None
        out = pl.concat(out_parts, how="vertical_relaxed")
        self.records_out += out.height
        return Batch(out, None, watermark, 0, idle_ms)

    def finish(self, ctx: StepContext) -> Batch | None:
        # Rows keep the last real watermark, so downstream event-time steps take them on time.
        self._fire(END_OF_TIME, getattr(self, "_last_watermark", NO_WATERMARK), END_OF_TIME)
        self._evaluate(None)
        self.sessions.clear()
        self.timers.clear()
        self.expiry.clear()
        self.partials, self.raw, self.dead = [], [], set()
        return self._flush(END_OF_TIME, None)

    def state_size(self) -> int:
        return self.partial_rows + sum(len(ss) for ss in self.sessions.values())

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The session state as plain data. Sessions are listed once, and timers and expiry
        entries (which point at sessions, possibly merged-away ones) refer to them by index.
        Frames are immutable: not copied."""
        index: dict[int, int] = {}
        table: list[tuple[Any, ...]] = []

        def ref(session: _Session) -> int:
            if id(session) not in index:
                index[id(session)] = len(table)
                table.append(
                    (
                        session.key,
                        session.start,
                        session.end,
                        list(session.members),
                        session.emitted,
                        session.version,
                        session.timer_pending,
                    )
                )
            return index[id(session)]

        open_sessions = {key: [ref(s) for s in sessions] for key, sessions in self.sessions.items()}
        return {
            "kind": "session",
            "version": SNAPSHOT_VERSION,
            "open": open_sessions,
            "timers": sorted((end, seq, version, ref(s)) for end, seq, version, s in self.timers),
            "expiry": sorted((at, seq, ref(s)) for at, seq, s in self.expiry),
            "table": table,
            "partials": list(self.partials),
            "raw": list(self.raw),
            "partial_rows": self.partial_rows,
            "dead": sorted(self.dead),
            "sequence": self._sequence,
            "next_id": self._next_id,
            "ordinal": self.ordinal,
            "time_dtype": self.time_dtype,
            "late_records": self.late_records,
            "last_watermark": getattr(self, "_last_watermark", None),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state by ``snapshot`` (from ``snapshot()`` of a session window step)."""
        if snapshot.get("kind") != "session" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a session snapshot (kind {snapshot.get('kind')!r})")
        table = [
            _Session(key, start, end, list(members), emitted, version, pending)
            for key, start, end, members, emitted, version, pending in snapshot["table"]
        ]
        self.sessions = {key: [table[i] for i in refs] for key, refs in snapshot["open"].items()}
        self.timers = [(end, seq, version, table[i]) for end, seq, version, i in snapshot["timers"]]
        self.expiry = [(at, seq, table[i]) for at, seq, i in snapshot["expiry"]]
        heapq.heapify(self.timers)
        heapq.heapify(self.expiry)
        self.partials, self.raw = list(snapshot["partials"]), list(snapshot["raw"])
        self.partial_rows = snapshot["partial_rows"]
        self.dead = set(snapshot["dead"])
        self._sequence, self._next_id = snapshot["sequence"], snapshot["next_id"]
        self.ordinal, self.time_dtype = snapshot["ordinal"], snapshot["time_dtype"]
        self.late_records = snapshot["late_records"]
        if snapshot["last_watermark"] is not None:
            self._last_watermark = snapshot["last_watermark"]

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """The state split by the key group of each session's key. Part ``g`` holds
        ``{"table", "open", "timers", "expiry", "partials", "raw"}``: the sessions of its keys
        (open ones, and merged-away ones that stale timers still point at), the timers and
        expiry entries of those sessions (referring to the table by index, as in ``snapshot()``)
        and the partial and kept rows of their ids (:data:`~tideflow.ops.window.Pieces`). Part
        ``-1`` holds the counters (ids, timer sequence, ordinal) and scalars. Rows of ids already
        freed, which the next compaction would drop, are not saved. A global (un-keyed) session
        window has no key to split by: its whole ``snapshot()`` goes under ``-1``."""
        if self.global_key:
            return {-1: self.snapshot()}
        parts: dict[int, Any] = {
            -1: {
                "kind": "session",
                "version": SNAPSHOT_VERSION,
                "key_groups": key_group_info(groups),
                "sequence": self._sequence,
                "next_id": self._next_id,
                "ordinal": self.ordinal,
                "time_dtype": self.time_dtype,
                "late_records": self.late_records,
                "last_watermark": getattr(self, "_last_watermark", None),
            }
        }

        def part(group: int) -> dict[str, Any]:
            if group not in parts:
                parts[group] = {"table": [], "open": {}, "timers": [], "expiry": [], "partials": [], "raw": []}
            return parts[group]  # type: ignore[no-any-return]

        listed: dict[int, _Session] = {}
        for sessions in self.sessions.values():
            listed.update((id(s), s) for s in sessions)
        listed.update((id(s), s) for *_, s in self.timers)
        listed.update((id(s), s) for *_, s in self.expiry)
        table = list(listed.values())
        of_session = key_groups([s.key for s in table], groups)
        local: dict[int, tuple[int, int]] = {}
        """id(session) -> (its group, its index in that group's table)."""
        for session, group in zip(table, of_session.tolist(), strict=True):
            rows = part(group)["table"]
            local[id(session)] = (group, len(rows))
            rows.append(
                (
                    session.key,
                    session.start,
                    session.end,
                    list(session.members),
                    session.emitted,
                    session.version,
                    session.timer_pending,
                )
            )
        for key, sessions in self.sessions.items():
            if sessions:
                parts[local[id(sessions[0])][0]]["open"][key] = [local[id(s)][1] for s in sessions]
        for end, sequence, version, session in self.timers:
            group, index = local[id(session)]
            parts[group]["timers"].append((end, sequence, version, index))
        for at, sequence, session in self.expiry:
            group, index = local[id(session)]
            parts[group]["expiry"].append((at, sequence, index))
        members = [len(s.members) for s in table]
        ids = np.fromiter((m for s in table for m in s.members), dtype=np.int64, count=sum(members))
        group_of = _groups_by_id(ids, np.repeat(of_session, members), self.dead)
        for name, frames in (("partials", self.partials), ("raw", self.raw)):
            for group, pieces in split_frames(frames, group_of).items():
                part(group)[name].extend(pieces)
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the sessions (with their timers and rows) of the key groups in ``parts`` (any
        subset) and the counters of ``-1``. A timer only ever fires its own session, so a worker
        holding some groups fires exactly the sessions of its keys."""
        header = group_header(parts, "session", self.step, SNAPSHOT_VERSION)
        if header is None:
            self.restore(parts[-1])
            return
        if self.global_key:
            raise ValueError(f"step {self.step!r}: a keyed session window's snapshot cannot restore a global one")
        table: list[Any] = []
        open_sessions: dict[Any, list[int]] = {}
        timers: list[tuple[int, int, int, int]] = []
        expiry: list[tuple[int, int, int]] = []
        partials: list[Pieces] = []
        raw: list[Pieces] = []
        for part in group_parts(parts):
            offset = len(table)
            table.extend(part["table"])
            open_sessions.update((key, [offset + i for i in refs]) for key, refs in part["open"].items())
            timers.extend((end, sequence, version, offset + i) for end, sequence, version, i in part["timers"])
            expiry.extend((at, sequence, offset + i) for at, sequence, i in part["expiry"])
            partials.append(part["partials"])
            raw.append(part["raw"])
        partial_frames = join_frames(partials)
        self.restore(
            {
                **header,
                "open": open_sessions,
                "timers": sorted(timers),
                "expiry": sorted(expiry),
                "table": table,
                "partials": partial_frames,
                "raw": join_frames(raw),
                "partial_rows": sum(f.height for f in partial_frames),
                "dead": [],
            }
        )


def _groups_by_id(ids: np.ndarray, groups: np.ndarray, dead: set[int]) -> Callable[[pl.DataFrame], np.ndarray]:
    """The key group of each row of a frame of ids (``SID``), from its session's key; ``-1``
    (not saved) for ids already freed."""
    order = np.argsort(ids, kind="stable")
    known, of_id = ids[order], groups[order]
    if dead:
        of_id = np.where(np.isin(known, np.fromiter(dead, dtype=np.int64, count=len(dead))), -1, of_id)

    def of(frame: pl.DataFrame) -> np.ndarray:
        sids = frame.get_column(SID).to_numpy()
        if not len(known):
            return np.full(len(sids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(known, sids), len(known) - 1)
        return np.where(known[at] == sids, of_id[at], -1)

    return of
