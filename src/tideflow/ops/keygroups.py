"""Key groups: a stable split of keyed state into a fixed number of parts.

A checkpoint stores a keyed step's state per *key group* (``snapshot_groups``), so that a later
scale-out can hand each worker the groups it owns without replaying anything: a worker restores
its groups, and the runtime routes every row whose key falls in one of them to it. That only
works if every process computes the same group for the same key, today and after a restart, so
the assignment cannot use Python's ``hash()`` (salted per process for ``str``, ``bytes`` and
``datetime``) nor polars' ``Series.hash`` (documented as stable only within one polars version).

The function here is tideflow's own, defined on key *values* (what
:func:`~tideflow.ops.state.python_keys` makes of the key columns) and built only from fixed
constants, CRC-32 and integer arithmetic, so it gives the same groups on every machine, process
and library version. It is part of the checkpoint format: it may change only with a tideflow
release, which then bumps :data:`KEY_GROUP_FUNCTION`; every keyed snapshot records that name
next to the number of groups (and checkpoints record tideflow's version), so a resume under a
different assignment can tell and re-split instead of routing rows to the wrong worker.

Rules (``group = mix64(h) % groups``, where ``h`` is a 64-bit value per key):

* Keys that Python considers equal (and so one dict entry) get the same ``h``: ``True``, ``1``
  and ``1.0``; ``0.0`` and ``-0.0``; every NaN; aware datetimes of the same instant. Unequal
  keys may share a group, of course.
* ``None``, ints, floats, strings, bytes, tuples of these (nested too), ``Decimal``, dates,
  datetimes, times and timedeltas are supported; any other type raises ``TypeError`` rather than
  fall back on something that could differ between processes (an object's ``repr`` with its
  address, its salted ``hash``).

Speed: keys are hashed per type in vectorized passes (numpy for ints and floats, one C-level
CRC-32 call per string, tuples column by column). Measured on a shared 2-core VM, 1M keys take
~45 ms as ints, ~125 ms as strings, ~260 ms as (str, int) pairs; polars' ``Series.hash`` takes
~65 ms on the strings (building the Series included), so stability costs less than 2x.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from collections.abc import Hashable, Sequence
from decimal import Decimal
from operator import itemgetter
from typing import Any

import numpy as np
import polars as pl

KEY_GROUPS = 128
"""Key groups per keyed step in a checkpoint: the most workers a step can later be spread over.
Small enough that the per-group overhead stays negligible, large enough for any single machine."""

KEY_GROUP_FUNCTION = "tideflow-kg1"
"""Names the assignment implemented here; recorded in every keyed snapshot (change it with the
function, never silently)."""

_U64 = np.uint64
_MASK = (1 << 64) - 1
_MUL = _U64(0x9E3779B97F4A7C15)
"""Multiplier of the tuple combination (the 64-bit golden ratio)."""

# Type tags: constants xored in before mixing, so that, e.g., the string "1" and the int 1 do
# not systematically share a group (they may, as any two keys may; they just need not).
_TAG_INT = 0x243F6A8885A308D3
_TAG_FLOAT = 0x13198A2E03707344
_TAG_STR = 0xA4093822299F31D0
_TAG_BYTES = 0x082EFA98EC4E6C89
_TAG_TUPLE = 0x452821E638D01377
_TAG_BIGINT = 0xBE5466CF34E90C6C
_TAG_TEXT = 0xC0AC29B7C97C50DD
"""Values hashed through a canonical text (huge ints, inexact Decimals, times)."""
_NONE = 0x3F84D5B5B5470917
_NAN = 0x9216D5D98979FB1B

_INT64_LIMIT = 2.0**63
_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def key_groups(keys: Sequence[Hashable], groups: int) -> np.ndarray:
    """The key group (``0 <= g < groups``, int64) of each key, the same in every process.

    ``keys`` are key values as keyed steps store them: one value per key column, or a tuple of
    values for several columns (module doc for the supported types and rules)."""
    if not isinstance(groups, int) or isinstance(groups, bool) or not 1 <= groups <= 1 << 31:
        raise ValueError(f"groups must be an int from 1 to 2**31, got {groups!r}")
    values = keys if isinstance(keys, list) else list(keys)
    if not values:
        return np.empty(0, dtype=np.int64)
    return (_mix(_hashes(values)) % _U64(groups)).astype(np.int64)


def key_groups_of_columns(columns: Sequence[pl.Series], groups: int) -> np.ndarray:
    """The key group of each row of the key ``columns``: ``key_groups(python_keys(columns))``,
    what routes a row to the worker that owns its key's state."""
    from .state import python_keys

    return key_groups(python_keys(columns), groups)


def split_by_group(groups: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(group, positions)`` for each group present in ``groups``, ascending; positions ascend."""
    if not len(groups):
        return []
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    return [(int(ordered[s]), order[s:e]) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def pick(values: Sequence[Any], positions: np.ndarray) -> list[Any]:
    """``[values[i] for i in positions]``, at C speed."""
    if len(positions) == 0:
        return []
    if len(positions) == 1:
        return [values[int(positions[0])]]
    return list(itemgetter(*positions.tolist())(values))


# -- hashing ------------------------------------------------------------------------------------
def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, elementwise on uint64 (a bijection that spreads every input bit)."""
    h = h ^ (h >> _U64(30))
    h = h * _U64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> _U64(27))
    h = h * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


