"""Stateless operators: polars-expression chains, per-record chains, batch functions, branches.

Consecutive steps of the same family are fused into one operator by the planner:
expression steps become one lazy polars query (one pass, optimised by polars); per-record steps
(map / filter / flat_map) become one Python loop, so a record is converted to a dict once per
chain rather than once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from .._columns import records_to_frame
from .._gc import gc_paused
from ..errors import BatchRejected, FlowDefinitionError
from ..record import HIDDEN_PREFIX, POSITION, WATERMARK, Batch, strip_hidden, to_records
from .base import FATAL_ERRORS, RECORD_ERRORS, OnError, Operator, StepContext, isolate_failures

ExprKind = Literal["filter", "with_columns", "select"]
RecordKind = Literal["map", "filter", "flat_map"]


class ExprStep:
    """One expression step: a filter predicate, or columns to add or select."""

    def __init__(
        self, step: str, kind: ExprKind, exprs: list[pl.Expr], named: dict[str, pl.Expr], on_error: OnError = "dlq"
    ) -> None:
        self.step, self.kind, self.exprs, self.named, self.on_error = step, kind, exprs, named, on_error

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        if self.kind == "filter":
            return frame.filter(*self.exprs)
        if self.kind == "with_columns":
            return frame.with_columns(*self.exprs, **self.named)
        # select keeps the hidden bookkeeping columns (positions, watermarks) through a
        # projection, unless the selection already has them (``pl.all()``).
        hidden = [c for c in frame.collect_schema().names() if c.startswith(HIDDEN_PREFIX)]
        chosen = set(frame.select(*self.exprs, **self.named).collect_schema().names())
        return frame.select(*self.exprs, *[pl.col(c) for c in hidden if c not in chosen], **self.named)


class ExprChain(Operator):
    """Fused polars-expression steps, run as one lazy query per batch."""

    def __init__(self, steps: list[ExprStep]) -> None:
        super().__init__(steps[0].step, steps[0].on_error)
        self.chain = steps

    @property
    def steps(self) -> list[str]:
        return [s.step for s in self.chain]

    def _run(self, df: pl.DataFrame, chain: list[ExprStep]) -> pl.DataFrame:
        frame = df.lazy()
        for step in chain:
            frame = step.apply(frame)
        return frame.collect(engine="in-memory")

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        self.records_in += batch.df.height
        try:
            out = self._run(batch.df, self.chain)
        except RECORD_ERRORS:
            out = self._process_step_by_step(batch, ctx)
        self.records_out += out.height
        return batch.with_df(out) if out.height else None

    def _process_step_by_step(self, batch: Batch, ctx: StepContext) -> pl.DataFrame:
        """Slow path after a failure: find the failing step, and in it the failing rows."""
        df = batch.df
        for step in self.chain:
            parts, failures = isolate_failures(lambda d, s=step: self._run(d, [s]), df)
            for rows, error in failures:
                ctx.reject_rows(step.step, step.on_error, error, rows, batch.origin)
            df = pl.concat(parts, how="vertical_relaxed") if parts else df.clear()
            if df.height == 0:
                break
        return df


class RecordStep:
    """One per-record step: ``map`` (dict → dict), ``filter`` (dict → bool), ``flat_map``."""

    def __init__(self, step: str, kind: RecordKind, fn: Callable[..., Any], on_error: OnError = "dlq") -> None:
        self.step, self.kind, self.fn, self.on_error = step, kind, fn, on_error


class RecordChain(Operator):
    """Fused per-record steps: one dict conversion per batch, one Python loop for the chain."""

    def __init__(self, steps: list[RecordStep]) -> None:
        super().__init__(steps[0].step, steps[0].on_error)
        self.chain = steps
        self._policy = {s.step: s.on_error for s in steps}
        self._types: dict[str, pl.DataType] = {}
        """Column types of this chain's output, fixed by the first values seen."""
        self._loop: Callable[..., None] | None = None

    @property
    def steps(self) -> list[str]:
        return [s.step for s in self.chain]

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        with gc_paused():
            return self._process(batch, ctx)

    def _process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        records = to_records(df)
        positions = df.get_column(POSITION).to_list() if POSITION in df.columns else None
        out: list[dict[str, Any]] = []
        out_index: list[int] = []
        if any(s.kind == "flat_map" for s in self.chain):
            self._run_general(records, positions, batch, ctx, out, out_index)
        else:
            self._run_one_to_one(records, positions, batch, ctx, out, out_index)
        if not out:
            return None
        frame = self._build(out, out_index, positions, batch, ctx)
        if frame is None or frame.height == 0:
            return None
        self.records_out += frame.height
        return batch.with_df(frame)

    def _run_one_to_one(self, records, positions, batch, ctx, out, out_index) -> None:
        """The hot loop for map/filter chains, generated once per chain as straight-line code."""
        if self._loop is None:
            self._loop = _compile_one_to_one([s.kind for s in self.chain])
        functions = [s.fn for s in self.chain]

        def on_error(index: int, step_number: int, error: Exception) -> None:
            step = self.chain[step_number].step
            position = positions[index] if positions else None
            ctx.reject(step, self._policy[step], error, records[index], batch.origin, position)

        self._loop(records, functions, out.append, out_index.append, on_error)

    def _run_general(self, records, positions, batch, ctx, out, out_index) -> None:
        for i, record in enumerate(records):
            items = [record]
            step = self.chain[0].step
            try:
                for s in self.chain:
                    step = s.step
                    items = list(_apply_record_step(s, items))
            except RECORD_ERRORS as error:
                position = positions[i] if positions else None
                ctx.reject(step, self._policy[step], error, record, batch.origin, position)
                continue
            out.extend(items)
            out_index.extend([i] * len(items))

    def _build(self, out, out_index, positions, batch, ctx) -> pl.DataFrame | None:
        """Rebuild a columnar batch; records whose fields break the column types are rejected."""
        frame, kept, rejects = records_to_frame(out, self._types)
        if rejects:
            last_step = self.chain[-1].step
            for index, reason in rejects.items():
                position = positions[out_index[index]] if positions else None
                ctx.reject(last_step, self._policy[last_step], TypeError(reason), out[index], batch.origin, position)
            out_index = [out_index[i] for i in kept]
        return carry_hidden(batch.df, frame, out_index)


