"""The embedded runtime: one thread per stage, bounded channels between stages.

Why threads: polars, Arrow, ONNX Runtime and PyTorch release the GIL, so I/O, columnar compute
and inference overlap; per-record Python work is fused so it pays the GIL once per batch chain.
Bounded channels give backpressure: a slow sink blocks its producer, which blocks the source,
so memory stays flat. A stop request (Ctrl-C, ``flow.stop()``) only stops the sources; every
batch already read flows to the sinks, which are then flushed and closed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import signal
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..checkpoint.store import CheckpointWarning, open_store
from ..deadletters import DeadLetters
from ..errors import StepError, TideflowError
from ..flow import Flow, Node
from ..io.base import Sink, Source, SourceContext, TransactionalSink
from ..ops.base import Operator, StepContext, isolate_failures
from ..ops.keygroups import KEY_GROUPS
from ..record import POSITION, WATERMARK, Batch, Origin, strip_hidden
from ..time.watermarks import END_OF_TIME, NO_WATERMARK, WatermarkStrategy, event_time_ms
from .checkpointing import Ack, Barrier, CheckpointSettings, Coordinator, EndedWorker
from .plan import Stage, compile_stages
from .recovery import Recovery, encode_parts, snapshot_operators

log = logging.getLogger("tideflow.checkpoint")

_END = object()
"""Marks the end of one producer's output on a channel."""
_WAKE = (None, object())
"""Put on a stage's inbox by an operator's background work (a finished model batch): the stage
wakes and collects what is ready instead of waiting for the next batch or tick."""
_POLL = 0.05
"""Seconds between checks of the abort flag while blocked on a channel."""


class _Aborted(Exception):
    """Raised inside a worker when the run is being torn down after a failure."""


class Channel:
    """A bounded queue between stages; blocking puts are what backpressure is made of."""

    def __init__(self, maxsize: int, abort: threading.Event) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._abort = abort

    def put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                if self._abort.is_set():
                    raise _Aborted from None

    def get(self, timeout: float | None = None) -> Any:
        """The next item; ``None`` when ``timeout`` seconds pass first (None: wait for one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _POLL if deadline is None else min(_POLL, max(0.0, deadline - time.monotonic()))
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                if self._abort.is_set():
                    raise _Aborted from None
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def offer(self, item: Any) -> None:
        """Put without blocking; a full channel already guarantees the consumer will wake."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(item)

    def qsize(self) -> int:
        return self._queue.qsize()


@dataclass
class StepStats:
    """Counts for one step after (or during) a run."""

    step: str
    kind: str
    records_in: int | None = 0
    records_out: int | None = 0
    dead_letters: int = 0
    watermark_ms: int | None = None
    state_size: int | None = None
    """Entries the step holds in state at the end of the run (keys, windows, buffered rows)."""
    dropped: dict[str, int] | None = None
    """Records a step drops by design and counts (dedupe's duplicates, when not routed)."""
    fused_with: str | None = None
    """Set for steps fused into one operator: only the chain's first input and last output are
    counted, so interior counts are ``None`` (unknown) rather than a misleading zero."""
    metrics: dict[str, Any] | None = None
    """Step-specific measurements (an ``infer`` step's batch sizes, queue wait, model time)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RunResult:
    """What a run did: records in and out, dead letters, time taken, and per-step counts."""

    flow: str
    seconds: float
    records_in: int
    records_out: int
    dead_letters: int
    steps: list[StepStats] = field(default_factory=list)
    interrupted: bool = False
    dead_letter_samples: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: dict[str, Any] | None = None
    """In a checkpointed run: checkpoints completed, the last epoch, median time and size."""
    recovery: dict[str, Any] | None = None
    """In a resumed run: the checkpoint resumed from, steps restored, steps left empty (why)."""

    @property
    def records_per_s(self) -> float:
        return self.records_in / self.seconds if self.seconds > 0 else 0.0

    def step(self, name: str) -> StepStats:
        for stats in self.steps:
            if stats.step == name:
                return stats
        raise KeyError(f"no step named {name!r} in this run; steps: {[s.step for s in self.steps]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "dead_letters": self.dead_letters,
            "seconds": round(self.seconds, 4),
            "records_per_s": round(self.records_per_s, 1),
            "interrupted": self.interrupted,
            "steps": [s.to_dict() for s in self.steps],
            **({"checkpoints": self.checkpoints} if self.checkpoints is not None else {}),
            **({"recovery": self.recovery} if self.recovery is not None else {}),
        }


_thread_epoch = threading.local()
"""The epoch of the last barrier the current worker thread passed (dead letters are tagged
with it, see ``DeadLetters.epoch_of``)."""


def _current_epoch() -> int | None:
    return getattr(_thread_epoch, "passed", None)


class _Worker(threading.Thread, ABC):
    """Base of the runtime's threads: records the first failure and aborts the run."""

    def __init__(self, runtime: LocalRuntime, name: str) -> None:
        super().__init__(name=f"tideflow:{name}", daemon=True)
        self.runtime = runtime
        self.step = name
        self.outputs: list[tuple[Channel, int]] = []
        """Channels fed by the worker's main output, each with the input index it feeds there
        (one stream feeding both inputs of a join gets two entries)."""
        self.side_routes: dict[tuple[str, str], list[tuple[Channel, int]]] = {}
        """Channels fed by side outputs, by (step, port): ``window.late()`` and the like."""
        self.coordinator: Coordinator | None = runtime.coordinator
        self.passed = runtime.first_epoch - 1
        """The epoch of the last checkpoint barrier this worker passed on."""

    def emit(self, batch: Batch) -> None:
        for channel, index in self.outputs:
            channel.put((index, batch))

    def _every_output(self) -> list[tuple[Channel, int]]:
        """Main and side outputs: where ends and barriers go."""
        return [*self.outputs, *(route for routes in self.side_routes.values() for route in routes)]

    def emit_barrier(self, barrier: Barrier) -> None:
        """Send a checkpoint barrier on every output, side outputs included."""
        for channel, index in self._every_output():
            channel.put((index, barrier))

    def acknowledge(self, barrier: Barrier, ack: Ack) -> None:
        assert self.coordinator is not None
        self.passed = _thread_epoch.passed = barrier.epoch
        self.coordinator.ack(id(self), barrier.epoch, ack)

    def ended_for_checkpoints(self, last: Callable[[], EndedWorker]) -> None:
        """Tell the coordinator this worker sends nothing more (``last()``: its final ack)."""
        if self.coordinator is not None:
            self.coordinator.ended(id(self), last())

    def end(self) -> None:
        for channel, index in self._every_output():
            channel.put((index, _END))

    def run(self) -> None:
        _thread_epoch.passed = self.passed
        try:
            self.work()
        except _Aborted:
            pass
        except (StepError, KeyboardInterrupt) as error:
            self.runtime.fail(error)
        except BaseException as error:
            # Anything else is reported with the step it came from.
            wrapped = StepError(self.step, error)
            wrapped.__cause__ = error
            self.runtime.fail(wrapped)

    @abstractmethod
    def work(self) -> None:
        """The thread's job; returns normally at end of input."""


