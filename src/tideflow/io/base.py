"""The contracts between the runtime and sources and sinks.

A source yields polars DataFrames (micro-batches) that carry the hidden position column; it
reports decode and validation failures as dead letters itself, because only it still has the
raw bytes. A sink receives batches without hidden columns and must never leave a half-written
record behind.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..deadletters import DeadLetters
from ..record import Origin


@dataclass
class SourceContext:
    """Handed to a source when a run starts."""

    step: str
    dead_letters: DeadLetters
    stop: threading.Event = field(default_factory=threading.Event)
    origin: Origin | None = None

    skip_rejects_through: int | None = None
    """Set by a resumed run: rejects at positions up to this were reported before the crash."""
    rejected_through: int | None = None
    """The highest position rejected so far (a checkpoint keeps it, see above)."""

    def reject(self, error: BaseException | str, payload: object, position: int | None = None) -> None:
        """Record a payload this source could not turn into a row."""
        if position is not None:
            if self.skip_rejects_through is not None and position <= self.skip_rejects_through:
                return
            if self.rejected_through is None or position > self.rejected_through:
                self.rejected_through = position
        self.dead_letters.add(self.step, error, payload, self.origin, position)

    def stopping(self) -> bool:
        return self.stop.is_set()


class Source(ABC):
    """Produces micro-batches. Bounded sources end; unbounded ones run until the flow stops."""

    time: str | None = None
    """Name of the event-time column, if the source has one."""

    bounded: bool = True

    progress_unit: str = "records"
    """What ``progress()`` counts: ``"bytes"`` (files being read) or ``"records"``."""

    def origin(self, step: str) -> Origin:
        """How positions of this source's rows are described (override for file sources)."""
        return Origin(step)

    @abstractmethod
    def batches(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        """Yield batches until the input ends or ``ctx.stop`` is set."""

    def progress(self) -> tuple[int, int | None]:
        """``(done, total)`` in ``progress_unit`` (bytes for files, records otherwise)."""
        return (0, None)

    def close(self) -> None:
        """Release resources; called once, also after errors."""

    replayable: bool = False
    """Whether a second read yields the same rows at the same positions (files, in-memory
    lists). Checkpointed runs resume a replayable source after the last position a checkpoint
    recorded; an unreplayable one (a live iterator) restarts where it stands, so what it
    produced after that checkpoint is not produced again (at-most-once for that input)."""

    def checkpoint_state(self) -> Any:
        """Source state besides the position that a resumed read needs (column types inferred
        from the first batch, say), as plain data the checkpoint codec encodes; ``None`` when
        there is none. Called between batches."""
        return None

    def resume(self, after_position: int, state: Any) -> None:
        """Before ``batches``: the next read may skip rows at positions ``<= after_position``
        cheaply (whole files, lines not decoded). The runtime drops any such row that still
        comes, so skipping is an optimisation, not a duty. ``state`` is ``checkpoint_state()``."""


class Sink(ABC):
    """Consumes micro-batches. ``write`` may be called from a worker thread, one at a time."""

    def open(self, step: str) -> None:
        """Called once before the first batch."""

    @abstractmethod
    def write(self, df: pl.DataFrame) -> None:
        """Write a batch completely, or raise having written none of it."""

    def flush(self) -> None:
        """Make everything written so far durable and visible."""

    def close(self) -> None:
        """Flush and release resources; called once at the end of a run, also when interrupted."""
        self.flush()


class TransactionalSink(Sink):
    """A sink that takes part in checkpoints with a two-phase commit, for exactly-once output.

    In a checkpointed run the runtime calls, in this order: ``open``; ``recover`` (before any
    write); then ``write``... ``prepare(e)`` at each checkpoint barrier, and ``commit(e)`` once the
    checkpoint of epoch ``e`` is durable; at the end of the input ``prepare(final)``,
    ``commit(final)`` and ``close``. Epochs increase but need not be contiguous: after a fallback
    to an older checkpoint the runtime goes on with a fresh epoch higher than any it used. Rows
    written since the previous ``prepare`` (or since ``recover``) belong to the epoch passed to
    the next ``prepare``, which makes them durable but invisible; ``commit`` makes every prepared
    epoch up to ``e`` visible. ``prepare`` comes from the sink's worker thread between writes;
    ``commit`` comes from another thread, possibly while ``write`` already receives rows of later
    epochs: implementations lock.

    A process may be killed at any instant, inside ``prepare`` and ``commit`` too: what either
    leaves half done, ``recover`` in the next run finishes or discards. ``close`` in a
    checkpointed run publishes nothing that was not committed: after an interruption, pending
    rows wait for ``recover`` to make them visible (their checkpoint is durable) or drop them
    (it is not, and the resumed run writes them again).

    Without checkpoints none of these is called and the sink writes through as before.
    """

    def recover(self, committed: int | None, handle: Any) -> None:
        """Start epochs. ``committed`` is the epoch of the checkpoint the run resumes from
        (``None``: a fresh run; the first epoch is then 1) and ``handle`` what ``prepare``
        returned for it. Make prepared epochs ``<= committed`` visible (a crash may have come
        between the checkpoint and the commit; doing it twice must change nothing) and discard
        everything else still pending (epochs after the checkpoint: their rows will come again)."""

    @abstractmethod
    def prepare(self, epoch: int) -> Any:
        """Pre-commit epoch ``epoch``: durable, not visible. Returns JSON-able data that the
        checkpoint keeps and ``recover`` gets back (file names, counts)."""

    @abstractmethod
    def commit(self, epoch: int) -> None:
        """Make every prepared epoch ``<= epoch`` visible; idempotent."""