_NOT_A_DICT = "map must return a dict, got {}; use flat_map to return several records or filter to drop one"


def _not_a_dict(value: object) -> TypeError:
    return TypeError(_NOT_A_DICT.format(type(value).__name__))


def _compile_one_to_one(kinds: list[str]) -> Callable[..., None]:
    """Generate ``loop(records, fns, emit, emit_index, on_error)`` for a map/filter chain.

    Straight-line code per chain removes the per-record cost of iterating over steps (measured:
    the generic loop cost more than the user's functions). Only step indices enter the source.
    """
    lines = [
        "def loop(records, fns, emit, emit_index, on_error):",
        "    " + ", ".join(f"f{i}" for i in range(len(kinds))) + (", = fns" if len(kinds) == 1 else " = fns"),
        "    for i, r in enumerate(records):",
        "        s = 0",
        "        try:",
    ]
    for i, kind in enumerate(kinds):
        lines.append(f"            s = {i}")
        if kind == "map":
            lines.append(f"            r = f{i}(r)")
            lines.append("            if type(r) is not dict:")
            lines.append("                raise not_a_dict(r)")
        else:
            lines.append(f"            if not f{i}(r):")
            lines.append("                continue")
    lines += [
        "            emit(r)",
        "            emit_index(i)",
        "        except RECORD_ERRORS as error:",
        "            on_error(i, s, error)",
    ]
    namespace: dict[str, Any] = {
        "not_a_dict": _not_a_dict,
        "enumerate": enumerate,
        "type": type,
        "dict": dict,
        "RECORD_ERRORS": RECORD_ERRORS,
    }
    exec("\n".join(lines), namespace)
    return namespace["loop"]


