"""Model workers: where model calls run, off the pipeline's own thread.

Threads serve runtimes that release the GIL while they compute (ONNX Runtime, PyTorch,
scikit-learn's compiled code): the step's thread keeps batching and emitting while a worker
runs the model. Processes serve Python-heavy models (River), which would otherwise hold the GIL
against the whole pipeline; their batches travel as Arrow IPC.

Every worker loads each model *generation* once. A generation is one model version: when the
registry promotes a new version, the step asks the pool to load it in the background and only
sends it batches once every worker has it, so serving never pauses for a load (for process
workers, a load queues behind the batches already sent to that process).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import queue
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..errors import InfrastructureError
from .base import ModelHandler, as_columns, is_size_failure, resolve_device

_POLL_S = 0.05


class RemoteModelError(Exception):
    """A model error raised in a worker process, carried back by name and message."""


@dataclass
class Outcome:
    """What a model call on a batch produced: output columns for the rows that worked, by
    (offset, length) into the batch, and the row ranges that failed even alone, with errors."""

    pieces: list[tuple[int, int, pl.DataFrame]] = field(default_factory=list)
    failures: list[tuple[int, int, BaseException]] = field(default_factory=list)
    splits: int = 0
    """How many times a batch was halved because it was too big."""
    smallest_failed_size: int | None = None
    """The smallest batch size that failed for its size (the step caps later batches below it)."""


def load_warm(handler: ModelHandler[Any], device: str) -> tuple[Any, bool]:
    """Load the model and warm it up on the handler's example; returns ``(model, warm)``."""
    model = handler.load(resolve_device(device, handler.frameworks))
    sample = handler.example(model)
    if sample is None:
        return model, False
    warm_up(handler, model, sample)
    return model, True


def warm_up(handler: ModelHandler[Any], model: Any, sample: pl.DataFrame) -> None:
    """Run the model once, ignoring failures: a model that cannot take this sample will fail
    on real rows too, where the failure is accounted for (dead letters), not here."""
    with contextlib.suppress(Exception):
        handler.warmup(model, sample)


def predict_with_fallback(
    handler: ModelHandler[Any], model: Any, inputs: pl.DataFrame, outputs: list[str], split_all: bool = True
) -> Outcome:
    """Run the model on ``inputs``; on failure, halve and retry until single rows remain.

    A batch that failed *for its size* (out of memory) is retried in halves and reported, so the
    step cuts smaller batches from then on. Any other failure is bisected too, to find the rows
    that cause it: they fail alone and go to the dead letters; every other row is scored.
    """
    outcome = Outcome()

    def attempt(offset: int, part: pl.DataFrame) -> None:
        try:
            predictions = handler.predict_batch(model, part)
            columns = as_columns(predictions, outputs, part.height)
        except InfrastructureError:
            raise
        except Exception as error:
            too_big = is_size_failure(error)
            if part.height == 1 or not (too_big or split_all):
                outcome.failures.append((offset, part.height, error))
                return
            if too_big:
                outcome.splits += 1
                smallest = outcome.smallest_failed_size
                outcome.smallest_failed_size = part.height if smallest is None else min(smallest, part.height)
            middle = part.height // 2
            attempt(offset, part.slice(0, middle))
            attempt(offset + middle, part.slice(middle))
            return
        outcome.pieces.append((offset, part.height, pl.DataFrame(list(columns.values()))))

    attempt(0, inputs)
    return outcome


@dataclass
class Job:
    """One model batch on its way through the pool."""

    id: int
    generation: int
    inputs: pl.DataFrame
    payload: Any
    """Whatever the step needs back with the outcome (the full rows); the pool does not touch it."""
    submitted: float = 0.0


@dataclass
class Done:
    job: Job
    outcome: Outcome
    label: str
    started: float
    finished: float
    error: BaseException | None = None
    """A failure of the worker itself (not of rows): the step stops the run with it."""


