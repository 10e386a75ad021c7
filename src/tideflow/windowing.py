"""The window builder: ``stream.key_by(k).window(step, assigner, ...).agg(name=expr, ...)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import polars as pl

from ._duration import Duration, to_millis
from .errors import FlowDefinitionError
from .ops.aggregation import AggPlan
from .ops.base import OnError
from .time.windows import Count, Session, Sliding, Tumbling, WindowAssigner

if TYPE_CHECKING:
    from .flow import AggregatedStream, Stream

EmitMode = Literal["final", "updates"]


class WindowedStream:
    """A stream cut into windows; ``agg`` says what to compute for each (key, window)."""

    def __init__(
        self,
        stream: Stream,
        step: str,
        assigner: WindowAssigner,
        *,
        allowed_lateness: Duration = 0,
        emit: EmitMode = "final",
        update_every: int = 1,
        time: Literal["event", "processing"] = "event",
        on_error: OnError | None = None,
    ) -> None:
        if not isinstance(assigner, Tumbling | Sliding | Session | Count):
            raise FlowDefinitionError(
                f"window {step!r}: expected an assigner such as tdf.windows.tumbling('10s'), got {assigner!r}"
            )
        if emit not in ("final", "updates"):
            raise FlowDefinitionError(f"window {step!r}: emit must be 'final' or 'updates', got {emit!r}")
        if update_every < 1:
            raise FlowDefinitionError(f"window {step!r}: update_every must be at least 1")
        self.stream = stream
        self.step = step
        self.assigner = assigner
        self.lateness_ms = to_millis(allowed_lateness, what="allowed_lateness")
        self.emit = emit
        self.update_every = update_every
        self.on_error = on_error
        if time not in ("event", "processing"):
            raise FlowDefinitionError(f"window {step!r}: time must be 'event' or 'processing', got {time!r}")
        if time == "processing" and not isinstance(assigner, Tumbling | Sliding):
            raise FlowDefinitionError(f"window {step!r}: processing-time windows are tumbling or sliding")
        self.time_mode = time
        self._result: AggregatedStream | None = None

    def agg(self, **named: pl.Expr) -> AggregatedStream:
        """Aggregate each window: ``.agg(mean=pl.col("v").mean(), n=pl.len())``.

        Output rows: the key columns, ``window_start``, ``window_end`` (the input time column's
        type), the aggregates, and ``is_update`` (False for a window's final result).
        """
        if self._result is not None:
            raise FlowDefinitionError(f"window {self.step!r} already has its aggregation")
        from .flow import AggregatedStream

        plan = AggPlan(named)
        stream, assigner = self.stream, self.assigner
        if isinstance(assigner, Count):
            factory = self._count_factory(plan)
            requires_watermark = False
        elif self.time_mode == "processing":
            factory = self._processing_factory(plan)
            requires_watermark = False
        else:
            factory = self._time_factory(plan)
            requires_watermark = True
        result = stream._operator(
            self.step,
            factory,
            on_error=self.on_error,
            requires_watermark=requires_watermark,
            time="window_end" if stream.time or self.time_mode == "processing" else None,
            key=None,
        )
        self._result = AggregatedStream(result, source=stream)
        return self._result

    def late(self) -> Stream:
        """Records too late for every window they belong to (past ``allowed_lateness``)."""
        if self._result is None:
            raise FlowDefinitionError(f"window {self.step!r}: call .agg(...) before .late()")
        return self._result.late()

    def _time_factory(self, plan: AggPlan):  # type: ignore[no-untyped-def]
        stream, assigner = self.stream, self.assigner
        if stream.time is None:
            raise FlowDefinitionError(f"window {self.step!r} needs an event-time column: give its source time=...")
        key, time, step = stream.key, stream.time, self.step
        lateness, emit, every, on_error = self.lateness_ms, self.emit, self.update_every, self.on_error or "dlq"
        if isinstance(assigner, Session):
            from .ops.session import SessionWindowOp

            return lambda: SessionWindowOp(
                step,
                gap_ms=assigner.gap_ms,
                key=key,
                time=time,
                plan=plan,
                allowed_lateness_ms=lateness,
                on_error=on_error,
            )
        from .ops.window import PaneWindowOp

        return lambda: PaneWindowOp(
            step,
            assigner=assigner,
            key=key,
            time=time,
            plan=plan,
            allowed_lateness_ms=lateness,
            emit=emit,
            update_every=every,
            on_error=on_error,
        )

    def _processing_factory(self, plan: AggPlan):  # type: ignore[no-untyped-def]
        from .ops.window import PROCESSING_TIME, PaneWindowOp

        assigner = self.assigner
        assert isinstance(assigner, Tumbling | Sliding)
        key, step, emit, every, on_error = self.stream.key, self.step, self.emit, self.update_every, self.on_error
        return lambda: PaneWindowOp(
            step,
            assigner=assigner,
            key=key,
            time=PROCESSING_TIME,
            plan=plan,
            allowed_lateness_ms=0,
            emit=emit,
            update_every=every,
            on_error=on_error or "dlq",
            processing_time=True,
        )

    def _count_factory(self, plan: AggPlan):  # type: ignore[no-untyped-def]
        from .ops.count_window import CountWindowOp

        assert isinstance(self.assigner, Count)
        stream, n, step, on_error = self.stream, self.assigner.n, self.step, self.on_error or "dlq"
        return lambda: CountWindowOp(step, n=n, key=stream.key, time=stream.time, plan=plan, on_error=on_error)
