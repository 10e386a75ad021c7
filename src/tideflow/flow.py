"""Flow and Stream: the builder for a logical dataflow graph of named steps.

A ``Flow`` owns the graph; a ``Stream`` is a handle on one step's output. Every operator takes
a step name first: names are the stable ids of state, metrics and dead letters, so they must be
unique within a flow (a duplicate is an error at build time, not a surprise at run time).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from ._duration import to_seconds
from .errors import FlowDefinitionError
from .io.base import Sink, Source
from .ops.base import ON_ERROR_CHOICES, OnError, Operator

if TYPE_CHECKING:
    from ._duration import Duration
    from .runtime.local import RunResult
    from .time.watermarks import WatermarkStrategy
    from .time.windows import WindowAssigner
    from .windowing import WindowedStream

DEAD_LETTERS_STEP = "(dead letters)"
"""Name of the built-in dead-letter stream; brackets keep it clear of names users choose."""

NodeKind = Literal[
    "source", "dead_letters", "expr", "record", "map_batches", "branch", "branch_side", "union", "sink", "op", "side"
]


@dataclass(eq=False)
class Node:
    """One logical step of the graph."""

    name: str
    kind: NodeKind
    inputs: list[Node]
    on_error: OnError
    params: dict[str, Any] = field(default_factory=dict)
    consumers: list[Node] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind})"


class Flow:
    """A named dataflow. Build it with ``source`` and ``Stream`` operators, then ``run`` it.

    ``on_error`` is the flow-wide policy for bad records (``"dlq"``: send to dead letters and keep
    going; ``"fail"``: stop the run with an error naming the step); a step may override it.
    """

    def __init__(self, name: str, *, on_error: OnError = "dlq") -> None:
        _check_on_error(on_error)
        self.name = name
        self.on_error: OnError = on_error
        self.nodes: dict[str, Node] = {}
        self._dead_letters: Stream | None = None
        self._runtime: Any = None

    # -- building -----------------------------------------------------------------------------
    def _add(self, name: str, node_kind: NodeKind, inputs: list[Node], on_error: OnError | None, **params: Any) -> Node:
        if not isinstance(name, str) or not name:
            raise FlowDefinitionError(f"a step name must be a non-empty string, got {name!r}")
        if name in self.nodes:
            raise FlowDefinitionError(
                f"flow {self.name!r} already has a step named {name!r}; step names must be unique "
                "because they identify state, metrics and dead letters"
            )
        if on_error is not None:
            _check_on_error(on_error)
        node = Node(name, node_kind, inputs, on_error or self.on_error, params)
        for parent in inputs:
            parent.consumers.append(node)
        self.nodes[name] = node
        return node

    def source(self, step: str, source: Source, *, watermark: WatermarkStrategy | None = None) -> Stream:
        """Add a source; returns its stream. ``watermark`` sets how event time advances."""
        if not isinstance(source, Source):
            raise FlowDefinitionError(
                f"source {step!r}: expected a tideflow source (e.g. tdf.io.CsvSource), got {type(source).__name__}"
            )
        if watermark is not None and source.time is None:
            raise FlowDefinitionError(f"source {step!r}: a watermark needs an event-time column; pass time=...")
        node = self._add(step, "source", [], None, source=source, watermark=watermark)
        return Stream(self, node, time=source.time, watermarked=watermark is not None)

    def dead_letters(self) -> Stream:
        """The stream of dead letters of every step (columns: step, error, payload, source, ...)."""
        if self._dead_letters is None:
            node = self._add(DEAD_LETTERS_STEP, "dead_letters", [], "fail")
            self._dead_letters = Stream(self, node)
        return self._dead_letters

    # -- running ------------------------------------------------------------------------------
    def run(
        self,
        *,
        queue_size: int = 4,
        handle_signals: bool = True,
        on_tick: Callable[[Any], None] | None = None,
        tick_every: float = 0.1,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: Duration = "1s",
        keep_checkpoints: int = 3,
        resume: bool = False,
        checkpoint_store: Literal["sqlite", "files"] | None = None,
    ) -> RunResult:
        """Run embedded until bounded inputs are exhausted (or ``stop()``/Ctrl-C); see RunResult.

        ``queue_size`` bounds the batches waiting between two stages (backpressure);
        ``on_tick`` is called from the calling thread while the flow runs (progress display).

        With ``checkpoint_dir`` the run takes an aligned checkpoint every ``checkpoint_every``
        (state of every step, source positions, sink epochs; the newest ``keep_checkpoints`` are
        kept) and transactional sinks write exactly once; ``resume=True`` continues from the
        newest valid checkpoint there. See docs/recovery.md.
        """
        from .runtime.checkpointing import CheckpointSettings
        from .runtime.local import LocalRuntime

        settings = None
        if checkpoint_dir is not None:
            settings = CheckpointSettings(
                checkpoint_dir, every=checkpoint_every, keep=keep_checkpoints, resume=resume, store=checkpoint_store
            )
        elif resume:
            raise ValueError("resume=True needs checkpoint_dir= (where the checkpoints are)")
        runtime = LocalRuntime(self, queue_size=queue_size, checkpoints=settings)
        self._runtime = runtime
        return runtime.run(handle_signals=handle_signals, on_tick=on_tick, tick_every=tick_every)

    def stop(self) -> None:
        """Ask a running flow to stop: sources stop reading, in-flight batches finish, sinks flush."""
        if self._runtime is not None:
            self._runtime.request_stop()

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={list(self.nodes)})"


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise FlowDefinitionError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


class Stream:
    """The output of one step. Operators return new streams; the graph lives in the flow."""

    def __init__(
        self,
        flow: Flow,
        node: Node,
        *,
        time: str | None = None,
        key: list[str] | None = None,
        watermarked: bool = False,
    ) -> None:
        self.flow = flow
        self.node = node
        self.time = time
        """The event-time column, if the stream has one."""
        self.key = key
        """Key columns set by ``key_by`` for the keyed operators that follow."""
        self.watermarked = watermarked
        """Whether rows carry a watermark (their source was given ``watermark=``)."""

    @property
    def name(self) -> str:
        return self.node.name

    def _then(self, step: str, node_kind: NodeKind, on_error: OnError | None, **params: Any) -> Stream:
        node = self.flow._add(step, node_kind, [self.node], on_error, **params)
        return Stream(self.flow, node, time=self.time, key=self.key, watermarked=self.watermarked)

    def _operator(
        self,
        step: str,
        factory: Callable[[], Operator],
        *,
        on_error: OnError | None = None,
        others: Sequence[Stream] = (),
        requires_watermark: bool = False,
        time: str | object | None = ...,
        key: list[str] | object | None = ...,
    ) -> Stream:
        """Add a step run by the operator ``factory()`` builds (once per run), fed by this stream
        and ``others`` (input 0, 1, ...). For the modules that define operators (windows, state,
        joins): the planner needs no change to run a new operator."""
        inputs = [self, *others]
        for other in others:
            if other.flow is not self.flow:
                raise FlowDefinitionError(f"step {step!r}: stream {other.name!r} belongs to another flow")
        if requires_watermark:
            for stream in inputs:
                if stream.time is None or not stream.watermarked:
                    raise FlowDefinitionError(
                        f"step {step!r} works in event time, but its input {stream.name!r} has "
                        + ("no event-time column" if stream.time is None else "no watermark")
                        + "; give its source time=... and watermark=tdf.BoundedOutOfOrder('5s')"
                    )
        node = self.flow._add(step, "op", [s.node for s in inputs], on_error, factory=factory)
        return Stream(
            self.flow,
            node,
            time=self.time if time is ... else time,  # type: ignore[arg-type]
            key=self.key if key is ... else key,  # type: ignore[arg-type]
            watermarked=all(s.watermarked for s in inputs),
        )

    def _side(self, port: str, *, time: str | None = None) -> Stream:
        """The stream of this step's side output ``port`` (one per step and port)."""
        name = f"{self.name}.{port}"
        existing = self.flow.nodes.get(name)
        if existing is not None and existing.kind == "side":
            return Stream(self.flow, existing, time=time or self.time, watermarked=self.watermarked)
        node = self.flow._add(name, "side", [self.node], "fail", step=self.name, port=port)
        return Stream(self.flow, node, time=time or self.time, watermarked=self.watermarked)

    # -- per-record operators -----------------------------------------------------------------
    def map(
        self, step: str, fn: Callable[[dict[str, Any]], dict[str, Any]], *, on_error: OnError | None = None
    ) -> Stream:
        """Apply ``fn(record) -> record`` to every record."""
        _check_callable(step, fn)
        return self._then(step, "record", on_error, kind="map", fn=fn)

    def filter(
        self, step: str, predicate: pl.Expr | Callable[[dict[str, Any]], bool], *, on_error: OnError | None = None
    ) -> Stream:
        """Keep the records for which ``predicate`` holds: a polars expression or a function."""
        if isinstance(predicate, pl.Expr):
            return self._then(step, "expr", on_error, kind="filter", exprs=[predicate], named={})
        _check_callable(step, predicate)
        return self._then(step, "record", on_error, kind="filter", fn=predicate)

    def flat_map(
        self,
        step: str,
        fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]] | None],
        *,
        on_error: OnError | None = None,
    ) -> Stream:
        """Replace each record by the zero or more records ``fn`` returns."""
        _check_callable(step, fn)
        return self._then(step, "record", on_error, kind="flat_map", fn=fn)

    # -- columnar operators -------------------------------------------------------------------
    def map_batches(
        self,
        step: str,
        fn: Callable[[Any], Any],
        *,
        format: Literal["polars", "arrow"] = "polars",
        same_rows: bool | None = None,
        stateful: bool = False,
        on_error: OnError | None = None,
    ) -> Stream:
        """Apply ``fn`` to whole batches (a polars DataFrame, or an Arrow table with format="arrow").

        The function should treat rows independently: on an error the engine bisects the batch
        to find the failing rows and sends only those to dead letters. ``same_rows``: whether
        output row i is input row i (which keeps its source position and watermark). ``None``
        assumes so when the row count is unchanged; pass ``False`` for a function that reshapes
        rows (one output per group, say), ``True`` to have a changed count raise. ``stateful``:
        the function keeps state across batches (a detector learning each series), so a failing
        batch is not bisected and retried (that would feed it rows twice): all its rows fail.
        """
        _check_callable(step, fn)
        return self._then(step, "map_batches", on_error, fn=fn, format=format, same_rows=same_rows, stateful=stateful)

    def with_columns(self, step: str, *exprs: pl.Expr, on_error: OnError | None = None, **named: pl.Expr) -> Stream:
        """Add or replace columns computed by polars expressions (row-wise expressions)."""
        return self._then(step, "expr", on_error, kind="with_columns", exprs=list(exprs), named=named)

    def select(self, step: str, *exprs: pl.Expr | str, on_error: OnError | None = None, **named: pl.Expr) -> Stream:
        """Keep only the given columns or expressions."""
        parsed = [pl.col(e) if isinstance(e, str) else e for e in exprs]
        return self._then(step, "expr", on_error, kind="select", exprs=parsed, named=named)

    # -- event time ---------------------------------------------------------------------------
    def window(
        self,
        step: str,
        assigner: WindowAssigner,
        *,
        allowed_lateness: Duration = 0,
        emit: Literal["final", "updates"] = "final",
        update_every: int = 1,
        time: Literal["event", "processing"] = "event",
        on_error: OnError | None = None,
    ) -> WindowedStream:
        """Cut the stream into windows (per key after ``key_by``, else global); then ``.agg(...)``.

        ``allowed_lateness``: a record up to this late still updates its window, which is
        re-emitted with ``is_update=True``; later records go to ``.late()``. ``emit="updates"``
        also emits early results (``is_update=True``) once a window has taken ``update_every``
        more records, then its final result. ``time="processing"`` windows by arrival time (wall
        clock) instead of event time: no watermark needed, nothing is late, windows fire on time
        even without data.
        """
        from .windowing import WindowedStream

        return WindowedStream(
            self,
            step,
            assigner,
            allowed_lateness=allowed_lateness,
            emit=emit,
            update_every=update_every,
            time=time,
            on_error=on_error,
        )

    # -- keyed state --------------------------------------------------------------------------
    def infer(
        self,
        step: str,
        model: Any,
        *,
        inputs: str | Sequence[str],
        outputs: str | Sequence[str] = "prediction",
        batching: Any = None,
        device: str = "auto",
        workers: int = 1,
        concurrency: Literal["thread", "process"] | None = None,
        version_column: str | None = "model_version",
        swap_check: Duration = "200ms",
        on_error: OnError | None = None,
    ) -> Stream:
        """Run ``model`` on every record, in dynamic micro-batches, and add its predictions.

        ``model``: a ``tdf.ai`` handler (``SklearnModel``, ``OnnxModel``, ``TorchModel``,
        ``MiniLMOnnxEncoder``, ``RiverModel``, ``BatchFunction``...) or ``tdf.ai.RegisteredModel``
        (the registry's champion, swapped at a batch boundary when another version is promoted).
        ``inputs``: the column(s) the model reads; ``outputs``: the column name(s) it writes (one
        name for a value or a vector per row). ``batching=tdf.Batching(max_size, max_wait,
        bucket_by)``: a model batch leaves when full or when its oldest row has waited
        ``max_wait``. The model runs in ``workers`` threads (or processes, for Python-heavy
        models) while the pipeline goes on; rows leave in arrival order, each with the
        ``model_version`` that scored it. A row the model fails on, even alone, goes to the dead
        letters; the rest of its batch is kept.
        """
        from .ops.infer import infer

        return infer(
            self,
            step,
            model,
            inputs=inputs,
            outputs=outputs,
            batching=batching,
            device=device,
            workers=workers,
            concurrency=concurrency,
            version_column=version_column,
            swap_check=to_seconds(swap_check, what="swap_check"),
            on_error=on_error,
        )

    def learn(
        self,
        step: str,
        model: Any,
        *,
        inputs: str | Sequence[str],
        label: str,
        output: str = "prediction",
        task: Literal["classification", "regression"] | None = None,
        window: int = 1_000,
        every: int = 100,
        granularity: Literal["record", "batch"] | None = None,
        device: str = "cpu",
        on_error: OnError | None = None,
    ) -> LearnedStream:
        """Serve and train ``model`` on this stream, test-then-train (prequential).

        Every row gets ``output``, predicted before its label (column ``label``; null: serve
        only) is learned. ``granularity="record"`` (default for models with
        ``predict_learn_one``, e.g. River) predicts and learns row by row; ``"batch"`` (default
        otherwise, e.g. scikit-learn ``partial_fit``) predicts a batch, then learns it.
        ``.metrics()`` is the stream of rolling quality (accuracy and macro-F1, or MAE and
        RMSE) over the last ``window`` labelled rows, one row every ``every`` labelled rows.
        """
        from .ops.learn import learn

        return LearnedStream(
            learn(
                self,
                step,
                model,
                inputs=inputs,
                label=label,
                output=output,
                task=task,
                window=window,
                every=every,
                granularity=granularity,
                device=device,
                on_error=on_error,
            )
        )

    def detect_drift(
        self,
        step: str,
        *,
        on: str,
        detector: Any,
        on_error: OnError | None = None,
    ) -> Stream:
        """The stream of drift events in column ``on`` (per key after ``key_by``).

        ``detector``: ``tdf.ai.drift.adwin()``, ``page_hinkley()``, ``kswin()`` (changes in a
        signal such as a model's error) or ``PopulationStability(...)``,
        ``KolmogorovSmirnov(...)`` (a feature's distribution against a reference window); one
        copy per key. Event columns: step, column, key, detector, index (values seen for that
        key, 0-based), at (the row's event time), evidence (JSON: the detector's statistics).
        """
        from .ops.drift import detect_drift

        return detect_drift(self, step, on=on, detector=detector, on_error=on_error)

    def retrain(
        self,
        step: str,
        policy: Any,
        *,
        inputs: str | Sequence[str],
        label: str,
        drift: Stream | None = None,
        on_error: OnError | None = None,
    ) -> Stream:
        """Keep a registered model fresh: ``policy`` (``tdf.ai.RetrainPolicy``) retrains a
        challenger on this stream's recent labelled rows when ``drift`` (a stream of drift
        events) fires or on its schedule, compares it with the champion in shadow mode, and
        promotes or rejects it through the registry (and rolls back a promotion that
        disappoints). Returns the stream of decisions: action, model, champion, version,
        labelled_rows, reason, evidence (JSON).
        """
        from .ops.retrain import retrain

        return retrain(
            self,
            step,
            policy,
            inputs=list(inputs) if not isinstance(inputs, str) else inputs,
            label=label,
            drift=drift,
            on_error=on_error,
        )

    def detect_anomalies(self, step: str, detector: Callable[[], Any], **options: Any) -> Stream:
        """Add ``anomaly_score`` and ``is_anomaly`` per series: ``detector`` makes one detector
        per key (``tdf.anomaly.SeasonalBaseline`` ...). Options: ``key``, ``on``, ``time``,
        ``calibrator`` (see ``tideflow.anomaly.stream.detect_anomalies``)."""
        from .anomaly.stream import detect_anomalies

        return detect_anomalies(self, step, detector, **options)

    def forecast(self, step: str, forecaster: Callable[[], Any], *, interval: Duration, **options: Any) -> Stream:
        """Forecast a series ``horizon`` points ahead as its points arrive (one forecaster per
        key): rows with ``target_time``, ``forecast``, ``lower``, ``upper``. ``interval`` is the
        series' spacing. Options: ``key``, ``on``, ``time``, ``horizon``, ``every`` (see
        ``tideflow.forecast.stream.forecast_stream``)."""
        from .forecast.stream import forecast_stream

        return forecast_stream(self, step, forecaster, interval=interval, **options)

    def stateful_map(
        self,
        step: str,
        fn: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any] | None]],
        *,
        ttl: Duration | None = None,
        on_error: OnError | None = None,
    ) -> Stream:
        """Per key (after ``key_by``), ``fn(state, record) -> (new_state, output or None)``.

        State starts as ``None``; returning ``None`` as the new state deletes it. With ``ttl``
        (event time) a key's state expires once the watermark passes its newest update + ttl.
        """
        from .ops import keyed

        return keyed.stateful_map(self, step, fn, ttl=ttl, on_error=on_error)

    def dedupe(
        self,
        step: str,
        *,
        key: str | Sequence[str] | None = None,
        within: Duration,
        on_error: OnError | None = None,
    ) -> Stream:
        """Drop records whose key was kept less than ``within`` (event time) before; the dropped
        records are counted and available as ``.duplicates()``. See docs/semantics.md."""
        from .ops import keyed

        return keyed.dedupe(self, step, key=key, within=within, on_error=on_error)

    def duplicates(self) -> Stream:
        """The records a ``dedupe`` step dropped (call on the dedupe step's output stream)."""
        from .ops import keyed

        return keyed.duplicates(self)

    # -- joins --------------------------------------------------------------------------------
    def window_join(
        self,
        step: str,
        other: Stream,
        *,
        on: str | Sequence[str],
        window: Duration,
        how: Literal["inner", "left"] = "inner",
        on_error: OnError | None = None,
    ) -> JoinedStream:
        """Join with ``other`` on key columns ``on`` within the same tumbling event-time window.

        Results come when the combined watermark passes the window's end (with ``how="left"``,
        unmatched rows of this stream too, with nulls). Late rows: ``.late()`` (this side) and
        ``.late_right()`` (``other``).
        """
        from .ops.join import window_join

        return JoinedStream(window_join(self, other, step, on=on, window=window, how=how, on_error=on_error))

    def interval_join(
        self,
        step: str,
        other: Stream,
        *,
        on: str | Sequence[str],
        lower: Duration,
        upper: Duration,
        how: Literal["inner", "left"] = "inner",
        on_error: OnError | None = None,
    ) -> JoinedStream:
        """Join rows ``b`` of ``other`` to rows ``a`` of this stream with the same key when
        ``a.t - lower <= b.t <= a.t + upper``; pairs are emitted as soon as both have arrived."""
        from .ops.join import interval_join

        return JoinedStream(
            interval_join(self, other, step, on=on, lower=lower, upper=upper, how=how, on_error=on_error)
        )

    def temporal_join(
        self,
        step: str,
        table: Stream,
        *,
        on: str | Sequence[str],
        ttl: Duration | None = None,
        how: Literal["inner", "left"] = "left",
        on_error: OnError | None = None,
    ) -> JoinedStream:
        """Enrich each record with the latest row of ``table`` (same key) at or before its event
        time (an as-of join); table rows older than ``ttl`` before the record do not match."""
        from .ops.join import temporal_join

        return JoinedStream(temporal_join(self, table, step, on=on, ttl=ttl, how=how, on_error=on_error))

    # -- routing ------------------------------------------------------------------------------
    def key_by(self, key: str | Sequence[str]) -> Stream:
        """Declare the key columns for the keyed operators that follow (windows, state)."""
        columns = [key] if isinstance(key, str) else list(key)
        if not columns or not all(isinstance(c, str) for c in columns):
            raise FlowDefinitionError(f"key_by takes a column name or a list of column names, got {key!r}")
        return Stream(self.flow, self.node, time=self.time, key=columns, watermarked=self.watermarked)

    def union(self, step: str, *others: Stream) -> Stream:
        """Merge this stream with others (same columns expected) into one stream."""
        if not others:
            raise FlowDefinitionError(f"union {step!r} needs at least one other stream")
        for other in others:
            if other.flow is not self.flow:
                raise FlowDefinitionError(f"union {step!r}: stream {other.name!r} belongs to another flow")
        node = self.flow._add(step, "union", [self.node, *(o.node for o in others)], None)
        return Stream(self.flow, node, time=self.time, watermarked=all(s.watermarked for s in (self, *others)))

    def branch(
        self, step: str, predicate: pl.Expr | Callable[[dict[str, Any]], bool], *, on_error: OnError | None = None
    ) -> tuple[Stream, Stream]:
        """Split into (records where predicate holds, the rest); the predicate runs once per record."""
        if not isinstance(predicate, pl.Expr):
            _check_callable(step, predicate)
        mask = self._then(step, "branch", on_error, predicate=predicate)
        yes = mask._then(f"{step}.true", "branch_side", "fail", branch=step, side=True)
        no = mask._then(f"{step}.false", "branch_side", "fail", branch=step, side=False)
        return yes, no

    def sink(self, step: str, sink: Sink, *, on_error: OnError | None = None) -> None:
        """Write the stream to ``sink``."""
        if not isinstance(sink, Sink):
            raise FlowDefinitionError(
                f"sink {step!r}: expected a tideflow sink (e.g. tdf.io.MemorySink()), got {type(sink).__name__}"
            )
        self._then(step, "sink", on_error, sink=sink)

    def __repr__(self) -> str:
        return f"Stream({self.flow.name!r}:{self.name!r})"


