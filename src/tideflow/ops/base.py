"""The operator contract and the error handling every operator shares."""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from ..deadletters import DeadLetters
from ..errors import BatchRejected, InfrastructureError, StepError
from ..record import POSITION, Batch, Origin, to_records

OnError = Literal["dlq", "fail"]
ON_ERROR_CHOICES = ("dlq", "fail")

STRUCTURAL_ERRORS: tuple[type[BaseException], ...] = (
    BatchRejected,
    pl.exceptions.ColumnNotFoundError,
    pl.exceptions.SchemaError,
    pl.exceptions.SchemaFieldNotFoundError,
    pl.exceptions.DuplicateError,
    pl.exceptions.StructFieldNotFoundError,
)
"""Errors that concern the batch's shape, not any one row: every row fails the same way."""

FATAL_ERRORS: tuple[type[BaseException], ...] = (InfrastructureError, OSError, MemoryError, sqlite3.OperationalError)
"""Errors of the environment, not of any record: bisecting would retry ~2n times and then
dead-letter every row, so they stop the run (naming the step) instead."""

RECORD_ERRORS: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)
"""What a user function or a batch operation may raise for a bad record. polars panics derive
from ``BaseException`` and would otherwise escape dead-lettering and kill the run."""


@dataclass
class StepContext:
    """What an operator may use while running: dead letters and its error policy."""

    dead_letters: DeadLetters
    strict: bool = False
    """Set in the dead-letter branch: a letter that cannot be handled must stop the run, because
    sending it to the dead letters again could loop or, after the branch closed, lose it."""

    def reject(
        self,
        step: str,
        on_error: OnError,
        error: BaseException,
        payload: Any,
        origin: Origin | None,
        position: int | None,
    ) -> None:
        """Send one record to dead letters, or raise ``StepError`` under ``on_error="fail"``."""
        if on_error == "fail" or self.strict:
            where = origin.describe(position) if origin is not None and position is not None else None
            text = f"{where['file'] or where['source']} {where['position']}" if where else None
            raise StepError(step, error, text) from error
        self.dead_letters.add(step, error, payload, origin, position)

    def reject_rows(
        self, step: str, on_error: OnError, error: BaseException, rows: pl.DataFrame, origin: Origin | None
    ) -> None:
        """Send every row of ``rows`` to dead letters with the same error."""
        positions = rows.get_column(POSITION).to_list() if POSITION in rows.columns else None
        for i, record in enumerate(to_records(rows)):
            self.reject(step, on_error, error, record, origin, positions[i] if positions else None)


