"""Exceptions raised by tideflow. Each one says which step failed and what to do about it."""

from __future__ import annotations


class TideflowError(Exception):
    """Base class of tideflow's own errors."""


class FlowDefinitionError(TideflowError):
    """The flow is wired wrongly (duplicate step names, unknown streams, bad arguments)."""


class StepError(TideflowError):
    """An exception in a step under ``on_error="fail"``; carries the step's name."""

    def __init__(self, step: str, cause: BaseException, position: str | None = None) -> None:
        where = f" at {position}" if position else ""
        super().__init__(f"step {step!r} failed{where}: {type(cause).__name__}: {cause}")
        self.step = step
        self.cause = cause
        self.position = position


class BatchRejected(TideflowError):
    """Raised by a sink or batch function when the batch as a whole cannot be taken (its columns
    do not fit): every row becomes a dead letter at once, without bisecting for bad rows."""


class InfrastructureError(TideflowError):
    """Raised when the step's environment is broken (disk full, database locked, service down):
    no row is at fault, so the run stops instead of dead-lettering every row."""
