"""The infer step: batching, ordering, failures, backpressure, watermarks, hot swap, metrics."""

from __future__ import annotations

import threading

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.errors import StepError

from .models_for_tests import Capped, Embed, FakeRegistry, Gated, PythonHeavy, Scale


def run_infer(model, data, *, batch_size=97, on_error="dlq", **options):  # type: ignore[no-untyped-def]
    flow = tdf.Flow("infer", on_error=on_error)
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    source = flow.source("src", tdf.io.MemorySource(data, batch_size=batch_size))
    source.infer("score", model, **options).sink("out", out)
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    return out.frame, dead.records, result


def promoting(promote, swapped: threading.Event, *, promote_at: int, tail: int = 1_000, limit: int = 500_000):  # type: ignore[no-untyped-def]
    """Rows ``{"x": i}``; ``promote()`` at row ``promote_at``. From 1,000 rows later on, rows come
    one by one (the stream goes on, slowly) until the sink has seen the new version serve, then
    ``tail`` more. ``produced[0]`` is how many rows there were."""
    produced = [0]

    def rows():  # type: ignore[no-untyped-def]
        i, stop = 0, None
        while stop is None or i < stop:
            if i == promote_at:
                promote()
            if stop is None and swapped.is_set():
                stop = i + tail
            if stop is None and i > promote_at + 1_000:
                swapped.wait(0.002)  # pacing while the new version loads; the event is the signal
                assert i < limit, "the promoted version never served"
            produced[0] = i + 1
            yield {"x": i}
            i += 1

    return rows(), produced


def rows(n: int) -> list[dict]:
    return [{"x": i, "key": i % 7, "text": "w" * (1 + (i * 37) % 90)} for i in range(n)]


@pytest.mark.parametrize("bucket_by", [None, "text"])
@pytest.mark.parametrize("workers", [1, 3])
def test_every_row_is_scored_once_in_arrival_order(bucket_by, workers) -> None:  # type: ignore[no-untyped-def]
    batching = tdf.Batching(max_size=32, max_wait="2ms", bucket_by=bucket_by)
    out, dead, result = run_infer(Scale(3.0), rows(2000), inputs="x", outputs="y", batching=batching, workers=workers)
    assert dead == []
    assert out.get_column("x").to_list() == list(range(2000))
    assert out.get_column("y").to_list() == [3.0 * i for i in range(2000)]
    assert out.columns == ["x", "key", "text", "y", "model_version"]
    assert set(out.get_column("model_version")) == {"v1"}
    metrics = result.step("score").metrics
    assert metrics["records"] == 2000
    assert sum(metrics["batch_size_histogram"].values()) == metrics["batches"]
    assert max(int(k[2:]) for k in metrics["batch_size_histogram"]) <= 32


def test_length_buckets_group_rows_of_similar_length() -> None:
    seen: list[list[int]] = []

    class Lengths(Scale):
        def predict_batch(self, model, inputs):  # type: ignore[no-untyped-def]
            seen.append(inputs.get_column("text").str.len_bytes().to_list())
            return super().predict_batch(model, inputs)

    batching = tdf.Batching(max_size=16, max_wait="50ms", bucket_by="text")
    out, _, _ = run_infer(Lengths(), rows(1000), inputs=["x", "text"], outputs="y", batching=batching, batch_size=1000)
    assert out.height == 1000
    full = [lengths for lengths in seen if len(lengths) == 16]
    assert full, "full buckets were cut"
    for lengths in full:
        assert lengths == sorted(lengths)  # sorted within a batch: padding follows neighbours
        assert max(lengths) <= 1.5 * max(min(lengths), 8) + 1  # one bucket: within the growth ratio


def test_rows_that_fail_alone_are_dead_letters_and_the_rest_of_their_batch_is_kept() -> None:
    poison = (5, 400, 401, 1999)
    out, dead, result = run_infer(
        Scale(2.0, poison=poison), rows(2000), inputs="x", outputs="y", batching=tdf.Batching(max_size=64)
    )
    assert out.get_column("x").to_list() == [i for i in range(2000) if i not in poison]
    assert (out.get_column("y") == out.get_column("x") * 2).all()
    assert sorted(letter["position"] for letter in dead) == sorted(f"index {i}" for i in poison)
    assert {letter["step"] for letter in dead} == {"score"}
    assert all(letter["error"] == "ValueError: poisoned value among 1 rows" for letter in dead)
    assert '"x":400' in next(letter["payload"] for letter in dead if letter["position"] == "index 400")
    assert result.step("score").dead_letters == 4
    assert result.step("score").metrics["errors"] == 4
    assert out.height + len(dead) == 2000


