"""Forecasters on streams: forecast rows per key, joined with the actuals in event time.

The recipe (a test runs it end to end)::

    flow = tdf.Flow("ot-forecast")
    readings = flow.source("readings", tdf.io.CsvSource("ETTh1.csv", time="date"), watermark=tdf.Monotonic())
    forecasts = forecast_stream(
        readings, "forecast", lambda: RLSAutoRegressive(24, max_horizon=24),
        interval="1h", on="OT", horizon=24,
    )
    pairs = join_actuals(forecasts, readings, "vs-actual", interval="1h", horizon=24, on="OT")
    running_errors(pairs, "online-mae").sink("mae", tdf.io.MemorySink())

* :func:`forecast_stream` adds a step that keeps one forecaster per key and, for each arriving
  point, learns it and forecasts the next ``horizon`` points: rows ``made_at`` (the point's event
  time, also kept in the stream's time column), ``target_time = made_at + h * interval``,
  ``horizon_step`` (h), ``forecast``, ``lower``, ``upper``.
* :func:`join_actuals` joins them with the actuals by an event-time interval join on the keys
  and ``target_time`` (``== actual time``), with ``0 <= actual time - made_at <= horizon *
  interval``: each pair is emitted as soon as its actual arrives, and a forecast is kept no longer
  than its furthest target. Both inputs need watermarks.
* :func:`running_errors` keeps per key and horizon step the running count, MAE, MSE and interval
  coverage, and emits them after every pair: the online MAE per horizon.

Pairs come out in the order the join emits them, which depends on how the two inputs
interleave; the running figures after the last pair do not.

Checkpoints: the forecast step's state is :class:`KeyedForecasters`, whose ``snapshot()`` /
``restore()`` the ``map_batches`` step calls (deep copies of the forecasters, with their error
statistics, and the per-key counts and last times); the join and the running errors are
checkpointed by their own steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .._duration import Duration, to_millis
from ..errors import FlowDefinitionError
from ..time.watermarks import event_time_ms
from .base import Forecaster

if TYPE_CHECKING:
    from ..flow import Stream
    from ..ops.base import OnError

_SNAPSHOT_VERSION = 1

FORECAST_COLUMNS = ("made_at", "target_time", "horizon_step", "forecast", "lower", "upper")
"""Columns of a forecast row, after the key columns and the stream's event-time column."""


def forecast_stream(
    stream: Stream,
    step: str,
    forecaster_factory: Callable[[], Forecaster],
    *,
    interval: Duration,
    key: str | Sequence[str] | None = None,
    on: str = "value",
    time: str | None = None,
    horizon: int = 1,
    every: int = 1,
    on_error: OnError | None = None,
) -> Stream:
    """Forecast column ``on`` of each key's series ``horizon`` points ahead, as the points arrive.

    ``forecaster_factory()`` makes the forecaster of a new key (a fresh one per key; its
    ``max_horizon`` must reach ``horizon``). ``interval`` is the series' spacing: the forecast
    ``h`` steps ahead targets ``made_at + h * interval``. ``key`` defaults to the stream's
    ``key_by`` columns (none: one series); ``time`` to the stream's event-time column (datetimes
    or integer epoch ms). ``every=k`` emits the forecasts of every ``k``-th point of a key only
    (every point is still learned).

    Points are taken per key in arrival order as consecutive points of the series: a point whose
    time is not after its key's previous one, or whose value is missing or not finite, goes to the
    dead letters and is not learned. Every check runs before any forecaster changes, so a batch
    that fails is retried in parts (the engine's bisection) without learning a point twice.

    Two steps are added, ``step`` (one row per forecasting point, the forecasts as arrays) and
    ``f"{step}.rows"`` (one row per horizon step): the engine maps a batch function's output rows
    to its input rows when their counts are equal, which holds for the first step only when every
    row forecasts; the second always makes ``horizon`` rows of each, so ``horizon > 1`` gives
    counts that differ and every row is stamped with the watermark before its batch (never late).
    The forecasters live in the step's function: a flow built once and run twice continues them.
    """
    time = time or stream.time
    if time is None:
        raise FlowDefinitionError(
            f"step {step!r}: forecasts need an event-time column; pass time=... or give the source time="
        )
    keys = _key_columns(stream, key)
    if horizon < 1 or every < 1:
        raise FlowDefinitionError(f"step {step!r}: horizon and every must be at least 1, got {horizon!r} and {every!r}")
    interval_ms = to_millis(interval, what="interval")
    if interval_ms <= 0:
        raise FlowDefinitionError(f"step {step!r}: interval must be positive, got {interval!r}")
    probe = forecaster_factory()
    if not isinstance(probe, Forecaster):
        raise FlowDefinitionError(
            f"step {step!r}: forecaster_factory must return a tideflow.forecast.Forecaster, got {type(probe).__name__}"
        )
    if probe.max_horizon < horizon:
        raise FlowDefinitionError(
            f"step {step!r}: the forecasters track errors up to step {probe.max_horizon}, but horizon={horizon}; "
            "create them with max_horizon=horizon or more"
        )
    state = KeyedForecasters(forecaster_factory, keys=keys, on=on, time=time, horizon=horizon, every=every)
    wide = stream.map_batches(step, state.process, on_error=on_error)  # validates before learning: safe to bisect
    explode = _Explode(keys, time, interval_ms, horizon)
    return wide.map_batches(f"{step}.rows", explode, same_rows=False, on_error=on_error)