class Worker(ABC):
    """A model slot: loads generations and runs jobs. Subclasses decide where the model lives."""

    def __init__(self, device: str, outputs: list[str], split_all: bool) -> None:
        self.device = device
        self.outputs = outputs
        self.split_all = split_all
        self.labels: dict[int, str] = {}
        self._lock = threading.Lock()

    def ensure(self, generation: int, handler: ModelHandler[Any]) -> None:
        """Load ``generation`` unless this worker has it (safe to call from any thread)."""
        with self._lock:
            if generation not in self.labels:
                self._load(generation, handler)
                self.labels[generation] = handler.version

    def drop(self, generation: int) -> None:
        with self._lock:
            if self.labels.pop(generation, None) is not None:
                self._drop(generation)

    def run(self, job: Job) -> Outcome:
        with self._lock:
            return self._run(job)

    @abstractmethod
    def _load(self, generation: int, handler: ModelHandler[Any]) -> None:
        """Build and keep the live model of ``generation`` (called under the worker's lock)."""

    @abstractmethod
    def _drop(self, generation: int) -> None:
        """Free ``generation``'s model."""

    @abstractmethod
    def _run(self, job: Job) -> Outcome:
        """Run the job's model batch on its generation's model."""

    def close(self) -> None:
        """Release the worker's resources."""


class ThreadWorker(Worker):
    """The model lives in this process; a pool thread calls it."""

    def __init__(self, device: str, outputs: list[str], split_all: bool) -> None:
        super().__init__(device, outputs, split_all)
        self.models: dict[int, tuple[ModelHandler[Any], Any]] = {}
        self.cold: set[int] = set()
        """Generations whose handler had no example: warmed up on the first batch's first row."""

    def _load(self, generation: int, handler: ModelHandler[Any]) -> None:
        model, warm = load_warm(handler, self.device)
        self.models[generation] = (handler, model)
        if not warm:
            self.cold.add(generation)

    def _drop(self, generation: int) -> None:
        self.models.pop(generation, None)
        self.cold.discard(generation)

    def _run(self, job: Job) -> Outcome:
        handler, model = self.models[job.generation]
        if job.generation in self.cold:
            self.cold.discard(job.generation)
            warm_up(handler, model, job.inputs.head(1))
        return predict_with_fallback(handler, model, job.inputs, self.outputs, self.split_all)


class ProcessWorker(Worker):
    """The model lives in a child process (spawned: no fork of a threaded parent)."""

    def __init__(self, device: str, outputs: list[str], split_all: bool) -> None:
        super().__init__(device, outputs, split_all)
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child, device, outputs, split_all), name="tideflow-model", daemon=True
        )
        self._process.start()
        child.close()

    def _call(self, message: tuple[Any, ...]) -> Any:
        # The handler and batches cross as pickles: our own objects, to our own child process.
        self._conn.send(message)
        reply = self._conn.recv()
        if reply[0] == "crash":
            raise InfrastructureError(f"model worker process failed: {reply[1]}")
        return reply[1]

    def _load(self, generation: int, handler: ModelHandler[Any]) -> None:
        self._call(("load", generation, handler))

    def _drop(self, generation: int) -> None:
        self._call(("drop", generation))

    def _run(self, job: Job) -> Outcome:
        pieces, failures, splits, smallest = self._call(("run", job.generation, _ipc_bytes(job.inputs)))
        return Outcome(
            [(offset, length, pl.read_ipc(data)) for offset, length, data in pieces],
            [(offset, length, RemoteModelError(text)) for offset, length, text in failures],
            splits,
            smallest,
        )

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self._conn.send(("stop",))
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _ipc_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return buffer.getvalue()