def test_on_error_fail_stops_the_run_naming_the_step() -> None:
    with pytest.raises(StepError, match="score"):
        run_infer(Scale(poison=(3,)), rows(100), inputs="x", outputs="y", on_error="fail")


def test_a_batch_too_big_is_split_and_later_batches_are_capped() -> None:
    model = Capped(limit=20)
    out, dead, result = run_infer(
        model,
        rows(5000),
        inputs="x",
        outputs="y",
        batching=tdf.Batching(max_size=128, max_wait="1s", max_in_flight=2),
        batch_size=5000,
    )
    assert dead == []
    assert out.get_column("y").to_list() == [i + 1 for i in range(5000)]
    metrics = result.step("score").metrics
    assert metrics["size_splits"] >= 1
    # Batches cut before the first failure came back were full (at most the in-flight bound plus
    # the one being cut); every batch cut after it is at most half the size that failed.
    assert model.sizes.count(128) <= 3
    assert max(model.sizes[-20:]) <= 20
    assert metrics["records"] == 5000


def test_vector_outputs_stay_one_array_column_and_several_names_split_columns() -> None:
    out, _, _ = run_infer(Embed(), rows(50), inputs="x", outputs="vec")
    assert out.schema["vec"] == pl.Array(pl.Float32, 3)
    assert out.get_column("vec").to_list()[7] == [7.0, 14.0, 21.0]
    out, _, _ = run_infer(Embed(), rows(50), inputs="x", outputs=["a", "b", "c"], version_column=None)
    assert out.columns == ["x", "key", "text", "a", "b", "c"]
    assert out.row(7) == (7, 0, "w" * (1 + 7 * 37 % 90), 7.0, 14.0, 21.0)


def test_process_workers_score_off_the_main_process_and_keep_order() -> None:
    import os

    data = [{"x": x} for x in [*range(300), -1, *range(300, 500)]]
    out, dead, _ = run_infer(
        PythonHeavy(), data, inputs="x", outputs=["y", "pid"], workers=2, batching=tdf.Batching(max_size=50)
    )
    assert out.get_column("x").to_list() == list(range(500))
    assert out.get_column("y").to_list() == [3 * x for x in range(500)]
    pids = set(out.get_column("pid"))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert [d["payload"] for d in dead] == ['{"x":-1}']
    assert "negative one" in dead[0]["error"]


def test_a_partial_batch_leaves_on_its_deadline_while_the_source_stays_open() -> None:
    delivered = threading.Event()
    finish_source = threading.Event()

    def records():  # type: ignore[no-untyped-def]
        yield from ({"x": i} for i in range(3))
        # The source now waits; only max_wait can release the 3 rows (max_size is 1000).
        assert delivered.wait(20), "the partial batch never left the infer step"
        finish_source.set()

    class Signal(tdf.io.MemorySink):
        def write(self, df):  # type: ignore[no-untyped-def]
            super().write(df)
            delivered.set()

    flow = tdf.Flow("deadline")
    sink = Signal()
    source = flow.source("src", tdf.io.IterableSource(records(), batch_size=1000, linger="1ms"))
    batching = tdf.Batching(max_size=1000, max_wait="20ms")
    source.infer("score", Scale(), inputs="x", outputs="y", batching=batching).sink("out", sink)
    flow.run(handle_signals=False)
    assert finish_source.is_set()
    assert sink.frame.get_column("y").to_list() == [0.0, 2.0, 4.0]


def test_in_flight_batches_are_bounded_and_the_source_is_held_back() -> None:
    model = Gated()
    data = pl.DataFrame({"x": np.arange(200_000)})
    flow = tdf.Flow("backpressure")
    source = tdf.io.MemorySource(data, batch_size=100)
    out = tdf.io.NullSink()
    flow.source("src", source).infer(
        "score", model, inputs="x", outputs="y", workers=2, batching=tdf.Batching(max_size=100, max_in_flight=3)
    ).sink("out", out)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            flow.run(handle_signals=False, queue_size=2)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert model.called.wait(20)
    # The model is stuck: wait until the source can go no further, then check how far it got.
    previous = -1
    while True:
        done, _ = source.progress()
        if done == previous:
            break
        previous = done
        model.called.wait(0.2)  # a pause to let the source move, if it still can (not a sync)
    read, _ = source.progress()
    model.gate.set()
    thread.join(60)
    assert not errors
    assert model.most_active <= 2
    # Bounded: 3 batches in flight, the step's pending rows, 2 queued batches per channel, prefetch.
    assert read <= 100 * 20, f"the source read {read} rows while the model was blocked"