class AggregatedStream(Stream):
    """The results of a window's ``agg``; ``late()`` is the stream of its late records."""

    def __init__(self, result: Stream, *, source: Stream) -> None:
        super().__init__(result.flow, result.node, time=result.time, key=result.key, watermarked=result.watermarked)
        self._source = source

    def late(self) -> Stream:
        """Records that arrived after every window they belong to was past its lateness."""
        return self._side("late", time=self._source.time)


class LearnedStream(Stream):
    """The output of ``learn``; ``metrics()`` is the stream of its rolling quality."""

    def __init__(self, result: Stream) -> None:
        super().__init__(result.flow, result.node, time=result.time, key=result.key, watermarked=result.watermarked)

    def metrics(self) -> Stream:
        """One row every ``every`` labelled rows: step, labelled, window, at, and the metrics."""
        return self._side("metrics", time=None)


class JoinedStream(Stream):
    """The output of a join; ``late()`` / ``late_right()`` are the rows too late to join."""

    def __init__(self, result: Stream) -> None:
        super().__init__(result.flow, result.node, time=result.time, key=result.key, watermarked=result.watermarked)

    def late(self) -> Stream:
        """Rows of the left (this) input that arrived too late to join."""
        return self._side("late")

    def late_right(self) -> Stream:
        """Rows of the right (other / table) input that arrived too late to join."""
        return self._side("late_right")


def _check_callable(step: str, fn: object) -> None:
    if not callable(fn):
        raise FlowDefinitionError(f"step {step!r}: expected a function, got {type(fn).__name__}")
