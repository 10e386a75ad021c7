"""``tideflow bench inference``: what the pipeline costs around a model, and what batching gains.

For each model it measures, on the same rows and the same batch size:

* ``raw_model_per_s`` — the model called directly on ready-made batches: the physical limit;
* ``pipeline_per_s`` — source → ``infer`` → null sink, end to end;
* ``ratio_to_raw`` — pipeline / raw (the pipeline's overhead; the target is ≥ 0.9);
* ``per_record_per_s`` — the model called once per record (what per-record engines pay);
* ``latency_ms`` — p50 / p99 from a record's creation to its result leaving the step, with the
  source paced at 50% and 90% of the measured maximum rate.

Models: an IsolationForest on 16 numeric features (scikit-learn), a small ONNX MLP on the same
features, and the all-MiniLM-L6-v2 int8 ONNX encoder on real tweets, batched in arrival order
and by length buckets. The model is loaded (and warmed up) before timing: a stream pays that
once, and it is not what the figures are about. Figures are medians of ``--repeat`` runs.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import polars as pl
import typer

from ..ai.base import Batching, ModelHandler

FEATURES = 16
CASES = ("isolation-forest", "onnx-mlp", "minilm-int8")


class Preloaded(ModelHandler[Any]):
    """A handler whose model is already loaded and warm: timing starts with the first record."""

    def __init__(self, handler: ModelHandler[Any], model: Any) -> None:
        self.handler = handler
        self.model = model
        self.name = handler.name
        self.version = handler.version

    def load(self, device: str) -> Any:
        return self.model

    def predict_batch(self, model: Any, inputs: pl.DataFrame) -> Any:
        return self.handler.predict_batch(model, inputs)


@dataclass
class Case:
    """One model on one input set."""

    model: str
    handler: ModelHandler[Any]
    frame: pl.DataFrame
    inputs: list[str]
    outputs: list[str]
    batch_size: int
    bucket_by: str | None = None
    per_record_rows: int = 2_000
    max_wait: str = "10ms"
    """Batching deadline. 10 ms for every model: measured for text too, 100 ms made the
    arrival-order latency worse at 90% load (p99 407 ms against 61 ms) and did not rescue the
    bucketed one (docs/benchmarks.md, inference)."""
    loaded: Any = None
    results: dict[str, Any] = field(default_factory=dict)


# -- models -------------------------------------------------------------------------------------
def tabular_frame(events: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(events, FEATURES)).astype(np.float32)
    values[rng.random(events) < 0.01] *= 6  # a few outliers, so the detector has work to do
    return pl.DataFrame({f"f{i}": values[:, i] for i in range(FEATURES)})


def isolation_forest_case(events: int, batch_size: int) -> Case:
    from sklearn.ensemble import IsolationForest

    from ..ai.sklearn import SklearnModel

    frame = tabular_frame(events)
    train = tabular_frame(10_000, seed=2).to_numpy()
    forest = IsolationForest(n_estimators=100, random_state=0).fit(train)
    handler = SklearnModel(forest, method="score_samples", name="isolation-forest")
    return Case("isolation-forest", handler, frame, list(frame.columns), ["anomaly_score"], batch_size, None, 1_000)


def onnx_mlp_bytes(seed: int = 0, hidden: int = 64) -> bytes:
    """A 16 → 64 → 64 → 1 ReLU MLP with random weights, built with ``onnx.helper``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    shapes = [(FEATURES, hidden), (hidden, hidden), (hidden, 1)]
    weights = [(rng.normal(size=s) / np.sqrt(s[0])).astype(np.float32) for s in shapes]
    biases = [np.zeros(s[1], dtype=np.float32) for s in shapes]
    nodes, initializers, current = [], [], "x"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"h{i}"]))
        current = f"h{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_mlp_case(events: int, batch_size: int, threads: int) -> Case:
    from ..ai.onnx import OnnxModel

    frame = tabular_frame(events)
    # Idle ONNX threads must not spin: on two cores they take CPU from the pipeline's threads
    # (measured: pipeline 7.9 M/s spinning, 9.4 M/s not). Raw calls use the same session options.
    handler = OnnxModel(onnx_mlp_bytes(), intra_op_threads=threads, spin=False, name="onnx-mlp")
    return Case("onnx-mlp", handler, frame, list(frame.columns), ["score"], batch_size, None, 5_000)


def minilm_case(events: int, batch_size: int, threads: int, bucketed: bool) -> Case:
    from ..ai.text import MiniLMOnnxEncoder
    from ..ai.tweets import load_tweets

    tweets = load_tweets().head(events).select("text")
    handler = MiniLMOnnxEncoder(intra_op_threads=threads)
    name = "minilm-int8 " + ("bucketed" if bucketed else "arrival-order")
    return Case(name, handler, tweets, ["text"], ["embedding"], batch_size, "text" if bucketed else None, 300)