def test_rows_held_in_the_step_are_never_late_for_the_windows_after_it() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    times = np.sort(rng.integers(0, 600_000, n))
    data = [{"ts": int(t), "x": i, "text": "a" * int(rng.integers(1, 200))} for i, t in enumerate(times)]

    def collect(with_model: bool) -> list[tuple]:
        flow = tdf.Flow("w")
        out, late = tdf.io.MemorySink(), tdf.io.MemorySink()
        stream = flow.source(
            "src", tdf.io.MemorySource(data, time="ts", batch_size=37), watermark=tdf.BoundedOutOfOrder(0)
        )
        if with_model:
            stream = stream.infer(
                "score",
                Scale(1.0),
                inputs="x",
                outputs="y",
                workers=2,
                batching=tdf.Batching(max_size=16, max_wait="1ms", bucket_by="text"),
            )
        else:
            stream = stream.with_columns("score", y=pl.col("x").cast(pl.Float64))
        aggregated = stream.window("w", tdf.windows.tumbling("10s")).agg(n=pl.len(), total=pl.col("y").sum())
        aggregated.sink("out", out)
        aggregated.late().sink("late", late)
        flow.run(handle_signals=False)
        assert late.records == []
        return sorted(tuple(r.values()) for r in out.records)

    assert collect(True) == collect(False)


def test_a_promoted_version_swaps_in_at_a_batch_boundary_without_loss_or_double_scoring() -> None:
    registry = FakeRegistry(Scale(1.0, version="m:1"))
    swapped = threading.Event()
    records, produced = promoting(lambda: registry.promote(Scale(10.0, version="m:2")), swapped, promote_at=30_000)

    class Watch(tdf.io.MemorySink):
        def write(self, df):  # type: ignore[no-untyped-def]
            super().write(df)
            if (df.get_column("model_version") == "m:2").any():
                swapped.set()

    flow = tdf.Flow("swap")
    out = Watch()
    flow.source("src", tdf.io.IterableSource(records, batch_size=500, linger="1ms")).infer(
        "score", registry, inputs="x", outputs="y", batching=tdf.Batching(max_size=100, max_wait="1ms"), swap_check=0
    ).sink("out", out)
    result = flow.run(handle_signals=False)
    frame = out.frame
    assert frame.get_column("x").to_list() == list(range(produced[0]))  # none lost, none twice
    factor = frame.get_column("model_version").replace_strict({"m:1": 1.0, "m:2": 10.0}, return_dtype=pl.Float64)
    assert (frame.get_column("y") == frame.get_column("x") * factor).all()  # the version that scored it
    versions = frame.get_column("model_version").to_list()
    first_new = versions.index("m:2")
    assert 0 < first_new < produced[0] - 1_000  # mid-stream (the source reads ahead, so maybe before 30,000)
    assert set(versions[first_new:]) == {"m:2"}  # one switch, at a batch boundary
    assert result.step("score").metrics["swaps"] == 1
    assert result.step("score").metrics["model_version"] == "m:2"


def test_metrics_reach_the_run_summary() -> None:
    _, _, result = run_infer(Scale(), rows(500), inputs="x", outputs="y", batching=tdf.Batching(max_size=50))
    summary = result.to_dict()
    step = next(s for s in summary["steps"] if s["step"] == "score")
    metrics = step["metrics"]
    assert metrics["records"] == 500 and metrics["batches"] >= 10
    for key in ("queue_wait_ms", "model_ms_per_batch", "latency_ms"):
        assert set(metrics[key]) == {"mean", "p50", "p99", "max"}
        assert 0 <= metrics[key]["p50"] <= metrics[key]["p99"] <= metrics[key]["max"] + 1e-9
    assert metrics["records_per_s"] > 0