def _apply_record_step(step: RecordStep, items: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for item in items:
        if step.kind == "map":
            result = step.fn(item)
            if type(result) is not dict:
                raise _not_a_dict(result)
            yield result
        elif step.kind == "filter":
            if step.fn(item):
                yield item
        else:
            produced = step.fn(item)
            if produced is None:
                continue
            for element in produced:
                if type(element) is not dict:
                    raise TypeError(f"flat_map must yield dicts, got {type(element).__name__}")
                yield element


class MapBatches(Operator):
    """A user function over a whole batch, as a polars DataFrame or an Arrow table.

    Checkpoints: a function that keeps state is checkpointed through its owner's ``snapshot()``
    and ``restore(state)`` methods, where the owner is the function itself (a callable object,
    like ``detect_anomalies``' scorer) or the object of a bound method (``forecast``'s
    ``KeyedForecasters.process``). ``snapshot()`` must return data that does not change as the
    function goes on (copies). A ``stateful=True`` function without such methods cannot be
    checkpointed: ``checkpointed_state`` is then False, and a resumed run starts it empty (the
    runtime warns). A function without them and not marked stateful is taken as stateless.
    """

    def __init__(
        self,
        step: str,
        fn: Callable[[Any], Any],
        on_error: OnError,
        format: str = "polars",
        same_rows: bool | None = None,
        stateful: bool = False,
    ) -> None:
        super().__init__(step, on_error)
        if format not in ("polars", "arrow"):
            raise FlowDefinitionError(f"map_batches format must be 'polars' or 'arrow', got {format!r}")
        self.fn, self.format, self.same_rows, self.stateful = fn, format, same_rows, stateful
        self.state_owner = state_owner(fn)
        """What ``snapshot``/``restore`` delegate to (None: the function keeps no state we can reach)."""
        if stateful and self.state_owner is None:
            self.checkpointed_state = False

    def snapshot(self) -> dict[str, Any] | None:
        if self.state_owner is None:
            return None
        return {"kind": "map_batches", "version": _SNAPSHOT_VERSION, "state": self.state_owner.snapshot()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        if self.state_owner is None:
            super().restore(snapshot)  # raises: nothing here keeps state
            return
        if snapshot.get("kind") != "map_batches" or snapshot.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a map_batches snapshot (kind {snapshot.get('kind')!r})")
        self.state_owner.restore(snapshot["state"])

    def _apply(self, df: pl.DataFrame) -> pl.DataFrame:
        visible = strip_hidden(df)
        argument = visible.to_arrow() if self.format == "arrow" else visible
        result = self.fn(argument)
        if isinstance(result, pa.Table | pa.RecordBatch):
            result = pl.from_arrow(result)
        if not isinstance(result, pl.DataFrame):
            raise TypeError(
                f"map_batches function must return a polars DataFrame or Arrow table, got {type(result).__name__}"
            )
        if self.same_rows and result.height != df.height:
            raise BatchRejected(
                f"map_batches(same_rows=True): the function returned {result.height} rows for {df.height}"
            )
        if result.height == df.height and self.same_rows is not False:
            return carry_hidden(df, result, None)
        # Rows were added or removed: which input row an output row came from is unknown, so
        # positions are dropped and every row gets the watermark before the batch (coarser
        # lateness, never wrongly late).
        if WATERMARK in df.columns and result.height:
            start = df.get_column(WATERMARK).min()
            result = result.with_columns(pl.lit(start, pl.Int64).alias(WATERMARK))
        return result

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        self.records_in += batch.df.height
        if self.stateful:
            # Retrying halves would feed a stateful function the same rows twice: all or nothing.
            try:
                parts, failures = [self._apply(batch.df)], []
            except FATAL_ERRORS:
                raise
            except RECORD_ERRORS as error:
                parts, failures = [], [(batch.df, error)]
        else:
            parts, failures = isolate_failures(self._apply, batch.df)
        for rows, error in failures:
            ctx.reject_rows(self.step, self.on_error, error, rows, batch.origin)
        parts = [p for p in parts if p.height]
        if not parts:
            return None
        out = parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
        self.records_out += out.height
        return batch.with_df(out)


_SNAPSHOT_VERSION = 1


def state_owner(fn: Callable[..., Any]) -> Any | None:
    """The object whose ``snapshot()``/``restore(state)`` hold ``fn``'s state: ``fn`` itself (a
    callable object) or, for a bound method, its object; None if neither has both methods."""
    for candidate in (fn, getattr(fn, "__self__", None)):
        if candidate is None or isinstance(candidate, type):
            continue
        if callable(getattr(candidate, "snapshot", None)) and callable(getattr(candidate, "restore", None)):
            return candidate
    return None


def carry_hidden(source: pl.DataFrame, frame: pl.DataFrame, rows: list[int] | None) -> pl.DataFrame:
    """Attach ``source``'s hidden columns (positions, watermarks) to ``frame``.

    ``rows[i]`` is the source row that output row ``i`` came from (``None``: row for row).
    """
    hidden = [c for c in source.columns if c.startswith(HIDDEN_PREFIX) and c not in frame.columns]
    if not hidden or frame.height == 0:
        return frame
    carried = source.select(hidden)
    if rows is not None:
        carried = carried[rows]
    return frame.hstack(carried.get_columns())


def branch_column(step: str) -> str:
    """Hidden column in which a branch step stores its per-row decision."""
    return f"{HIDDEN_PREFIX}branch_{step}"


class BranchMask(Operator):
    """Evaluates a branch predicate once per row; the two branches filter on the result."""

    def __init__(self, step: str, predicate: pl.Expr | Callable[[dict[str, Any]], bool], on_error: OnError) -> None:
        super().__init__(step, on_error)
        self.column = branch_column(step)
        if isinstance(predicate, pl.Expr):
            self._inner: Operator = ExprChain(
                [ExprStep(step, "with_columns", [], {self.column: predicate.fill_null(False)}, on_error)]
            )
        else:
            self._inner = RecordChain(
                [RecordStep(step, "map", lambda r, p=predicate, c=self.column: {**r, c: bool(p(r))}, on_error)]
            )

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        self.records_in += batch.df.height
        out = self._inner.process(batch, ctx)
        self.records_out += out.df.height if out is not None else 0
        return out


class BranchSelect(Operator):
    """One side of a branch: keeps the rows whose decision equals ``side``."""

    def __init__(self, step: str, branch_step: str, side: bool) -> None:
        super().__init__(step, "fail")
        self.column = branch_column(branch_step)
        self.side = side

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        self.records_in += batch.df.height
        df = batch.df
        mask = df.get_column(self.column)
        out = df.filter(mask if self.side else ~mask).drop(self.column)
        self.records_out += out.height
        return batch.with_df(out) if out.height else None
