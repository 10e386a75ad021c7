"""DDSketch: quantiles with a relative-error guarantee, mergeable, in bounded memory.

After Masson, Rim & Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with
Relative-Error Guarantees" (VLDB 2019), written from the paper's description.

With ``gamma = (1 + a) / (1 - a)`` for the relative accuracy ``a``, a positive value ``x`` goes to
bucket ``i = ceil(log_gamma(x))``, which holds the values in ``(gamma^(i-1), gamma^i]``. Every
value of a bucket is within relative error ``a`` of the bucket's representative
``2 gamma^i / (gamma + 1)``. Negative values go to a second store by ``|x|``, exact zeros are
counted apart. A quantile is the representative of the bucket holding the value of rank
``floor(q (n - 1))`` (0-based, numpy's ``method="lower"``), so it is within relative error ``a``
of that value. The result is also clamped to the exact minimum and maximum, and ``q = 0`` / ``q = 1``
return them exactly.

Each store keeps at most ``max_buckets`` buckets. When data spans more than a factor
``gamma^max_buckets`` (about 6e17 for ``a = 0.01`` and 2048 buckets, so rarely; but only about 60
for ``a = 0.001``: raise ``max_buckets`` with the accuracy), buckets are collapsed: the positive
store merges its lowest buckets, the negative store its highest (the most negative values), so
the guarantee still holds for the quantiles above the collapsed range. Collapsing commutes with
merging: a value ends in bucket ``max(i, lowest kept)`` whatever the order, so merges stay
exactly associative and commutative.

Nulls, NaN and infinities are skipped. Adding is vectorized: one ``np.log`` and one
``np.bincount`` per batch (``DDSketch.build_groups`` does the same for many groups at once).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from .base import Aggregator, Values

__all__ = ["ApproxQuantile", "DDSketch"]

_MAGIC = b"DDS1"
_HEADER = struct.Struct("<4sdIqqdd")
_STORE = struct.Struct("<qIB")
_SPARSE_LAYOUT = 0x80
_SAFETY = 1.0 - 1e-9
"""The mapping uses a hair less than the requested accuracy, so that floating-point rounding of
``log`` at bucket boundaries never pushes an error past it."""
_MAX_COUNTED_SPAN = 1 << 21
"""Widest bucket range counted with one ``bincount``; wider data is clipped to the kept range first."""
_DENSE_GROUP_CELLS = 1 << 22
"""``build_groups`` counts buckets of all groups in one 2-D ``bincount`` up to this many cells."""
_NO_COUNTS = np.zeros(0, dtype=np.int64)
_NO_COUNTS.flags.writeable = False  # shared by empty stores: count arrays are replaced, never updated


def _numeric(dtype: pl.DataType) -> bool:
    """Numbers and booleans; also the Null type of an all-null column (no values)."""
    return dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)


def to_float_array(values: Any) -> np.ndarray:
    """Finite float64 values of a numeric Series / array / sequence (nulls, NaN, ±inf dropped)."""
    if isinstance(values, pl.DataFrame):
        if values.width != 1:
            raise TypeError("a quantile needs one numeric column, got a DataFrame with several")
        values = values.to_series()
    if isinstance(values, pl.Series):
        if not _numeric(values.dtype):
            raise TypeError(
                f"a quantile needs a numeric column, got {values.name!r} of type {values.dtype}"
                " (cast durations with .dt.total_milliseconds())"
            )
        x = values.cast(pl.Float64).to_numpy()
    else:
        x = np.asarray(values, dtype=np.float64)
    x = np.ravel(x)
    finite = np.isfinite(x)
    return x if finite.all() else x[finite]


def _unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and how often each occurs (polars' sort: ~3x numpy's; ``np.unique`` is slower)."""
    keys = pl.Series(keys).sort().to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.diff(np.append(starts, len(keys)))


