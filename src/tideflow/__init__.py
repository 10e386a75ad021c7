"""tideflow: a Python engine for real-time AI on data streams.

Columnar micro-batches inside, simple records outside: build a ``Flow`` of named steps, run it
embedded, and every record ends up either in an output or in the dead letters.
"""

from . import agg, ai, anomaly, eval, forecast, io
from .ai.base import Batching
from .errors import FlowDefinitionError, StepError, TideflowError
from .flow import Flow, Stream
from .runtime.local import RunResult, StepStats
from .time import windows
from .time.watermarks import BoundedOutOfOrder, Monotonic

__version__ = "0.1.0"

__all__ = [
    "Batching",
    "BoundedOutOfOrder",
    "Flow",
    "FlowDefinitionError",
    "Monotonic",
    "RunResult",
    "StepError",
    "StepStats",
    "Stream",
    "TideflowError",
    "__version__",
    "agg",
    "ai",
    "anomaly",
    "eval",
    "forecast",
    "io",
    "windows",
]