# -- measurements -------------------------------------------------------------------------------
def _median_rate(rows: int, runs: list[float]) -> float:
    return rows / statistics.median(runs)


def _calls_per_s(case: Case, frame: pl.DataFrame, size: int, repeat: int) -> float:
    """Rows/s of the model called directly on ``frame`` cut into ready-made batches of ``size``."""
    batches = [frame.slice(i, size) for i in range(0, frame.height, size)]
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for batch in batches:
            case.handler.predict_batch(case.loaded, batch)
        runs.append(time.perf_counter() - started)
    return _median_rate(frame.height, runs)


def raw_model_per_s(case: Case, repeat: int) -> float:
    """The model alone on ready-made batches (length-sorted first when the case buckets)."""
    frame = case.frame.select(case.inputs)
    if case.bucket_by is not None:
        frame = frame.sort(pl.col(case.bucket_by).str.len_bytes())
    return _calls_per_s(case, frame, case.batch_size, repeat)


def per_record_per_s(case: Case, repeat: int) -> float:
    """The model called once per record: what a per-record engine pays."""
    return _calls_per_s(case, case.frame.select(case.inputs).head(case.per_record_rows), 1, repeat)


def _batching(case: Case, max_wait: str) -> Batching:
    return Batching(max_size=case.batch_size, max_wait=max_wait, bucket_by=case.bucket_by)


def pipeline_per_s(case: Case, repeat: int, max_wait: str, source_batch: int) -> float:
    """Source → infer → null sink; the run's wall time, model already loaded."""
    import tideflow as tdf

    runs = []
    for attempt in range(repeat + 1):
        flow = tdf.Flow("bench-inference")
        source = tdf.io.MemorySource(case.frame, batch_size=source_batch)
        flow.source("src", source).infer(
            "model",
            Preloaded(case.handler, case.loaded),
            inputs=case.inputs,
            outputs=case.outputs,
            batching=_batching(case, max_wait),
        ).sink("out", tdf.io.NullSink())
        result = flow.run(handle_signals=False)
        if attempt:  # the first run warms up threads and caches, and is not counted
            runs.append(result.seconds)
    return _median_rate(case.frame.height, runs)


class _LatencySink:
    """Collects, per row, the time from its creation at the paced source to its write."""

    def __init__(self) -> None:
        self.latencies: list[np.ndarray] = []

    def write(self, df: pl.DataFrame) -> None:
        now = time.perf_counter()
        self.latencies.append(now - df.get_column("_created").to_numpy())


def paced(frame: pl.DataFrame, rate: float, stop: threading.Event) -> Iterator[pl.DataFrame]:
    """Yield ``frame`` as small chunks at ``rate`` rows/s, each stamped with its creation time."""
    tick_s = 0.002
    per_tick = max(1, round(rate * tick_s))
    interval = per_tick / rate
    next_at = time.perf_counter()
    for offset in range(0, frame.height, per_tick):
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # load generation, not synchronisation: the clock sets the rate
        chunk = frame.slice(offset, per_tick)
        yield chunk.with_columns(pl.lit(time.perf_counter(), pl.Float64).alias("_created"))
        next_at += interval
        if stop.is_set():
            return


def latency_ms(case: Case, rate: float, seconds: float, max_wait: str) -> dict[str, float]:
    """p50 / p99 latency with the source paced at ``rate`` rows/s for about ``seconds``."""
    import tideflow as tdf
    from tideflow.io.base import Sink

    rows = max(50, min(case.frame.height, int(rate * seconds)))
    frame = case.frame.head(rows)
    collector = _LatencySink()

    class Collect(Sink):
        def write(self, df: pl.DataFrame) -> None:
            collector.write(df)

    flow = tdf.Flow("bench-latency")
    stop = threading.Event()
    source = tdf.io.IterableSource(paced(frame, rate, stop), batch_size=1_000_000, linger="0ms")
    flow.source("src", source).infer(
        "model",
        Preloaded(case.handler, case.loaded),
        inputs=case.inputs,
        outputs=case.outputs,
        batching=_batching(case, max_wait),
    ).sink("out", Collect())
    flow.run(handle_signals=False)
    values = np.concatenate(collector.latencies) * 1000
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2)}


