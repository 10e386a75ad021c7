"""The crash test in CI: SIGKILL at random moments (and inside checkpoint writes), resume,
and the sinks end up exactly as after one uninterrupted run. The full count of trials runs in
``benchmarks/crash_recovery.py``; set ``TIDEFLOW_CRASH_TRIALS`` to run more here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tideflow.bench.recovery import run_trials

TRIALS = int(os.environ.get("TIDEFLOW_CRASH_TRIALS", "4"))


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_then_resume_writes_exactly_the_uninterrupted_output(tmp_path: Path) -> None:
    results = run_trials(tmp_path, trials=TRIALS, payments=30_000, seed=int(os.environ.get("TIDEFLOW_CRASH_SEED", "1")))
    for result in results:
        assert result.equal, f"trial {result.trial} (killed at {result.killed_at}): {result.differences}"
    assert any(result.self_kill and result.kills for result in results)  # one died inside a checkpoint write
    # Some kills came after checkpoints existed: those runs really resumed mid-stream.
    assert any(epoch is not None for result in results for _, epoch in result.killed_at)
