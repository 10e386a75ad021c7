"""Keyed state: ``stateful_map`` (a function with per-key state) and ``dedupe`` (event time).

Both judge every row by the watermark in effect *before that row arrived* (the hidden ``_tf_wm``
column), so what they output does not depend on how the input is cut into batches. Their state
lives in plain attributes (dicts, and an :class:`~tideflow.ops.state.ExpiryIndex` rebuilt from
them), and ``snapshot()`` / ``restore()`` round-trip it for checkpoints. ``snapshot_groups(n)``
splits the same state by key group (:mod:`tideflow.ops.keygroups`): part ``g`` holds the keys of
group ``g`` (only groups that have keys appear), part ``-1`` the operator's own scalars (watermark,
counters, output types); ``restore_groups`` takes ``-1`` with any subset of the groups, so that a
worker of a later scale-out restores only the keys it owns.

Notation: a record has key ``k`` (the values of the key columns: one value, or a tuple of values
for several columns), event time ``t`` (ms) and watermark ``w`` (the watermark before it). Records
are handled one after another in arrival order. Time intervals are half-open, as everywhere in
tideflow: a state "covering event times before ``x``" expires when the watermark reaches ``x``
(``w >= x``), because from then on no record that is not late can fall before ``x``.

stateful_map(step, fn, ttl=None)
--------------------------------
On a keyed stream (``key_by``). For each record, ``new_state, output = fn(state, record)``:

* ``state`` is the key's state, ``None`` for a key never seen (or whose state was deleted or
  expired); ``record`` is a dict of the visible columns.
* ``new_state`` replaces the key's state; ``None`` deletes it. ``output`` is a dict emitted as
  one record, or ``None`` for no output. Outputs keep the input row's hidden columns (position,
  watermark) and come out in arrival order.
* If ``fn`` raises (or returns something other than a 2-tuple with a dict or ``None`` as
  output), the record goes to the dead letters (or stops the run under ``on_error="fail"``) and
  the key keeps the state object it had. Mutations ``fn`` made in place on that object before
  raising cannot be undone, so mutate only once nothing can fail (or build a new object).

TTL rule (``ttl`` given; needs a watermark). Each state has an expiry ``E``: when a record at
``t`` creates the state, ``E = t + ttl``; when a record at ``t`` updates it (``fn`` returns a
state that is not ``None``), ``E = max(E, t + ttl)``, so ``E - ttl`` is the newest event time of
the records that updated it. A record whose watermark ``w >= E`` finds the state expired: it is
freed and ``fn`` gets ``None``. States are also freed as soon as the operator's watermark reaches
``E`` (after each batch, through the expiry index; at end of input every state expires), so
``state_size()`` counts only live keys. ``expired`` counts states freed this way.

dedupe(step, key, within)
-------------------------
Keeps the first record of a key and drops the records of that key that follow it within
``within`` of event time. Per key there is at most one *anchor*: the event time ``a`` of the
last record kept. For each record ``(k, t, w)``:

1. The anchor is *live* if ``w < a + within``; once the watermark reaches ``a + within`` it is
   dead (and freed).
2. The record is a **duplicate** iff ``k`` has a live anchor ``a`` and ``t < a + within``. This
   includes records *older* than the kept one (``t < a``): a same-key record that arrives after
   the kept one while its anchor lives is a duplicate of it, however early its timestamp.
3. Otherwise the record is **kept** and becomes the anchor: ``a := t``. (With a live anchor this
   only happens for ``t >= a + within``, so anchors only move forward.)

So for input in event-time order the result is "keep a record iff it comes at least ``within``
after the last kept record of its key", whatever the watermark delay. A record that is not late
(``t >= w``) and falls in ``[a, a + within)`` of a kept same-key record is always dropped, since
that anchor is still live (``w <= t < a + within``). Only a *late* record can escape: one that
arrives after the watermark reached ``a + within`` is kept (and anchors anew, already dead if
``t + within <= w``), as no state is held for it any longer.

Duplicates go to the side output ``"duplicates"`` (``duplicates(stream)``) and are counted in
``Dedupe.duplicates``; a dedupe whose duplicates are not routed anywhere sends them to the dead
letters (the runtime's rule for side outputs), so none is lost silently. Rows whose event time
is null go to the dead letters. Keys compare as polars compares them: nulls equal nulls, NaN
equals NaN, ``0.0`` equals ``-0.0``.

Vectorized: per batch, the first row of each key is judged against the stored anchors in one
pass (one dict lookup per distinct key in the batch), later rows of the same key against the
anchor the first row left; only keys whose anchor moves again inside the batch (a later row
``within`` or more after it) are decided record by record.
"""

