"""The crash test: kill a checkpointed run with SIGKILL at random moments, resume, compare.

Each trial runs :mod:`tideflow.bench.crash_pipeline` in a child process (``tideflow run
--checkpoint-dir D --resume``), kills it (``SIGKILL``: no handler runs, nothing is flushed) after
a random delay, starts it again with ``--resume``, and repeats; the last start runs to the end.
Some trials instead make the child kill itself in the middle of writing a checkpoint
(``TIDEFLOW_CRASH_AT=save:N``, a hook of the checkpoint store). The final contents of every
sink must equal those of one uninterrupted run: no row lost, none repeated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..checkpoint.store import open_store
from .crash_pipeline import make_crash_data

PIPELINE = Path(__file__).with_name("crash_pipeline.py")


@dataclass
class TrialResult:
    """One trial: how often it was killed, and whether its outputs equal the reference."""

    trial: int
    kills: int
    self_kill: bool
    equal: bool
    differences: dict[str, str] = field(default_factory=dict)
    resumed_epochs: list[int] = field(default_factory=list)
    killed_at: list[tuple[float, int | None]] = field(default_factory=list)
    """Per kill: seconds after the start, and the newest checkpoint on disk right after it."""
    seconds: float = 0.0


def read_outputs(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every sink's visible rows, sorted (row order between batches is not part of the contract)."""
    outputs: dict[str, list[tuple[Any, ...]]] = {}
    database = out / "results.db"
    if database.exists():
        with sqlite3.connect(database) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rows = conn.execute("SELECT * FROM totals").fetchall() if "totals" in tables else []
        outputs["totals_db"] = sorted(rows, key=repr)
    else:
        outputs["totals_db"] = []
    for name, reader in (("scored.jsonl", pl.read_ndjson), ("joined.csv", pl.read_csv)):
        path = out / name
        rows = reader(path).rows() if path.exists() and path.stat().st_size else []
        outputs[name] = sorted(rows, key=repr)
    return outputs


def compare(expected: dict[str, list[tuple[Any, ...]]], got: dict[str, list[tuple[Any, ...]]]) -> dict[str, str]:
    """What differs, per sink: counts of missing and repeated rows."""
    differences: dict[str, str] = {}
    for sink, rows in expected.items():
        other = got.get(sink, [])
        if rows == other:
            continue
        want: dict[str, int] = {}
        for row in rows:
            want[repr(row)] = want.get(repr(row), 0) + 1
        have: dict[str, int] = {}
        for row in other:
            have[repr(row)] = have.get(repr(row), 0) + 1
        missing = sum(max(0, n - have.get(k, 0)) for k, n in want.items())
        extra = sum(max(0, n - want.get(k, 0)) for k, n in have.items())
        differences[sink] = f"{len(rows)} expected, {len(other)} written: {missing} missing, {extra} extra"
    return differences


class CrashTest:
    """Runs the reference once, then trials against it."""

    def __init__(self, workdir: Path, *, payments: int = 40_000, every: str = "100ms", seed: int = 1) -> None:
        self.workdir = workdir
        self.data = make_crash_data(workdir / "data", payments=payments)
        self.every = every
        self.rng = random.Random(seed)
        self.expected: dict[str, list[tuple[Any, ...]]] = {}
        self.reference_seconds = 0.0

    def _command(self, checkpoints: Path | None) -> list[str]:
        command = [sys.executable, "-m", "tideflow.cli", "run", str(PIPELINE), "--quiet", "--json"]
        if checkpoints is not None:
            command += ["--checkpoint-dir", str(checkpoints), "--checkpoint-every", self.every, "--resume"]
        return command

    def _env(self, out: Path, crash_at: str | None = None) -> dict[str, str]:
        env = dict(os.environ, TIDEFLOW_CRASH_DATA=str(self.data), TIDEFLOW_CRASH_OUT=str(out), PYTHONWARNINGS="ignore")
        env.pop("TIDEFLOW_CRASH_AT", None)
        if crash_at is not None:
            env["TIDEFLOW_CRASH_AT"] = crash_at
        return env

    def reference(self) -> dict[str, list[tuple[Any, ...]]]:
        """One uninterrupted run without checkpoints: what every trial must end with."""
        out = self.workdir / "reference"
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        done = subprocess.run(self._command(None), env=self._env(out), capture_output=True, text=True, check=False)
        self.reference_seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"the reference run failed:\n{done.stderr[-4000:]}")
        self.expected = read_outputs(out)
        if not all(self.expected.values()):
            raise RuntimeError(
                f"the reference run wrote an empty sink: { {k: len(v) for k, v in self.expected.items()} }"
            )
        return self.expected

    def trial(self, number: int, *, kills: int, self_kill: bool = False) -> TrialResult:
        """Kill the run ``kills`` times at random moments (the first one, with ``self_kill``,
        inside a checkpoint write), then let it finish; compare with the reference."""
        out = self.workdir / f"trial-{number}" / "out"
        checkpoints = self.workdir / f"trial-{number}" / "checkpoints"
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = TrialResult(number, 0, self_kill, False)
        window = max(0.5, self.reference_seconds)
        for attempt in range(kills + 1):
            crash_at = f"save:{self.rng.randint(1, 4)}" if self_kill and attempt == 0 else None
            child = subprocess.Popen(
                self._command(checkpoints),
                env=self._env(out, crash_at),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            delay = self.rng.uniform(0.3, 1.1) * window if attempt < kills and crash_at is None else None
            if delay is not None:
                try:
                    child.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    child.send_signal(signal.SIGKILL)
            stdout, stderr = child.communicate(timeout=600)
            if child.returncode == -signal.SIGKILL:
                result.kills += 1
                result.killed_at.append((round(delay, 3) if delay else -1.0, _latest_epoch(checkpoints)))
                continue
            if child.returncode != 0:
                raise RuntimeError(
                    f"trial {number}, start {attempt + 1} failed ({child.returncode}):\n{stderr[-4000:]}"
                )
            summary = json.loads(stdout)
            if summary.get("recovery"):
                result.resumed_epochs.append(summary["recovery"]["epoch"])
            if attempt < kills:
                continue  # finished before the kill came: the next start resumes a finished run
        result.differences = compare(self.expected, read_outputs(out))
        result.equal = not result.differences
        result.seconds = time.perf_counter() - started
        return result


def _latest_epoch(checkpoints: Path) -> int | None:
    if not checkpoints.exists():
        return None
    with open_store(checkpoints) as store:
        epochs = store.epochs()
    return epochs[-1] if epochs else None


def run_trials(workdir: Path, *, trials: int, payments: int = 40_000, seed: int = 1) -> list[TrialResult]:
    """The reference, then ``trials`` trials (every fourth one kills itself inside a checkpoint
    write; the others are killed 1 to 3 times at random)."""
    test = CrashTest(workdir, payments=payments, seed=seed)
    test.reference()
    results = []
    for number in range(trials):
        self_kill = number % 4 == 3
        results.append(test.trial(number, kills=1 if self_kill else test.rng.randint(1, 3), self_kill=self_kill))
    return results
