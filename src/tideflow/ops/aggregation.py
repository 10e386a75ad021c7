"""Planning window aggregations: mergeable partials where possible, buffered rows otherwise.

A window's ``.agg(name=expr)`` takes polars expressions. For the aggregations that can be merged
(``len``, ``count``, ``sum``, ``mean``, ``min``, ``max``, ``var``, ``std``, ``first``, ``last``
over any row-wise input such as ``(pl.col("a") * 2).max()``), each batch is reduced to one
partial row per group and partials are merged: state grows with the number of groups, not rows.
Anything else (``median``, ``n_unique``, ``quantile``, nested expressions) keeps the rows its
expression reads and is evaluated exactly when the window fires. The expression tree is read from
polars' own serialization, so no expression is guessed from its text.

Every partial is merged in arrival order where order matters (``first``/``last`` carry the arrival
ordinal of the value they hold), so results equal polars evaluating the expression over the
window's rows in arrival order.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from ..agg.base import Aggregator

ORDINAL = "__ord"
"""Arrival ordinal of each row, added by the window operator (orders first/last and fallbacks)."""

_SIMPLE = {"Mean": "mean", "Sum": "sum", "Min": "min", "Max": "max", "First": "first", "Last": "last"}


@dataclass
class PartialAgg:
    """One mergeable aggregation: its partial columns, how they merge, and the final value."""

    name: str
    kind: str
    input: pl.Expr | None
    index: int
    ddof: int = 1

    def _p(self, part: str) -> str:
        return f"__p{self.index}_{part}"

    def partial(self) -> list[pl.Expr]:
        x, p = self.input, self._p
        if self.kind == "len":
            return [pl.len().cast(pl.Int64).alias(p("n"))]
        assert x is not None
        if self.kind == "count":
            return [x.count().cast(pl.Int64).alias(p("n"))]
        if self.kind in ("sum", "min", "max"):
            return [getattr(x, self.kind)().alias(p("v"))]
        if self.kind == "mean":
            return [x.cast(pl.Float64).sum().alias(p("s")), x.count().cast(pl.Int64).alias(p("n"))]
        if self.kind in ("var", "std"):
            f = x.cast(pl.Float64)
            return [
                f.count().cast(pl.Int64).alias(p("n")),
                f.mean().alias(p("m")),
                (f.var(ddof=0) * f.count()).alias(p("m2")),
            ]
        if self.kind == "first":
            return [x.first().alias(p("v")), pl.col(ORDINAL).first().alias(p("o"))]
        return [x.last().alias(p("v")), pl.col(ORDINAL).last().alias(p("o"))]

    def merge(self) -> list[pl.Expr]:
        c, p = pl.col, self._p
        if self.kind in ("len", "count"):
            return [c(p("n")).sum().alias(p("n"))]
        if self.kind == "sum":
            return [c(p("v")).sum().alias(p("v"))]
        if self.kind in ("min", "max"):
            return [getattr(c(p("v")), self.kind)().alias(p("v"))]
        if self.kind == "mean":
            return [c(p("s")).sum().alias(p("s")), c(p("n")).sum().alias(p("n"))]
        if self.kind in ("var", "std"):
            n, m = c(p("n")), c(p("m"))
            total = n.sum()
            mean = (n * m).sum() / total
            return [
                total.alias(p("n")),
                pl.when(total > 0).then(mean).alias(p("m")),
                (c(p("m2")).sum() + (n * (m - mean) ** 2).sum()).alias(p("m2")),
            ]
        if self.kind == "first":
            return [c(p("v")).sort_by(c(p("o"))).first().alias(p("v")), c(p("o")).min().alias(p("o"))]
        return [c(p("v")).sort_by(c(p("o"))).last().alias(p("v")), c(p("o")).max().alias(p("o"))]

    def final(self) -> pl.Expr:
        c, p = pl.col, self._p
        if self.kind in ("len", "count"):
            return c(p("n")).cast(pl.UInt32).alias(self.name)
        if self.kind == "sum":
            # A sum of no values is 0, as polars gives for a typed column; an all-null first batch
            # (a Null-typed column) must not turn it into null.
            return pl.coalesce(c(p("v")), pl.lit(0)).alias(self.name)
        if self.kind in ("min", "max", "first", "last"):
            return c(p("v")).alias(self.name)
        if self.kind == "mean":
            return pl.when(c(p("n")) > 0).then(c(p("s")) / c(p("n"))).alias(self.name)
        var = pl.when(c(p("n")) > self.ddof).then(c(p("m2")) / (c(p("n")) - self.ddof))
        return (var.sqrt() if self.kind == "std" else var).alias(self.name)


_GID = "__gid"


def _state(name: str) -> str:
    return f"__state_{name}"


def _group_ids(by: list[str]) -> pl.Expr:
    """Dense 0-based ids of the groups of ``by`` (nulls are a group of their own)."""
    return (pl.struct(by).rank("dense") - 1).cast(pl.Int64)


def _deserialize(tree: Any) -> pl.Expr:
    return pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json")


def decompose(name: str, expr: pl.Expr, index: int) -> PartialAgg | None:
    """A ``PartialAgg`` if ``expr`` is a mergeable aggregation (an alias around it is fine)."""
    tree = json.loads(expr.meta.serialize(format="json"))
    while isinstance(tree, dict) and "Alias" in tree:
        tree = tree["Alias"][0]
    if tree == "Len":
        return PartialAgg(name, "len", None, index)
    if not isinstance(tree, dict) or "Agg" not in tree:
        return None
    ((kind, body),) = tree["Agg"].items()
    if kind in _SIMPLE:
        inner = body["input"] if isinstance(body, dict) and "input" in body and kind in ("Min", "Max") else body
        return PartialAgg(name, _SIMPLE[kind], _deserialize(inner), index)
    if kind == "Count" and not body.get("include_nulls", False):
        return PartialAgg(name, "count", _deserialize(body["input"]), index)
    if kind in ("Var", "Std"):
        return PartialAgg(name, kind.lower(), _deserialize(body[0]), index, ddof=int(body[1]))
    return None


class AggPlan:
    """How a window computes ``.agg(**named)``: partial columns plus rows kept for the rest.

    Values may also be custom aggregators (``tideflow.agg``: sketches, or your own with
    init/add/merge/result). Their states travel in object columns of the partial frames and are
    merged group by group in Python: once per group and batch, never per row.
    """

    def __init__(self, named: dict[str, pl.Expr | Aggregator]) -> None:
        if not named:
            raise ValueError("agg needs at least one aggregation, e.g. .agg(n=pl.len())")
        self.names = list(named)
        self.partials: list[PartialAgg] = []
        self.fallbacks: dict[str, pl.Expr] = {}
        self.customs: dict[str, Aggregator] = {}
        for index, (name, expr) in enumerate(named.items()):
            if isinstance(expr, Aggregator):
                self.customs[name] = expr
                continue
            if not isinstance(expr, pl.Expr):
                raise TypeError(
                    f"aggregation {name!r} must be a polars expression or a tideflow.agg aggregator, "
                    f"got {type(expr).__name__}"
                )
            partial = decompose(name, expr, index)
            if partial is None:
                self.fallbacks[name] = expr.alias(name)
            else:
                self.partials.append(partial)
        self.raw_columns = sorted({c for e in self.fallbacks.values() for c in e.meta.root_names()})
        exprs = [expr.alias(name) for name, expr in named.items() if isinstance(expr, pl.Expr)]
        custom_columns = {a.column for a in self.customs.values() if a.column is not None}
        self.all_columns = sorted({c for e in exprs for c in e.meta.root_names()} | custom_columns)
        """Columns any aggregation reads: what windows that keep rows (sessions, counts) store."""

    @property
    def keeps_rows(self) -> bool:
        return bool(self.fallbacks)

    def partial_frame(self, rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        """One partial row per group of ``rows`` (which carry ``ORDINAL``)."""
        exprs = [e for p in self.partials for e in p.partial()] or [pl.len().alias("__n")]
        if not self.customs:
            return rows.group_by(by, maintain_order=True).agg(exprs)
        rows = rows.with_columns(_group_ids(by).alias(_GID))
        frame = rows.group_by([*by, _GID], maintain_order=True).agg(exprs)
        gids = rows.get_column(_GID).to_numpy()
        order = frame.get_column(_GID).to_list()
        states = []
        for name, aggregator in self.customs.items():
            values = rows.get_column(aggregator.column) if aggregator.column else rows.drop(_GID)
            built = aggregator.add_groups(gids, values, len(order))
            states.append(pl.Series(_state(name), [built[g] for g in order], dtype=pl.Object))
        return frame.drop(_GID).hstack(states)

    def raw_frame(self, rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        return rows.select([*by, *[c for c in self.raw_columns if c not in by], ORDINAL])

    def merge(self, partials: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        exprs = [e for p in self.partials for e in p.merge()] or [pl.col("__n").sum()]
        if not self.customs:
            return partials.group_by(by, maintain_order=True).agg(exprs)
        partials = partials.with_columns(_group_ids(by).alias(_GID))
        merged = partials.group_by([*by, _GID], maintain_order=True).agg(exprs)
        gids = partials.get_column(_GID).to_list()
        columns = []
        for name, aggregator in self.customs.items():
            acc: dict[int, Any] = {}
            for gid, state in zip(gids, partials.get_column(_state(name)).to_list(), strict=True):
                # Merge into a fresh state: merge may change its first argument, and partial
                # states are shared with the panes that hold them.
                acc[gid] = aggregator.merge(acc[gid] if gid in acc else aggregator.init(), state)
            columns.append(pl.Series(_state(name), [acc[g] for g in merged.get_column(_GID)], dtype=pl.Object))
        return merged.drop(_GID).hstack(columns)

    def evaluate(self, rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        """Every aggregation over kept rows (with ``ORDINAL``), per group: the same partial and
        final expressions as incremental windows, so all window kinds agree on edge cases."""
        raw = self.raw_frame(rows, by) if self.fallbacks else None
        return self.finalize(self.merge(self.partial_frame(rows, by), by), raw, by)

    def finalize(self, merged: pl.DataFrame, raw: pl.DataFrame | None, by: list[str]) -> pl.DataFrame:
        """Result columns in the user's order, one row per group of ``merged``."""
        out = merged.select([*by, *[p.final() for p in self.partials]])
        for name, aggregator in self.customs.items():
            results = [aggregator.result(state) for state in merged.get_column(_state(name)).to_list()]
            out = out.with_columns(pl.Series(name, results, dtype=aggregator.dtype))
        if self.fallbacks:
            assert raw is not None
            evaluated = raw.sort(ORDINAL).group_by(by, maintain_order=True).agg(list(self.fallbacks.values()))
            out = (
                out.join(evaluated, on=by, how="left", nulls_equal=True) if by else out.hstack(evaluated.get_columns())
            )
        return out.select([*by, *self.names])
