"""A per-series robust z-score against a trailing window, for telemetry alerts.

Why robust: server metrics have spikes and level shifts, which drag a mean and standard
deviation along with them. The median and the inter-quartile range of the trailing window
(excluding the current point) barely move, so a genuine excursion stands out.
``z = (x - median) / (IQR / 1.349)``; 1.349 makes the IQR a standard-deviation estimate for
normal data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

IQR_TO_SIGMA = 1.349
_ROW = "__row"


@dataclass
class RollingRobustZ:
    """Callable for ``map_batches``: scores each row against its series' trailing window.

    The last ``window`` values of every series are kept between batches, so scores do not depend
    on how the stream is cut into batches. Columns added: ``baseline`` (median), ``spread``
    (robust sigma), ``z`` and ``is_alert`` (``|z| >= threshold``; false until ``min_history``
    values of the series were seen).
    """

    key: str = "series"
    value: str = "value"
    window: int = 288
    min_history: int = 48
    threshold: float = 5.0
    min_spread_ratio: float = 0.05
    """Floor of the spread relative to |median|: quantized or flat series (CPU at a steady 2%)
    have a near-zero IQR, and every small wiggle would otherwise be an alert."""
    cooldown: int = 288
    """After an alert, the series' next ``cooldown`` points raise none: one alert per excursion."""
    tails: dict[object, np.ndarray] = field(default_factory=dict)
    seen: dict[object, int] = field(default_factory=dict)
    last_alert: dict[object, int] = field(default_factory=dict)

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        if df.height == 0:
            return df.with_columns(
                baseline=pl.lit(None, pl.Float64),
                spread=pl.lit(None, pl.Float64),
                z=pl.lit(None, pl.Float64),
                is_alert=pl.lit(False),
            )
        indexed = df.with_row_index(_ROW)
        parts = [self._score(part) for part in indexed.partition_by(self.key, maintain_order=True)]
        return pl.concat(parts).sort(_ROW).drop(_ROW)

    def _score(self, part: pl.DataFrame) -> pl.DataFrame:
        series_key = part.get_column(self.key)[0]
        fresh = part.get_column(self.value).cast(pl.Float64).to_numpy()
        history = self.tails.get(series_key, np.empty(0))
        values = pl.Series(np.concatenate([history, fresh]))
        options = {"window_size": self.window, "min_samples": self.min_history}
        median = values.rolling_median(**options).shift(1)
        q1 = values.rolling_quantile(0.25, interpolation="linear", **options).shift(1)
        q3 = values.rolling_quantile(0.75, interpolation="linear", **options).shift(1)
        self.tails[series_key] = values.to_numpy()[-self.window :]
        start = len(history)
        median, q1, q3 = median.slice(start), q1.slice(start), q3.slice(start)
        spread = ((q3 - q1) / IQR_TO_SIGMA).zip_with(
            (q3 - q1) / IQR_TO_SIGMA > median.abs() * self.min_spread_ratio,
            (median.abs() * self.min_spread_ratio).clip(lower_bound=1e-9),
        )
        z = (pl.Series(fresh) - median) / spread
        return part.with_columns(
            baseline=median,
            spread=spread,
            z=z,
            is_alert=self._debounce(series_key, (z.abs() >= self.threshold).fill_null(False)),
        )

    def _debounce(self, series_key: object, over: pl.Series) -> pl.Series:
        """Keep an over-threshold point as an alert only outside the cooldown of the last one."""
        first = self.seen.get(series_key, 0)
        self.seen[series_key] = first + over.len()
        alerts = np.zeros(over.len(), dtype=bool)
        last = self.last_alert.get(series_key, -(10**18))
        for index in over.arg_true().to_list():  # loops over candidates only, not over rows
            if first + index - last > self.cooldown:
                alerts[index] = True
                last = first + index
        self.last_alert[series_key] = last
        return pl.Series(alerts)
