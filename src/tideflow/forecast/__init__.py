"""Forecasting on streams: online forecasters with prediction intervals, and their stream steps.

Forecasters (:mod:`.base` for the protocol) learn one series point after point and forecast
``1..horizon`` steps ahead with a central prediction interval:

* :class:`RLSAutoRegressive`: an AR model (with optional seasonal lags) fitted online by
  recursive least squares with exponential forgetting;
* baselines: :class:`SeasonalNaive`, :class:`LastValue`, :class:`EWMA`, :class:`Holt`.

On a stream, :func:`forecast_stream` runs one forecaster per key and emits forecast rows;
:func:`join_actuals` pairs them with the values that come true (an event-time interval join) and
:func:`running_errors` turns the pairs into online MAE / MSE / interval coverage per horizon step.
"""

from .base import Forecast, Forecaster
from .baselines import EWMA, Holt, LastValue, SeasonalNaive
from .intervals import HorizonErrors, normal_quantile
from .rls import RLSAutoRegressive
from .stream import forecast_stream, join_actuals, running_errors

__all__ = [
    "EWMA",
    "Forecast",
    "Forecaster",
    "Holt",
    "HorizonErrors",
    "LastValue",
    "RLSAutoRegressive",
    "SeasonalNaive",
    "forecast_stream",
    "join_actuals",
    "normal_quantile",
    "running_errors",
]