class _SourceWorker(_Worker):
    def __init__(self, runtime: LocalRuntime, node: Node) -> None:
        super().__init__(runtime, node.name)
        self.node = node
        self.source: Source = node.params["source"]
        self.watermark: WatermarkStrategy | None = node.params.get("watermark")
        self.stats = StepStats(node.name, "source")
        self.origin: Origin = self.source.origin(node.name)

    def work(self) -> None:
        runtime = self.runtime
        ctx = SourceContext(self.node.name, runtime.dead_letters, runtime.stop_event, self.origin)
        self.current_watermark = NO_WATERMARK
        self.position: int | None = None
        """Position of the last row emitted (positions grow within a source)."""
        skip_through = self._resume(ctx)
        stopped = False
        try:
            for df in self.source.batches(ctx):
                if runtime.abort_event.is_set():
                    raise _Aborted
                if self.coordinator is not None and (barrier := self.coordinator.pending(self.passed)):
                    self._barrier(barrier, ctx)
                    if barrier.stop:
                        stopped = True
                        break
                if df.height == 0:
                    continue
                if skip_through is not None:
                    df, skip_through = _skip_replayed(df, skip_through)
                    if df.height == 0:
                        continue
                self._emit_rows(df)
                if runtime.stop_event.is_set():
                    break
        finally:
            self.source.close()
        if stopped:
            return
        self.ended_for_checkpoints(lambda: EndedWorker(self._ack(ctx)))
        self.end()

    def _emit_rows(self, df: pl.DataFrame) -> None:
        if self.coordinator is not None and POSITION in df.columns:
            self.position = df.get_column(POSITION).max()  # type: ignore[assignment]
        self.stats.records_out += df.height
        batch = Batch(df, self.origin)
        if self.watermark is not None and self.source.time is not None:
            before, self.current_watermark = self.watermark.per_row(
                self.current_watermark, event_time_ms(df.get_column(self.source.time))
            )
            batch = Batch(df.hstack([before]), self.origin, self.current_watermark, idle_ms=self.watermark.idle_ms)
            self.stats.watermark_ms = self.current_watermark
        self.emit(batch)

    def _resume(self, ctx: SourceContext) -> int | None:
        """Take the restored position: returns the position through which rows are skipped."""
        saved = self.runtime.recovery.source(self.node.name) if self.runtime.recovery else None
        if saved is None:
            return None
        self.current_watermark = saved["watermark"]
        self.stats.watermark_ms = saved["watermark"] if saved["watermark"] != NO_WATERMARK else None
        if not self.source.replayable:
            return None
        ctx.skip_rejects_through = saved["rejected"]
        self.position = saved["position"]
        if saved["position"] is not None:
            self.source.resume(saved["position"], saved["state"])
        return saved["position"]

    def _ack(self, ctx: SourceContext) -> Ack:
        step = self.node.name
        saved = {
            "position": self.position,
            "rejected": ctx.rejected_through,
            "watermark": self.current_watermark,
            "state": self.source.checkpoint_state(),
            "replayable": self.source.replayable,
        }
        shown = {
            "position": self.position,
            "at": self.origin.describe(self.position)["position"] if self.position is not None else None,
            "watermark": self.current_watermark,
            "replayable": self.source.replayable,
        }
        return Ack(states={step: encode_parts({-1: saved})}, sources={step: shown})

    def _barrier(self, barrier: Barrier, ctx: SourceContext) -> None:
        self.emit_barrier(barrier)
        self.acknowledge(barrier, self._ack(ctx))


