"""Retrain and promote: a challenger is trained when the data drifts, proves itself in shadow
mode on live labelled rows, and replaces the champion through the registry only if better.

The loop, as events (every decision carries its evidence):

1. ``retrain`` — a drift event arrived (or ``every`` labelled rows passed): the last ``window``
   labelled rows are handed to ``train`` on a background thread; the stream does not wait.
2. ``trained`` — the challenger exists; shadow mode starts.
3. ``shadow`` verdict — over the next ``shadow`` labelled rows, champion and challenger both
   predict each row before its label is compared; the challenger must beat the champion's
   metric by ``margin``. ``promote`` registers and promotes it (an ``infer`` step following
   the name swaps it in at a batch boundary); ``reject`` discards it.
4. ``rollback`` — after a promotion, if the new champion's metric over the next ``shadow`` rows
   falls below what the old one scored in shadow by more than ``margin``, the registry rolls back.

Checkpoints (``RetrainLoop.snapshot`` / ``restore``): the loop's counters, its recent rows, a
pending request, and the challenger in shadow (or the promoted model under review) with its
paired predictions. A training still running in the background at a checkpoint is *not* waited
for (that would hold the barrier, and the whole flow, for as long as training takes): the
snapshot keeps the rows it was given, and a restored loop trains again on them as it next runs.
With a deterministic ``train`` that gives the same challenger; the ``trained`` event then comes
when the new training ends, as it would have with a slower training. The registry is outside the
checkpoint: a promotion or rollback made after the last checkpoint, before a crash, is made again
when the rows that led to it are replayed (registering the challenger once more).
"""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from .base import ModelHandler, as_columns
from .registry import ModelRegistry, RegisteredModel

Trainer = Callable[[pl.DataFrame], Any]
"""Gets the recent labelled rows (inputs and label); returns a fitted estimator (anything with
scikit-learn's ``predict``), saved with joblib into the registry when promoted."""


@dataclass
class RetrainPolicy:
    """When and how to retrain, and how a challenger must prove itself."""

    registry: ModelRegistry
    name: str
    train: Trainer
    window: int = 5_000
    """Labelled rows kept for training (the most recent)."""
    min_rows: int = 500
    """Labelled rows to train on at least: after a drift, retraining waits for this many rows
    that came after it, so the challenger learns the new concept, not the old."""
    shadow: int = 1_000
    """Labelled rows on which champion and challenger are compared."""
    margin: float = 0.02
    """How much better (accuracy) or lower (MAE) the challenger must score."""
    metric: str = "accuracy"
    every: int | None = None
    """Also retrain on a schedule: every so many labelled rows (None: on drift only)."""
    cooldown: int = 1_000
    """Labelled rows after a decision before another retraining may start."""
    background: bool = True
    """Train on a background thread while the champion keeps serving (the stream never waits).
    False trains in line, at the row that triggered it: reproducible, for tests and replays."""
    loader: Callable[[Any], ModelHandler[Any]] | None = None
    """Builds a handler for a registered version (default: by the artifact's format)."""

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "mae"):
            raise ValueError(f"RetrainPolicy(metric={self.metric!r}): 'accuracy' or 'mae'")
        if min(self.window, self.min_rows, self.shadow) < 1:
            raise ValueError("RetrainPolicy: window, min_rows and shadow must be at least 1")

    def better(self, challenger: float, champion: float) -> bool:
        if self.metric == "accuracy":
            return challenger >= champion + self.margin
        return challenger <= champion - self.margin

    def score(self, predicted: np.ndarray, actual: np.ndarray) -> float:
        if self.metric == "accuracy":
            return float((predicted == actual).mean())
        return float(np.abs(predicted.astype(np.float64) - actual.astype(np.float64)).mean())


@dataclass
class _Trial:
    """A challenger in shadow mode: its model and the paired predictions so far."""

    handler: ModelHandler[Any]
    model: Any
    artifact: Path
    trained_on: int
    challenger: list[Any] = field(default_factory=list)
    champion: list[Any] = field(default_factory=list)
    actual: list[Any] = field(default_factory=list)


