"""The ``retrain`` step: runs a :class:`~tideflow.ai.retrain.RetrainPolicy` on labelled rows
(input 0) and, optionally, drift events (input 1); its output is the stream of decisions.

Checkpoints: the state is the loop's (:meth:`~tideflow.ai.retrain.RetrainLoop.snapshot`). At a
barrier the step adopts a training that has just finished (its ``trained`` event leaves before the
barrier), but does not wait for one still running: the snapshot keeps its rows and a restored step
trains again (the module doc of :mod:`tideflow.ai.retrain` says why)."""

from __future__ import annotations

from typing import Any

import polars as pl

from ..ai.retrain import RetrainLoop, RetrainPolicy
from ..record import Batch
from .base import OnError, Operator, StepContext

SNAPSHOT_VERSION = 1

EVENT_SCHEMA = {
    "action": pl.String,
    "model": pl.String,
    "champion": pl.String,
    "version": pl.String,
    "labelled_rows": pl.Int64,
    "reason": pl.String,
    "evidence": pl.String,
}


class RetrainOperator(Operator):
    tick_ms = 50  # training finishes in the background: look for it even when no rows come

    def __init__(self, step: str, on_error: OnError, policy: RetrainPolicy, inputs: list[str], label: str) -> None:
        super().__init__(step, on_error)
        self.loop = RetrainLoop(policy, inputs, label)

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        self.records_in += batch.df.height
        if batch.input == 1:
            for row in batch.df.iter_rows(named=True):
                self.loop.drift(str(row.get("evidence") or row))
        else:
            self.loop.rows(batch.df)
        return self._events(batch.watermark)

    def on_tick(self, ctx: StepContext) -> Batch | None:
        self.loop.poll()
        return self._events(None)

    def finish(self, ctx: StepContext) -> Batch | None:
        return self._events(None)

    def on_barrier(self, ctx: StepContext) -> Batch | None:
        self.loop.poll()
        return self._events(None)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "retrain", "version": SNAPSHOT_VERSION, "loop": self.loop.snapshot()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("kind") != "retrain" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a retrain snapshot (kind {snapshot.get('kind')!r})")
        self.loop.restore(snapshot["loop"])

    def _events(self, watermark: int | None) -> Batch | None:
        if not self.loop.events:
            return None if watermark is None else Batch(pl.DataFrame(), None, watermark)
        out = pl.DataFrame(self.loop.events, schema=EVENT_SCHEMA)
        self.loop.events = []
        self.records_out += out.height
        return Batch(out, None, watermark)


def retrain(
    stream: Any,
    step: str,
    policy: RetrainPolicy,
    *,
    inputs: str | list[str],
    label: str,
    drift: Any | None,
    on_error: OnError | None,
) -> Any:
    """Build the step (``Stream.retrain`` documents the arguments)."""
    from ..errors import FlowDefinitionError

    if not isinstance(policy, RetrainPolicy):
        raise FlowDefinitionError(f"step {step!r}: policy must be a tdf.ai.RetrainPolicy, got {type(policy).__name__}")
    input_list = [inputs] if isinstance(inputs, str) else list(inputs)

    def factory() -> RetrainOperator:
        return RetrainOperator(step, on_error or stream.flow.on_error, policy, input_list, label)

    others = [drift] if drift is not None else []
    return stream._operator(step, factory, others=others, on_error=on_error, time=None, key=None)