def _skip_replayed(df: pl.DataFrame, through: int) -> tuple[pl.DataFrame, int | None]:
    """Drop rows a resumed source reads again (positions ``<= through``); once a batch starts
    after ``through``, skipping is over (``None``)."""
    positions = df.get_column(POSITION)
    if positions.min() > through:  # type: ignore[operator]
        return df, None
    return df.filter(positions > through), through


class _DeadLetterWorker(_Worker):
    """Feeds the dead-letter branch from the run's collector until the main branches end."""

    def __init__(self, runtime: LocalRuntime, node: Node) -> None:
        super().__init__(runtime, node.name)
        self.node = node
        self.stats = StepStats(node.name, "dead_letters")
        self.wake = threading.Event()
        self.closing = threading.Event()
        runtime.dead_letters.routed = True
        runtime.dead_letters.on_add(self.wake.set)

    def work(self) -> None:
        while True:
            closing = self.closing.is_set()
            self.wake.wait(_POLL)
            self.wake.clear()
            if self.runtime.abort_event.is_set():
                raise _Aborted
            # In a checkpointed run, letters of steps already past a barrier this branch has not
            # passed yet wait for it; at the end (closing) everything goes.
            before = self.passed + 1 if self.coordinator is not None and not closing else None
            frame = self._send(before)
            if self.coordinator is not None and (barrier := self.coordinator.pending(self.passed)):
                self._barrier(barrier)
                if barrier.stop:
                    return
            if frame is None and closing:
                break
        self.ended_for_checkpoints(lambda: EndedWorker(Ack()))
        self.end()

    def _send(self, before: int | None) -> pl.DataFrame | None:
        frame = self.runtime.dead_letters.drain(before)
        if frame is not None:
            self.stats.records_in = (self.stats.records_in or 0) + frame.height
            self.stats.records_out += frame.height
            self.emit(Batch(frame, Origin(self.node.name)))
        return frame

    def _barrier(self, barrier: Barrier) -> None:
        """Every letter of the steps' epochs up to ``barrier`` goes before it: wait until the
        main steps passed it (their later letters are tagged later), send theirs, then pass."""
        assert self.coordinator is not None
        if not self.coordinator.wait_passed(barrier.epoch, self.runtime.main_worker_ids):
            raise _Aborted
        self._send(barrier.epoch)
        self.emit_barrier(barrier)
        self.acknowledge(barrier, Ack())


