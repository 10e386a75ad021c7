"""`tideflow bench inference --json`: the contract of its JSON object, on a small run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tideflow.cli import app

pytest.importorskip("sklearn")


def test_bench_inference_json_has_the_issue_keys() -> None:
    args = ["bench", "inference", "-m", "isolation-forest", "--events", "6000", "--repeat", "1"]
    result = CliRunner().invoke(app, [*args, "--latency-seconds", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    (row,) = payload["results"]
    for key in ("model", "batch_size", "pipeline_per_s", "raw_model_per_s", "ratio_to_raw", "per_record_per_s"):
        assert key in row
    assert set(row["latency_ms"]) >= {"p50", "p99"}
    assert row["model"] == "isolation-forest" and row["batch_size"] == 1024
    assert row["ratio_to_raw"] == pytest.approx(row["pipeline_per_s"] / row["raw_model_per_s"], abs=1e-3)
    assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]


def test_bench_inference_refuses_an_unknown_model() -> None:
    result = CliRunner().invoke(app, ["bench", "inference", "-m", "gpt", "--json"])
    assert result.exit_code != 0 and "unknown model" in result.output
