"""Custom aggregators: mergeable partial states for what polars expressions cannot merge.

A window keeps, for every (key, window), a partial *state* per aggregation. Polars expressions
cover the aggregations whose partials are plain columns (``sum``, ``min``, ``mean``...). An
:class:`Aggregator` covers the rest: it says how to make an empty state, fold one group's values
from one batch into a state, merge two states, and compute the final value when the window fires.

The contract (what the window engine relies on):

* ``init()`` returns a new empty state.
* ``add(state, values)`` folds in the values of **one group from one batch**, as one
  ``pl.Series`` (the aggregator's ``column``) or, when ``column`` is None, as a ``pl.DataFrame``
  of the group's rows. It is called once per group per batch, never per row: write it with
  vectorized polars/numpy operations. Nulls are passed as they are; the aggregator decides what
  they mean.
* ``merge(a, b)`` combines two states; it must be associative and commutative (the engine merges
  partials in whatever order batches, panes and checkpoints produce them).
* ``add`` and ``merge`` may update their **first** argument in place and return it, or return a
  new state; they never modify any other argument. Callers always use the returned value and
  treat the first argument as consumed (to combine two states while keeping both, use
  ``merge(merge(init(), a), b)``).
* ``result(state)`` returns the final value (a Python value of type ``dtype``, or None) and
  does not modify the state: a window may report early results and keep aggregating.
* ``to_bytes(state)`` / ``from_bytes(data)`` encode a state for checkpoints (no pickle: a
  checkpoint must not execute code when it is read). The default raises NotCheckpointable.

Writing your own, e.g. the range (max - min) of a column::

    >>> import struct
    >>> import polars as pl
    >>> from tideflow.agg import Aggregator
    >>> class Range(Aggregator):
    ...     '''max - min of a numeric column; None when the window has no non-null value.'''
    ...     dtype = pl.Float64
    ...
    ...     def init(self):
    ...         return None  # the state: None or a (min, max) tuple
    ...
    ...     def add(self, state, values):
    ...         values = values.drop_nulls()
    ...         if values.len() == 0:
    ...             return state
    ...         return self.merge(state, (float(values.min()), float(values.max())))
    ...
    ...     def merge(self, a, b):
    ...         if a is None or b is None:
    ...             return b if a is None else a
    ...         return (min(a[0], b[0]), max(a[1], b[1]))
    ...
    ...     def result(self, state):
    ...         return None if state is None else state[1] - state[0]
    ...
    ...     def to_bytes(self, state):
    ...         return b"" if state is None else struct.pack("<dd", *state)
    ...
    ...     def from_bytes(self, data):
    ...         return struct.unpack("<dd", data) if data else None
    >>> agg = Range("latency_ms")
    >>> s1 = agg.add(agg.init(), pl.Series([12.0, None, 30.0]))
    >>> s2 = agg.add(agg.init(), pl.Series([7.5]))
    >>> agg.result(agg.merge(s1, s2))
    22.5

Use it in a window as ``.agg(spread=Range("latency_ms"))``, or bind a column later with
``tideflow.agg.custom("latency_ms", Range)``.
"""

from __future__ import annotations

import copy as _copy
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import numpy as np
import polars as pl

from ..errors import TideflowError

S = TypeVar("S")

Values = pl.Series | pl.DataFrame
"""What ``add`` receives: the column's values, or the group's rows when ``column`` is None."""



class NotCheckpointable(TideflowError):
    """A custom aggregator without ``to_bytes``/``from_bytes``: usable in windows, but its state
    cannot go into a checkpoint (pickle is never used: reading a checkpoint must not run code)."""

class Aggregator(ABC, Generic[S]):
    """A custom aggregation with a mergeable partial state ``S`` (see the module docstring).

    Subclasses implement ``init``, ``add``, ``merge`` and ``result`` and set ``dtype`` (a class
    attribute or a property). ``add_groups`` has a correct default; override it when many groups
    of one batch can be built faster together. Override ``to_bytes``/``from_bytes`` to make the
    state checkpointable.
    """

    dtype: pl.DataType | type[pl.DataType] = pl.Object
    """Polars dtype of ``result``'s values (the output column's type)."""

    def __init__(self, column: str | None = None) -> None:
        self.column = column
        """Input column; None: ``add`` receives a DataFrame with the group's rows."""

    # -- the protocol -------------------------------------------------------------------------
    @abstractmethod
    def init(self) -> S:
        """A new, empty state."""

    @abstractmethod
    def add(self, state: S, values: Values) -> S:
        """Fold one group's values from one batch into ``state``; return the state (vectorized)."""

    @abstractmethod
    def merge(self, a: S, b: S) -> S:
        """Combine two states (associative, commutative); may consume ``a``, never modifies ``b``."""

    @abstractmethod
    def result(self, state: S) -> Any:
        """The final value of a state (None for "no value"); must not modify the state."""

    # -- optional -----------------------------------------------------------------------------
    def add_groups(self, group_ids: np.ndarray, values: Values, n_groups: int) -> list[S]:
        """New states for the ``n_groups`` groups of one batch: ``states[g]`` holds the rows
        ``i`` with ``group_ids[i] == g`` (group ids are ints in ``[0, n_groups)``; a group
        without rows gets ``init()``).

        The default sorts rows by group and calls ``add(init(), rows_of_group)`` once per group
        (the slices are zero-copy). Aggregators that can build all groups with a few vectorized
        operations override it.
        """
        group_ids = np.asarray(group_ids, dtype=np.int64)
        if len(group_ids) != len(values):
            raise ValueError(f"{len(group_ids)} group ids for {len(values)} values")
        order = group_order(group_ids, n_groups)
        if order is not None:
            group_ids = group_ids[order]
            values = values.gather(order) if isinstance(values, pl.Series) else values[order]
        bounds = np.searchsorted(group_ids, np.arange(n_groups + 1), side="left")
        states: list[S] = []
        for g in range(n_groups):
            start, stop = int(bounds[g]), int(bounds[g + 1])
            state = self.init()
            if stop > start:
                state = self.add(state, values[start:stop])
            states.append(state)
        return states

    def copy(self, state: S) -> S:
        """An independent copy of ``state`` (default: ``copy.deepcopy``)."""
        return _copy.deepcopy(state)

    def to_bytes(self, state: S) -> bytes:
        """Encode ``state`` for a checkpoint. Override together with ``from_bytes``."""
        raise NotCheckpointable(
            f"{type(self).__name__} cannot checkpoint its state: implement to_bytes and from_bytes"
        )

    def from_bytes(self, data: bytes) -> S:
        """Decode a state written by ``to_bytes``."""
        raise NotCheckpointable(f"{type(self).__name__} cannot restore its state: implement to_bytes and from_bytes")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(column={self.column!r})"


def group_order(group_ids: np.ndarray, n_groups: int) -> np.ndarray | None:
    """The stable permutation that sorts rows by group id, or None when they are sorted already.

    A radix sort when ids fit in 16 bits (about 10x faster than numpy's int64 argsort), polars'
    order-keeping sort otherwise.
    """
    if len(group_ids) < 2 or bool(np.all(group_ids[1:] >= group_ids[:-1])):
        return None
    if n_groups <= 1 << 16:
        return np.argsort(group_ids.astype(np.uint16), kind="stable")
    frame = pl.DataFrame({"g": group_ids})
    return frame.select(pl.arg_sort_by("g", maintain_order=True)).to_series().to_numpy()