class _StageWorker(_Worker):
    def __init__(self, runtime: LocalRuntime, stage: Stage, inbox: Channel) -> None:
        super().__init__(runtime, stage.name)
        self.stage = stage
        self.inbox = inbox
        self.producers = len(stage.producers)
        self.ops: list[Operator] = stage.operators()
        sink_node = stage.tail if stage.tail.kind == "sink" else None
        self.sink: Sink | None = sink_node.params["sink"] if sink_node else None
        self.sink_node = sink_node
        self.sink_stats = StepStats(sink_node.name, "sink") if sink_node else None
        self.union_stats = StepStats(stage.head.name, "union") if stage.head.kind == "union" else None
        self.ctx = StepContext(runtime.dead_letters)
        self.inputs = InputWatermarks(len(stage.head.inputs) if stage.head.inputs else 1)
        self.forwarded = NO_WATERMARK
        """The highest watermark this stage has sent on."""
        self.timed_ops = [op for op in self.ops if op.tick_ms is not None]
        """Operators with timers in processing time: woken when their next timer is due."""

    def work(self) -> None:
        if self.sink is not None:
            assert self.sink_node is not None
            self.step = self.sink_node.name
            self.sink.open(self.sink_node.name)
            self.runtime.recover_sink(self.sink_node.name, self.sink)
        stopped = False
        try:
            for op in self.ops:
                op.start(lambda: self.inbox.offer(_WAKE), self.runtime.abort_event)
            stopped = self._consume()
            if not stopped:
                for index, op in enumerate(self.ops):
                    flushed = op.finish(self.ctx)
                    if op.side_outputs:
                        self._route_side_outputs(op)
                    self._deliver(op, flushed, index + 1)
                self.ended_for_checkpoints(self._ended_ack)
        finally:
            for op in self.ops:
                op.close()
            self._close_sink()
        if not stopped:
            self.end()

    def _consume(self) -> bool:
        """Process the inputs until every one ended; True when a stop barrier ended the run.

        Checkpoint alignment: after an input's barrier, what that input sends next waits in
        ``held`` until the barrier has come on every input still open."""
        ended: set[int] = set()
        arrived: set[int] = set()
        aligning: Barrier | None = None
        held: collections.deque[tuple[int, Any]] = collections.deque()
        while len(ended) < self.producers:
            got = held.popleft() if held and aligning is None else self.inbox.get(self._next_timer_s())
            if got is None or got is _WAKE:
                self._tick()
                continue
            index, item = got
            if aligning is not None and index in arrived:
                held.append(got)
                continue
            if isinstance(item, Barrier):
                aligning = aligning or item
                arrived.add(index)
            elif item is _END:
                ended.add(index)
                advanced = self.inputs.end(index)
                if advanced is not None and len(ended) < self.producers:
                    # The ended input no longer holds the others back: fire what is due now,
                    # not when (if ever) another input sends something.
                    self._push(Batch(pl.DataFrame(), None, advanced), 0)
            else:
                item = self.inputs.arrive(index, item)
                if self.union_stats is not None:
                    self.union_stats.records_in += item.df.height
                    self.union_stats.records_out += item.df.height
                self._push(item, 0)
                continue
            if aligning is not None and len(arrived | ended) == self.producers:
                barrier, aligning = aligning, None
                arrived.clear()
                self._pass_barrier(barrier)
                if barrier.stop:
                    return True
        return False

    def _pass_barrier(self, barrier: Barrier) -> None:
        """Aligned on ``barrier``: drain work in flight, forward the barrier, snapshot, ack."""
        for index, op in enumerate(self.ops):
            drained = op.on_barrier(self.ctx)
            if op.side_outputs:
                self._route_side_outputs(op)
            self._deliver(op, drained, index + 1)
        sinks: dict[str, Any] = {}
        if self.sink is not None and self.sink_node is not None:
            if isinstance(self.sink, TransactionalSink):
                sinks[self.sink_node.name] = self.sink.prepare(barrier.epoch)
            else:
                self.sink.flush()
        self.emit_barrier(barrier)
        self.acknowledge(barrier, Ack(states=self._snapshot(), sinks=sinks))

    def _snapshot(self) -> dict[str, dict[int, bytes]]:
        states = snapshot_operators(self.ops)
        if self.inputs.count > 1:
            states[f"{self.stage.head.name}@inputs"] = encode_parts({-1: self.inputs.snapshot()})
        return states

    def _ended_ack(self) -> EndedWorker:
        sink = None
        if isinstance(self.sink, TransactionalSink) and self.sink_node is not None:
            sink = (self.sink_node.name, self.sink)
        return EndedWorker(Ack(states=self._snapshot()), sink=sink)

    def _next_timer_s(self) -> float | None:
        """Seconds until the earliest operator timer is due (None: no timer, wait for data)."""
        due = [t for t in (op.next_timer_s() for op in self.timed_ops) if t is not None]
        return max(0.0, min(due)) if due else None

    def _tick(self) -> None:
        for index, op in enumerate(self.ops):
            if op.tick_ms is None:
                continue
            out = op.on_tick(self.ctx)
            if op.side_outputs:
                self._route_side_outputs(op)
            self._deliver(op, out, index + 1)

    def _route_side_outputs(self, op: Operator) -> None:
        """Deliver side outputs; one nobody consumes goes to the dead letters, never nowhere."""
        outputs, op.side_outputs = op.side_outputs, {}
        for port, batches in outputs.items():
            channels = self.side_routes.get((op.step, port))
            for batch in batches:
                if channels:
                    for channel, index in channels:
                        channel.put((index, batch))
                elif port in op.counted_ports:
                    op.side_counts[port] = op.side_counts.get(port, 0) + batch.df.height
                else:
                    reason = f"{port} record of step {op.step!r}: route it with {op.step}.{port}()"
                    self.ctx.reject_rows(op.step, "dlq", UnroutedSideOutput(reason), batch.df, batch.origin)

    def _close_sink(self) -> None:
        """Close the sink even after a failure elsewhere: what it completed becomes durable.

        In a checkpointed run a transactional sink stays open: the runtime closes it after the
        last checkpoint committed it (or, after a failure, with its epoch left pending)."""
        if self.sink is None or (self.coordinator is not None and isinstance(self.sink, TransactionalSink)):
            return
        if not self.runtime.abort_event.is_set():
            self.sink.close()
            return
        try:
            self.sink.close()
        except Exception:  # the run is already failing; its first error is the one reported
            return

    def _push(self, batch: Batch, first_op: int) -> None:
        """Run ``batch`` through the ops from ``first_op`` and deliver what comes out.

        A batch without rows carries only a watermark: when a step keeps no rows of a batch, the
        watermark still moves on, so event-time steps after it fire without waiting for data.
        An operator may return several batches as they become ready (an iterator: the ``infer``
        step while it waits for its model); each goes on downstream before the next is asked for.
        """
        current = batch
        for index in range(first_op, len(self.ops)):
            op = self.ops[index]
            if current.df.height:
                result = op.process(current, self.ctx)
            elif current.watermark is not None:
                result = op.on_watermark(current.watermark, self.ctx)
            else:
                return
            if op.side_outputs:
                self._route_side_outputs(op)
            if result is not None and not isinstance(result, Batch):
                self._deliver_each(op, result, index + 1, current)
                return
            if result is None or result.df.height == 0:
                watermark = current.watermark if result is None else result.watermark
                current = Batch(pl.DataFrame(), None, watermark, current.input, current.idle_ms)
            else:
                current = result
        if current.df.height == 0:
            self._forward_watermark(current)
        elif self.sink is None:
            self.emit(current)
            if current.watermark is not None:
                self.forwarded = max(self.forwarded, current.watermark)
        else:
            self._write(current)

    def _deliver(self, op: Operator, result: Batch | Iterable[Batch] | None, next_op: int) -> None:
        """Send what an operator's ``finish`` or ``on_tick`` returned on to the ops after it."""
        if result is None:
            return
        if isinstance(result, Batch):
            self._push(result, next_op)
            return
        self._deliver_each(op, result, next_op, None)

    def _deliver_each(self, op: Operator, results: Iterable[Batch], next_op: int, source: Batch | None) -> None:
        for part in results:
            if op.side_outputs:
                self._route_side_outputs(op)
            if part.df.height == 0 and part.watermark is None:
                continue
            if source is not None and part.df.height == 0:
                part = Batch(part.df, None, part.watermark, source.input, source.idle_ms)
            self._push(part, next_op)
        if op.side_outputs:
            self._route_side_outputs(op)

    def _forward_watermark(self, batch: Batch) -> None:
        """Pass on a watermark advance without rows (only when it moved, and not to sinks)."""
        if self.sink is None and batch.watermark is not None and batch.watermark > self.forwarded:
            self.forwarded = batch.watermark
            self.emit(batch)

    def _write(self, batch: Batch) -> None:
        assert self.sink is not None and self.sink_node is not None and self.sink_stats is not None
        sink, node, stats = self.sink, self.sink_node, self.sink_stats
        stats.records_in += batch.df.height

        def write(df):  # type: ignore[no-untyped-def]
            sink.write(strip_hidden(df))
            return df

        if node.on_error == "fail" or self.ctx.strict:
            try:
                sink.write(strip_hidden(batch.df))
            except Exception as error:
                raise StepError(node.name, error) from error
            stats.records_out += batch.df.height
            return
        written, failures = isolate_failures(write, batch.df)
        stats.records_out += sum(part.height for part in written)
        for rows, error in failures:
            self.ctx.reject_rows(node.name, node.on_error, error, rows, batch.origin)