def test_wiring_errors_are_clear() -> None:
    flow = tdf.Flow("bad")
    source = flow.source("src", tdf.io.MemorySource(rows(3)))
    with pytest.raises(tdf.FlowDefinitionError, match=r"tideflow\.ai handler"):
        source.infer("a", lambda df: df, inputs="x")
    with pytest.raises(tdf.FlowDefinitionError, match="workers"):
        source.infer("b", Scale(), inputs="x", workers=0)
    with pytest.raises(ValueError, match="max_size"):
        tdf.Batching(max_size=0)
    with pytest.raises(ValueError, match="not a duration"):
        tdf.Batching(max_wait="soon")
    with pytest.raises(StepError, match="nope"):
        run_infer(Scale(), rows(10), inputs="nope", outputs="y")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 400),
    batch_size=st.integers(1, 60),
    max_size=st.integers(1, 40),
    workers=st.integers(1, 3),
    bucketed=st.booleans(),
    poison=st.sets(st.integers(0, 399), max_size=4),
)
def test_outputs_plus_dead_letters_equal_inputs_for_any_batching(n, batch_size, max_size, workers, bucketed, poison):  # type: ignore[no-untyped-def]
    data = rows(n)
    out, dead, _ = run_infer(
        Scale(2.0, poison=tuple(poison)),
        data,
        batch_size=batch_size,
        inputs="x",
        outputs="y",
        workers=workers,
        batching=tdf.Batching(max_size=max_size, max_wait="1ms", bucket_by="text" if bucketed else None),
    )
    expected = [i for i in range(n) if i not in poison]
    got = out.select("x", "y").rows() if out.height else []
    assert got == [(i, 2.0 * i) for i in expected]
    assert sorted(int(d["position"].split()[1]) for d in dead) == sorted(p for p in poison if p < n)


def test_hot_swap_through_the_on_disk_registry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tideflow.ai.registry import ModelRegistry, RegisteredModel

    registry = ModelRegistry(tmp_path / "models")
    for factor in ("1", "10"):
        artifact = tmp_path / f"factor-{factor}.txt"
        artifact.write_text(factor)
        registry.register("scaler", artifact, metrics={"factor": float(factor)})
    registry.promote("scaler", 1)
    following = RegisteredModel(
        "scaler", registry=registry, loader=lambda v: Scale(float(v.path.read_text()), version=v.label)
    )
    scored_by_new = threading.Event()
    records, produced = promoting(
        lambda: registry.promote("scaler", 2, reason="better"), scored_by_new, promote_at=8_000
    )

    class Watch(tdf.io.MemorySink):
        def write(self, df):  # type: ignore[no-untyped-def]
            super().write(df)
            if (df.get_column("model_version") == "scaler:2").any():
                scored_by_new.set()

    flow = tdf.Flow("registry-swap")
    out = Watch()
    flow.source("src", tdf.io.IterableSource(records, batch_size=250, linger="1ms")).infer(
        "score", following, inputs="x", outputs="y", batching=tdf.Batching(max_size=64, max_wait="1ms"), swap_check=0
    ).sink("out", out)
    flow.run(handle_signals=False)
    frame = out.frame
    total = produced[0]
    assert frame.get_column("x").to_list() == list(range(total))
    versions = frame.get_column("model_version").to_list()
    switch = versions.index("scaler:2")
    assert 0 < switch < total - 1_000
    assert set(versions[:switch]) == {"scaler:1"} and set(versions[switch:]) == {"scaler:2"}
    expected = [float(x) * (10.0 if v == "scaler:2" else 1.0) for x, v in zip(range(total), versions, strict=True)]
    assert frame.get_column("y").to_list() == expected


def test_models_are_warmed_up_before_their_first_batch() -> None:
    calls: list[list[int]] = []

    class WithExample(Scale):
        def example(self, model):  # type: ignore[no-untyped-def]
            return pl.DataFrame({"x": [-5]})

        def predict_batch(self, model, inputs):  # type: ignore[no-untyped-def]
            calls.append(inputs.get_column("x").to_list())
            return super().predict_batch(model, inputs)

    class WithoutExample(WithExample):
        def example(self, model):  # type: ignore[no-untyped-def]
            return None

    out, _, _ = run_infer(WithExample(), rows(100), inputs="x", outputs="y", batching=tdf.Batching(max_size=50))
    assert calls[0] == [-5] and out.height == 100  # the example ran first, and is not an output
    calls.clear()
    out, _, _ = run_infer(WithoutExample(), rows(100), inputs="x", outputs="y", batching=tdf.Batching(max_size=50))
    assert calls[0] == [0] and calls[1][:3] == [0, 1, 2] and out.height == 100  # one row first


