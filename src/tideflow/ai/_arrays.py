"""Input columns → one 2-D numeric array: what tabular models (scikit-learn, ONNX, torch) take.

Scalar columns become one feature each, a fixed-size array column (an embedding) becomes as many
features as it has elements, in the order the step lists its input columns.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def to_matrix(frame: pl.DataFrame, dtype: np.dtype | str = "float32") -> np.ndarray:
    """The input columns as a C-contiguous ``(rows, features)`` array of ``dtype``.

    Nulls become NaN in float arrays (models that cannot take NaN will say so); a non-numeric
    column is an error that names it, rather than a cryptic cast failure inside the model.
    """
    dtype = np.dtype(dtype)
    bad = [f"{name}: {kind}" for name, kind in frame.schema.items() if not _numeric(kind)]
    if bad:
        raise TypeError(f"a numeric model needs numeric input columns, got {', '.join(bad)}")
    if frame.width == 0:
        raise ValueError("a numeric model needs at least one input column")
    if all(not isinstance(kind, pl.Array) for kind in frame.schema.values()):
        return np.ascontiguousarray(frame.to_numpy(order="c"), dtype=dtype)
    blocks = []
    for series in frame.get_columns():
        values = series.to_numpy()
        blocks.append(values.reshape(len(series), -1))
    return np.ascontiguousarray(np.hstack(blocks), dtype=dtype)


def texts(frame: pl.DataFrame, *, what: str) -> list[str]:
    """The single text column of ``frame`` as a list, refusing nulls with the row that has one."""
    if frame.width != 1:
        raise ValueError(f"{what} takes one text column, got {frame.columns}")
    values = frame.to_series().to_list()
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{what}: row {row} of column {frame.columns[0]!r} is {value!r}, not a string")
    return values


def _numeric(kind: pl.DataType) -> bool:
    if isinstance(kind, pl.Array):
        return _numeric(kind.inner)
    return kind.is_numeric() or kind == pl.Boolean
