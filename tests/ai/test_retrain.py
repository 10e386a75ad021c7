"""Retrain and promote: a drifted concept ends with a better model serving, decided on evidence."""

from __future__ import annotations

import json

import joblib
import polars as pl
import pytest

import tideflow as tdf
from tideflow.ai import drift

from .models_for_tests import concept, fit

sklearn = pytest.importorskip("sklearn")
pytest.importorskip("river")


@pytest.fixture
def registry(tmp_path):  # type: ignore[no-untyped-def]
    registry = tdf.ai.ModelRegistry(tmp_path / "models")
    path = tmp_path / "v1.joblib"
    joblib.dump(fit(concept(2000, 0, "sum", seed=1)), path)
    registry.register("clf", path, metrics={"accuracy": 0.99})
    registry.promote("clf", 1)
    return registry


def closed_loop(registry, rows, *, drift_detection=True, **policy_options):  # type: ignore[no-untyped-def]
    policy = tdf.ai.RetrainPolicy(registry=registry, name="clf", train=fit, **policy_options)
    flow = tdf.Flow("closed-loop")
    scored_sink, decisions = tdf.io.MemorySink(), tdf.io.MemorySink()
    scored = flow.source("src", tdf.io.IterableSource(iter(rows), batch_size=100, linger="1ms")).infer(
        "score",
        tdf.ai.RegisteredModel("clf", registry=registry),
        inputs=["x1", "x2"],
        outputs="prediction",
        batching=tdf.Batching(max_size=100, max_wait="1ms"),
        swap_check=0,
    )
    scored.sink("scored", scored_sink)
    errors = scored.with_columns("error", miss=(pl.col("prediction") != pl.col("y")).cast(pl.Float64))
    drifts = errors.detect_drift("drift", on="miss", detector=drift.adwin(direction="up")) if drift_detection else None
    scored.retrain("retrain", policy, inputs=["x1", "x2"], label="y", drift=drifts).sink("decisions", decisions)
    flow.run(handle_signals=False)
    return scored_sink.frame, decisions.records


def test_after_a_concept_change_a_better_model_ends_up_serving(registry) -> None:  # type: ignore[no-untyped-def]
    rows = concept(3000, 0, "sum", seed=2).to_dicts() + concept(9000, 3000, "difference", seed=3).to_dicts()
    scored, decisions = closed_loop(registry, rows, min_rows=600, shadow=600, margin=0.05, cooldown=500)
    actions = [d["action"] for d in decisions]
    assert actions[:4] == ["retrain", "trained", "promote", "confirm"], decisions
    assert decisions[0]["reason"].startswith("drift:")
    promote = decisions[2]
    evidence = json.loads(promote["evidence"])
    assert evidence["challenger"] >= evidence["champion"] + 0.05  # promoted on evidence, by the margin
    assert promote["version"] == "clf:2" and registry.champion("clf").label == "clf:2"
    # Every row was scored once, by the version it names; the last rows by the new champion, well.
    assert scored.get_column("id").to_list() == list(range(12_000))
    tail = scored.tail(2000)
    assert set(tail.get_column("model_version")) == {"clf:2"}
    assert (tail.get_column("prediction") == tail.get_column("y")).mean() > 0.95
    after_change = scored.filter(pl.col("id").is_between(3000, 3500))
    assert (after_change.get_column("prediction") == after_change.get_column("y")).mean() < 0.7


def test_a_challenger_that_is_not_better_is_rejected(registry) -> None:  # type: ignore[no-untyped-def]
    rows = concept(6000, 0, "sum", seed=4).to_dicts()
    _, decisions = closed_loop(registry, rows, every=1500, min_rows=500, shadow=500, margin=0.05, cooldown=100)
    actions = [d["action"] for d in decisions]
    assert "retrain" in actions and "reject" in actions and "promote" not in actions
    assert decisions[0]["reason"].startswith("schedule:")
    assert registry.champion("clf").label == "clf:1"


def test_a_promotion_that_disappoints_is_rolled_back(registry) -> None:  # type: ignore[no-untyped-def]
    """A short-lived concept: a challenger trained on it wins its shadow, is promoted, then the
    old concept returns during the review and the registry rolls back.

    Scheduled and in line (no drift detector, ``background=False``): each decision falls at a
    fixed row whatever the batches, so the test does not depend on timing."""
    rows = concept(2000, 0, "sum", seed=5).to_dicts() + concept(1000, 2000, "difference", seed=6).to_dicts()
    rows += concept(3000, 3000, "sum", seed=7).to_dicts()
    _, decisions = closed_loop(
        registry,
        rows,
        drift_detection=False,
        every=2500,
        window=500,
        min_rows=500,
        shadow=400,
        margin=0.05,
        cooldown=100,
        background=False,
    )
    actions = [(d["action"], d["labelled_rows"]) for d in decisions]
    assert actions[:5] == [
        ("retrain", 2500),
        ("trained", 2500),
        ("promote", 2900),
        ("rollback", 3300),
        ("retrain", 5000),
    ]
    promote, rollback = decisions[2], decisions[3]
    assert promote["version"] == "clf:2" and rollback["version"] == "clf:1"
    evidence = json.loads(rollback["evidence"])
    assert evidence["after_promotion"] < evidence["in_shadow"] - 0.05
    assert registry.champion("clf").label == "clf:1"