def test_the_cli_summary_shows_the_model_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from tideflow.cli import app

    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(
        "import tideflow as tdf\n"
        "flow = tdf.Flow('p')\n"
        "flow.source('s', tdf.io.MemorySource([{'x': i} for i in range(500)])).infer(\n"
        "    'score', tdf.ai.BatchFunction(lambda a: a[:, 0] * 2, input='numpy', version='7'),\n"
        "    inputs='x', outputs='y',\n"
        ").sink('o', tdf.io.NullSink())\n"
    )
    table = CliRunner().invoke(app, ["run", str(pipeline), "--quiet"])
    assert table.exit_code == 0, table.output
    assert "models" in table.output and "score" in table.output
    as_json = CliRunner().invoke(app, ["run", str(pipeline), "--quiet", "--json"])
    steps = {s["step"]: s for s in json.loads(as_json.output)["steps"]}
    assert steps["score"]["metrics"]["records"] == 500
    assert steps["score"]["metrics"]["model_version"] == "7"


def test_a_big_input_batch_streams_out_as_its_model_batches_finish() -> None:
    """One input batch of 1,000 rows, model batches of 10: the model's 4th call waits until the
    sink has the rows of its 1st, and so on. Were results handed on only once the whole input
    batch was scored, the model would wait in vain (and fail its rows into the dead letters)."""
    seen = threading.Condition()
    highest = [-1]
    gave_up: list[int] = []

    class WaitsForOutput(Scale):
        def predict_batch(self, model, inputs):  # type: ignore[no-untyped-def]
            first = inputs.get_column("x")[0]
            with seen:
                if gave_up or not seen.wait_for(lambda: highest[0] >= first - 30, timeout=20):
                    gave_up.append(first)  # fail the rest at once
                    raise TimeoutError(f"no output reached the sink before row {first} was scored")
            return super().predict_batch(model, inputs)

    class Track(tdf.io.MemorySink):
        def write(self, df):  # type: ignore[no-untyped-def]
            super().write(df)
            with seen:
                highest[0] = max(highest[0], df.get_column("x").max())
                seen.notify_all()

    flow = tdf.Flow("stream-out")
    sink = Track()
    flow.source("src", tdf.io.MemorySource(rows(1000), batch_size=1000)).infer(
        "score", WaitsForOutput(), inputs="x", outputs="y", batching=tdf.Batching(max_size=10, max_in_flight=2)
    ).sink("out", sink)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 0
    assert sink.frame.get_column("x").to_list() == list(range(1000))


def test_outputs_that_would_overwrite_a_column_are_refused_with_a_hint() -> None:
    data = [{"x": 1, "y": 2.0, "model_version": "a"}]
    with pytest.raises(StepError, match=r"\['y'\] exist already.*outputs="):
        run_infer(Scale(), data, inputs="x", outputs="y", version_column=None)
    with pytest.raises(StepError, match="version_column="):
        run_infer(Scale(), data, inputs="x", outputs="z")
    out, _, _ = run_infer(Scale(), data, inputs="x", outputs="z", version_column="scale_version")
    assert out.row(0) == (1, 2.0, "a", 2.0, "v1")


def test_hot_swap_with_process_workers() -> None:
    import os

    from .models_for_tests import ScaleInProcess

    registry = FakeRegistry(ScaleInProcess(1.0, version="p:1"))
    swapped = threading.Event()
    records, produced = promoting(
        lambda: registry.promote(ScaleInProcess(10.0, version="p:2")), swapped, promote_at=2_000
    )

    class Watch(tdf.io.MemorySink):
        def write(self, df):  # type: ignore[no-untyped-def]
            super().write(df)
            if (df.get_column("model_version") == "p:2").any():
                swapped.set()

    flow = tdf.Flow("process-swap")
    out = Watch()
    flow.source("src", tdf.io.IterableSource(records, batch_size=200, linger="1ms")).infer(
        "score",
        registry,
        inputs="x",
        outputs=["y", "pid"],
        workers=2,
        concurrency="process",
        batching=tdf.Batching(max_size=100, max_wait="1ms"),
        swap_check=0,
    ).sink("out", out)
    flow.run(handle_signals=False)
    frame = out.frame
    assert frame.get_column("x").to_list() == list(range(produced[0]))
    factor = frame.get_column("model_version").replace_strict({"p:1": 1.0, "p:2": 10.0}, return_dtype=pl.Float64)
    assert (frame.get_column("y") == frame.get_column("x") * factor).all()
    versions = frame.get_column("model_version").to_list()
    switch = versions.index("p:2")
    assert set(versions[switch:]) == {"p:2"}
    assert os.getpid() not in set(frame.get_column("pid"))