class UnroutedSideOutput(Exception):
    """A side output (late records) with no consumer: its rows become dead letters."""


class InputWatermarks:
    """Combines the watermarks of a step's inputs: the minimum, ignoring ended and idle inputs.

    For a step with one input this is the identity. With several (a union, a join), each row's
    ``_tf_wm`` becomes the minimum of its own input's watermark and the others' current ones;
    an input that ended counts as +∞, and one silent for longer than its source's ``idle``
    timeout stops holding the others back.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.watermarks = [NO_WATERMARK] * count
        self.floor = NO_WATERMARK
        """The combined watermark already handed downstream: it never goes back, even when an
        idle input resumes behind it (its records are then late, as in Flink)."""
        self.ended = [False] * count
        self.idle_ms: list[int | None] = [None] * count
        started = time.monotonic()
        self.last_seen = [started] * count

    def end(self, index: int) -> int | None:
        """Input ``index`` ended (it counts as +∞ from now on); returns the combined watermark
        if that moved it forward, else None."""
        self.ended[index] = True
        if self.count == 1 or all(self.ended):
            return None
        # The inputs still open, at the watermarks they actually reached (idleness is judged
        # when data arrives; here no input may be skipped past what it said).
        combined = min(w for w, done in zip(self.watermarks, self.ended, strict=True) if not done)
        if combined <= self.floor:
            return None
        self.floor = combined
        return combined

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint keeps: the watermarks reached and the floor handed on (idleness
        and ended inputs are facts of the run, established again after a resume)."""
        return {"watermarks": list(self.watermarks), "floor": self.floor}

    def restore(self, state: dict[str, Any]) -> None:
        if len(state["watermarks"]) != self.count:
            raise ValueError(f"the step had {len(state['watermarks'])} inputs, it has {self.count} now")
        self.watermarks = list(state["watermarks"])
        self.floor = state["floor"]

    def _effective(self, index: int, now: float) -> int:
        if self.ended[index]:
            return END_OF_TIME
        idle = self.idle_ms[index]
        if idle is not None and (now - self.last_seen[index]) * 1000 > idle:
            return END_OF_TIME
        return self.watermarks[index]

    def arrive(self, index: int, batch: Batch) -> Batch:
        batch.input = index
        if self.count == 1 or batch.watermark is None:
            return batch
        if batch.df.height == 0:
            # A watermark without rows: update this input and pass the combined watermark on.
            self.last_seen[index] = time.monotonic()
            self.watermarks[index] = max(self.watermarks[index], batch.watermark)
            others = min(
                (self._effective(i, self.last_seen[index]) for i in range(self.count) if i != index),
                default=END_OF_TIME,
            )
            self.floor = max(self.floor, min(batch.watermark, others))
            return Batch(batch.df, None, self.floor, index, batch.idle_ms)
        now = time.monotonic()
        self.last_seen[index] = now
        self.idle_ms[index] = batch.idle_ms
        self.watermarks[index] = max(self.watermarks[index], batch.watermark)
        others = min((self._effective(i, now) for i in range(self.count) if i != index), default=END_OF_TIME)
        floor = self.floor
        combined = max(floor, min(batch.watermark, others))
        self.floor = combined
        if others >= batch.watermark and floor == NO_WATERMARK:
            return batch
        row_watermark = pl.max_horizontal(
            pl.min_horizontal(pl.col(WATERMARK), pl.lit(others, pl.Int64)), pl.lit(floor, pl.Int64)
        )
        df = batch.df.with_columns(row_watermark.alias(WATERMARK))
        return Batch(df, batch.origin, combined, index, batch.idle_ms)