def _median_latency(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per quantile, the median over runs: one paced run can be disturbed by anything else."""
    return {q: round(statistics.median(run[q] for run in runs), 2) for q in ("p50", "p99")}


def model_ms_per_batch(case: Case) -> float:
    frame = case.frame.select(case.inputs).head(case.batch_size * 8)
    if case.bucket_by is not None:
        frame = frame.sort(pl.col(case.bucket_by).str.len_bytes())
    times = []
    for i in range(0, frame.height, case.batch_size):
        started = time.perf_counter()
        case.handler.predict_batch(case.loaded, frame.slice(i, case.batch_size))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(case: Case, *, repeat: int, max_wait: str | None, latency_seconds: float, device: str) -> dict[str, Any]:
    max_wait = max_wait or case.max_wait
    case.loaded = case.handler.load(device)
    case.handler.warmup(case.loaded, case.frame.select(case.inputs).head(case.batch_size))
    raw = raw_model_per_s(case, repeat)
    pipeline = pipeline_per_s(case, repeat, max_wait, source_batch=max(case.batch_size, 4096))
    single = per_record_per_s(case, 1)
    batch_ms = model_ms_per_batch(case)
    latency = {
        f"{int(load * 100)}%": _median_latency(
            [latency_ms(case, pipeline * load, latency_seconds, max_wait) for _ in range(repeat)]
        )
        for load in (0.5, 0.9)
    }
    wait_ms = Batching(max_wait=max_wait).max_wait_s * 1000
    return {
        "model": case.model,
        "batch_size": case.batch_size,
        "events": case.frame.height,
        "pipeline_per_s": round(pipeline, 1),
        "raw_model_per_s": round(raw, 1),
        "ratio_to_raw": round(pipeline / raw, 3),
        "per_record_per_s": round(single, 1),
        "pipeline_over_per_record": round(pipeline / single, 1),
        "model_ms_per_batch": round(batch_ms, 3),
        "max_wait": max_wait,
        "latency_ms": latency["90%"] | {"at_50%": latency["50%"], "at_90%": latency["90%"]},
        "latency_target_ms": round(wait_ms + 2 * batch_ms, 2),
        "device": device,
    }


# -- command ------------------------------------------------------------------------------------
def _cases(which: list[str], events: int | None, text_events: int | None, threads: int) -> list[Callable[[], Case]]:
    builders: list[Callable[[], Case]] = []
    if "isolation-forest" in which:
        builders.append(lambda: isolation_forest_case(events or 200_000, 1024))
    if "onnx-mlp" in which:
        builders.append(lambda: onnx_mlp_case(events or 2_000_000, 8192, threads))
    if "minilm-int8" in which:
        builders.append(lambda: minilm_case(text_events or 2_000, 32, threads, bucketed=False))
        builders.append(lambda: minilm_case(text_events or 2_000, 32, threads, bucketed=True))
    return builders


def inference_command(
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help=f"Models to measure (repeatable): {', '.join(CASES)}.")
    ] = None,
    events: Annotated[int | None, typer.Option(help="Rows for the tabular models (default 200k / 2M).")] = None,
    text_events: Annotated[int | None, typer.Option(help="Tweets for the text model (default 2,000).")] = None,
    max_wait: Annotated[
        str | None,
        typer.Option(help="Batching deadline (max_wait) for every model (default: 10ms)."),
    ] = None,
    repeat: Annotated[int, typer.Option(help="Runs per figure; the median is reported.")] = 3,
    threads: Annotated[int, typer.Option(help="Intra-op threads for ONNX Runtime.")] = os.cpu_count() or 1,
    latency_seconds: Annotated[float, typer.Option(help="Length of each paced latency run.")] = 4.0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure inference through the pipeline against the model alone and per record."""
    from rich.console import Console

    from ..ai.base import resolve_device

    which = model or list(CASES)
    unknown = sorted(set(which) - set(CASES))
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; choose from {list(CASES)}", param_hint="--model")
    chosen_device = resolve_device(device)
    err = Console(stderr=True)
    results = []
    for build in _cases(which, events, text_events, threads):
        case = build()
        if not as_json:
            err.print(f"measuring {case.model} ({case.frame.height:,} rows, batch {case.batch_size}) ...")
        results.append(
            measure(case, repeat=repeat, max_wait=max_wait, latency_seconds=latency_seconds, device=chosen_device)
        )
    payload = {"benchmark": "inference", "cores": os.cpu_count(), "results": results}
    if as_json:
        typer.echo(json.dumps(payload))
        return
    _print_table(Console(), payload)


def _print_table(console: Any, payload: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"inference, {payload['cores']} cores (medians)")
    for column in (
        "model",
        "batch",
        "max wait",
        "pipeline/s",
        "raw model/s",
        "ratio",
        "per record/s",
        "×per rec",
        "p50 ms",
        "p99 ms",
        "target p99",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in payload["results"]:
        table.add_row(
            r["model"],
            str(r["batch_size"]),
            r["max_wait"],
            f"{r['pipeline_per_s']:,.0f}",
            f"{r['raw_model_per_s']:,.0f}",
            f"{r['ratio_to_raw']:.2f}",
            f"{r['per_record_per_s']:,.0f}",
            f"{r['pipeline_over_per_record']:,.0f}",
            f"{r['latency_ms']['at_50%']['p50']} / {r['latency_ms']['at_90%']['p50']}",
            f"{r['latency_ms']['at_50%']['p99']} / {r['latency_ms']['at_90%']['p99']}",
            f"{r['latency_target_ms']}",
        )
    console.print(table)
    console.print("latency columns: at 50% / at 90% of the measured maximum rate")
