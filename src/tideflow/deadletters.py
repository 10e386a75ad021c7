"""Dead letters: every record that cannot be decoded, validated, processed or written.

A dead letter keeps the raw payload, the reason, the step that rejected it and the record's
source position, so that an operator can fix the cause and replay the record. Nothing that
enters a flow leaves it without being counted as output or as a dead letter.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from .record import Origin

DEAD_LETTER_SCHEMA = pl.Schema(
    {
        "step": pl.String,
        "error": pl.String,
        "payload": pl.String,
        "source": pl.String,
        "file": pl.String,
        "position": pl.String,
        "at": pl.Datetime("us", "UTC"),
    }
)

MAX_PAYLOAD_CHARS = 1 << 20
"""Payloads longer than this (1 MiB of text) are cut, with a marker; the reason says so."""


def render_payload(payload: Any) -> str:
    """Turn a raw payload (bytes, text, dict, row) into text without losing what can be kept.

    Bytes that are not valid UTF-8 are kept as backslash escapes, so the exact bad bytes show.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        text = bytes(payload).decode("utf-8", errors="backslashreplace")
    elif isinstance(payload, str):
        text = payload
    else:
        try:
            text = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            text = repr(payload)
    if len(text) > MAX_PAYLOAD_CHARS:
        text = text[:MAX_PAYLOAD_CHARS] + f"...[cut: {len(text)} chars in all]"
    return text


def describe_error(error: BaseException | str) -> str:
    """``Type: message``, first paragraph only (polars appends the whole query plan)."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return text.split("\n\n", 1)[0].strip()


class DeadLetters:
    """Thread-safe collector of dead letters for one run.

    If the flow routes ``flow.dead_letters()`` to a sink, collected letters are handed to that
    branch as batches; otherwise they are kept (up to ``keep``) for the run result and counted.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._kept: list[dict[str, Any]] = []
        self._keep = keep
        self.counts: Counter[str] = Counter()
        self.routed = False
        self._listeners: list[Callable[[], None]] = []
        self.epoch_of: Callable[[], int | None] | None = None
        """Set by a checkpointed run: the epoch the calling thread's step is in (the last
        barrier it passed), so that the dead-letter branch can put each letter on the right
        side of a checkpoint."""
        self._pending_epochs: list[int | None] = []

    def add(
        self,
        step: str,
        error: BaseException | str,
        payload: Any,
        origin: Origin | None = None,
        position: int | None = None,
    ) -> None:
        where = origin.describe(position) if origin is not None else {}
        letter = {
            "step": step,
            "error": describe_error(error),
            "payload": render_payload(payload),
            "source": where.get("source"),
            "file": where.get("file"),
            "position": where.get("position"),
            "at": datetime.now(UTC),
        }
        epoch = self.epoch_of() if self.epoch_of is not None else None
        with self._lock:
            self.counts[step] += 1
            if self.routed:
                self._pending.append(letter)
                self._pending_epochs.append(epoch)
            elif len(self._kept) < self._keep:
                self._kept.append(letter)
        for listener in self._listeners:
            listener()

    def add_many(self, letters: list[tuple[str, BaseException | str, Any, Origin | None, int | None]]) -> None:
        for letter in letters:
            self.add(*letter)

    def on_add(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each new letter (the runtime wakes the dead-letter branch)."""
        self._listeners.append(listener)

    def drain(self, before: int | None = None) -> pl.DataFrame | None:
        """Take the letters waiting for the dead-letter branch, as one batch; with ``before``,
        only those added by steps that had not yet passed barrier ``before`` (the others stay)."""
        with self._lock:
            if before is None:
                pending, self._pending, self._pending_epochs = self._pending, [], []
            else:
                keep = [e is not None and e >= before for e in self._pending_epochs]
                pending = [letter for letter, later in zip(self._pending, keep, strict=True) if not later]
                self._pending = [letter for letter, later in zip(self._pending, keep, strict=True) if later]
                self._pending_epochs = [e for e, later in zip(self._pending_epochs, keep, strict=True) if later]
        if not pending:
            return None
        return pl.DataFrame(pending, schema=DEAD_LETTER_SCHEMA)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def kept(self) -> list[dict[str, Any]]:
        """Letters kept in memory when no dead-letter sink was configured."""
        return list(self._kept)
