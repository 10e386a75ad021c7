"""Building blocks of keyed state: Python keys from key columns, and a time-ordered expiry index.

Keyed operators hold their state in plain dicts keyed by Python values (one column's value, or a
tuple of several columns' values), so that state can be snapshot as plain data. Event-time
expiry (TTL, dedupe horizons) is driven by :class:`ExpiryIndex`, which returns the keys whose
expiry the watermark has reached without scanning the keys that are still alive.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import polars as pl

Key = Hashable


def python_keys(columns: Sequence[pl.Series]) -> list[Key]:
    """One hashable Python key per row: the value of a single key column, else a tuple.

    Keys agree with polars' notion of equal keys (the vectorized paths group rows with polars):
    nulls are ``None``, every NaN becomes the one ``math.nan`` object (Python compares NaN unequal
    to itself but dict lookups match the same object first), and nested values (lists, structs)
    become tuples.
    """
    values = [_column_values(column) for column in columns]
    if len(values) == 1:
        return values[0]
    return list(zip(*values, strict=True))


def _column_values(column: pl.Series) -> list[Any]:
    dtype = column.dtype
    values = column.to_list()
    if dtype.is_float():
        if column.is_nan().any():
            values = [math.nan if v is not None and v != v else v for v in values]
    elif dtype.is_nested() or dtype == pl.Object:
        values = [_freeze(v) for v in values]
    return values


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a nested value (lists and dicts become tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, float) and value != value:
        return math.nan
    return value


class ExpiryIndex:
    """A time-ordered index of ``(expiry_ms, key)`` entries.

    Entries arrive a batch at a time; each batch becomes one run sorted by expiry (numpy,
    vectorized), and a heap orders the runs by their earliest pending entry. ``expired(w)`` pops
    every entry with ``expiry <= w`` in time ``O(popped + runs touched · log runs)``: live keys are
    never scanned. The index may hold stale entries (a key whose expiry later moved, or whose
    state was deleted); callers check each returned key against their state before freeing it,
    so an entry only says "look at this key at this time".
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []
        """(earliest pending expiry, run id) for each run."""
        self._runs: dict[int, list[Any]] = {}
        """run id -> [sorted expiries (int64 array), keys in the same order, first pending]."""
        self._next_run = 0
        self._entries = 0

    def __len__(self) -> int:
        return self._entries

    def add(self, expiries: Sequence[int] | np.ndarray | pl.Series, keys: Sequence[Key]) -> None:
        """Index ``keys[i]`` to be looked at when the watermark reaches ``expiries[i]``."""
        if len(keys) == 0:
            return
        if isinstance(expiries, pl.Series):
            array = expiries.to_numpy().astype(np.int64, copy=False)
        else:
            array = np.asarray(expiries, dtype=np.int64)
        if len(array) != len(keys):
            raise ValueError(f"{len(array)} expiries for {len(keys)} keys")
        ordered = list(keys)
        if len(array) > 1 and bool((array[1:] < array[:-1]).any()):
            order = np.argsort(array, kind="stable")
            array = array[order]
            ordered = [ordered[i] for i in order.tolist()]
        run = self._next_run
        self._next_run += 1
        self._runs[run] = [array, ordered, 0]
        self._entries += len(ordered)
        heapq.heappush(self._heap, (int(array[0]), run))

    def next_expiry(self) -> int | None:
        """The earliest expiry held, if any."""
        return self._heap[0][0] if self._heap else None

    def expired(self, watermark: int) -> tuple[np.ndarray, list[Key]]:
        """Remove every entry with ``expiry <= watermark``; return their expiries and keys."""
        expiries: list[np.ndarray] = []
        keys: list[Key] = []
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            _, run = heapq.heappop(heap)
            array, run_keys, start = self._runs[run]
            end = int(np.searchsorted(array, watermark, side="right"))
            expiries.append(array[start:end])
            keys.extend(run_keys[start:end])
            self._entries -= end - start
            if end < len(run_keys):
                self._runs[run][2] = end
                heapq.heappush(heap, (int(array[end]), run))
            else:
                del self._runs[run]
        if not expiries:
            return np.empty(0, dtype=np.int64), keys
        return (expiries[0] if len(expiries) == 1 else np.concatenate(expiries)), keys

    def clear(self) -> None:
        self._heap.clear()
        self._runs.clear()
        self._entries = 0