class KeyedForecasters:
    """The state of a forecast step: a forecaster, a point count and the last time per key."""

    def __init__(
        self,
        factory: Callable[[], Forecaster],
        *,
        keys: list[str],
        on: str,
        time: str,
        horizon: int,
        every: int,
    ) -> None:
        self.factory, self.keys, self.on, self.time = factory, keys, on, time
        self.horizon, self.every = horizon, every
        self.models: dict[tuple[Any, ...], Forecaster] = {}
        self.counts: dict[tuple[Any, ...], int] = {}
        self.last_ms: dict[tuple[Any, ...], int] = {}

    def snapshot(self) -> dict[str, Any]:
        """Each key's forecaster (a deep copy: model, pending paths, error statistics), its count
        of points (which decides the ``every``-th emissions) and its last event time."""
        return {
            "kind": "forecasters",
            "version": _SNAPSHOT_VERSION,
            "models": copy.deepcopy(self.models),
            "counts": dict(self.counts),
            "last_ms": dict(self.last_ms),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "forecasters" or state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"not a forecasters snapshot (kind {state.get('kind')!r})")
        self.models = copy.deepcopy(state["models"])
        self.counts = dict(state["counts"])
        self.last_ms = dict(state["last_ms"])

    def process(self, df: pl.DataFrame) -> pl.DataFrame:
        """One batch in, one row per emitted forecast out (arrays over the horizon steps)."""
        values = df.get_column(self.on).cast(pl.Float64, strict=True).to_numpy()
        times = event_time_ms(df.get_column(self.time)).to_numpy()
        groups = self._groups(df)
        self._check(groups, values, times)  # before any state changes: see forecast_stream
        rows: list[np.ndarray] = []
        means: list[np.ndarray] = []
        lowers: list[np.ndarray] = []
        uppers: list[np.ndarray] = []
        for name, index in groups:
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = self.factory()
            forecast = model.learn_forecast(values[index], self.horizon)
            count = self.counts.get(name, 0)
            emit = (count + np.arange(1, index.shape[0] + 1)) % self.every == 0
            self.counts[name] = count + index.shape[0]
            self.last_ms[name] = int(times[index[-1]])
            rows.append(index[emit])
            means.append(forecast.mean[emit])
            lowers.append(forecast.lower[emit])
            uppers.append(forecast.upper[emit])
        if not rows:
            return self._empty(df)
        order = np.argsort(np.concatenate(rows), kind="stable")
        picked = np.concatenate(rows)[order]
        out = df.select([*self.keys, self.time])[picked]
        return out.with_columns(
            pl.col(self.time).alias("made_at"),
            pl.Series("forecast", np.vstack(means)[order]),
            pl.Series("lower", np.vstack(lowers)[order]),
            pl.Series("upper", np.vstack(uppers)[order]),
        )

    def _groups(self, df: pl.DataFrame) -> list[tuple[tuple[Any, ...], np.ndarray]]:
        """Row indices per key, in arrival order."""
        if not self.keys:
            return [((), np.arange(df.height))] if df.height else []
        grouped = (
            df.select(self.keys).with_row_index("_row").group_by(self.keys, maintain_order=True).agg(pl.col("_row"))
        )
        names = grouped.select(self.keys).rows()
        indices = grouped.get_column("_row").to_list()
        return [(name, np.asarray(index, dtype=np.int64)) for name, index in zip(names, indices, strict=True)]

    def _check(self, groups: list[tuple[tuple[Any, ...], np.ndarray]], values: np.ndarray, times: np.ndarray) -> None:
        for name, index in groups:
            bad = ~np.isfinite(values[index])
            if bad.any():
                first = values[index][bad][0]
                raise ValueError(f"forecast: {self.on!r} is missing or not finite ({first!r}) for key {name!r}")
            key_times = times[index]
            previous = self.last_ms.get(name)
            if (previous is not None and key_times[0] <= previous) or (np.diff(key_times) <= 0).any():
                raise ValueError(
                    f"forecast: event times of key {name!r} must increase (points are consecutive points of a "
                    f"series); a point at or before the previous one ({previous}) cannot be learned"
                )

    def _empty(self, df: pl.DataFrame) -> pl.DataFrame:
        return (
            df.select([*self.keys, self.time])
            .clear()
            .with_columns(
                pl.col(self.time).alias("made_at"),
                *(pl.Series(name, np.empty((0, self.horizon))) for name in ("forecast", "lower", "upper")),
            )
        )