def _child_main(conn: Any, device: str, outputs: list[str], split_all: bool) -> None:
    """A model process: load generations, run batches, reply; until told to stop."""
    models: dict[int, tuple[ModelHandler[Any], Any]] = {}
    cold: set[int] = set()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        kind = message[0]
        try:
            if kind == "stop":
                return
            if kind == "load":
                _, generation, handler = message
                model, warm = load_warm(handler, device)
                models[generation] = (handler, model)
                if not warm:
                    cold.add(generation)
                conn.send(("ok", None))
            elif kind == "drop":
                models.pop(message[1], None)
                conn.send(("ok", None))
            elif kind == "run":
                _, generation, data = message
                handler, model = models[generation]
                inputs = pl.read_ipc(data)
                if generation in cold:
                    cold.discard(generation)
                    warm_up(handler, model, inputs.head(1))
                outcome = predict_with_fallback(handler, model, inputs, outputs, split_all)
                pieces = [(offset, length, _ipc_bytes(frame)) for offset, length, frame in outcome.pieces]
                failures = [
                    (offset, length, f"{type(error).__name__}: {error}") for offset, length, error in outcome.failures
                ]
                conn.send(("ok", (pieces, failures, outcome.splits, outcome.smallest_failed_size)))
        except Exception:
            conn.send(("crash", traceback.format_exc(limit=5)))


class ModelPool:
    """Runs jobs on ``workers`` model slots, at most ``max_in_flight`` at a time.

    ``submit`` blocks while the pool is full: that is the step's backpressure. Finished jobs
    wait in ``results`` for the step's thread, which is woken by ``on_done``.
    """

    def __init__(
        self,
        *,
        workers: int,
        concurrency: str,
        device: str,
        outputs: list[str],
        max_in_flight: int,
        split_all: bool,
        on_done: Callable[[], None],
        abort: threading.Event,
    ) -> None:
        worker_type = ProcessWorker if concurrency == "process" else ThreadWorker
        self.workers: list[Worker] = [worker_type(device, outputs, split_all) for _ in range(workers)]
        self.results: queue.Queue[Done] = queue.Queue()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._on_done = on_done
        self._abort = abort
        self._handlers: dict[int, ModelHandler[Any]] = {}
        self._ready: dict[int, threading.Event] = {}
        self._load_errors: dict[int, BaseException] = {}
        self.ready_at: dict[int, float] = {}
        """When each generation finished loading (monotonic): waiting for a load is not queueing."""
        self._threads = [
            threading.Thread(target=self._serve, args=(worker,), name=f"tideflow-model-{i}", daemon=True)
            for i, worker in enumerate(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- generations ------------------------------------------------------------------------
    def load(self, generation: int, handler: ModelHandler[Any], *, wait: bool) -> None:
        """Load ``generation`` in every worker, in the background unless ``wait``."""
        self._handlers[generation] = handler
        ready = self._ready[generation] = threading.Event()

        def load_everywhere() -> None:
            try:
                for worker in self.workers:
                    worker.ensure(generation, handler)
            except BaseException as error:
                self._load_errors[generation] = error
            finally:
                self.ready_at[generation] = time.monotonic()
                ready.set()
                self._on_done()  # the step swaps at once, even while no data comes

        if wait:
            load_everywhere()
        else:
            threading.Thread(target=load_everywhere, name=f"tideflow-model-load-{generation}", daemon=True).start()

    def ready(self, generation: int) -> bool:
        """Whether ``generation`` is loaded everywhere; raises if loading it failed."""
        event = self._ready.get(generation)
        if event is None or not event.is_set():
            return False
        error = self._load_errors.get(generation)
        if error is not None:
            raise error
        return True

    def retire(self, generation: int) -> None:
        """Free a generation no batch will use any more."""
        self._handlers.pop(generation, None)
        for worker in self.workers:
            worker.drop(generation)

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        while not self._slots.acquire(timeout=_POLL_S):
            if self._abort.is_set():
                raise InfrastructureError("the run was aborted while a model batch waited for a worker")
        job.submitted = time.monotonic()
        self._jobs.put(job)

    def _serve(self, worker: Worker) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            started = time.monotonic()
            try:
                worker.ensure(job.generation, self._handlers[job.generation])
                outcome = worker.run(job)
                done = Done(job, outcome, worker.labels[job.generation], started, time.monotonic())
            except BaseException as error:
                done = Done(job, Outcome(), "", started, time.monotonic(), error)
            self.results.put(done)
            self._slots.release()
            self._on_done()

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        for worker in self.workers:
            worker.close()
