"""Reading an iterator on its own thread, so that ``linger`` holds even when it blocks.

A generator that waits for input (a socket, a queue, a sensor) cannot be asked "anything new?"
between its items. Without a reader thread, a partial batch would sit in the source until the
next item arrives, however long that takes. ``Prefetcher`` pulls items on a daemon thread into a
bounded deque (so backpressure still reaches the generator) and hands out chunks when a batch
is full, when ``linger`` has passed since the chunk's first item arrived, or at the end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_IDLE_POLL_S = 0.05
"""How often an idle consumer checks ``stop`` while the reader is blocked in the iterator."""


class Prefetcher:
    """Chunks of at most ``batch_size`` items from ``items``, read on a background thread.

    ``whole(item)`` marks items that travel alone (ready-made DataFrames): they end the current
    chunk and form one of their own.
    """

    def __init__(
        self,
        items: Iterable[Any],
        *,
        batch_size: int,
        linger_s: float,
        stop: threading.Event,
        whole: Callable[[Any], bool],
    ) -> None:
        self._items = items
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._stop = stop
        self._whole = whole
        self._buffer: deque[Any] = deque()
        self._ready = threading.Event()
        self._space = threading.Event()
        self._done = False
        self._error: BaseException | None = None
        # Whole items waiting: each counter has one writer (producer / consumer), so no lock.
        self._wholes_in = 0
        self._wholes_out = 0
        self._thread = threading.Thread(target=self._pull, name="tideflow:prefetch", daemon=True)

    def _pull(self) -> None:
        buffer, limit = self._buffer, 2 * self._batch_size
        try:
            for item in self._items:
                while len(buffer) >= limit:
                    self._space.clear()
                    if self._stop.is_set():
                        return
                    self._space.wait(0.05)
                whole = self._whole(item)
                if whole:
                    self._wholes_in += 1
                buffer.append(item)
                if whole or len(buffer) == 1 or len(buffer) >= self._batch_size:
                    self._ready.set()
                if self._stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, after the items read before it
            self._error = error
        finally:
            self._done = True
            self._ready.set()

    def chunks(self) -> Iterator[list[Any]]:
        """Yield chunks until the iterator ends (re-raising its error) or ``stop`` is set."""
        self._thread.start()
        buffer = self._buffer
        first_seen: float | None = None
        while not self._stop.is_set():
            done = self._done  # read before looking at the buffer: no item can be missed
            if buffer and first_seen is None:
                first_seen = time.monotonic()
            full = len(buffer) >= self._batch_size or self._wholes_in > self._wholes_out
            lingered = first_seen is not None and time.monotonic() - first_seen >= self._linger_s
            if buffer and (full or lingered or done):
                yield self._take()
                first_seen = None
                continue
            if done:
                if self._error is not None:
                    raise self._error
                return
            # Nothing waiting: sleep until the reader signals an item (polling only for stop), never
            # spin — with linger=0 a zero timeout here once burned a core and starved the model.
            timeout = _IDLE_POLL_S if first_seen is None else first_seen + self._linger_s - time.monotonic()
            self._ready.wait(max(timeout, 0.0))
            self._ready.clear()

    def _take(self) -> list[Any]:
        """Pop up to one batch; a whole item is returned alone."""
        buffer, chunk = self._buffer, []
        while buffer and len(chunk) < self._batch_size:
            if self._whole(buffer[0]):
                if not chunk:
                    chunk.append(buffer.popleft())
                    self._wholes_out += 1
                break
            chunk.append(buffer.popleft())
        self._space.set()
        return chunk

