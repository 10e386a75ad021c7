"""The ``infer`` step: a model on the stream, in dynamic micro-batches, off the main loop.

Ordering guarantee: rows leave the step in the order they arrived, whatever the batching —
length buckets, several workers, retries. (So per-key order, and the per-row watermarks that
event-time steps downstream rely on, are exactly as if the model were instantaneous.) The price
is that a fast batch may wait for an earlier slow one; the wait is bounded by ``max_wait`` plus
one model call. The step's output watermark is held back to the earliest row still inside it.

Checkpoints: the step's state is work in flight (queued rows, model batches running), which a
snapshot could only capture by pickling frames and re-running models. So at a barrier
(``on_barrier``) the step drains instead: every queued row is cut into model batches, every batch
in flight is waited for, and all their rows leave, in arrival order and with the held-back
watermark released, before the barrier goes on. The snapshot is then small (which version was
serving, the batch-size cap, the input watermark); ``restore`` explains which version serves
after a resume.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from ..ai.base import Batching, ModelHandler
from ..ai.batcher import ARRIVED, LENGTH, SEQ, Batcher, ModelBatch
from ..ai.metrics import InferenceMetrics
from ..ai.pool import Done, Job, ModelPool
from ..errors import StepError
from ..record import Batch, Origin
from .base import OnError, Operator, StepContext

_HIDDEN_HERE = (SEQ, ARRIVED, LENGTH)
SNAPSHOT_VERSION = 1


@runtime_checkable
class FollowsRegistry(Protocol):
    """A model known by name in a registry: the step serves its champion and swaps on promotion."""

    def current(self) -> tuple[Any, ModelHandler[Any]]: ...

    def revision(self) -> int: ...


class InferOperator(Operator):
    """Batches rows across incoming batches, runs the model in a pool, emits rows in order."""

    def __init__(
        self,
        step: str,
        on_error: OnError,
        model: ModelHandler[Any] | FollowsRegistry,
        *,
        inputs: list[str],
        outputs: list[str],
        batching: Batching,
        device: str,
        workers: int,
        concurrency: str,
        version_column: str | None,
        swap_check_s: float,
    ) -> None:
        super().__init__(step, on_error)
        self.model = model
        self.inputs = inputs
        self.outputs = outputs
        self.batching = batching
        self.device = device
        self.workers = workers
        self.concurrency = concurrency
        self.version_column = version_column
        self.swap_check_s = swap_check_s
        self.tick_ms = 1  # see next_timer_s: the batcher's deadline, not a fixed period
        self.batcher = Batcher(batching.max_size, batching.max_wait_s, batching.bucket_by, batching.bucket_growth)
        self.metrics_ = InferenceMetrics()
        self.pool: ModelPool | None = None
        self._next_seq = 0
        self._next_job = 0
        self._in_flight: dict[int, tuple[int, int | None]] = {}
        """Job id → (first seq, watermark before it), for jobs the pool has not returned."""
        self._generation_of_job: dict[int, int] = {}
        self._done: list[pl.DataFrame] = []
        self._cut: tuple[int, int | None] | None = None
        """A model batch cut from the batcher and waiting for a free slot."""
        self._input_watermark: int | None = None
        self._origin: Origin | None = None
        self._size_cap: int | None = None
        self._generation = 0
        self._pending_generation: int | None = None
        self._jobs_per_generation: dict[int, int] = {}
        self._labels: dict[int, str] = {}
        """Generation → the version label its rows carry."""
        self._revision: int | None = None
        self._last_swap_check = 0.0
        self._ordered = batching.bucket_by is None and workers == 1
        self.max_in_flight = batching.max_in_flight or 2 * workers
        self._restored_from: str | None = None
        """The version that served when the snapshot this step was restored from was taken."""
        self._restored_cap: int | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, wake: Callable[[], None], abort: threading.Event) -> None:
        # The device is resolved where each model loads (off this thread): "auto" may ask a framework.
        self.pool = ModelPool(
            workers=self.workers,
            concurrency=self.concurrency,
            device=self.device,
            outputs=self.outputs,
            max_in_flight=self.max_in_flight,
            split_all=self.on_error == "dlq",
            on_done=wake,
            abort=abort,
        )
        handler = self._resolve_initial()
        self._labels[self._generation] = handler.version
        self._apply_restored_cap()
        # Loaded (and warmed up, by the handler's load) before the first batch: the source starts
        # reading meanwhile, so the load overlaps with the pipeline filling up.
        self.pool.load(self._generation, handler, wait=False)
        self._jobs_per_generation[self._generation] = 0

    def _resolve_initial(self) -> ModelHandler[Any]:
        if isinstance(self.model, ModelHandler):
            return self.model
        self._revision = self.model.revision()
        self._last_swap_check = time.monotonic()
        _, handler = self.model.current()
        return handler

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # -- the operator contract --------------------------------------------------------------
    def process(self, batch: Batch, ctx: StepContext) -> Iterator[Batch]:
        now = time.monotonic()
        if self._next_seq == 0:
            self._check_columns(batch.df)
        self.records_in += batch.df.height
        self.metrics_.arrived(now)
        self._origin = batch.origin or self._origin
        if batch.watermark is not None:
            self._input_watermark = batch.watermark
        n = batch.df.height
        # Eager column building throughout: polars' lazy path costs ~50 µs per call, which at a
        # few thousand batches per second is the pipeline's whole overhead budget.
        rows = batch.df.hstack(
            [
                pl.Series(SEQ, np.arange(self._next_seq, self._next_seq + n, dtype=np.int64)),
                pl.Series(ARRIVED, np.full(n, now)),
            ]
        )
        self._next_seq += n
        self.batcher.add(rows, now)
        return self._advance(ctx, now)

    def on_watermark(self, watermark: int, ctx: StepContext) -> Iterator[Batch]:
        self._input_watermark = watermark
        return self._advance(ctx, time.monotonic())

    def on_tick(self, ctx: StepContext) -> Iterator[Batch]:
        return self._advance(ctx, time.monotonic())

    def next_timer_s(self) -> float | None:
        deadline = self.batcher.next_deadline()
        return None if deadline is None else deadline - time.monotonic()

    def finish(self, ctx: StepContext) -> Iterator[Batch]:
        return self._flush(ctx)

    def on_barrier(self, ctx: StepContext) -> Iterator[Batch]:
        """Drain as at end of input: every queued row goes to the model now (without waiting for
        a full batch or its deadline), every batch in flight is waited for, and the rows leave in
        arrival order, the last batch carrying the input watermark (no longer held back). Rows
        stream out as their model batches finish; once the iterator is exhausted the step holds
        no rows, so ``snapshot()`` has only small things to keep."""
        return self._flush(ctx)

    def _flush(self, ctx: StepContext) -> Iterator[Batch]:
        self._maybe_swap(time.monotonic())
        for model_batch in self.batcher.take_all(self._size_cap):
            yield from self._submit_when_free(model_batch, ctx)
        assert self.pool is not None
        while self._in_flight:
            self._collect(ctx, self.pool.results.get())
            ready = self._emit(time.monotonic())
            if ready is not None and ready.df.height:
                yield ready
        final = self._emit(time.monotonic())
        if final is not None:
            yield final

    def snapshot(self) -> dict[str, Any]:
        """What a resumed step needs beyond its configuration, after ``on_barrier`` drained it:
        the version serving (informative: see ``restore``), the batch-size cap learned from
        batches that failed for their size (valid for that version), and the input watermark
        (so the first output after a resume carries it even before new input does). Metrics
        are not kept: they describe this run. Refuses while rows are still inside the step:
        the runtime must exhaust ``on_barrier``'s output first."""
        held = self.batcher.pending + len(self._in_flight) + len(self._done)
        if held:
            raise RuntimeError(
                f"step {self.step!r}: a snapshot while {self.batcher.pending} rows are queued and "
                f"{len(self._in_flight)} model batches are in flight; drain with on_barrier() first"
            )
        return {
            "kind": "infer",
            "version": SNAPSHOT_VERSION,
            "model_version": self._label(self._generation),
            "size_cap": self._size_cap,
            "watermark": self._input_watermark,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Take the snapshot's watermark, and its batch-size cap if the same version serves.

        Which version serves after a resume is the registry's decision, not the checkpoint's:
        a step following a registered model serves the champion at the time it starts, as it
        does on a fresh start, even when the champion moved on while the flow was down. An
        uninterrupted run would have swapped to it within ``swap_check`` of the promotion (or
        rollback), and rows are scored by whichever version serves when they reach the step
        (processing time), so the rows replayed after the checkpoint being scored by the new
        champion is an outcome the uninterrupted run could have had too (had it been slower).
        Pinning the snapshot's version instead would undo, for a while, a rollback made
        during an incident, and cost a second load to swap away from it. A step given a
        handler (no registry) serves that handler: the code decides. Either way the
        snapshot's version shows in the metrics as ``restored_from_version``."""
        if snapshot.get("kind") != "infer" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not an infer snapshot (kind {snapshot.get('kind')!r})")
        self._restored_from = snapshot.get("model_version")
        self._restored_cap = snapshot.get("size_cap")
        self._input_watermark = snapshot.get("watermark")
        self._apply_restored_cap()

    def _apply_restored_cap(self) -> None:
        """The restored cap applies once the serving version is known to be the snapshot's (at
        ``restore`` if the step started already, else at ``start``)."""
        cap = self._restored_cap
        serving = self._label(self._generation)
        if cap is not None and serving is not None and serving == self._restored_from:
            self._size_cap = cap if self._size_cap is None else min(self._size_cap, cap)

    def _check_columns(self, df: pl.DataFrame) -> None:
        """Wiring errors surface on the first batch, with what to do, rather than deep in a join."""
        missing = [c for c in self.inputs if c not in df.columns]
        if missing:
            raise StepError(self.step, KeyError(f"input columns {missing} not in the stream ({df.columns})"))
        added = [*self.outputs, *([self.version_column] if self.version_column else [])]
        clashing = [c for c in added if c in df.columns]
        if clashing:
            hint = (
                "pass version_column='...' (or None)"
                if self.version_column in clashing
                else "name the outputs differently (outputs=...)"
            )
            raise StepError(self.step, ValueError(f"columns {clashing} exist already in the stream: {hint}"))

    def state_size(self) -> int:
        return self.batcher.pending + len(self._in_flight)

    def metrics(self) -> dict[str, Any]:
        out = self.metrics_.to_dict()
        out["model_version"] = self._label(self._generation)
        out["in_flight_batches"] = len(self._in_flight)
        if self._restored_from is not None:
            out["restored_from_version"] = self._restored_from
        return out

    # -- batching and collecting ------------------------------------------------------------
    def _advance(self, ctx: StepContext, now: float) -> Iterator[Batch]:
        """Collect finished batches, cut and submit what is full or due, and emit what is ready.

        A generator: when the pool is full, what is ready leaves *before* the step blocks for a
        free slot, so one big input batch streams out as its model batches finish."""
        self._maybe_swap(now)
        while True:
            self._drain(ctx)  # between submissions: a size failure lowers the cap at once
            model_batch = self.batcher.next_full(self._size_cap) or self.batcher.next_due(now, self._size_cap)
            if model_batch is None:
                break
            yield from self._submit_when_free(model_batch, ctx)
        final = self._emit(time.monotonic())
        if final is not None:
            yield final

    def _submit_when_free(self, model_batch: ModelBatch, ctx: StepContext) -> Iterator[Batch]:
        if len(self._in_flight) >= self.max_in_flight:
            # Cut but not yet submitted: its rows are outstanding too, or later rows would pass them.
            self._cut = (model_batch.first_seq, model_batch.first_watermark)
            try:
                ready = self._emit(time.monotonic())
            finally:
                self._cut = None
            if ready is not None and ready.df.height:
                yield ready
        self._submit(model_batch)

    def _submit(self, model_batch: ModelBatch) -> None:
        assert self.pool is not None
        inputs = model_batch.rows[self.inputs]  # eager projection: ~9 µs, select() takes ~45
        job = Job(self._next_job, self._generation, inputs, model_batch)
        self._next_job += 1
        self._in_flight[job.id] = (model_batch.first_seq, model_batch.first_watermark)
        self._generation_of_job[job.id] = self._generation
        self._jobs_per_generation[self._generation] = self._jobs_per_generation.get(self._generation, 0) + 1
        self.pool.submit(job)

    def _drain(self, ctx: StepContext) -> None:
        assert self.pool is not None
        while True:
            try:
                done = self.pool.results.get_nowait()
            except queue.Empty:
                return
            self._collect(ctx, done)

    def _collect(self, ctx: StepContext, done: Done) -> None:
        job = done.job
        if done.error is not None:
            raise StepError(self.step, done.error)
        model_batch: ModelBatch = job.payload
        rows = model_batch.rows
        outcome = done.outcome
        for offset, length, columns in outcome.pieces:
            extra = columns.get_columns()
            if self.version_column:
                extra.append(pl.Series(self.version_column, [done.label], pl.String).new_from_index(0, length))
            self._done.append(rows.slice(offset, length).hstack(extra))
        errors = 0
        for offset, length, error in outcome.failures:
            failed = _without(rows.slice(offset, length), _HIDDEN_HERE)
            errors += length
            ctx.reject_rows(self.step, self.on_error, error, failed, self._origin)
        if outcome.smallest_failed_size is not None:
            cap = max(1, outcome.smallest_failed_size // 2)
            self._size_cap = cap if self._size_cap is None else min(self._size_cap, cap)
        assert self.pool is not None
        loaded = self.pool.ready_at.get(job.generation, 0.0)
        self.metrics_.model_ready(loaded)
        waited = done.started - max(model_batch.oldest_arrival, loaded)
        self.metrics_.batch_done(rows.height, waited, done.finished - done.started, outcome.splits, errors)
        del self._in_flight[job.id]
        generation = self._generation_of_job.pop(job.id)
        self._jobs_per_generation[generation] -= 1
        if generation != self._generation and self._jobs_per_generation[generation] == 0:
            del self._jobs_per_generation[generation]
            assert self.pool is not None
            self.pool.retire(generation)

    def _emit(self, now: float) -> Batch | None:
        """Rows before the earliest row still waiting or in flight leave, in arrival order."""
        low = self._outstanding()
        watermark = self._input_watermark
        if low is not None and low[1] is not None and watermark is not None:
            watermark = min(watermark, low[1])
        if not self._done:
            return None if watermark is None else Batch(pl.DataFrame(), None, watermark)
        frame = self._done[0] if len(self._done) == 1 else pl.concat(self._done, how="vertical")
        self._done = []
        if not self._ordered:
            frame = frame.sort(SEQ)
            if low is not None:
                ready = frame.filter(pl.col(SEQ) < low[0])
                if ready.height < frame.height:
                    self._done = [frame.filter(pl.col(SEQ) >= low[0])]
                frame = ready
        if not frame.height:
            return None if watermark is None else Batch(pl.DataFrame(), None, watermark)
        self.metrics_.emitted(frame.get_column(ARRIVED).to_numpy(), now)
        out = _without(frame, _HIDDEN_HERE)
        self.records_out += out.height
        return Batch(out, self._origin, watermark)

    def _outstanding(self) -> tuple[int, int | None] | None:
        """``(seq, watermark before it)`` of the earliest row not yet scored."""
        candidates = list(self._in_flight.values())
        if self._cut is not None:
            candidates.append(self._cut)
        queued = self.batcher.oldest()
        if queued is not None:
            candidates.append(queued)
        return min(candidates, key=lambda c: c[0]) if candidates else None

    # -- hot swap ---------------------------------------------------------------------------
    def _maybe_swap(self, now: float) -> None:
        """Follow the registry: load a promoted version in the background, switch when loaded.

        The switch happens between two model batches: every batch is scored by exactly one
        version, and every row carries that version's label."""
        if isinstance(self.model, ModelHandler):
            return
        assert self.pool is not None
        if self._pending_generation is not None:
            if self.pool.ready(self._pending_generation):
                old = self._generation
                self._generation = self._pending_generation
                self._pending_generation = None
                self._jobs_per_generation.setdefault(self._generation, 0)
                self.metrics_.swaps += 1
                if self._jobs_per_generation.get(old, 0) == 0:
                    self._jobs_per_generation.pop(old, None)
                    self.pool.retire(old)
            return
        if now - self._last_swap_check < self.swap_check_s:
            return
        self._last_swap_check = now
        revision = self.model.revision()
        if revision == self._revision:
            return
        self._revision = revision
        _, handler = self.model.current()
        if handler.version == self._label(self._generation):
            return
        generation = self._generation + 1
        while generation in self._jobs_per_generation:
            generation += 1
        self._pending_generation = generation
        self._labels[generation] = handler.version
        self.pool.load(generation, handler, wait=False)

    def _label(self, generation: int) -> str | None:
        return self._labels.get(generation)


def _without(frame: pl.DataFrame, names: tuple[str, ...]) -> pl.DataFrame:
    """``frame`` minus ``names``, projected eagerly (``drop`` goes through the lazy engine: ~4×)."""
    return frame[[name for name in frame.columns if name not in names]]


def infer(
    stream: Any,
    step: str,
    model: ModelHandler[Any] | FollowsRegistry,
    *,
    inputs: str | Sequence[str],
    outputs: str | Sequence[str],
    batching: Batching | None,
    device: str,
    workers: int,
    concurrency: str | None,
    version_column: str | None,
    swap_check: float,
    on_error: OnError | None,
) -> Any:
    """Build the step (``Stream.infer`` documents the arguments)."""
    from ..errors import FlowDefinitionError

    if not isinstance(model, ModelHandler | FollowsRegistry):
        raise FlowDefinitionError(
            f"step {step!r}: model must be a tideflow.ai handler (e.g. tdf.ai.SklearnModel(...)) or a "
            f"registered model (tdf.ai.RegisteredModel(name)), got {type(model).__name__}"
        )
    input_list = [inputs] if isinstance(inputs, str) else list(inputs)
    output_list = [outputs] if isinstance(outputs, str) else list(outputs)
    if not input_list or not output_list:
        raise FlowDefinitionError(f"step {step!r}: inputs= and outputs= each need at least one column")
    if workers < 1:
        raise FlowDefinitionError(f"step {step!r}: workers must be at least 1, got {workers}")
    chosen = concurrency or (model.concurrency if isinstance(model, ModelHandler) else "thread")
    if chosen not in ("thread", "process"):
        raise FlowDefinitionError(f"step {step!r}: concurrency must be 'thread' or 'process', got {chosen!r}")
    policy = batching or (model.batching if isinstance(model, ModelHandler) else None) or Batching()
    kind = on_error or stream.flow.on_error

    def factory() -> InferOperator:
        return InferOperator(
            step,
            kind,
            model,
            inputs=input_list,
            outputs=output_list,
            batching=policy,
            device=device,
            workers=workers,
            concurrency=chosen,
            version_column=version_column,
            swap_check_s=swap_check,
        )

    return stream._operator(step, factory, on_error=on_error)