class RetrainLoop:
    """The policy's state machine, fed labelled rows and drift signals in stream order."""

    def __init__(self, policy: RetrainPolicy, inputs: list[str], label: str) -> None:
        self.policy = policy
        self.inputs = inputs
        self.label = label
        self.following = RegisteredModel(policy.name, registry=policy.registry, loader=policy.loader)
        self.recent: list[pl.DataFrame] = []
        self.recent_rows = 0
        self.labelled = 0
        self.last_decision = -(10**18)
        self.pending: tuple[str, int] | None = None
        """A retraining asked for (reason, from which labelled row on) and waiting for rows."""
        self.training: threading.Thread | None = None
        self.trained: tuple[Any, Path, int] | Exception | None = None
        self.training_data: pl.DataFrame | None = None
        """The rows the training in progress was given, kept until its outcome is adopted: a
        snapshot taken meanwhile keeps them, so that a restored loop trains again."""
        self.retrain_on_resume: pl.DataFrame | None = None
        """Rows of a training that was in progress at the checkpoint this loop was restored from."""
        self.trial: _Trial | None = None
        self.watch: _Trial | None = None
        """After a promotion: the new champion's record, to roll back if it disappoints."""
        self.watch_baseline: float | None = None
        self.events: list[dict[str, Any]] = []
        self._champion_cache: tuple[str, ModelHandler[Any], Any] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="tideflow-retrain-"))

    # -- inputs ------------------------------------------------------------------------------
    def drift(self, evidence: str) -> None:
        """A drift was detected now: retrain on the rows that come *after* it (the new concept),
        once ``min_rows`` of them have arrived."""
        self._request(f"drift: {evidence}", since=self.labelled)

    def poll(self) -> None:
        """Look for a finished training (called while no rows arrive)."""
        self._collect_training()

    def rows(self, frame: pl.DataFrame) -> None:
        """Labelled rows in stream order. They are taken in pieces that end exactly where a
        decision is due (a schedule tick, the end of a shadow or review window, enough rows
        after a drift), so decisions fall at the same rows however the stream was cut."""
        labelled = frame.filter(pl.col(self.label).is_not_null()).select([*self.inputs, self.label])
        self._collect_training()
        while labelled.height:
            piece = labelled.head(self._rows_until_next_decision())
            labelled = labelled.slice(piece.height)
            self._take(piece)

    def _rows_until_next_decision(self) -> int:
        due = []
        if self.policy.every:
            due.append(self.policy.every - self.labelled % self.policy.every)
        for trial in (self.trial, self.watch):
            if trial is not None:
                due.append(self.policy.shadow - len(trial.actual))
        if self.pending is not None:
            due.append(self.policy.min_rows - (self.labelled - max(self.pending[1], 0)))
        return max(1, min(due, default=1 << 62))

    def _take(self, labelled: pl.DataFrame) -> None:
        before = self.labelled
        self.labelled += labelled.height  # decisions below report the rows seen, these included
        if self.trial is not None or self.watch is not None:
            self._shadow(labelled)
        self.recent.append(labelled)
        self.recent_rows += labelled.height
        while self.recent_rows - self.recent[0].height >= self.policy.window:
            self.recent_rows -= self.recent.pop(0).height
        every = self.policy.every
        if every and self.labelled // every != before // every:
            self._request(f"schedule: every {every} labelled rows", since=self.labelled - self.policy.window)
        self._maybe_train()

    # -- steps of the loop -------------------------------------------------------------------
    def _request(self, reason: str, *, since: int) -> None:
        busy = self.pending is not None or self.training is not None or self.trial is not None
        if busy or self.watch is not None or self.labelled - self.last_decision < self.policy.cooldown:
            return
        self.pending = (reason, since)
        self._maybe_train()

    def _maybe_train(self) -> None:
        if self.pending is None:
            return
        reason, since = self.pending
        available = min(self.labelled - max(since, 0), self.recent_rows, self.policy.window)
        if available < self.policy.min_rows:
            return
        self.pending = None
        data = pl.concat(self.recent).tail(available)
        self._event("retrain", reason=reason, evidence={"rows": data.height})
        self._start_training(data)

    def _start_training(self, data: pl.DataFrame) -> None:
        self.training_data = data
        if not self.policy.background:
            self._train(data)
            self._adopt()
            return
        self.training = threading.Thread(target=self._train, args=(data,), name="tideflow-retrain", daemon=True)
        self.training.start()

    def _train(self, data: pl.DataFrame) -> None:
        try:
            fitted = self.policy.train(data)
            self.trained = (fitted, self._save(fitted), data.height)
        except Exception as error:  # reported as an event; the champion keeps serving
            self.trained = error

    def _save(self, fitted: Any) -> Path:
        import joblib  # a model we trained ourselves: joblib (pickle) is the estimator's own format

        path = self._workdir / f"challenger-{time.time_ns()}.joblib"
        joblib.dump(fitted, path)
        return path

    def _collect_training(self) -> None:
        if self.retrain_on_resume is not None:
            data, self.retrain_on_resume = self.retrain_on_resume, None
            self._start_training(data)
            return
        if self.training is None or self.training.is_alive():
            return
        self.training.join()
        self.training = None
        self._adopt()

    def _adopt(self) -> None:
        """Take the training's outcome: a challenger to shadow, or a failure event."""
        outcome, self.trained = self.trained, None
        self.training_data = None
        if isinstance(outcome, Exception):
            self._event("failed", reason=f"{type(outcome).__name__}: {outcome}")
            self.last_decision = self.labelled
            return
        assert outcome is not None
        fitted, artifact, rows = outcome
        from .sklearn import SklearnModel

        handler = SklearnModel(fitted)
        self.trial = _Trial(handler, handler.load("cpu"), artifact, rows)
        self._event("trained", evidence={"rows": rows})

    # -- checkpoints -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The loop's state as plain data and models (module doc). Frames are immutable and the
        fitted estimators are deep-copied, so the snapshot does not change as the loop goes on."""
        in_progress = self.training_data if self.retrain_on_resume is None else self.retrain_on_resume
        return {
            "recent": list(self.recent),
            "recent_rows": self.recent_rows,
            "labelled": self.labelled,
            "last_decision": self.last_decision,
            "pending": self.pending,
            "training": in_progress,
            "trial": _trial_state(self.trial),
            "watch": _trial_state(self.watch),
            "watch_baseline": self.watch_baseline,
            "events": copy.deepcopy(self.events),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take ``snapshot()``'s state; a training it had in progress starts again at the next
        ``rows`` or ``poll``. Challengers are saved anew (their artifact files were temporary)."""
        self.recent = list(state["recent"])
        self.recent_rows = state["recent_rows"]
        self.labelled = state["labelled"]
        self.last_decision = state["last_decision"]
        self.pending = None if state["pending"] is None else tuple(state["pending"])  # type: ignore[assignment]
        self.training, self.trained, self.training_data = None, None, None
        self.retrain_on_resume = state["training"]
        self.trial = self._trial_from(state["trial"])
        self.watch = self._trial_from(state["watch"])
        self.watch_baseline = state["watch_baseline"]
        self.events = copy.deepcopy(state["events"])

    def _trial_from(self, state: dict[str, Any] | None) -> _Trial | None:
        if state is None:
            return None
        from .sklearn import SklearnModel

        fitted = copy.deepcopy(state["model"])
        handler = SklearnModel(fitted)
        return _Trial(
            handler,
            handler.load("cpu"),
            self._save(fitted),
            state["trained_on"],
            list(state["challenger"]),
            list(state["champion"]),
            list(state["actual"]),
        )

    def _champion(self) -> tuple[ModelHandler[Any], Any]:
        """The registry's champion, loaded once per version."""
        version, handler = self.following.current()
        if self._champion_cache is None or self._champion_cache[0] != version.label:
            self._champion_cache = (version.label, handler, handler.load("cpu"))
        return self._champion_cache[1], self._champion_cache[2]

    def _shadow(self, labelled: pl.DataFrame) -> None:
        champion = self._predict(*self._champion(), labelled)
        actual = labelled.get_column(self.label).to_list()
        for trial in (t for t in (self.trial, self.watch) if t is not None):
            if trial is self.trial:
                trial.challenger.extend(self._predict(trial.handler, trial.model, labelled))
            trial.champion.extend(champion)
            trial.actual.extend(actual)
        if self.trial is not None and len(self.trial.actual) >= self.policy.shadow:
            self._decide(self.trial)
        if self.watch is not None and len(self.watch.actual) >= self.policy.shadow:
            self._review(self.watch)

    def _predict(self, handler: ModelHandler[Any], model: Any, rows: pl.DataFrame) -> list[Any]:
        predictions = handler.predict_batch(model, rows.select(self.inputs))
        return as_columns(predictions, ["p"], rows.height)["p"].to_list()

    def _decide(self, trial: _Trial) -> None:
        n = self.policy.shadow
        actual = np.array(trial.actual[:n])
        challenger = self.policy.score(np.array(trial.challenger[:n]), actual)
        champion = self.policy.score(np.array(trial.champion[:n]), actual)
        evidence = {"challenger": challenger, "champion": champion, "rows": n, "margin": self.policy.margin}
        self.trial = None
        self.last_decision = self.labelled
        if not self.policy.better(challenger, champion):
            self._event("reject", evidence=evidence)
            return
        registry, name = self.policy.registry, self.policy.name
        version = registry.register(name, trial.artifact, metrics={f"shadow_{self.policy.metric}": challenger})
        registry.promote(
            name, version.version, reason=f"shadow {self.policy.metric} {challenger:.4f} vs {champion:.4f}"
        )
        self._event("promote", version=version.label, evidence=evidence)
        self.watch = _Trial(trial.handler, trial.model, trial.artifact, trial.trained_on)
        self.watch_baseline = challenger

    def _review(self, watch: _Trial) -> None:
        """The promoted model on the rows after its promotion, against what it scored in shadow."""
        n = self.policy.shadow
        now = self.policy.score(np.array(watch.champion[:n]), np.array(watch.actual[:n]))
        baseline = self.watch_baseline
        assert baseline is not None
        self.watch = None
        evidence = {"after_promotion": now, "in_shadow": baseline, "rows": n}
        if self.policy.better(baseline, now):  # worse than its shadow score by more than the margin
            restored = self.policy.registry.rollback(self.policy.name)
            self._event("rollback", version=restored.label, evidence=evidence)
        else:
            self._event("confirm", evidence=evidence)

    def _event(
        self, action: str, *, reason: str | None = None, version: str | None = None, evidence: Any = None
    ) -> None:
        champion = self.policy.registry.champion(self.policy.name)
        self.events.append(
            {
                "action": action,
                "model": self.policy.name,
                "champion": champion.label if champion else None,
                "version": version,
                "labelled_rows": self.labelled,
                "reason": reason,
                "evidence": orjson.dumps(evidence or {}).decode(),
            }
        )


def _trial_state(trial: _Trial | None) -> dict[str, Any] | None:
    """A challenger (or reviewed champion) as data: its fitted model, a deep copy, and the
    paired predictions so far (scalars from polars, copied as lists)."""
    if trial is None:
        return None
    return {
        "model": copy.deepcopy(trial.model),
        "trained_on": trial.trained_on,
        "challenger": list(trial.challenger),
        "champion": list(trial.champion),
        "actual": list(trial.actual),
    }
