"""Aligned checkpoints for the embedded runtime: barriers, acknowledgements, commit.

How a checkpoint is taken (Chandy-Lamport with alignment, as in Flink):

1. Every ``every`` seconds the coordinator asks for epoch ``e``. Each source, between two
   batches, records its position and sends a :class:`Barrier` on every output.
2. A step with several inputs holds back what arrives on an input after that input's barrier
   until the barrier has come on every open input (alignment). Then it drains work in flight
   (``Operator.on_barrier``), snapshots its operators, forwards the barrier and acknowledges.
   A sink step pre-commits its epoch (``TransactionalSink.prepare``).
3. When every worker has acknowledged ``e``, a background thread writes one checkpoint (state,
   source positions, sink handles) to the store atomically, and only then tells the sinks to
   commit ``e``. A crash between the two is repaired on resume: ``recover`` commits again.

Workers that already ended (a source at the end of its files, a branch that finished) are
acknowledged with what they held when they ended. A stop request (Ctrl-C, ``flow.stop()``)
becomes a last barrier after which every step stops without flushing its windows: the run can
be resumed exactly where it stood. At the natural end of input a final checkpoint marked
``finished`` commits the rest; resuming a finished run does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._duration import Duration, to_seconds
from ..checkpoint.store import Checkpoint, CheckpointStore, SaveReport
from ..io.base import Sink, TransactionalSink

log = logging.getLogger("tideflow.checkpoint")


@dataclass
class CheckpointSettings:
    """How a run checkpoints: where, how often, how many to keep, and whether to resume."""

    directory: str | os.PathLike[str]
    every: Duration = "1s"
    keep: int = 3
    """Checkpoints kept (the newest); older ones are deleted after each new one. 0 keeps all."""
    resume: bool = False
    """Start from the newest valid checkpoint in ``directory`` (none there: from the start)."""
    store: Literal["sqlite", "files"] | None = None
    """The store kind for a new directory (default SQLite); an existing one keeps its kind."""

    def __post_init__(self) -> None:
        self.every_s = to_seconds(self.every, what="checkpoint_every")
        if self.every_s <= 0:
            raise ValueError("checkpoint_every must be positive")
        if self.keep < 0:
            raise ValueError("keep_checkpoints must be 0 (keep all) or more")


@dataclass(frozen=True)
class Barrier:
    """Flows between stages: everything before it belongs to epoch ``epoch`` or earlier."""

    epoch: int
    stop: bool = False
    """A stop-with-checkpoint: steps stop after it instead of going on."""


@dataclass
class Ack:
    """What one worker contributes to a checkpoint."""

    states: dict[str, dict[int, bytes]] = field(default_factory=dict)
    """Encoded state by step name and key group."""
    sources: dict[str, Any] = field(default_factory=dict)
    """JSON-able position data by source step, for display."""
    sinks: dict[str, Any] = field(default_factory=dict)
    """Prepared sink handles by sink step."""


@dataclass
class EndedWorker:
    """A worker that will send no more barriers: how to acknowledge it from now on."""

    ack: Ack
    sink: tuple[str, TransactionalSink] | None = None
    """A transactional sink whose worker ended: the coordinator prepares its epochs itself."""


@dataclass
class CheckpointStats:
    """Figures about the checkpoints of one run, for the run summary and benchmarks."""

    completed: int = 0
    last_epoch: int | None = None
    resumed_from: int | None = None
    seconds: list[float] = field(default_factory=list)
    """Trigger to durable, per checkpoint."""
    save_seconds: list[float] = field(default_factory=list)
    bytes_total: list[int] = field(default_factory=list)
    bytes_written: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def median(values: list[float] | list[int]) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return float(ordered[len(ordered) // 2])

        return {
            "completed": self.completed,
            "last_epoch": self.last_epoch,
            "resumed_from": self.resumed_from,
            "median_seconds": median(self.seconds),
            "median_save_seconds": median(self.save_seconds),
            "last_bytes": self.bytes_total[-1] if self.bytes_total else None,
            "median_bytes": median(self.bytes_total),
            "median_bytes_written": median(self.bytes_written),
        }


class Coordinator:
    """Triggers epochs, gathers acknowledgements, writes checkpoints and commits sinks.

    Workers register by id before the run starts. Thread safety: every method may be called
    from any worker thread; one lock guards the epoch bookkeeping, and saving happens on the
    coordinator's own thread so that no worker waits for the disk.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        flow: str,
        every_s: float,
        keep: int,
        first_epoch: int,
        meta: dict[str, Any],
        abort: threading.Event,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.store = store
        self.flow = flow
        self.every_s = every_s
        self.keep = keep
        self.meta = meta
        self.abort = abort
        self.on_error = on_error
        self.stats = CheckpointStats()
        self._lock = threading.Condition()
        self._workers: set[int] = set()
        self._ended: dict[int, EndedWorker] = {}
        self._sinks: dict[str, TransactionalSink] = {}
        self.requested = Barrier(first_epoch - 1)
        """The latest barrier asked for; workers compare its epoch with the last they passed."""
        self._acks: dict[int, Ack] = {}
        self._triggered_at = 0.0
        self._in_flight: Barrier | None = None
        self._final = False
        self._final_epoch: int | None = None
        self._stopped = False
        self._closing = threading.Event()
        self._durable_epoch = first_epoch - 1
        self._thread = threading.Thread(target=self._loop, name="tideflow:checkpoints", daemon=True)

    # -- set-up -------------------------------------------------------------------------------
    def register(self, worker_id: int) -> None:
        self._workers.add(worker_id)

    def register_sink(self, step: str, sink: Sink) -> None:
        if isinstance(sink, TransactionalSink):
            self._sinks[step] = sink

    def start(self) -> None:
        self._triggered_at = time.monotonic()
        self._thread.start()

    # -- worker side --------------------------------------------------------------------------
    def pending(self, passed: int) -> Barrier | None:
        """The barrier a worker that passed epoch ``passed`` must emit now, if any."""
        barrier = self.requested
        return barrier if barrier.epoch > passed else None

    def ack(self, worker_id: int, epoch: int, ack: Ack) -> None:
        with self._lock:
            if self._in_flight is None or self._in_flight.epoch != epoch:
                return  # a barrier of an abandoned checkpoint
            self._acks[worker_id] = ack
            self._lock.notify_all()

    def wait_passed(self, epoch: int, worker_ids: set[int]) -> bool:
        """Block until every worker of ``worker_ids`` acknowledged ``epoch`` or ended; False
        when the run is torn down first. The dead-letter branch waits so, to put every letter
        of the steps' epoch ``epoch`` before its barrier."""
        with self._lock:
            while True:
                if self._closing.is_set() or self.abort.is_set():
                    return False
                in_flight = self._in_flight is not None and self._in_flight.epoch == epoch
                if not in_flight or all(w in self._acks or w in self._ended for w in worker_ids):
                    return True
                self._lock.wait(0.05)

    def ended(self, worker_id: int, ended: EndedWorker) -> None:
        """A worker sends nothing more: from now on it is acknowledged with ``ended.ack``.

        It need not pass a barrier asked for while it was ending: its END follows everything
        it sent, and a step downstream counts an ended input as aligned, so the state it ended
        with is consistent with what is downstream of it."""
        with self._lock:
            self._ended[worker_id] = ended
            if self._in_flight is not None and worker_id not in self._acks:
                self._acks[worker_id] = self._ended_ack(ended, self._in_flight.epoch)
                self._lock.notify_all()

    def _ended_ack(self, ended: EndedWorker, epoch: int) -> Ack:
        if ended.sink is None:
            return ended.ack
        step, sink = ended.sink
        return Ack(ended.ack.states, ended.ack.sources, {step: sink.prepare(epoch)})

    # -- control ------------------------------------------------------------------------------
    def request_stop(self) -> bool:
        """Ask for a stop-with-checkpoint; False when one cannot be taken (the run ended)."""
        with self._lock:
            if self._final or self._stopped:
                return False
            self._stopped = True
            self._lock.notify_all()
            return True

    @property
    def stopping(self) -> bool:
        return self._stopped

    def finish(self, timeout: float | None = None) -> None:
        """Every worker ended normally: take the final checkpoint (``finished``) and commit."""
        with self._lock:
            self._final = True
            self._lock.notify_all()
        self._thread.join(timeout)

    def close(self) -> None:
        """Stop the coordinator without another checkpoint (the run failed or stopped)."""
        with self._lock:
            self._closing.set()
            self._lock.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def wait_stopped(self) -> None:
        """After a stop request and the workers' exit: wait until the stop checkpoint is saved."""
        self._thread.join()

    # -- the coordinator's thread -----------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                barrier = self._next_barrier()
                if barrier is None:
                    return
                if not self._gather(barrier):
                    return
                self._save(barrier)
                if barrier.stop or self._final_barrier(barrier):
                    return
        except BaseException as error:
            log.exception("checkpoint failed")
            self.on_error(error)

    def _final_barrier(self, barrier: Barrier) -> bool:
        return barrier.epoch == self._final_epoch

    def _next_barrier(self) -> Barrier | None:
        with self._lock:
            while True:
                if self._closing.is_set() or self.abort.is_set():
                    return None
                all_ended = len(self._ended) == len(self._workers)
                if all_ended:
                    if self._final or self._stopped:
                        self._final_epoch = self.requested.epoch + 1
                        return self._trigger(Barrier(self._final_epoch))
                    self._lock.wait(0.05)  # the runtime calls finish() once its threads joined
                    continue
                if self._stopped:
                    return self._trigger(Barrier(self.requested.epoch + 1, stop=True))
                now = time.monotonic()
                due = self._triggered_at + self.every_s
                if now >= due:
                    return self._trigger(Barrier(self.requested.epoch + 1))
                self._lock.wait(due - now)

    def _trigger(self, barrier: Barrier) -> Barrier:
        """Under the lock: publish ``barrier``; ended workers acknowledge at once."""
        self._triggered_at = time.monotonic()
        self._in_flight = barrier
        self.requested = barrier
        self._acks = {wid: self._ended_ack(ended, barrier.epoch) for wid, ended in self._ended.items()}
        return barrier

    def _gather(self, barrier: Barrier) -> bool:
        """Wait for every worker's acknowledgement; False when the run is being torn down."""
        with self._lock:
            while len(self._acks) < len(self._workers):
                if self._closing.is_set() or self.abort.is_set():
                    return False
                self._lock.wait(0.05)
            return True

    def _save(self, barrier: Barrier) -> None:
        with self._lock:
            acks = list(self._acks.values())
            self._acks = {}
            self._in_flight = None  # complete: a worker ending now is acknowledged in the next one
        checkpoint = Checkpoint(
            epoch=barrier.epoch,
            flow=self.flow,
            created=time.time(),
            finished=self._final_barrier(barrier),
            sources={k: v for ack in acks for k, v in ack.sources.items()},
            sinks={k: v for ack in acks for k, v in ack.sinks.items()},
            steps={k: v for ack in acks for k, v in ack.states.items()},
            meta=self.meta | {"stop": barrier.stop},
        )
        started = time.monotonic()
        report: SaveReport = self.store.save(checkpoint)
        saved = time.monotonic()
        if self.keep:
            self.store.retain(self.keep)
        for sink in self._sinks.values():
            sink.commit(barrier.epoch)
        with self._lock:
            self._durable_epoch = barrier.epoch
            self._lock.notify_all()
        self.stats.completed += 1
        self.stats.last_epoch = barrier.epoch
        self.stats.seconds.append(saved - self._triggered_at)
        self.stats.save_seconds.append(saved - started)
        self.stats.bytes_total.append(report.bytes_total)
        self.stats.bytes_written.append(report.bytes_written)

    @property
    def durable_epoch(self) -> int:
        return self._durable_epoch