from __future__ import annotations

import copy
import pickle
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .._columns import records_to_frame
from .._duration import Duration, to_millis
from .._gc import gc_paused
from ..errors import FlowDefinitionError
from ..record import HIDDEN_PREFIX, POSITION, WATERMARK, Batch, to_records
from ..time.watermarks import END_OF_TIME, NO_WATERMARK, event_time_ms
from .base import RECORD_ERRORS, STRUCTURAL_ERRORS, OnError, Operator, StepContext
from .keygroups import KEY_GROUP_FUNCTION, key_groups, pick, split_by_group
from .state import ExpiryIndex, python_keys
from .stateless import carry_hidden

if TYPE_CHECKING:
    from ..flow import Stream

DUPLICATES = "duplicates"
"""Side-output port of ``dedupe``: the records it dropped."""

SNAPSHOT_VERSION = 1

_MISSING = NO_WATERMARK
"""Stands for "no anchor / no expiry" in int64 arrays: no event time is -2**63."""
_ROW = "_tf_row"

StatefulFn = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any] | None]]

_SHAPE_ERRORS = (TypeError, *STRUCTURAL_ERRORS)
"""Errors reading the key or time columns of a batch: every row fails alike (a missing column,
an event-time column of the wrong type)."""


# -- building (the lead wires these as Stream methods) -----------------------------------------
def stateful_map(
    stream: Stream,
    step: str,
    fn: StatefulFn,
    *,
    ttl: Duration | None = None,
    on_error: OnError | None = None,
) -> Stream:
    """Run ``fn(state, record) -> (new_state, output_or_None)`` per record with per-key state.

    The stream must be keyed (``key_by``). State is any Python object, ``None`` for a new key;
    returning ``None`` as the new state deletes it. ``ttl`` (event time: ``"10m"``, a timedelta
    or ms) frees a key's state once the watermark reaches the newest event time that updated it
    plus ``ttl``; it needs a watermarked input. Exceptions in ``fn`` send the record to the
    dead letters and leave the state as it was.

    Keep a value, a list or a dict as state::

        def count(n, r):                       # a value
            n = (n or 0) + 1
            return n, {"user": r["user"], "count": n}

        def last_three(items, r):              # a list
            items = [*(items or []), r["v"]][-3:]
            return items, {"user": r["user"], "recent": items}

        def per_page(pages, r):                # a dict
            pages = dict(pages or {})
            pages[r["page"]] = pages.get(r["page"], 0) + 1
            return pages, {"user": r["user"], "views": pages[r["page"]]}

        stream.key_by("user").stateful_map("count", count, ttl="30m")
    """
    if not callable(fn):
        raise FlowDefinitionError(f"step {step!r}: stateful_map expects a function, got {type(fn).__name__}")
    if not stream.key:
        raise FlowDefinitionError(
            f"step {step!r}: stateful_map keeps state per key, but stream {stream.name!r} is not keyed; "
            "call .key_by('column') (or a list of columns) first"
        )
    ttl_ms = None if ttl is None else _positive_millis(step, ttl, "ttl")
    key, time = list(stream.key), stream.time
    out: Stream

    def factory() -> StatefulMap:
        return StatefulMap(step, key, fn, ttl_ms=ttl_ms, time=time, on_error=out.node.on_error)

    out = stream._operator(step, factory, on_error=on_error, requires_watermark=ttl_ms is not None)
    return out