SWITCH_INTERVAL_S = 0.001
"""The GIL switch interval while flows run (Python's default is 5 ms).

Stages hand batches to each other through queues, and each hand-off wakes a thread that must
take the GIL back. When another thread computes in Python (a scikit-learn forest looping over
its trees, a River model), the woken thread waits up to one switch interval for it: at 5 ms,
measured on an IsolationForest ``infer`` step fed 1,024-row batches, the pipeline ran at 0.3×
the model's own speed; at 1 ms, at 1.0× (``tideflow bench inference``)."""

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def _lower_switch_interval() -> None:
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL_S))
        _switch_users += 1


def _restore_switch_interval() -> None:
    global _switch_users
    with _switch_lock:
        _switch_users -= 1
        if _switch_users == 0:
            sys.setswitchinterval(_switch_saved)


class LocalRuntime:
    """Runs one flow in this process. Use ``Flow.run``; this class is the machinery."""

    def __init__(self, flow: Flow, *, queue_size: int = 4, checkpoints: CheckpointSettings | None = None) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not any(node.kind == "source" for node in flow.nodes.values()):
            raise TideflowError(f"flow {flow.name!r} has no source; add one with flow.source(...)")
        self.flow = flow
        self.queue_size = queue_size
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.dead_letters = DeadLetters()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self.interrupted = False
        self.stages = compile_stages(flow)
        self.workers: list[_Worker] = []
        self.coordinator: Coordinator | None = None
        self.recovery: Recovery | None = None
        self.first_epoch = 1
        self.finished_before = False
        """Resumed from a checkpoint taken at the end of input: nothing is left to do."""
        self._store = None
        if checkpoints is not None:
            self._prepare_checkpoints(checkpoints)
        self._build_workers()
        if self.coordinator is not None:
            self._register_for_checkpoints()

    # -- assembly -----------------------------------------------------------------------------
    def _build_workers(self) -> None:
        worker_of: dict[int, _Worker] = {}
        inbox_of: dict[int, Channel] = {}
        for stage in self.stages:
            head = stage.head
            worker: _Worker
            if head.kind == "source":
                worker = _SourceWorker(self, head)
            elif head.kind == "dead_letters":
                worker = _DeadLetterWorker(self, head)
            else:
                inbox = Channel(self.queue_size, self.abort_event)
                inbox_of[id(stage)] = inbox
                worker = _StageWorker(self, stage, inbox)
            worker_of[id(stage)] = worker
            self.workers.append(worker)
        for consumer in self.stages:
            if id(consumer) not in inbox_of:
                continue
            inbox, head = inbox_of[id(consumer)], consumer.head
            for index, upstream in enumerate(consumer.producers):
                producer = worker_of[id(upstream)]
                if head.kind == "side":
                    key = (head.params["step"], head.params["port"])
                    producer.side_routes.setdefault(key, []).append((inbox, 0))
                else:
                    producer.outputs.append((inbox, index))
        self._dead_letter_branch = self._downstream_of_dead_letters(worker_of)
        self.main_worker_ids = {id(w) for w in self.workers if id(w) not in self._dead_letter_branch}
        if self.coordinator is not None:
            self.dead_letters.epoch_of = _current_epoch
        for worker in self.workers:
            if isinstance(worker, _StageWorker) and id(worker) in self._dead_letter_branch:
                worker.ctx.strict = True

    def _downstream_of_dead_letters(self, worker_of: dict[int, _Worker]) -> set[int]:
        roots = [s for s in self.stages if s.head.kind == "dead_letters"]
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            stage = todo.pop()
            if id(worker_of[id(stage)]) in seen:
                continue
            seen.add(id(worker_of[id(stage)]))
            todo.extend(stage.consumers)
        return seen

    # -- checkpoints --------------------------------------------------------------------------
    def _prepare_checkpoints(self, settings: CheckpointSettings) -> None:
        from .. import __version__

        store = open_store(settings.directory, settings.store)
        self._store = store
        epochs = store.epochs()
        self.first_epoch = max(epochs) + 1 if epochs else 1
        if settings.resume:
            checkpoint = store.latest()
            if checkpoint is None:
                log.info("no checkpoint in %s: starting from the beginning", settings.directory)
            elif checkpoint.flow != self.flow.name:
                raise TideflowError(
                    f"{settings.directory} holds checkpoints of flow {checkpoint.flow!r}, not {self.flow.name!r}: "
                    "give this flow a checkpoint directory of its own"
                )
            else:
                self.recovery = Recovery(checkpoint)
                self.finished_before = checkpoint.finished
        self.coordinator = Coordinator(
            store,
            flow=self.flow.name,
            every_s=settings.every_s,
            keep=settings.keep,
            first_epoch=self.first_epoch,
            meta={"tideflow": __version__, "key_groups": KEY_GROUPS},
            abort=self.abort_event,
            on_error=self.fail,
        )

    def _register_for_checkpoints(self) -> None:
        """Register every worker with the coordinator, restore state, and warn about what
        checkpoints cannot cover."""
        coordinator, recovery = self.coordinator, self.recovery
        assert coordinator is not None
        kinds: dict[str, str] = {}
        for worker in self.workers:
            coordinator.register(id(worker))
            if isinstance(worker, _SourceWorker):
                kinds[worker.node.name] = type(worker.source).__name__
                if not worker.source.replayable:
                    self._warn(
                        f"source {worker.node.name!r} ({type(worker.source).__name__}) cannot be replayed: "
                        "after a resume it goes on from where it stands, so what it produced after the last "
                        "checkpoint is not produced again"
                    )
                if recovery is not None:
                    recovery.expect_source(worker.node.name)
            if not isinstance(worker, _StageWorker):
                continue
            for op in worker.ops:
                stateful = op.snapshot_groups(KEY_GROUPS) is not None
                if stateful:
                    kinds[op.step] = type(op).__name__
                if not op.checkpointed_state:
                    self._warn(
                        f"step {op.step!r} keeps state that checkpoints do not capture "
                        "(give its function snapshot() and restore()): after a resume it starts empty"
                    )
                if recovery is not None and (stateful or op.step in recovery.checkpoint.steps):
                    recovery.restore(op.step, op.restore_groups, stateful=stateful)
            if worker.inputs.count > 1 and recovery is not None:
                recovery.restore(
                    f"{worker.stage.head.name}@inputs",
                    lambda parts, w=worker: w.inputs.restore(parts[-1]),
                    stateful=False,
                )
            if worker.sink is not None and worker.sink_node is not None:
                coordinator.register_sink(worker.sink_node.name, worker.sink)
                if not isinstance(worker.sink, TransactionalSink):
                    self._warn(
                        f"sink {worker.sink_node.name!r} ({type(worker.sink).__name__}) is not transactional: after "
                        "a resume it may write again what it wrote after the last checkpoint (at least once)"
                    )
        coordinator.meta["kinds"] = kinds
        if recovery is not None:
            recovery.warn()

    @staticmethod
    def _warn(message: str) -> None:
        log.warning(message)
        warnings.warn(message, CheckpointWarning, stacklevel=4)

    def recover_sink(self, step: str, sink: Sink) -> None:
        """In a checkpointed run, before a transactional sink's first write: settle its epochs."""
        if self.coordinator is None or not isinstance(sink, TransactionalSink):
            return
        if self.recovery is None:
            sink.recover(None, None)
        else:
            sink.recover(self.recovery.epoch, self.recovery.sink_handle(step))

    def _close_transactional_sinks(self) -> None:
        for worker in self.workers:
            if isinstance(worker, _StageWorker) and isinstance(worker.sink, TransactionalSink):
                try:
                    worker.sink.close()
                except Exception:
                    if self._failure is None:
                        raise

    # -- control ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop reading; what was read is still processed and written (``interrupted`` is set).

        In a checkpointed run the stop is a last checkpoint instead: every step stops at its
        barrier without flushing windows, so a resumed run goes on exactly from there."""
        self.interrupted = True
        if self.coordinator is not None and (self.coordinator.request_stop() or self.coordinator.stopping):
            return  # asked again: still the stop checkpoint, never a plain stop that flushes windows
        self.stop_event.set()

    def fail(self, error: BaseException) -> None:
        with self._failure_lock:
            if self._failure is None:
                self._failure = error
        self.abort_event.set()
        self.stop_event.set()

    def run(
        self,
        *,
        handle_signals: bool = True,
        on_tick: Callable[[LocalRuntime], None] | None = None,
        tick_every: float = 0.1,
    ) -> RunResult:
        if self.finished_before:
            return self._result(0.0)
        restore = self._install_signal_handler() if handle_signals else None
        started = time.perf_counter()
        _lower_switch_interval()
        try:
            for worker in self.workers:
                worker.start()
            if self.coordinator is not None:
                self.coordinator.start()
            main = [w for w in self.workers if id(w) not in self._dead_letter_branch]
            branch = [w for w in self.workers if id(w) in self._dead_letter_branch]
            self._wait(main, on_tick, tick_every)
            for worker in branch:
                if isinstance(worker, _DeadLetterWorker):
                    worker.closing.set()
                    worker.wake.set()
            self._wait(branch, on_tick, tick_every)
            self._last_checkpoint()
        finally:
            _restore_switch_interval()
            if restore is not None:
                restore()
            if self.coordinator is not None:
                self.coordinator.close()
                self._close_transactional_sinks()
                assert self._store is not None
                self._store.close()
        seconds = time.perf_counter() - started
        if self._failure is not None:
            raise self._failure
        return self._result(seconds)

    def _last_checkpoint(self) -> None:
        """Every thread ended: the stop checkpoint, or the final one, makes the rest durable."""
        if self.coordinator is None or self._failure is not None:
            return
        if self.coordinator.stopping:
            self.coordinator.wait_stopped()
        else:
            self.coordinator.finish()

    def _wait(self, workers: list[_Worker], on_tick: Callable[[LocalRuntime], None] | None, every: float) -> None:
        for worker in workers:
            while worker.is_alive():
                worker.join(every)
                if on_tick is not None:
                    on_tick(self)

    def _install_signal_handler(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stop_event.is_set():
                # A second Ctrl-C: stop now, without waiting for in-flight batches.
                self.fail(KeyboardInterrupt())
                return
            self.request_stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)

    # -- reporting ----------------------------------------------------------------------------
    def progress(self) -> list[tuple[str, int, int | None, str]]:
        """``(source step, done, total, unit)`` for each source, for progress displays."""
        out = []
        for worker in self.workers:
            if isinstance(worker, _SourceWorker):
                done, total = worker.source.progress()
                out.append((worker.node.name, done, total, worker.source.progress_unit))
        return out

    def records_read(self) -> int:
        return sum(w.stats.records_out for w in self.workers if isinstance(w, _SourceWorker))

    def step_stats(self) -> list[StepStats]:
        stats: list[StepStats] = []
        counts = self.dead_letters.counts
        for worker in self.workers:
            if isinstance(worker, _SourceWorker | _DeadLetterWorker):
                worker.stats.dead_letters = counts.get(worker.stats.step, 0)
                if isinstance(worker, _SourceWorker):
                    worker.stats.records_in = worker.stats.records_out + worker.stats.dead_letters
                stats.append(worker.stats)
            elif isinstance(worker, _StageWorker):
                if worker.union_stats is not None:
                    stats.append(worker.union_stats)
                for op in worker.ops:
                    names = op.steps
                    fused_with = names[0] if len(names) > 1 else None
                    chain = [
                        StepStats(
                            step,
                            self.flow.nodes[step].kind,
                            records_in=op.records_in if i == 0 else None,
                            records_out=op.records_out if i == len(names) - 1 else None,
                            dead_letters=counts.get(step, 0),
                            fused_with=fused_with,
                            state_size=op.state_size() if len(names) == 1 and op.state_size() else None,
                            dropped=dict(op.side_counts) if op.side_counts else None,
                            metrics=op.metrics() if len(names) == 1 else None,
                        )
                        for i, step in enumerate(names)
                    ]
                    stats.extend(chain)
                if worker.sink_stats is not None:
                    worker.sink_stats.dead_letters = counts.get(worker.sink_stats.step, 0)
                    stats.append(worker.sink_stats)
        return stats

    def _result(self, seconds: float) -> RunResult:
        steps = self.step_stats()
        sources = [s for s in steps if s.kind == "source"]
        sinks = [s for s in steps if s.kind == "sink"]
        dlq_branch_sinks = {
            w.sink_stats.step
            for w in self.workers
            if isinstance(w, _StageWorker) and w.sink_stats is not None and id(w) in self._dead_letter_branch
        }
        return RunResult(
            flow=self.flow.name,
            seconds=seconds,
            records_in=sum(s.records_in or 0 for s in sources),
            records_out=sum(s.records_out or 0 for s in sinks if s.step not in dlq_branch_sinks),
            dead_letters=self.dead_letters.total,
            steps=steps,
            interrupted=self.interrupted,
            dead_letter_samples=self.dead_letters.kept[:100],
            checkpoints=self.coordinator.stats.to_dict() if self.coordinator is not None else None,
            recovery=self._recovery_report(),
        )

    def _recovery_report(self) -> dict[str, Any] | None:
        if self.recovery is None:
            return None
        report = self.recovery.report()
        if self.finished_before:
            report["finished_before"] = True
        return report
