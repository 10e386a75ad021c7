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

    def reject(self, error: BaseException | str, payload: object, position: int | None = None) -> None:
        """Record a payload this source could not turn into a row."""
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
        from the first batch, say), as JSON-able data; ``None`` when there is none. Called
        between batches."""
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
    write); then, for each epoch ``e = first, first + 1, ...``: ``write``... ``prepare(e)``; and
    ``commit(e)`` once the checkpoint of epoch ``e`` is durable. Rows written between
    ``prepare(e - 1)`` and ``prepare(e)`` belong to epoch ``e``: ``prepare`` makes them durable but
    invisible; ``commit`` makes every prepared epoch up to ``e`` visible. ``commit`` may come from
    another thread while ``write`` already receives rows of later epochs: implementations lock.

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
