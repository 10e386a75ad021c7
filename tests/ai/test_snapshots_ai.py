"""Checkpoints of the model steps: infer drains at a barrier; learn, detect_drift and retrain
snapshot their models, detectors and decision state. In each case a run interrupted at a
checkpoint and resumed in fresh operators (fresh models and handlers, as a restarted process
would build them) gives the rows, predictions, metrics and events of the uninterrupted run.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import polars as pl
import pytest

import tideflow as tdf
from tideflow.ai import drift
from tideflow.ai.base import ModelHandler
from tideflow.checkpoint.codec import decode, encode
from tideflow.deadletters import DeadLetters
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.drift import DriftOperator
from tideflow.ops.infer import InferOperator
from tideflow.ops.learn import METRICS_PORT, LearnOperator
from tideflow.ops.retrain import RetrainOperator
from tideflow.record import POSITION, Batch, Origin

from .models_for_tests import FakeRegistry, Scale, concept, fit

river = pytest.importorskip("river")
sklearn = pytest.importorskip("sklearn")

Record = dict[str, Any]


def codec(state: Any) -> Any:
    """A snapshot as a checkpoint gives it back: encoded, and decoded by the restricted unpickler."""
    return decode(encode(state))


def rows_of(results: Batch | Iterable[Batch] | None) -> tuple[list[Record], list[int]]:
    """The rows (with their positions) and watermarks of what an operator call returned."""
    if results is None:
        return [], []
    batches = [results] if isinstance(results, Batch) else list(results)
    rows = [r for b in batches for r in b.df.to_dicts()]
    marks = [b.watermark for b in batches if b.watermark is not None]
    return [{k: v for k, v in r.items() if k == POSITION or not k.startswith("_tf_")} for r in rows], marks


def cut_into(frame: pl.DataFrame, size: int) -> list[Batch]:
    framed = frame.with_row_index(POSITION).with_columns(pl.col(POSITION).cast(pl.Int64))
    return [Batch(framed.slice(start, size), Origin("src")) for start in range(0, frame.height, size)]


# -- infer ----------------------------------------------------------------------------------------
class SlowScale(ModelHandler[float]):
    """``y = x * factor``, taking ``delay`` seconds per model batch: batches are really in flight."""

    def __init__(self, factor: float = 2.0, version: str = "m:1", delay: float = 0.05) -> None:
        self.factor, self.version, self.delay, self.name = factor, version, delay, "slow"

    def load(self, device: str) -> float:
        return self.factor

    def predict_batch(self, model: float, inputs: pl.DataFrame) -> Any:
        time.sleep(self.delay)
        return inputs.get_column("x").to_numpy() * model


def infer_operator(model: Any, workers: int, *, start: bool = True) -> InferOperator:
    op = InferOperator(
        "score",
        "dlq",
        model,
        inputs=["x"],
        outputs=["y"],
        batching=tdf.Batching(max_size=8, max_wait="1s"),
        device="cpu",
        workers=workers,
        concurrency="thread",
        version_column="model_version",
        swap_check_s=0.0,
    )
    if start:
        op.start(lambda: None, threading.Event())
    return op


def infer_batches(n: int, size: int) -> list[Batch]:
    batches = []
    for start in range(0, n, size):
        df = pl.DataFrame({"x": list(range(start, min(n, start + size)))}).with_columns(
            pl.col("x").cast(pl.Int64).alias(POSITION)
        )
        batches.append(Batch(df, Origin("src"), watermark=1_000 * (start + size)))
    return batches


def drive_infer(make: Callable[[], InferOperator], batches: list[Batch], cut: int | None) -> tuple[list[Record], int]:
    """The rows out of a run with a barrier after batch ``cut``, and how many model batches were
    in flight when it came (the model is slow, so some almost always are)."""
    ctx = StepContext(DeadLetters())
    op = make()
    out: list[Record] = []
    in_flight = 0
    try:
        for number, batch in enumerate(batches):
            out.extend(rows_of(op.process(batch, ctx))[0])
            if number == cut:
                assert op.batcher.pending > 0  # rows queued at the barrier
                in_flight = len(op._in_flight)
                drained, marks = rows_of(op.on_barrier(ctx))
                out.extend(drained)
                assert op.state_size() == 0  # nothing held: all rows before the barrier left
                assert marks[-1] == batch.watermark  # the held-back watermark is released
                assert [r[POSITION] for r in out] == list(range(sum(b.df.height for b in batches[: cut + 1])))
                saved = codec(op.snapshot())
                op.close()
                op = make()
                op.restore(saved)
        out.extend(rows_of(op.finish(ctx))[0])
    finally:
        op.close()
    assert ctx.dead_letters.total == 0
    return out, in_flight


@pytest.mark.parametrize("workers", [1, 3])
def test_infer_drained_at_a_barrier_and_restored_gives_the_rows_of_an_uninterrupted_run(workers: int) -> None:
    batches = infer_batches(300, 20)
    expected, _ = drive_infer(lambda: infer_operator(SlowScale(), workers), batches, None)
    assert [r["x"] for r in expected] == list(range(300))
    assert all(r["y"] == 2 * r["x"] and r["model_version"] == "m:1" for r in expected)
    in_flight = []
    for cut in (0, 6, 12):  # 20 rows a batch, 8 a model batch: 4 rows queued at each cut
        got, running = drive_infer(lambda: infer_operator(SlowScale(), workers), batches, cut)
        assert got == expected
        in_flight.append(running)
    assert max(in_flight) > 0  # model batches were running at the barrier (50 ms each)


def test_infer_snapshot_is_small_and_refused_while_rows_are_inside() -> None:
    ctx = StepContext(DeadLetters())
    op = infer_operator(SlowScale(delay=0.2), 1)
    try:
        rows_of(op.process(infer_batches(20, 20)[0], ctx))
        with pytest.raises(RuntimeError, match="drain with on_barrier"):
            op.snapshot()
        rows_of(op.on_barrier(ctx))
        assert op.snapshot() == {
            "kind": "infer",
            "version": 1,
            "model_version": "m:1",
            "size_cap": None,
            "watermark": 20_000,
        }
    finally:
        op.close()


def test_a_restored_infer_step_serves_the_registrys_champion_and_keeps_the_cap_only_for_its_version() -> None:
    registry = FakeRegistry(Scale(1.0, version="m:1"))
    ctx = StepContext(DeadLetters())
    op = infer_operator(registry, 1)
    try:
        rows_of(op.process(infer_batches(8, 8)[0], ctx))
        rows_of(op.on_barrier(ctx))
        op._size_cap = 3  # as if a batch had failed for its size
        saved = codec(op.snapshot())
    finally:
        op.close()
    assert saved["model_version"] == "m:1" and saved["size_cap"] == 3
    same = infer_operator(registry, 1)  # nothing changed while the flow was down
    same.restore(saved)
    assert same._size_cap == 3 and same.metrics()["restored_from_version"] == "m:1"
    same.close()
    registry.promote(Scale(10.0, version="m:2"))  # promoted while the flow was down
    moved = infer_operator(registry, 1, start=False)
    moved.restore(saved)  # restore before start: the runtime may do either
    moved.start(lambda: None, threading.Event())
    try:
        out, _ = rows_of(moved.process(infer_batches(8, 8)[0], ctx))
        out += rows_of(moved.finish(ctx))[0]
        assert {r["model_version"] for r in out} == {"m:2"} and [r["y"] for r in out] == [10.0 * i for i in range(8)]
        assert moved._size_cap is None  # the cap was learned on m:1
        assert moved.metrics()["restored_from_version"] == "m:1"
    finally:
        moved.close()


# -- learn ----------------------------------------------------------------------------------------
def concept_frame(n: int, seed: int = 3, flip_at: int | None = None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x[:, 0] + x[:, 1] > 0
    if flip_at is not None:
        y[flip_at:] = ~y[flip_at:]
    labels = [None if i % 5 == 4 else bool(v) for i, v in enumerate(y)]  # some rows unlabelled
    return pl.DataFrame({"id": range(n), "x1": x[:, 0], "x2": x[:, 1], "y": labels, "t": range(n)})


def learn_operator(handler: ModelHandler[Any], task: str = "classification", granularity: str = "record") -> Operator:
    op = LearnOperator(
        "fit",
        "dlq",
        handler,
        inputs=["x1", "x2"],
        label="y",
        output="prediction",
        task=task,
        window=100,
        every=37,
        granularity=granularity,  # type: ignore[arg-type]
        device="cpu",
        time="t",
    )
    return op


def drive(
    make: Callable[[], Operator], batches: list[Batch], cuts: Iterable[int], ports: tuple[str, ...] = ()
) -> tuple[list[Record], list[Record]]:
    """Rows and side-output rows of a run checkpointed (barrier, snapshot, pickle, restore into a
    fresh operator) before each batch in ``cuts``."""
    ctx = StepContext(DeadLetters())
    op = make()
    op.start(lambda: None, threading.Event())
    out: list[Record] = []
    side: list[Record] = []
    for number, batch in enumerate(batches):
        if number in cuts:
            out.extend(rows_of(op.on_barrier(ctx))[0])
            saved = codec(op.snapshot())
            op.close()
            op = make()
            op.restore(saved)
            op.start(lambda: None, threading.Event())
        out.extend(rows_of(op.process(batch, ctx))[0])
        for port in ports:
            side.extend(r for b in op.side_outputs.pop(port, []) for r in b.df.to_dicts())
    out.extend(rows_of(op.finish(ctx))[0])
    op.close()
    return out, side


def river_classifier() -> ModelHandler[Any]:
    from river import linear_model, preprocessing

    return tdf.ai.RiverModel(preprocessing.StandardScaler() | linear_model.LogisticRegression(), concurrency="thread")


def sklearn_classifier() -> ModelHandler[Any]:
    from sklearn.linear_model import SGDClassifier

    return tdf.ai.SklearnModel(SGDClassifier(random_state=0), classes=[False, True])


@pytest.mark.parametrize(
    ("handler", "granularity"),
    [(river_classifier, "record"), (sklearn_classifier, "batch")],
    ids=["river-record", "sklearn-batch"],
)
def test_a_restored_learn_step_predicts_and_scores_as_an_uninterrupted_one(
    handler: Callable[[], ModelHandler[Any]], granularity: str
) -> None:
    batches = cut_into(concept_frame(900, flip_at=450), 23)
    expected, metrics = drive(lambda: learn_operator(handler(), granularity=granularity), batches, [], (METRICS_PORT,))
    assert len(metrics) == 720 // 37  # labelled rows, every 37
    assert any(r["prediction"] is not None for r in expected)
    for cuts in ([1], [5, 17, 30]):
        got, got_metrics = drive(
            lambda: learn_operator(handler(), granularity=granularity), batches, cuts, (METRICS_PORT,)
        )
        assert got == expected
        assert got_metrics == metrics


def test_learn_snapshot_detaches_the_model_and_refuses_another_handler() -> None:
    op = learn_operator(river_classifier())
    op.start(lambda: None, threading.Event())
    ctx = StepContext(DeadLetters())
    batches = cut_into(concept_frame(100), 50)
    op.process(batches[0], ctx)
    saved = op.snapshot()
    frozen = pickle.dumps(saved["model"], protocol=5)
    op.process(batches[1], ctx)  # learning goes on in the operator, not in the snapshot
    assert pickle.dumps(saved["model"], protocol=5) == frozen
    assert saved["learned"] == 40 and len(saved["metrics"]["actual"]) == 40
    with pytest.raises(ValueError, match="served by RiverModel"):
        learn_operator(sklearn_classifier()).restore(saved)


# -- detect_drift ---------------------------------------------------------------------------------
def drift_values(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(11)
    keys = rng.choice(["a", "b", "c"], size=n)
    shift = np.where(np.arange(n) > n // 2, np.where(keys == "b", 3.0, 0.0), 0.0)
    x = rng.normal(size=n) + shift
    x[rng.random(n) < 0.01] = np.nan  # skipped, as missing values are
    return pl.DataFrame({"k": keys, "x": x, "t": range(n)})


@pytest.mark.parametrize(
    "detector",
    [
        lambda: drift.adwin(),
        lambda: drift.page_hinkley(threshold=20.0),
        lambda: drift.kswin(seed=1),
        lambda: drift.PopulationStability(window=100, check_every=25),
    ],
    ids=["adwin", "page-hinkley", "kswin", "psi"],
)
def test_a_restored_drift_step_reports_the_events_of_an_uninterrupted_one(detector: Callable[[], Any]) -> None:
    def make() -> Operator:
        return DriftOperator("drift", "dlq", detector, on="x", key=["k"], time="t")

    batches = cut_into(drift_values(3000), 70)
    expected, _ = drive(make, batches, [])
    assert any(e["key"] == "b" for e in expected)
    for cuts in ([3], [10, 21, 22, 35]):
        assert drive(make, batches, cuts)[0] == expected


# -- retrain --------------------------------------------------------------------------------------
class GatedFit:
    """``fit`` that waits for ``gate``: a training is still running when the checkpoint comes,
    for certain, until the test opens the gate."""

    def __init__(self, *, open_: bool) -> None:
        self.calls = 0
        self.gate = threading.Event()
        if open_:
            self.gate.set()

    def __call__(self, frame: pl.DataFrame) -> Any:
        self.calls += 1
        assert self.gate.wait(30), "the test never opened the gate"
        return fit(frame)


def new_registry(root: Path) -> tdf.ai.ModelRegistry:
    root.mkdir(parents=True)
    registry = tdf.ai.ModelRegistry(root / "models")
    path = root / "v1.joblib"
    joblib.dump(fit(concept(2000, 0, "sum", seed=1)), path)
    registry.register("clf", path)
    registry.promote("clf", 1)
    return registry


def drive_retrain(
    root: Path, cuts: Iterable[int], *, background: bool, train: Callable[[pl.DataFrame], Any] = fit
) -> tuple[list[Record], list[dict[str, Any]]]:
    """Decisions of a retrain step (each run with its own registry: promotions are its effects)."""
    registry = new_registry(root)
    frame = pl.concat([concept(2000, 0, "sum", 5), concept(1000, 2000, "difference", 6), concept(3000, 3000, "sum", 7)])
    policy = tdf.ai.RetrainPolicy(
        registry=registry,
        name="clf",
        train=train,
        every=2500,
        window=500,
        min_rows=500,
        shadow=400,
        margin=0.05,
        cooldown=100,
        background=background,
    )

    def make() -> RetrainOperator:
        return RetrainOperator("retrain", "dlq", policy, ["x1", "x2"], "y")

    ctx = StepContext(DeadLetters())
    op = make()
    decisions: list[Record] = []
    snapshots: list[dict[str, Any]] = []
    for number, batch in enumerate(cut_into(frame, 150)):
        if number in cuts:
            decisions.extend(rows_of(op.on_barrier(ctx))[0])
            saved = codec(op.snapshot())
            snapshots.append(saved["loop"])
            op = make()
            op.restore(saved)
        got = rows_of(op.process(batch, ctx))[0]
        decisions.extend(got)
        if background and got and got[-1]["action"] == "retrain":
            if number + 1 in cuts:  # checkpoint while the training runs
                decisions.extend(rows_of(op.on_barrier(ctx))[0])
                saved = codec(op.snapshot())
                assert saved["loop"]["training"] is not None
                snapshots.append(saved["loop"])
                op = make()
                op.restore(saved)
                if isinstance(train, GatedFit):
                    train.gate.set()  # the snapshot is taken: trainings may finish now
                cuts = [c for c in cuts if c != number + 1]
            # Both runs adopt the challenger at the same row: wait for it before the next batch.
            deadline = time.monotonic() + 30
            while not any(d["action"] == "trained" for d in decisions[-3:]):
                assert time.monotonic() < deadline
                time.sleep(0.01)
                decisions.extend(rows_of(op.on_tick(ctx))[0])
    decisions.extend(rows_of(op.finish(ctx))[0])
    return [{k: v for k, v in d.items() if k != POSITION} for d in decisions], snapshots


def test_a_restored_retrain_step_decides_as_an_uninterrupted_one(tmp_path: Path) -> None:
    expected, _ = drive_retrain(tmp_path / "alone", [], background=False)
    actions = [(d["action"], d["labelled_rows"]) for d in expected]
    assert actions[:5] == [
        ("retrain", 2500),
        ("trained", 2500),
        ("promote", 2900),
        ("rollback", 3300),
        ("retrain", 5000),
    ]
    # Cuts in the challenger's shadow (batch 18: 2,700 rows), in the review after the promotion
    # (batch 20: 3,000 rows), and around the decisions.
    got, snapshots = drive_retrain(tmp_path / "cut", [17, 18, 20, 21, 34], background=False)
    assert got == expected
    assert snapshots[1]["trial"] is not None and len(snapshots[1]["trial"]["actual"]) == 200
    assert any(s["watch"] is not None for s in snapshots)


def test_a_training_in_flight_at_a_checkpoint_is_run_again_after_the_restore(tmp_path: Path) -> None:
    slow = GatedFit(open_=True)
    expected, _ = drive_retrain(tmp_path / "alone", [], background=True, train=slow)
    assert slow.calls == 2
    resumed = GatedFit(open_=False)
    got, snapshots = drive_retrain(tmp_path / "cut", [17], background=True, train=resumed)
    assert resumed.calls == 3  # the training cut off by the checkpoint ran again
    assert snapshots[0]["training"].height == 500
    assert got == expected