class _Explode:
    """Wide forecast rows (arrays over the steps) to one row per horizon step, with target times."""

    def __init__(self, keys: list[str], time: str, interval_ms: int, horizon: int) -> None:
        self.keys, self.time, self.interval_ms, self.horizon = keys, time, interval_ms, horizon

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        arrays = ("forecast", "lower", "upper")
        long = df.with_columns(
            *(pl.col(c).arr.to_list() for c in arrays),
            horizon_step=pl.int_ranges(1, self.horizon + 1, dtype=pl.Int64),
        ).explode([*arrays, "horizon_step"])
        ahead = pl.col("horizon_step") * self.interval_ms
        dtype = long.schema["made_at"]
        if dtype == pl.Datetime or dtype == pl.Date:
            target = pl.col("made_at") + pl.duration(milliseconds=ahead)
        else:
            target = pl.col("made_at") + ahead
        columns = dict.fromkeys([*self.keys, self.time, *FORECAST_COLUMNS])  # a time column named made_at once
        return long.with_columns(target.alias("target_time")).select(list(columns))


def join_actuals(
    forecasts: Stream,
    actuals: Stream,
    step: str,
    *,
    interval: Duration,
    horizon: int,
    key: str | Sequence[str] | None = None,
    on: str = "value",
    time: str | None = None,
    on_error: OnError | None = None,
) -> Stream:
    """Pair each forecast row with the actual value at its ``target_time`` (event-time join).

    ``actuals`` is the stream the forecasts were made from (or any stream of the same series):
    its time column is copied to ``target_time`` (a step ``f"{step}.target-time"``) and joined
    with ``forecasts.interval_join(step, ..., on=[*keys, "target_time"], lower=0,
    upper=horizon * interval)``; the interval bounds only say how long each side must be kept.
    Output: the forecast columns, the actual's columns (a name the forecasts already use gets the
    suffix ``_right``), then ``error = forecast - actual``, ``abs_error`` and ``covered`` (the
    actual lies within ``[lower, upper]``). Rows too late to join go where the join sends them
    (the dead letters, as nothing else consumes them here).
    """
    time = time or actuals.time
    if time is None:
        raise FlowDefinitionError(f"step {step!r}: the actuals need an event-time column; pass time=...")
    keys = _key_columns(forecasts, key)
    upper = to_millis(interval, what="interval") * horizon
    targets = actuals.with_columns(f"{step}.target-time", target_time=pl.col(time))
    pairs = forecasts.interval_join(step, targets, on=[*keys, "target_time"], lower=0, upper=upper, on_error=on_error)
    actual = pl.col(on)
    return pairs.with_columns(
        f"{step}.errors",
        error=pl.col("forecast") - actual,
        abs_error=(pl.col("forecast") - actual).abs(),
        covered=(actual >= pl.col("lower")) & (actual <= pl.col("upper")),
    )


def running_errors(
    pairs: Stream,
    step: str,
    *,
    key: str | Sequence[str] | None = None,
    on_error: OnError | None = None,
) -> Stream:
    """Online error figures per key and horizon step, updated by every pair from :func:`join_actuals`.

    Emits, for each pair: the keys, ``horizon_step``, the pair's event time (the forecast's
    ``made_at``, in the stream's time column), ``n`` (pairs so far), ``mae``, ``mse`` and
    ``coverage`` (the share of actuals inside their interval) over those ``n`` pairs.
    """
    keys = _key_columns(pairs, key)
    time = pairs.time

    def update(state: tuple[int, float, float, int] | None, pair: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        n, abs_sum, sq_sum, covered = state or (0, 0.0, 0.0, 0)
        n, abs_sum = n + 1, abs_sum + pair["abs_error"]
        sq_sum, covered = sq_sum + pair["error"] ** 2, covered + bool(pair["covered"])
        out = {k: pair[k] for k in keys}
        out["horizon_step"] = pair["horizon_step"]
        if time is not None:
            out[time] = pair[time]
        out.update(n=n, mae=abs_sum / n, mse=sq_sum / n, coverage=covered / n)
        return (n, abs_sum, sq_sum, covered), out

    return pairs.key_by([*keys, "horizon_step"]).stateful_map(step, update, on_error=on_error)


def _key_columns(stream: Stream, key: str | Sequence[str] | None) -> list[str]:
    if key is None:
        return list(stream.key or [])
    return [key] if isinstance(key, str) else list(key)
