"""The ``detect_drift`` step: a drift detector per key over one column; its output is the
stream of drift events (the records themselves go on through the input stream, unchanged).

Checkpoints: the state is each key's detector and its count of values; ``snapshot()`` deep-copies
the detectors (River's and tideflow's pickle as objects), so a restored step reports the same
events, at the same indices, as the uninterrupted one."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import polars as pl

from ..ai.drift import DriftDetector
from ..record import Batch
from .base import OnError, Operator, StepContext

EVENT_SCHEMA = {"step": pl.String, "column": pl.String, "key": pl.String, "detector": pl.String, "index": pl.Int64}
SNAPSHOT_VERSION = 1


class DriftOperator(Operator):
    def __init__(
        self,
        step: str,
        on_error: OnError,
        make_detector: Callable[[], DriftDetector],
        *,
        on: str,
        key: list[str] | None,
        time: str | None,
    ) -> None:
        super().__init__(step, on_error)
        self.make_detector = make_detector
        self.on = on
        self.key = key
        self.time = time
        self.detectors: dict[Any, DriftDetector] = {}
        self.seen: dict[Any, int] = {}

    def state_size(self) -> int:
        return len(self.detectors)

    def snapshot(self) -> dict[str, Any]:
        """Each key's detector (deep copies: they go on learning here) and its count of values."""
        return {
            "kind": "detect_drift",
            "version": SNAPSHOT_VERSION,
            "detectors": copy.deepcopy(self.detectors),
            "seen": dict(self.seen),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("kind") != "detect_drift" or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"step {self.step!r}: not a detect_drift snapshot (kind {snapshot.get('kind')!r})")
        self.detectors = copy.deepcopy(snapshot["detectors"])
        self.seen = dict(snapshot["seen"])

    def process(self, batch: Batch, ctx: StepContext) -> Batch | None:
        df = batch.df
        self.records_in += df.height
        if self.on not in df.columns:
            raise KeyError(f"step {self.step!r}: column {self.on!r} is not in the stream ({df.columns})")
        parts = df.partition_by(self.key, maintain_order=True, as_dict=True).items() if self.key else [((None,), df)]
        events: list[dict[str, Any]] = []
        for key_values, part in parts:
            key = key_values if self.key else None
            column = pl.col(self.on)
            usable = (
                column.is_not_null() & column.is_not_nan() if part.schema[self.on].is_float() else column.is_not_null()
            )
            kept = part.filter(usable)  # a missing value says nothing about drift: it is skipped
            if not kept.height:
                continue
            detector = self.detectors.get(key)
            if detector is None:
                detector = self.detectors[key] = self.make_detector()
                self.seen[key] = 0
            first = self.seen[key]
            found = detector.update(kept.get_column(self.on).to_numpy())
            self.seen[key] = first + kept.height
            times = kept.get_column(self.time) if self.time and self.time in kept.columns else None
            for event in found:
                row = event.index - first
                events.append(
                    {
                        "step": self.step,
                        "column": self.on,
                        "key": None if key is None else "/".join(map(str, key)),
                        "detector": event.detector,
                        "index": event.index,
                        "at": None if times is None else times[row],
                        "evidence": orjson.dumps(event.evidence).decode(),
                    }
                )
        if not events:
            return Batch(pl.DataFrame(), None, batch.watermark) if batch.watermark is not None else None
        out = pl.DataFrame(events, schema_overrides=EVENT_SCHEMA)
        self.records_out += out.height
        return Batch(out, batch.origin, batch.watermark)


def detect_drift(
    stream: Any,
    step: str,
    *,
    on: str,
    detector: DriftDetector | Callable[[], DriftDetector],
    on_error: OnError | None,
) -> Any:
    """Build the step (``Stream.detect_drift`` documents the arguments)."""
    from ..errors import FlowDefinitionError

    if hasattr(detector, "update"):
        template = detector

        def make() -> DriftDetector:
            return copy.deepcopy(template)  # one fresh detector per key, configured like the example

    elif callable(detector):
        make = detector  # type: ignore[assignment]
    else:
        raise FlowDefinitionError(
            f"step {step!r}: detector must be a drift detector (e.g. tdf.ai.drift.adwin()) or a function making one"
        )
    key, time = stream.key, stream.time

    def factory() -> DriftOperator:
        return DriftOperator(step, on_error or stream.flow.on_error, make, on=on, key=key, time=time)

    return stream._operator(step, factory, on_error=on_error, key=None)