def dedupe(
    stream: Stream,
    step: str,
    *,
    key: str | Sequence[str] | None = None,
    within: Duration,
    on_error: OnError | None = None,
) -> Stream:
    """Drop records whose key was kept less than ``within`` earlier in event time (module doc).

    ``key`` is a column or a list of columns (default: the stream's ``key_by`` columns). Needs a
    watermarked input. The dropped records are the side output ``duplicates(result)``.
    """
    columns = _key_columns(step, key, stream.key)
    within_ms = _positive_millis(step, within, "within")
    time = stream.time
    out: Stream

    def factory() -> Dedupe:
        assert time is not None  # requires_watermark checked it
        return Dedupe(step, columns, within_ms=within_ms, time=time, on_error=out.node.on_error)

    out = stream._operator(step, factory, on_error=on_error, requires_watermark=True)
    return out


def duplicates(stream: Stream) -> Stream:
    """The records a ``dedupe`` step dropped (its side output ``"duplicates"``)."""
    return stream._side(DUPLICATES)


def _key_columns(step: str, key: str | Sequence[str] | None, default: list[str] | None) -> list[str]:
    if key is None:
        if not default:
            raise FlowDefinitionError(
                f"step {step!r}: dedupe needs key=... (a column or a list of columns), or a keyed stream"
            )
        return list(default)
    columns = [key] if isinstance(key, str) else list(key)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise FlowDefinitionError(f"step {step!r}: key must be a column name or a list of column names, got {key!r}")
    if any(c.startswith(HIDDEN_PREFIX) for c in columns):
        raise FlowDefinitionError(f"step {step!r}: columns starting with {HIDDEN_PREFIX!r} are the engine's")
    if len(set(columns)) != len(columns):
        raise FlowDefinitionError(f"step {step!r}: key columns repeat: {columns!r}")
    return columns


def _positive_millis(step: str, value: Duration, what: str) -> int:
    try:
        millis = to_millis(value, what=what)
    except (TypeError, ValueError) as error:
        raise FlowDefinitionError(f"step {step!r}: {error}") from error
    if millis <= 0:
        raise FlowDefinitionError(f"step {step!r}: {what} must be positive, got {value!r}")
    return millis


def _row_watermarks(df: pl.DataFrame, floor: int) -> np.ndarray:
    """Each row's watermark-before (int64), never below what the operator has already seen."""
    if WATERMARK in df.columns:
        return np.maximum(df.get_column(WATERMARK).to_numpy(), floor)
    return np.full(df.height, floor, dtype=np.int64)


