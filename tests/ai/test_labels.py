"""Delayed labels: predictions meet labels that come later; those that never do are counted."""

from __future__ import annotations

import numpy as np
import pytest

import tideflow as tdf

river = pytest.importorskip("river")


def test_predictions_meet_their_late_labels_and_the_rest_are_counted() -> None:
    from river import linear_model

    rng = np.random.default_rng(0)
    n = 2000
    predictions = [{"id": i, "ts": i * 1000, "x1": float(rng.normal()), "x2": float(rng.normal())} for i in range(n)]
    delays = rng.integers(0, 120_000, n)  # labels come 0–120 s after their prediction
    labelled = [i for i in range(n) if i % 5]  # every fifth label never comes
    label_rows = sorted(
        (
            {"id": i, "ts": i * 1000 + int(delays[i]), "y": predictions[i]["x1"] + predictions[i]["x2"] > 0}
            for i in labelled
        ),
        key=lambda r: r["ts"],
    )
    within = 60_000
    flow = tdf.Flow("delayed")
    matched_sink, unlabelled_sink, metrics = tdf.io.MemorySink(), tdf.io.MemorySink(), tdf.io.MemorySink()
    watermark = tdf.BoundedOutOfOrder(0)
    preds = flow.source("predictions", tdf.io.MemorySource(predictions, time="ts", batch_size=64), watermark=watermark)
    labels = flow.source("labels", tdf.io.MemorySource(label_rows, time="ts", batch_size=64), watermark=watermark)
    paired = tdf.ai.join_labels(preds, labels, "join-labels", on="id", label="y", within=within)
    model = tdf.ai.RiverModel(linear_model.LogisticRegression(), concurrency="thread")
    learned = paired.matched.learn("model", model, inputs=["x1", "x2"], label="y")
    learned.sink("matched", matched_sink)
    learned.metrics().sink("metrics", metrics)
    paired.unlabelled.sink("unlabelled", unlabelled_sink)
    result = flow.run(handle_signals=False)

    on_time = {i for i in labelled if delays[i] <= within}
    assert sorted(matched_sink.frame.get_column("id").to_list()) == sorted(on_time)
    assert sorted(unlabelled_sink.frame.get_column("id").to_list()) == sorted(set(range(n)) - on_time)
    assert result.step("unlabelled").records_in == n - len(on_time)  # counted, not forgotten
    assert metrics.frame.get_column("accuracy").to_list()[-1] > 0.9  # the pairs taught the model