class Operator(ABC):
    """A step's logic. ``process`` maps one batch to zero or one batch; ``finish`` flushes."""

    requires_watermark = False
    """Event-time operators set this: the flow refuses to build them on an input without one."""

    def __init__(self, step: str, on_error: OnError) -> None:
        self.step = step
        self.on_error = on_error
        self.records_in = 0
        self.records_out = 0
        self.side_outputs: dict[str, list[Batch]] = {}
        self.side_counts: dict[str, int] = {}
        """Batches for named side outputs (``"late"``), drained by the runtime after each call."""

    def emit_side(self, port: str, batch: Batch) -> None:
        """Send ``batch`` to this step's side output ``port`` (e.g. late records)."""
        if batch.df.height:
            self.side_outputs.setdefault(port, []).append(batch)

    counted_ports: frozenset[str] = frozenset()
    """Side outputs that are a normal outcome (dedupe's duplicates): unconsumed, they are only
    counted (``side_counts``), not sent to the dead letters as other unconsumed outputs are."""

    tick_ms: int | None = None
    """Operators with processing-time timers set this: the runtime calls ``on_tick`` this often
    while no batch arrives."""

    def next_timer_s(self) -> float | None:
        """Seconds until this operator's next processing-time timer (``None``: none pending).
        The default wakes it every ``tick_ms``; operators that know their deadlines say so."""
        return self.tick_ms / 1000 if self.tick_ms is not None else None

    def start(self, wake: Callable[[], None], abort: threading.Event) -> None:
        """Called by the runtime in the step's thread before the first batch. Operators with
        background work (model workers) start it here; ``wake()`` makes the runtime call
        ``on_tick`` soon, so results finished in the background leave without waiting."""

    def close(self) -> None:
        """Called once after ``finish`` or when the run aborts: release threads and processes."""

    def metrics(self) -> dict[str, Any] | None:
        """Step-specific measurements for the run summary (``None``: nothing beyond counts)."""
        return None

    def on_watermark(self, watermark: int, ctx: StepContext) -> Batch | Iterable[Batch] | None:
        """The input's watermark advanced with no rows (upstream dropped them): fire timers."""
        return None

    def on_tick(self, ctx: StepContext) -> Batch | Iterable[Batch] | None:
        """Processing time passed without data: fire what is due."""
        return None

    def state_size(self) -> int:
        """Entries held in state (keys, windows, buffered rows); 0 for stateless operators."""
        return 0

    @property
    def steps(self) -> list[str]:
        """Names of the logical steps this operator runs (several when fused)."""
        return [self.step]

    @abstractmethod
    def process(self, batch: Batch, ctx: StepContext) -> Batch | Iterable[Batch] | None:
        """Transform one batch; return ``None`` when nothing comes out. An operator that waits
        on background work may return an iterator of batches, yielded as they become ready."""

    def finish(self, ctx: StepContext) -> Batch | Iterable[Batch] | None:
        """Called once at end of input; stateful operators emit what they still hold."""
        return None

    # -- checkpoints ------------------------------------------------------------------------
    checkpointed_state = True
    """False for operators that keep state a checkpoint cannot capture (a user's stateful
    ``map_batches`` function without ``snapshot``/``restore``): a checkpointed run warns that
    such a step restarts empty after a resume."""

    def on_barrier(self, ctx: StepContext) -> Batch | Iterable[Batch] | None:
        """A checkpoint barrier reached this step, after every row before it and before any
        row after it. Operators whose state is work in flight (an ``infer`` step's queued and
        running batches) finish it here and return its output, which goes on before the
        barrier; their snapshot is then small. Default: nothing to drain."""
        return None

    def snapshot(self) -> Any:
        """The operator's state as plain data, for a checkpoint (``None``: stateless).

        Called at a barrier, in the step's thread; the result must not change when the
        operator goes on (copy mutable containers; polars frames are immutable). Encoded by
        :mod:`tideflow.checkpoint.codec`: containers, numbers, strings, numpy, polars frames and
        dtypes, and tideflow's own classes."""
        return None

    def restore(self, state: Any) -> None:
        """Replace the state by ``state``, from ``snapshot()`` of a step of the same kind."""
        raise TypeError(f"step {self.step!r} ({type(self).__name__}) keeps no state to restore")

    def snapshot_groups(self, groups: int) -> dict[int, Any] | None:
        """The state split by key group (``0 <= group < groups``), so that a later scale-out
        can hand each worker its groups without reprocessing. Entry ``-1`` holds state that is
        not per key. Default: the whole ``snapshot()`` under ``-1``."""
        state = self.snapshot()
        return None if state is None else {-1: state}

    def restore_groups(self, parts: dict[int, Any]) -> None:
        """Restore from ``snapshot_groups`` output (all groups, or those this worker owns)."""
        if set(parts) != {-1}:
            raise ValueError(f"step {self.step!r}: expected one whole-state part, got key groups {sorted(parts)}")
        self.restore(parts[-1])


def isolate_failures(
    apply: Callable[[pl.DataFrame], pl.DataFrame], df: pl.DataFrame
) -> tuple[list[pl.DataFrame], list[tuple[pl.DataFrame, BaseException]]]:
    """Apply ``apply`` to ``df``; when it raises, bisect to find the rows that make it raise.

    Returns the outputs of the parts that succeeded (in input order) and the failing rows, each
    with its exception. Cost is O(k log n) calls for k bad rows among n. Errors about the batch's
    shape (a missing column) fail every row alike and are not bisected.
    """
    try:
        return [apply(df)], []
    except FATAL_ERRORS:
        raise
    except STRUCTURAL_ERRORS as error:
        return [], [(df, error)]
    except RECORD_ERRORS as error:
        if df.height <= 1:
            return [], [(df, error)]
        middle = df.height // 2
        good_a, bad_a = isolate_failures(apply, df.slice(0, middle))
        good_b, bad_b = isolate_failures(apply, df.slice(middle))
        return good_a + good_b, bad_a + bad_b