class _Store:
    """Counts of contiguous bucket indices: ``counts[j]`` is the count of bucket ``lo + j``."""

    __slots__ = ("collapse_lowest", "counts", "lo", "max_buckets")

    def __init__(self, max_buckets: int, collapse_lowest: bool) -> None:
        self.max_buckets = max_buckets
        self.collapse_lowest = collapse_lowest
        self.lo = 0
        self.counts = _NO_COUNTS

    @property
    def hi(self) -> int:
        return self.lo + len(self.counts) - 1

    def total(self) -> int:
        return int(self.counts.sum())

    def copy(self) -> _Store:
        new = _Store(self.max_buckets, self.collapse_lowest)
        new.lo, new.counts = self.lo, self.counts.copy()
        return new

    def _target(self, lo: int, hi: int) -> tuple[int, int]:
        """The index range kept for data spanning ``[lo, hi]`` (collapsing past max_buckets)."""
        if hi - lo + 1 <= self.max_buckets:
            return lo, hi
        if self.collapse_lowest:
            return hi - self.max_buckets + 1, hi
        return lo, lo + self.max_buckets - 1

    @staticmethod
    def _project(lo_src: int, counts: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """``counts`` (starting at ``lo_src``) on ``[lo, hi]``, out-of-range counts piled on the edges."""
        out = np.zeros(hi - lo + 1, dtype=np.int64)
        if len(counts) == 0:
            return out
        hi_src = lo_src + len(counts) - 1
        a, b = max(lo_src, lo), min(hi_src, hi)
        if a <= b:
            out[a - lo : b - lo + 1] = counts[a - lo_src : b - lo_src + 1]
        if lo_src < lo:
            out[0] += counts[: min(lo - lo_src, len(counts))].sum()
        if hi_src > hi:
            out[-1] += counts[max(hi + 1 - lo_src, 0) :].sum()
        return out

    def add_indices(self, idx: np.ndarray) -> None:
        if len(idx) == 0:
            return
        lo_new, hi_new = int(idx.min()), int(idx.max())
        if len(self.counts):
            lo_new, hi_new = min(lo_new, self.lo), max(hi_new, self.hi)
        lo, hi = self._target(lo_new, hi_new)
        if lo > lo_new or hi < hi_new:
            idx = np.clip(idx, lo, hi)
        counts = np.bincount(idx - lo, minlength=hi - lo + 1)
        if len(self.counts):
            counts += self._project(self.lo, self.counts, lo, hi)
        self.lo, self.counts = lo, counts

    def add_dense(self, lo_src: int, counts: np.ndarray) -> None:
        """Add counts of buckets ``lo_src, lo_src + 1, ...`` (not modified)."""
        if len(counts) == 0:
            return
        hi_src = lo_src + len(counts) - 1
        if len(self.counts) == 0:
            lo, hi = self._target(lo_src, hi_src)
            if lo == lo_src and hi == hi_src:
                self.lo, self.counts = lo_src, counts.astype(np.int64, copy=True)
            else:
                self.lo, self.counts = lo, self._project(lo_src, counts, lo, hi)
            return
        lo, hi = self._target(min(lo_src, self.lo), max(hi_src, self.hi))
        if lo == self.lo and hi == self.hi:
            self.counts = self.counts + self._project(lo_src, counts, lo, hi)
        else:
            self.counts = self._project(self.lo, self.counts, lo, hi) + self._project(lo_src, counts, lo, hi)
            self.lo = lo

    def set_sparse(self, idx: np.ndarray, counts: np.ndarray) -> None:
        """Make the store hold ``counts`` at the sorted, distinct bucket indices ``idx``."""
        lo, hi = self._target(int(idx[0]), int(idx[-1]))
        out = np.zeros(hi - lo + 1, dtype=np.int64)
        if lo == idx[0] and hi == idx[-1]:
            out[idx - lo] = counts
        else:
            np.add.at(out, np.clip(idx, lo, hi) - lo, counts)
        self.lo, self.counts = lo, out

    def to_bytes(self) -> bytes:
        """``lo``, the number of buckets, a layout byte, then the counts: all of them (dense), or
        the positions of the non-zero ones and their counts (sparse), whichever is smaller."""
        counts = self.counts
        present = np.flatnonzero(counts)
        width = _width(int(counts.max()) if len(counts) else 0)
        position_width = _width(len(counts))
        if len(present) * (position_width + width) < len(counts) * width:
            layout = _SPARSE_LAYOUT | position_width << 4 | width
            body = present.astype(f"<u{position_width}").tobytes() + counts[present].astype(f"<u{width}").tobytes()
            return _STORE.pack(self.lo, len(present), layout) + body
        return _STORE.pack(self.lo, len(counts), width) + counts.astype(f"<u{width}").tobytes()

    def read(self, data: memoryview, offset: int) -> int:
        lo, n, layout = _STORE.unpack_from(data, offset)
        offset += _STORE.size
        width, position_width = layout & 0x0F, (layout >> 4) & 0x07
        if width not in (1, 2, 4, 8) or (layout & _SPARSE_LAYOUT and position_width not in (1, 2, 4, 8)):
            raise ValueError(f"corrupt DDSketch state: store layout {layout:#x}")
        if offset + n * (width + (position_width if layout & _SPARSE_LAYOUT else 0)) > len(data):
            raise ValueError("corrupt DDSketch state: truncated")
        if n > self.max_buckets:
            raise ValueError(f"corrupt DDSketch state: {n} buckets, more than max_buckets={self.max_buckets}")
        self.lo = lo
        if layout & _SPARSE_LAYOUT:
            positions = np.frombuffer(data, dtype=f"<u{position_width}", count=n, offset=offset).astype(np.intp)
            offset += n * position_width
            if n and (positions[-1] >= self.max_buckets or np.any(np.diff(positions) <= 0)):
                raise ValueError("corrupt DDSketch state: bucket positions out of order or range")
            values = np.frombuffer(data, dtype=f"<u{width}", count=n, offset=offset).astype(np.int64)
            self.counts = np.zeros(int(positions[-1]) + 1 if n else 0, dtype=np.int64)
            self.counts[positions] = values
        else:
            self.counts = np.frombuffer(data, dtype=f"<u{width}", count=n, offset=offset).astype(np.int64)
        return offset + n * width


def _width(top: int) -> int:
    """Bytes of the narrowest unsigned int holding ``top``."""
    return 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8


class DDSketch:
    """A relative-error quantile sketch (the state of :class:`ApproxQuantile`).

    ``add`` and ``merge`` update the sketch in place and return it. ``quantile(q)`` is within
    ``relative_accuracy`` of the exact value of rank ``floor(q (n - 1))`` (numpy's
    ``np.quantile(x, q, method="lower")``), unless buckets were collapsed (see the module doc).
    """

    __slots__ = (
        "_inv_log_gamma",
        "_log_gamma",
        "_rep_shift",
        "count",
        "max",
        "max_buckets",
        "min",
        "negative",
        "positive",
        "relative_accuracy",
        "zero_count",
    )

    def __init__(self, relative_accuracy: float = 0.01, max_buckets: int = 2048) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if int(max_buckets) < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets!r}")
        self.relative_accuracy = float(relative_accuracy)
        self.max_buckets = int(max_buckets)
        a = self.relative_accuracy * _SAFETY
        gamma = (1.0 + a) / (1.0 - a)
        self._log_gamma = math.log(gamma)
        self._inv_log_gamma = 1.0 / self._log_gamma
        self._rep_shift = math.log(2.0 / (1.0 + gamma))
        self.positive = _Store(self.max_buckets, collapse_lowest=True)
        self.negative = _Store(self.max_buckets, collapse_lowest=False)
        self.zero_count = 0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    # -- building -----------------------------------------------------------------------------
    def _index(self, magnitudes: np.ndarray) -> np.ndarray:
        return np.ceil(np.log(magnitudes) * self._inv_log_gamma).astype(np.int64)

    def _value(self, index: np.ndarray) -> np.ndarray:
        return np.exp(index * self._log_gamma + self._rep_shift)

    def _keys(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Bucket index of each ``|x|`` (0 for zeros), the mask of negatives (None: none), #zeros."""
        magnitude = np.abs(x)
        zeros = len(x) - int(np.count_nonzero(magnitude))
        if zeros:
            magnitude = np.where(magnitude > 0, magnitude, 1.0)  # bucket 0, taken out again later
        negative = x < 0
        return self._index(magnitude), (negative if negative.any() else None), zeros

    def add(self, values: Any) -> DDSketch:
        """Add values (a numeric Series, numpy array or sequence); nulls, NaN and ±inf are skipped."""
        x = to_float_array(values)
        if len(x) == 0:
            return self
        self.count += len(x)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        idx, negative, zeros = self._keys(x)
        self.zero_count += zeros
        lo, hi = int(idx.min()), int(idx.max())
        if hi - lo >= _MAX_COUNTED_SPAN:  # only with a tiny relative_accuracy: clip before counting
            self.positive.add_indices(idx[x > 0])
            if negative is not None:
                self.negative.add_indices(idx[negative])
            return self
        span = hi - lo + 1
        if negative is None:
            counts = np.bincount(idx - lo, minlength=span)
            positive, negatives = counts, None
        else:
            # One pass for both signs: bucket i of sign s is counted at 2 (i - lo) + s.
            counts = np.bincount(2 * (idx - lo) + negative, minlength=2 * span)
            positive, negatives = counts[0::2], counts[1::2]
        if zeros:
            positive[-lo] -= zeros
        for store, c in ((self.positive, positive), (self.negative, negatives)):
            if c is not None:
                present = np.flatnonzero(c)
                if len(present):
                    store.add_dense(lo + int(present[0]), c[present[0] : present[-1] + 1])
        return self

    def _check_compatible(self, other: DDSketch) -> None:
        if not isinstance(other, DDSketch):
            raise TypeError(f"cannot merge a DDSketch with {type(other).__name__}")
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge DDSketches of relative accuracy {self.relative_accuracy} and {other.relative_accuracy}"
            )

    def merge(self, other: DDSketch) -> DDSketch:
        """Add ``other``'s data to this sketch (``other`` is not modified); returns self."""
        self._check_compatible(other)
        if other.count == 0:
            return self
        self.positive.add_dense(other.positive.lo, other.positive.counts)
        self.negative.add_dense(other.negative.lo, other.negative.counts)
        self.zero_count += other.zero_count
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def copy(self) -> DDSketch:
        new = self._empty_like()
        new.positive, new.negative = self.positive.copy(), self.negative.copy()
        new.zero_count, new.count, new.min, new.max = self.zero_count, self.count, self.min, self.max
        return new

    def _empty_like(self) -> DDSketch:
        new = object.__new__(DDSketch)
        new.relative_accuracy, new.max_buckets = self.relative_accuracy, self.max_buckets
        new._log_gamma, new._inv_log_gamma, new._rep_shift = self._log_gamma, self._inv_log_gamma, self._rep_shift
        new.positive = _Store(self.max_buckets, collapse_lowest=True)
        new.negative = _Store(self.max_buckets, collapse_lowest=False)
        new.zero_count, new.count, new.min, new.max = 0, 0, math.inf, -math.inf
        return new

    @classmethod
    def build_groups(
        cls,
        group_ids: np.ndarray,
        values: Any,
        n_groups: int,
        relative_accuracy: float = 0.01,
        max_buckets: int = 2048,
    ) -> list[DDSketch]:
        """One sketch per group of one batch (``values[i]`` goes to sketch ``group_ids[i]``), built
        with a handful of numpy operations over the whole batch instead of one ``add`` per group."""
        proto = cls(relative_accuracy, max_buckets)
        sketches = [proto._empty_like() for _ in range(n_groups)]
        if isinstance(values, pl.DataFrame):
            values = values.to_series() if values.width == 1 else to_float_array(values)  # (raises)
        if isinstance(values, pl.Series):
            # keep positions aligned with group_ids: nulls become NaN and are dropped below
            if not _numeric(values.dtype):
                to_float_array(values)  # raises the TypeError
            x = values.cast(pl.Float64).to_numpy()
        else:
            x = np.asarray(values, dtype=np.float64)
        g = np.asarray(group_ids, dtype=np.int64)
        if len(g) != len(x):
            raise ValueError(f"{len(g)} group ids for {len(x)} values")
        finite = np.isfinite(x)
        if not finite.all():
            x, g = x[finite], g[finite]
        if len(x) == 0:
            return sketches
        counts = np.bincount(g, minlength=n_groups)
        mins = np.full(n_groups, np.inf)
        maxs = np.full(n_groups, -np.inf)
        np.minimum.at(mins, g, x)
        np.maximum.at(maxs, g, x)
        idx, negative, n_zeros = proto._keys(x)
        zeros = np.bincount(g[x == 0], minlength=n_groups) if n_zeros else np.zeros(n_groups, dtype=np.int64)
        for i in np.flatnonzero(counts).tolist():
            s = sketches[i]
            s.count, s.zero_count, s.min, s.max = int(counts[i]), int(zeros[i]), float(mins[i]), float(maxs[i])
        # Count (group, sign, bucket) cells: segment 2 g + s; bucket i of it at (2 g + s) span + i - lo.
        lo = int(idx.min())
        span = int(idx.max()) - lo + 1
        segment = 2 * g if negative is None else 2 * g + negative
        with_zeros = np.flatnonzero(zeros)
        zero_cells = 2 * with_zeros * span - lo
        if 2 * n_groups * span <= max(_DENSE_GROUP_CELLS, 4 * len(x)):
            table = np.bincount(segment * span + (idx - lo), minlength=2 * n_groups * span)
            table[zero_cells] -= zeros[with_zeros]
            cells = np.flatnonzero(table)
            cell_counts = table[cells]
        else:
            cells, cell_counts = _unique_counts(segment * span + (idx - lo))
            if len(zero_cells):
                cell_counts[np.searchsorted(cells, zero_cells)] -= zeros[with_zeros]
                keep = cell_counts > 0
                cells, cell_counts = cells[keep], cell_counts[keep]
        if len(cells) == 0:
            return sketches
        segments, buckets = np.divmod(cells, span)
        buckets += lo
        starts = np.flatnonzero(np.concatenate(([True], segments[1:] != segments[:-1])))
        bounds = np.append(starts, len(cells)).tolist()
        for k, seg in enumerate(segments[starts].tolist()):
            sketch = sketches[seg >> 1]
            store = sketch.negative if seg & 1 else sketch.positive
            store.set_sparse(buckets[bounds[k] : bounds[k + 1]], cell_counts[bounds[k] : bounds[k + 1]])
        return sketches

    # -- queries ------------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return self.count == 0

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """The estimated quantiles ``qs`` (each in [0, 1]); None when the sketch is empty."""
        q = np.asarray(qs, dtype=np.float64)
        if np.any((q < 0) | (q > 1)) or np.any(np.isnan(q)):
            raise ValueError(f"quantiles must be in [0, 1], got {list(qs)!r}")
        if self.count == 0:
            return None
        neg, pos = self.negative, self.positive
        neg_idx = np.arange(neg.hi, neg.lo - 1, -1, dtype=np.int64)
        pos_idx = np.arange(pos.lo, pos.hi + 1, dtype=np.int64)
        counts = np.concatenate([neg.counts[::-1], [self.zero_count], pos.counts])
        values = np.concatenate([-self._value(neg_idx), [0.0], self._value(pos_idx)])
        ranks = np.floor(q * (self.count - 1))
        at = np.searchsorted(np.cumsum(counts), ranks, side="right")
        out = np.clip(values[np.minimum(at, len(values) - 1)], self.min, self.max)
        out = np.where(q == 0.0, self.min, np.where(q == 1.0, self.max, out))
        return [float(v) for v in out]

    def quantile(self, q: float) -> float | None:
        """The estimated ``q``-quantile; None when the sketch is empty."""
        result = self.quantiles([q])
        return None if result is None else result[0]

    @property
    def nbytes(self) -> int:
        """Approximate memory of the bucket counts."""
        return self.positive.counts.nbytes + self.negative.counts.nbytes

    # -- encoding -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A compact, versioned little-endian encoding (bucket counts in the narrowest width)."""
        header = _HEADER.pack(
            _MAGIC, self.relative_accuracy, self.max_buckets, self.count, self.zero_count, self.min, self.max
        )
        return header + self.negative.to_bytes() + self.positive.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> DDSketch:
        view = memoryview(data)
        if len(view) < _HEADER.size or bytes(view[:4]) != _MAGIC:
            raise ValueError("not a DDSketch state (bad magic)")
        _, accuracy, max_buckets, count, zero_count, lo, hi = _HEADER.unpack_from(view, 0)
        sketch = cls(accuracy, max_buckets)
        offset = sketch.negative.read(view, _HEADER.size)
        offset = sketch.positive.read(view, offset)
        if offset != len(view):
            raise ValueError(f"corrupt DDSketch state: {len(view) - offset} trailing bytes")
        sketch.count, sketch.zero_count, sketch.min, sketch.max = count, zero_count, lo, hi
        if sketch.negative.total() + sketch.positive.total() + zero_count != count:
            raise ValueError("corrupt DDSketch state: bucket counts do not add up to the count")
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DDSketch):
            return NotImplemented
        return (
            self.relative_accuracy == other.relative_accuracy
            and self.count == other.count
            and self.zero_count == other.zero_count
            and (self.count == 0 or (self.min == other.min and self.max == other.max))
            and all(
                (a.lo == b.lo and np.array_equal(a.counts, b.counts)) or len(a.counts) == len(b.counts) == 0
                for a, b in ((self.positive, other.positive), (self.negative, other.negative))
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"DDSketch(relative_accuracy={self.relative_accuracy}, count={self.count}, "
            f"buckets={len(self.negative.counts)}+{len(self.positive.counts)})"
        )


class ApproxQuantile(Aggregator[DDSketch]):
    """Quantile(s) of a numeric column within ``relative_accuracy``, as a DDSketch.

    The result is a float for one ``q`` and a list of floats for a list of ``q`` (None for a
    window without a finite value). Nulls, NaN and infinities are skipped.
    """

    def __init__(
        self,
        column: str,
        q: float | Sequence[float],
        *,
        relative_accuracy: float = 0.01,
        max_buckets: int = 2048,
    ) -> None:
        super().__init__(column)
        self.many = not isinstance(q, int | float)
        self.q = [float(v) for v in q] if self.many else float(q)  # type: ignore[union-attr, arg-type]
        qs = self.q if isinstance(self.q, list) else [self.q]
        if not qs or any(not 0.0 <= v <= 1.0 for v in qs):
            raise ValueError(f"q must be in [0, 1] (or a non-empty list of such), got {q!r}")
        DDSketch(relative_accuracy, max_buckets)  # validates the parameters
        self.relative_accuracy = float(relative_accuracy)
        self.max_buckets = int(max_buckets)

    @property
    def dtype(self) -> pl.DataType:  # type: ignore[override]
        return pl.List(pl.Float64) if self.many else pl.Float64()

    def init(self) -> DDSketch:
        return DDSketch(self.relative_accuracy, self.max_buckets)

    def add(self, state: DDSketch, values: Values) -> DDSketch:
        return state.add(values)

    def add_groups(self, group_ids: np.ndarray, values: Values, n_groups: int) -> list[DDSketch]:
        return DDSketch.build_groups(group_ids, values, n_groups, self.relative_accuracy, self.max_buckets)

    def merge(self, a: DDSketch, b: DDSketch) -> DDSketch:
        return a.merge(b)

    def result(self, state: DDSketch) -> float | list[float] | None:
        if isinstance(self.q, list):
            return state.quantiles(self.q)
        return state.quantile(self.q)

    def copy(self, state: DDSketch) -> DDSketch:
        return state.copy()

    def to_bytes(self, state: DDSketch) -> bytes:
        return state.to_bytes()

    def from_bytes(self, data: bytes) -> DDSketch:
        return DDSketch.from_bytes(data)

    def __repr__(self) -> str:
        return f"ApproxQuantile(column={self.column!r}, q={self.q!r}, relative_accuracy={self.relative_accuracy})"
