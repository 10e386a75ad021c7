"""The ``learn`` step: a model that serves and learns on the same stream, test-then-train.

Every row is predicted; a row that carries a label is then learned, so each prediction comes
from a model that had not yet seen its row (prequential evaluation). Rolling quality metrics
leave on the ``metrics`` side output every ``every`` labelled rows: at fixed row counts, not
per batch, so they do not depend on how the stream was cut.

Learning is sequential by nature (each update depends on the previous one), so this step runs
its model on the step's own thread, in arrival order; use ``infer`` for a model that only serves.

Checkpoints: the learned model *is* the step's state. ``snapshot()`` keeps a deep copy of it (a
River model or a scikit-learn estimator pickles as itself), the rolling-metrics window and the
counters; a restored step serves and learns from that copy instead of loading the handler's
initial model, so its predictions and metrics go on exactly as the uninterrupted step's would.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from ..ai.base import ModelHandler, as_columns, resolve_device
from ..ai.prequential import RollingMetrics
from ..record import Batch, to_records
from .base import OnError, Operator, StepContext, isolate_failures

METRICS_PORT = "metrics"
SNAPSHOT_VERSION = 1

Granularity = Literal["record", "batch"]


class LearnOperator(Operator):
    counted_ports = frozenset({METRICS_PORT})

    def __init__(
        self,
        step: str,
        on_error: OnError,
        handler: ModelHandler[Any],
        *,
        inputs: list[str],
        label: str,
        output: str,
        task: str,
        window: int,
        every: int,
        granularity: Granularity,
        device: str,
        time: str | None,
    ) -> None:
        super().__init__(step, on_error)
        self.handler = handler
        self.inputs = inputs
        self.label = label
        self.output = output
        self.metrics_ = RollingMetrics(task, window)
        self.every = every
        self.granularity = granularity
        self.device = device
        self.time = time
        self.model: Any = None
        self.learned = 0
        self.errors = 0
        self._restored = False
        """Whether ``model`` came from a snapshot (then ``start`` does not load the handler's)."""

    def start(self, wake: Callable[[], None], abort: threading.Event) -> None:
        if not self._restored:
            self.model = self.handler.load(resolve_device(self.device, self.handler.frameworks))

    def snapshot(self) -> dict[str, Any]:
        """The learned model (a deep copy, detached from the one that goes on learning), the
        rolling-metrics window, and the counters that place the next metrics row."""
        return {
            "kind": "learn",
            "version": SNAPSHOT_VERSION,
            "handler": type(self.handler).__name__,
            "model_version": self.handler.version,
            "model": copy.deepcopy(self.model),
            "metrics": self.metrics_.snapshot(),
            "learned": self.learned,
            "errors": self.errors,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Serve and learn from the snapshot's model from now on (called before or after
        ``start``: either way the handler's initial model is not used). A snapshot of a
        different handler type is refused: its model would not fit this handler's calls."""
        if snapshot.get("kind") != "learn" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a learn snapshot (kind {snapshot.get('kind')!r})")
        if snapshot["handler"] != type(self.handler).__name__:
            raise ValueError(
                f"step {self.step!r}: the snapshot's model was served by {snapshot['handler']}, "
                f"this step's by {type(self.handler).__name__}"
            )
        if snapshot["model"] is not None:  # None: taken before the step started, nothing learned
            self.model = copy.deepcopy(snapshot["model"])
            self._restored = True
        self.metrics_.restore(snapshot["metrics"])
        self.learned = snapshot["learned"]
        self.errors = snapshot["errors"]

    def metrics(self) -> dict[str, Any]:
        return {
            "learned": self.learned,
            "errors": self.errors,
            "model_version": self.handler.version,
            **{k: v for k, v in self.metrics_.values().items() if v is not None},
        }

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        missing = [c for c in [*self.inputs, self.label] if c not in df.columns]
        if missing:
            raise KeyError(f"step {self.step!r}: columns {missing} are not in the stream ({df.columns})")
        if self.granularity == "record":
            kept, predictions = self._record_by_record(df, batch, ctx)
        else:
            kept, predictions = self._batch_at_once(df, batch, ctx)
        if kept is None or not kept.height:
            return Batch(pl.DataFrame(), None, batch.watermark) if batch.watermark is not None else None
        out = kept.hstack([pl.Series(self.output, predictions)])
        self.records_out += out.height
        return Batch(out, batch.origin, batch.watermark)

    # -- test, then train -------------------------------------------------------------------
    def _record_by_record(self, df: pl.DataFrame, batch: Batch, ctx: StepContext) -> tuple[pl.DataFrame, list]:
        handler, model = self.handler, self.model
        one = getattr(handler, "predict_learn_one", None)
        labels = df.get_column(self.label).to_list()
        times = df.get_column(self.time).to_list() if self.time in df.columns else None
        rows = to_records(df.select(self.inputs)) if one is not None else None
        predictions: list[Any] = []
        keep: list[int] = []
        for i, label in enumerate(labels):
            try:
                if one is not None:
                    assert rows is not None
                    predicted = one(model, rows[i], label)
                else:
                    row = df.slice(i, 1).select(self.inputs)
                    predicted = (
                        as_columns(handler.predict_batch(model, row), [self.output], 1)[self.output][0]
                        if handler.fitted(model)
                        else None
                    )
                    if label is not None:
                        handler.learn_batch(model, row, pl.Series(self.label, [label]))
            except Exception as error:
                self.errors += 1
                ctx.reject_rows(self.step, self.on_error, error, df.slice(i, 1), batch.origin)
                continue
            keep.append(i)
            predictions.append(predicted)
            if label is not None:
                self._scored(predicted, label, times[i] if times else None)
        kept = df if len(keep) == df.height else df[keep]
        return kept, predictions

    def _batch_at_once(self, df: pl.DataFrame, batch: Batch, ctx: StepContext) -> tuple[pl.DataFrame | None, list]:
        """Predict the whole batch, then learn its labelled rows: one call each (partial_fit).
        Prequential at batch granularity: rows of a batch do not see each other."""
        handler, model = self.handler, self.model

        def predict(part: pl.DataFrame) -> pl.DataFrame:
            if not handler.fitted(model):  # cold start: nothing learned yet, nothing to predict
                return part.hstack([pl.Series(self.output, [None] * part.height)])
            columns = as_columns(handler.predict_batch(model, part.select(self.inputs)), [self.output], part.height)
            return part.hstack(list(columns.values()))

        parts, failures = isolate_failures(predict, df)
        for rows, error in failures:
            self.errors += rows.height
            ctx.reject_rows(self.step, self.on_error, error, rows, batch.origin)
        if not parts:
            return None, []
        scored = pl.concat(parts) if len(parts) > 1 else parts[0]
        labelled = scored.filter(pl.col(self.label).is_not_null())

        def learn(part: pl.DataFrame) -> pl.DataFrame:
            handler.learn_batch(model, part.select(self.inputs), part.get_column(self.label))
            return part

        if labelled.height:
            learned, failed = isolate_failures(learn, labelled)
            for rows, error in failed:
                self.errors += rows.height
                ctx.reject_rows(self.step, self.on_error, error, rows.drop(self.output), batch.origin)
            ok = pl.concat(learned) if learned else labelled.clear()
            # Times of the rows actually learned (not of all labelled ones: some may have failed).
            times = ok.get_column(self.time).to_list() if self.time in ok.columns else [None] * ok.height
            predicted, actual = ok.get_column(self.output).to_list(), ok.get_column(self.label).to_list()
            for p, a, at in zip(predicted, actual, times, strict=True):
                self._scored(p, a, at)
        return scored.drop(self.output), scored.get_column(self.output).to_list()

    def _scored(self, predicted: Any, actual: Any, at: Any) -> None:
        self.learned += 1
        self.metrics_.update(predicted, actual)
        if self.learned % self.every == 0:
            row = {"step": self.step, "labelled": self.learned, "window": len(self.metrics_.actual), "at": at}
            self.emit_side(METRICS_PORT, Batch(pl.DataFrame([{**row, **self.metrics_.values()}]), None))


def learn(
    stream: Any,
    step: str,
    model: ModelHandler[Any],
    *,
    inputs: str | list[str] | tuple[str, ...],
    label: str,
    output: str,
    task: str | None,
    window: int,
    every: int,
    granularity: Granularity | None,
    device: str,
    on_error: OnError | None,
) -> Any:
    """Build the step (``Stream.learn`` documents the arguments)."""
    from ..errors import FlowDefinitionError

    if not isinstance(model, ModelHandler):
        raise FlowDefinitionError(f"step {step!r}: model must be a tideflow.ai handler, got {type(model).__name__}")
    if not model.can_learn and not hasattr(model, "predict_learn_one"):
        raise FlowDefinitionError(f"step {step!r}: {type(model).__name__} cannot learn online (no learn_batch)")
    if every < 1 or window < 1:
        raise FlowDefinitionError(f"step {step!r}: every and window must be at least 1")
    chosen = granularity or ("record" if hasattr(model, "predict_learn_one") else "batch")
    if chosen not in ("record", "batch"):
        raise FlowDefinitionError(f"step {step!r}: granularity must be 'record' or 'batch', got {chosen!r}")
    kind = task or "classification"
    if kind not in ("classification", "regression"):
        raise FlowDefinitionError(f"step {step!r}: task must be 'classification' or 'regression', got {kind!r}")
    input_list = [inputs] if isinstance(inputs, str) else list(inputs)
    time_column = stream.time

    def factory() -> LearnOperator:
        return LearnOperator(
            step,
            on_error or stream.flow.on_error,
            model,
            inputs=input_list,
            label=label,
            output=output,
            task=kind,
            window=window,
            every=every,
            granularity=chosen,
            device=device,
            time=time_column,
        )

    return stream._operator(step, factory, on_error=on_error)
