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