# -- stateful_map -------------------------------------------------------------------------------
def _apply(fn: StatefulFn, state: Any, record: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """``fn(state, record)``, checked to be ``(new_state, dict or None)``."""
    result = fn(state, record)
    if type(result) is not tuple or len(result) != 2:
        raise _bad_result(result)
    new_state, output = result
    if output is not None and type(output) is not dict:
        raise _bad_output(output)
    return new_state, output


def _bad_result(result: object) -> TypeError:
    return TypeError(f"a stateful_map function must return (new_state, output_or_None), got {type(result).__name__}")


def _bad_output(output: object) -> TypeError:
    return TypeError(f"stateful_map output must be a dict or None, got {type(output).__name__}")


class StatefulMap(Operator):
    """``fn(state, record) -> (new_state, output)`` per record, state per key (module doc)."""

    def __init__(
        self,
        step: str,
        key: Sequence[str],
        fn: StatefulFn,
        *,
        ttl_ms: int | None = None,
        time: str | None = None,
        on_error: OnError = "dlq",
    ) -> None:
        super().__init__(step, on_error)
        if ttl_ms is not None and time is None:
            raise FlowDefinitionError(f"step {step!r}: a ttl is event time and needs an event-time column")
        self.key = list(key)
        self.fn = fn
        self.ttl_ms = ttl_ms
        self.time = time
        self.requires_watermark = ttl_ms is not None
        self.states: dict[Hashable, Any] = {}
        """key -> state (never ``None``: ``None`` means no state)."""
        self.expiry: dict[Hashable, int] = {}
        """key -> event time (ms) at which its state expires (with a ttl)."""
        self.index = ExpiryIndex()
        self.watermark = NO_WATERMARK
        """The newest watermark seen (after the last batch)."""
        self.expired = 0
        """States freed because their ttl ran out."""
        self._types: dict[str, pl.DataType] = {}
        """Output column types, fixed by the first outputs (as in ``map``)."""

    def state_size(self) -> int:
        return len(self.states)

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        with gc_paused():
            return self._process(batch, ctx)

    def _process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        try:
            keys = python_keys([df.get_column(c) for c in self.key])
            if self.ttl_ms is not None:
                assert self.time is not None
                times: list[int | None] = event_time_ms(df.get_column(self.time)).to_list()
                wms: list[int] = _row_watermarks(df, self.watermark).tolist()
        except _SHAPE_ERRORS as error:
            ctx.reject_rows(self.step, self.on_error, error, df, batch.origin)
            self._advance(batch.watermark)
            return None
        records = to_records(df)
        positions = df.get_column(POSITION).to_list() if POSITION in df.columns else None

        def reject(i: int, error: BaseException) -> None:
            ctx.reject(self.step, self.on_error, error, records[i], batch.origin, positions[i] if positions else None)

        out: list[dict[str, Any]] = []
        out_index: list[int] = []
        if self.ttl_ms is None:
            self._run(keys, records, reject, out, out_index)
        else:
            touched = self._run_with_ttl(keys, records, times, wms, reject, out, out_index)
            # Index the keys whose expiry moved at their new expiry (entries left behind by a
            # later update are skipped when they come up).
            self.index.add(list(touched.values()), list(touched))
        self._advance(batch.watermark)
        return self._emit(out, out_index, positions, batch, ctx)

    def _run(
        self,
        keys: list[Hashable],
        records: list[dict[str, Any]],
        reject: Callable[[int, BaseException], None],
        out: list[dict[str, Any]],
        out_index: list[int],
    ) -> None:
        """The per-record loop without a ttl."""
        states, fn = self.states, self.fn
        for i, k in enumerate(keys):
            state = states.get(k)
            try:
                new_state, output = _apply(fn, state, records[i])
            except RECORD_ERRORS as error:
                reject(i, error)
                continue
            if new_state is not None:
                states[k] = new_state
            elif state is not None:
                del states[k]
            if output is not None:
                out.append(output)
                out_index.append(i)

    def _run_with_ttl(
        self,
        keys: list[Hashable],
        records: list[dict[str, Any]],
        times: list[int | None],
        wms: list[int],
        reject: Callable[[int, BaseException], None],
        out: list[dict[str, Any]],
        out_index: list[int],
    ) -> dict[Hashable, int]:
        """The per-record loop with a ttl: expire on access, extend the expiry on update.
        Returns the keys whose expiry moved, with their new expiry."""
        states, expiry, fn, ttl = self.states, self.expiry, self.fn, self.ttl_ms
        touched: dict[Hashable, int] = {}
        for i, k in enumerate(keys):
            state = states.get(k)
            end = None
            if state is not None:
                end = expiry.get(k)
                if end is not None and end <= wms[i]:
                    del states[k], expiry[k]
                    self.expired += 1
                    state = end = None
            t = times[i]
            try:
                if t is None:
                    raise ValueError(f"no event time in column {self.time!r}; a ttl needs one")
                new_state, output = _apply(fn, state, records[i])
            except RECORD_ERRORS as error:
                reject(i, error)
                continue
            if new_state is not None:
                states[k] = new_state
                t += ttl  # type: ignore[operator]
                if end is None or t > end:
                    expiry[k] = touched[k] = t
            elif state is not None:
                del states[k]
                expiry.pop(k, None)
            if output is not None:
                out.append(output)
                out_index.append(i)
        return touched

    def _emit(
        self,
        out: list[dict[str, Any]],
        out_index: list[int],
        positions: list[int] | None,
        batch: Batch,
        ctx: StepContext,
    ) -> Batch | None:
        if not out:
            return None
        frame, kept, rejects = records_to_frame(out, self._types)
        if rejects:
            # The output does not fit the step's column types: the record goes to dead letters
            # (its state update stands, as for a sink that refuses a record).
            for index, reason in rejects.items():
                position = positions[out_index[index]] if positions else None
                ctx.reject(self.step, self.on_error, TypeError(reason), out[index], batch.origin, position)
            out_index = [out_index[i] for i in kept]
        if frame.height == 0:
            return None
        frame = carry_hidden(batch.df, frame, out_index)
        self.records_out += frame.height
        return batch.with_df(frame)

    def _advance(self, watermark: int | None) -> None:
        """Move the operator's watermark and free the states whose ttl it reached."""
        if watermark is not None and watermark > self.watermark:
            self.watermark = watermark
        if self.ttl_ms is None:
            return
        w = self.watermark
        next_expiry = self.index.next_expiry()
        if next_expiry is None or next_expiry > w:
            return
        states, expiry = self.states, self.expiry
        expiries, keys = self.index.expired(w)
        current = np.fromiter(map(expiry.get, keys, repeat(_MISSING)), dtype=np.int64, count=len(keys))
        for k in compress(keys, (current == expiries).tolist()):
            if expiry.pop(k, None) is not None:
                del states[k]
                self.expired += 1

    def finish(self, ctx: StepContext) -> Batch | None:
        # End of input: the watermark is +inf, so every state with a ttl expires.
        self._advance(END_OF_TIME)
        return None

    def snapshot(self) -> dict[str, Any]:
        """The operator's state as plain data (a deep copy: later updates do not change it)."""
        return {
            "kind": "stateful_map",
            "version": SNAPSHOT_VERSION,
            "states": copy.deepcopy(self.states),
            "expiry": dict(self.expiry),
            "watermark": self.watermark,
            "expired": self.expired,
            "types": dict(self._types),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state by ``snapshot`` (from ``snapshot()``); the expiry index is rebuilt.

        Restored under a ttl, states the snapshot holds without an expiry (it was taken without
        a ttl) expire ``ttl`` after the snapshot's watermark; restored without a ttl, none expire.
        """
        _check_snapshot(snapshot, "stateful_map", self.step)
        saved = snapshot.get("expiry", {})
        keys = list(snapshot["states"])
        ends = np.fromiter(map(saved.get, keys, repeat(_MISSING)), dtype=np.int64, count=len(keys))
        self._load(snapshot, copy.deepcopy(snapshot["states"]), (keys, ends))

    def _load(self, header: dict[str, Any], states: dict[Hashable, Any], saved: tuple[list[Any], np.ndarray]) -> None:
        """Take ``states`` (already detached from the snapshot), the saved expiries (keys and an
        int64 array, ``_MISSING`` where a state has none) and the header's scalars; rebuild the
        expiry index. ``restore`` documents the rule for states saved without an expiry."""
        self.states = states
        self.watermark = header["watermark"]
        self.expired = header.get("expired", 0)
        self._types = dict(header.get("types", {}))
        self.expiry = {}
        self.index = ExpiryIndex()
        if self.ttl_ms is None:
            return
        keys, ends = saved
        missing = ends == _MISSING
        if missing.any():
            if self.watermark == NO_WATERMARK:  # no default expiry: those states never expire
                keys = list(compress(keys, (~missing).tolist()))
                ends = ends[~missing]
            else:
                ends = np.where(missing, self.watermark + self.ttl_ms, ends)
        self.expiry = dict(zip(keys, ends.tolist(), strict=True))
        self.index.add(ends, keys)

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """The state split by key group: ``{g: {"keys", "states", "expiry"}}`` for the groups
        that have keys (``expiry``: an int64 array aligned with ``keys``, ``_MISSING`` for a state
        without one, or ``None`` without a ttl), and ``{-1: header}`` with the scalars. States
        are detached by one copy of them all, unless they are all immutable scalars."""
        keys = list(self.states)
        states = _detached(list(self.states.values()))
        expiry = None
        if self.expiry:
            if len(self.expiry) == len(keys) and list(self.expiry) == keys:  # the usual case: same order
                expiry = np.fromiter(self.expiry.values(), dtype=np.int64, count=len(keys))
            else:
                expiry = np.fromiter(map(self.expiry.get, keys, repeat(_MISSING)), dtype=np.int64, count=len(keys))
        parts: dict[int, Any] = {-1: self._header(groups)}
        for group, at in split_by_group(key_groups(keys, groups)):
            parts[group] = {
                "keys": pick(keys, at),
                "states": pick(states, at),
                "expiry": None if expiry is None else expiry[at],
            }
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the keys of the groups in ``parts`` (any subset) and the scalars of ``-1``."""
        header = _header_of(parts, "stateful_map", self.step)
        groups = [part for group, part in sorted(parts.items()) if group != -1]
        keys = [k for part in groups for k in part["keys"]]
        states = _detached([state for part in groups for state in part["states"]])
        ends = [
            np.full(len(part["keys"]), _MISSING, dtype=np.int64)
            if part["expiry"] is None
            else np.asarray(part["expiry"], dtype=np.int64)
            for part in groups
        ]
        expiry = np.concatenate(ends) if ends else np.empty(0, dtype=np.int64)
        self._load(header, dict(zip(keys, states, strict=True)), (keys, expiry))

    def _header(self, groups: int) -> dict[str, Any]:
        return {
            "kind": "stateful_map",
            "version": SNAPSHOT_VERSION,
            "key_groups": {"groups": groups, "function": KEY_GROUP_FUNCTION},
            "watermark": self.watermark,
            "expired": self.expired,
            "types": dict(self._types),
        }


# -- dedupe -------------------------------------------------------------------------------------
class Dedupe(Operator):
    """Event-time dedupe: keeps a key's first record, drops its records within ``within`` (module doc)."""

    counted_ports = frozenset({DUPLICATES})
    """Duplicates nobody consumes are counted, not dead-lettered: dropping them is the point."""

    requires_watermark = True

    def __init__(self, step: str, key: Sequence[str], *, within_ms: int, time: str, on_error: OnError = "dlq") -> None:
        super().__init__(step, on_error)
        if within_ms <= 0:
            raise FlowDefinitionError(f"step {step!r}: within must be positive, got {within_ms} ms")
        self.key = list(key)
        self.within_ms = within_ms
        self.time = time
        self.anchors: dict[Hashable, int] = {}
        """key -> event time (ms) of its last kept record, while live."""
        self.index = ExpiryIndex()
        self.watermark = NO_WATERMARK
        """The newest watermark seen (after the last batch)."""
        self.duplicates = 0
        """Records dropped as duplicates (sent to the side output ``"duplicates"``)."""

    def state_size(self) -> int:
        return len(self.anchors)

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        try:
            times = event_time_ms(df.get_column(self.time))
            columns = [df.get_column(c) for c in self.key]
        except _SHAPE_ERRORS as error:
            ctx.reject_rows(self.step, self.on_error, error, df, batch.origin)
            self._advance(batch.watermark)
            return None
        if times.null_count():
            missing = times.is_null()
            error = ValueError(f"no event time in column {self.time!r}; dedupe needs one")
            ctx.reject_rows(self.step, self.on_error, error, df.filter(missing), batch.origin)
            present = ~missing
            df, times = df.filter(present), times.filter(present)
            columns = [c.filter(present) for c in columns]
        if df.height == 0:
            self._advance(batch.watermark)
            return None
        wms = _row_watermarks(df, self.watermark)
        with gc_paused():
            kept = self._decide(columns, times.to_numpy(), wms)
        self._advance(batch.watermark)
        out = df.filter(pl.Series(kept))
        dropped = df.height - out.height
        if dropped:
            self.duplicates += dropped
            self.emit_side(DUPLICATES, batch.with_df(df.filter(pl.Series(~kept))))
        if out.height == 0:
            return None
        self.records_out += out.height
        return batch.with_df(out)

    def _decide(self, columns: list[pl.Series], t: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The kept mask of one batch (event times ``t``, row watermarks ``w``); updates the
        anchors and the expiry index."""
        n = len(t)
        within = self.within_ms
        anchors = self.anchors
        # Each row's key as the row number of the key's first row in the batch.
        rows = pl.DataFrame(columns).with_row_index(_ROW)
        group_first = rows.select(pl.col(_ROW).first().over(self.key)).to_series().to_numpy().astype(np.int64)
        first_rows = np.flatnonzero(group_first == np.arange(n))
        m = len(first_rows)
        repeats = m < n
        first_keys = python_keys([c.gather(first_rows) for c in columns] if repeats else columns)
        t_first, w_first = (t[first_rows], w[first_rows]) if repeats else (t, w)
        # Each key's first row, against the anchor stored before the batch.
        stored = np.fromiter(map(anchors.get, first_keys, repeat(_MISSING)), dtype=np.int64, count=m)
        limit = stored + within
        first_dup = (stored != _MISSING) & (w_first < limit) & (t_first < limit)
        if not repeats:
            self._anchor(first_keys, t_first, ~first_dup)
            return ~first_dup
        # Later rows of a key, against the anchor its first row left (the stored one, or itself).
        slot = np.empty(n, dtype=np.int64)
        slot[first_rows] = np.arange(m)
        group = slot[group_first]
        limit = np.where(first_dup, stored, t_first)[group] + within
        dup = (w < limit) & (t < limit)
        dup[first_rows] = first_dup
        moved = ~dup
        moved[first_rows] = False
        if not moved.any():
            self._anchor(first_keys, t_first, ~first_dup)
            return ~dup
        # A later row of these keys is kept, so their anchor moves inside the batch: their rows
        # are decided one by one; the other keys keep the vectorized decision.
        moved_groups = np.zeros(m, dtype=bool)
        moved_groups[group[moved]] = True
        self._anchor(first_keys, t_first, ~first_dup & ~moved_groups)
        sequential = np.flatnonzero(moved_groups[group])
        decided: list[bool] = []
        new_keys: list[Hashable] = []
        new_expiries: list[int] = []
        keys = [first_keys[g] for g in group[sequential].tolist()]
        for k, row_t, row_w in zip(keys, t[sequential].tolist(), w[sequential].tolist(), strict=True):
            a = anchors.get(k)
            if a is not None and row_w < a + within and row_t < a + within:
                decided.append(False)
            else:
                anchors[k] = row_t
                decided.append(True)
                new_keys.append(k)
                new_expiries.append(row_t + within)
        self.index.add(new_expiries, new_keys)
        kept = ~dup
        kept[sequential] = decided
        return kept

    def _anchor(self, keys: list[Hashable], times: np.ndarray, kept: np.ndarray) -> None:
        """Make the kept rows' times their keys' anchors (keys distinct)."""
        new_keys = list(compress(keys, kept.tolist()))
        if not new_keys:
            return
        new_times = times[kept]
        self.anchors.update(zip(new_keys, new_times.tolist(), strict=True))
        self.index.add(new_times + self.within_ms, new_keys)

    def _advance(self, watermark: int | None) -> None:
        """Move the operator's watermark and free the anchors it killed."""
        if watermark is not None and watermark > self.watermark:
            self.watermark = watermark
        w = self.watermark
        next_expiry = self.index.next_expiry()
        if next_expiry is None or next_expiry > w:
            return
        anchors = self.anchors
        expiries, keys = self.index.expired(w)
        # An entry is current if its key's anchor is still the one it was made for; anchors that
        # moved (or were freed) have entries of their own.
        current = np.fromiter(map(anchors.get, keys, repeat(_MISSING)), dtype=np.int64, count=len(keys))
        dead = current == expiries - self.within_ms
        deque(map(anchors.pop, compress(keys, dead.tolist()), repeat(None)), maxlen=0)

    def finish(self, ctx: StepContext) -> Batch | None:
        # End of input: the watermark is +inf and every anchor dies.
        self._advance(END_OF_TIME)
        return None

    def snapshot(self) -> dict[str, Any]:
        """The operator's state as plain data: live anchors, watermark, duplicate count."""
        return {
            "kind": "dedupe",
            "version": SNAPSHOT_VERSION,
            "anchors": dict(self.anchors),
            "watermark": self.watermark,
            "duplicates": self.duplicates,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state by ``snapshot``; the expiry index is rebuilt from the anchors."""
        _check_snapshot(snapshot, "dedupe", self.step)
        self._load(snapshot, dict(snapshot["anchors"]))

    def snapshot_groups(self, groups: int) -> dict[int, Any]:
        """The anchors split by key group: ``{g: {"keys", "anchors"}}`` (anchors: an int64 array
        aligned with ``keys``) for the groups that have keys, and ``{-1: header}``."""
        keys = list(self.anchors)
        anchors = np.fromiter(self.anchors.values(), dtype=np.int64, count=len(keys))
        parts: dict[int, Any] = {
            -1: {
                "kind": "dedupe",
                "version": SNAPSHOT_VERSION,
                "key_groups": {"groups": groups, "function": KEY_GROUP_FUNCTION},
                "watermark": self.watermark,
                "duplicates": self.duplicates,
            }
        }
        for group, at in split_by_group(key_groups(keys, groups)):
            parts[group] = {"keys": pick(keys, at), "anchors": anchors[at]}
        return parts

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore the anchors of the groups in ``parts`` (any subset) and the scalars of ``-1``."""
        header = _header_of(parts, "dedupe", self.step)
        anchors: dict[Hashable, int] = {}
        for group, part in parts.items():
            if group != -1:
                anchors.update(zip(part["keys"], np.asarray(part["anchors"], dtype=np.int64).tolist(), strict=True))
        self._load(header, anchors)

    def _load(self, header: dict[str, Any], anchors: dict[Hashable, int]) -> None:
        self.anchors = anchors
        self.watermark = header["watermark"]
        self.duplicates = header.get("duplicates", 0)
        self.index = ExpiryIndex()
        anchored = np.fromiter(self.anchors.values(), dtype=np.int64, count=len(self.anchors))
        self.index.add(anchored + self.within_ms, list(self.anchors))
        self._advance(None)


_IMMUTABLE = frozenset({int, float, str, bool, bytes, type(None), complex})
"""State types that need no copy to be detached from the running operator."""


def _detached(values: list[Any]) -> list[Any]:
    """``values``, copied deeply unless every one is an immutable scalar. The copy is a pickle
    round trip (2-3x faster than ``deepcopy`` on plain data, and what the checkpoint codec does
    anyway), falling back to ``deepcopy`` for states that do not pickle (the codec will say so)."""
    if set(map(type, values)) <= _IMMUTABLE:
        return values
    try:
        return pickle.loads(pickle.dumps(values, protocol=5))
    except Exception:
        return copy.deepcopy(values)


def _header_of(parts: dict[int, Any], kind: str, step: str) -> dict[str, Any]:
    """Part ``-1`` of a ``snapshot_groups`` result, checked; the other keys must be groups."""
    header = parts.get(-1)
    if not isinstance(header, dict):
        raise ValueError(f"step {step!r}: key-group parts without the operator's part -1 (groups {sorted(parts)})")
    _check_snapshot(header, kind, step)
    stray = [g for g in parts if not isinstance(g, int) or g < -1]
    if stray:
        raise ValueError(f"step {step!r}: {stray!r} are not key groups")
    return header


def _check_snapshot(snapshot: dict[str, Any], kind: str, step: str) -> None:
    if snapshot.get("kind") != kind:
        raise ValueError(f"step {step!r}: not a {kind} snapshot (kind {snapshot.get('kind')!r})")
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"step {step!r}: snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