def _hashes(values: list[Any]) -> np.ndarray:
    """One uint64 per value (before the final mix), dispatched per type in vectorized passes."""
    kinds = set(map(type, values))
    if len(kinds) == 1:
        return _same_type(kinds.pop(), values)
    codes_of = {kind: code for code, kind in enumerate(kinds)}
    codes = np.fromiter(map(codes_of.__getitem__, map(type, values)), dtype=np.int64, count=len(values))
    out = np.empty(len(values), dtype=_U64)
    for kind, code in codes_of.items():
        at = np.flatnonzero(codes == code)
        out[at] = _same_type(kind, pick(values, at))
    return out


def _same_type(kind: type, values: list[Any]) -> np.ndarray:
    n = len(values)
    if kind is type(None):
        return np.full(n, _NONE, dtype=_U64)
    if issubclass(kind, int | np.integer):  # bool too: True == 1, one dict entry
        return _ints(values)
    if issubclass(kind, float | np.floating):
        return _floats(np.fromiter(values, dtype=np.float64, count=n), values)
    if issubclass(kind, str):
        return _texts(values, _TAG_STR)
    if issubclass(kind, bytes):
        return _tag(np.fromiter(map(zlib.crc32, values), dtype=np.uint32, count=n), _TAG_BYTES)
    if issubclass(kind, tuple):
        return _tuples(values)
    if issubclass(kind, dt.datetime):
        return _ints([_datetime_micros(v) for v in values])
    if issubclass(kind, dt.date):
        return _ints([v.toordinal() for v in values])
    if issubclass(kind, dt.timedelta):
        return _ints([v // _MICROSECOND for v in values])
    if issubclass(kind, Decimal):
        return _hashes([_decimal_value(v) for v in values])
    if issubclass(kind, dt.time):
        return _texts([v.isoformat() for v in values], _TAG_TEXT)
    raise TypeError(
        f"a key of type {kind.__name__} has no stable key group (supported: None, int, float, str, bytes, "
        "tuples of these, Decimal, date, datetime, time, timedelta)"
    )


def _tag(h: np.ndarray, tag: int) -> np.ndarray:
    return _mix(h.astype(_U64) ^ _U64(tag))


def _ints(values: list[Any]) -> np.ndarray:
    try:
        array = np.fromiter(values, dtype=np.int64, count=len(values))
    except OverflowError:  # some beyond int64: those few through their decimal text
        big = [i for i, v in enumerate(values) if not -(1 << 63) <= v < 1 << 63]
        small = np.ones(len(values), dtype=bool)
        small[big] = False
        out = np.empty(len(values), dtype=_U64)
        out[small] = _ints([v for v, keep in zip(values, small.tolist(), strict=True) if keep])
        out[big] = _texts([str(int(values[i])) for i in big], _TAG_BIGINT)
        return out
    return _tag(array.view(_U64), _TAG_INT)


def _floats(array: np.ndarray, values: list[Any]) -> np.ndarray:
    """Floats equal to an int hash as that int (``1.0 == 1``, ``-0.0 == 0``); every NaN alike."""
    out = _tag(array.view(_U64), _TAG_FLOAT)
    finite = np.isfinite(array)
    integral = finite & (np.trunc(np.where(finite, array, 0.0)) == array)
    small = integral & (array >= -_INT64_LIMIT) & (array < _INT64_LIMIT)
    if small.any():
        out[small] = _tag(array[small].astype(np.int64).view(_U64), _TAG_INT)
    huge = np.flatnonzero(integral & ~small)
    if len(huge):
        out[huge] = _texts([str(int(values[i])) for i in huge.tolist()], _TAG_BIGINT)
    out[np.isnan(array)] = _U64(_NAN)
    return out


def _texts(values: list[str], tag: int) -> np.ndarray:
    n = len(values)
    try:
        crc = np.fromiter(map(zlib.crc32, map(str.encode, values)), dtype=np.uint32, count=n)
    except UnicodeEncodeError:  # lone surrogates (never from polars, which holds valid UTF-8)
        crc = np.fromiter((zlib.crc32(v.encode("utf-8", "surrogatepass")) for v in values), dtype=np.uint32, count=n)
    return _tag(crc, tag)


def _tuples(values: list[tuple[Any, ...]]) -> np.ndarray:
    """Tuples column by column: ``h = mix(h * M + h(element))`` over the elements, from the length."""
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    first = int(sizes[0])
    if not (sizes == first).all():
        out = np.empty(len(values), dtype=_U64)
        for size in np.unique(sizes).tolist():
            at = np.flatnonzero(sizes == size)
            out[at] = _tuples(pick(values, at))
        return out
    h = np.full(len(values), _mix(np.array([_TAG_TUPLE ^ first], dtype=_U64))[0], dtype=_U64)
    for position in range(first):  # itemgetter per column: zip(*values) with 1M arguments is 10x slower
        h = _mix(h * _MUL + _mix(_hashes(list(map(itemgetter(position), values)))))
    return h


def _datetime_micros(value: dt.datetime) -> int:
    """Microseconds since the epoch: of the instant for aware datetimes (equal across zones, as
    Python compares them), of the wall clock for naive ones."""
    if value.tzinfo is not None and value.utcoffset() is not None:
        return (value - _EPOCH_UTC) // _MICROSECOND
    return (value.replace(tzinfo=None) - _EPOCH) // _MICROSECOND


def _decimal_value(value: Decimal) -> Any:
    """An int or float equal to ``value`` when there is one (so it hashes as they do), else text."""
    if value.is_nan():
        return math.nan  # every NaN in one group, as for floats
    if value.is_infinite():
        return float(value)
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(as_float) == value:
        return as_float
    return f"decimal:{value.normalize()}"
