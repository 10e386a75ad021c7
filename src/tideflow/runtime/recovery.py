"""Resuming a run from a checkpoint: what goes back where, and what could not.

A checkpoint names its state by step. A resumed flow may differ from the one that wrote it
(a step added, renamed or changed): the state of every step whose name still matches is
restored, and the rest is reported — steps of the checkpoint the flow no longer has, steps of
the flow the checkpoint does not cover (they start empty), and steps whose restore refused the
state (another kind of step under the same name). Nothing is skipped silently.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.codec import decode, encode
from ..checkpoint.store import Checkpoint, CheckpointWarning
from ..ops.base import Operator
from ..ops.keygroups import KEY_GROUPS

log = logging.getLogger("tideflow.checkpoint")


def encode_parts(parts: dict[int, Any]) -> dict[int, bytes]:
    return {group: encode(value) for group, value in parts.items()}


def decode_parts(parts: dict[int, bytes]) -> dict[int, Any]:
    return {group: decode(blob) for group, blob in parts.items()}


def snapshot_operators(ops: list[Operator]) -> dict[str, dict[int, bytes]]:
    """Each stateful operator's state by key group, encoded, under its step name."""
    states: dict[str, dict[int, bytes]] = {}
    for op in ops:
        parts = op.snapshot_groups(KEY_GROUPS)
        if parts is not None:
            states[op.step] = encode_parts(parts)
    return states


@dataclass
class Recovery:
    """The checkpoint a run resumes from, handed out piece by piece, with a report."""

    checkpoint: Checkpoint
    restored: list[str] = field(default_factory=list)
    not_restored: dict[str, str] = field(default_factory=dict)
    """Steps of the flow whose state stayed empty, with the reason."""
    _used: set[str] = field(default_factory=set)

    @property
    def epoch(self) -> int:
        return self.checkpoint.epoch

    def source(self, step: str) -> dict[str, Any] | None:
        parts = self.checkpoint.steps.get(step)
        if parts is None:
            return None
        self._used.add(step)
        return decode_parts(parts)[-1]  # type: ignore[no-any-return]

    def sink_handle(self, step: str) -> Any:
        return self.checkpoint.sinks.get(step)

    def restore(self, step: str, apply: Any, *, stateful: bool = True) -> None:
        """Give ``apply`` (a ``restore_groups``-like callable) the state saved for ``step``."""
        parts = self.checkpoint.steps.get(step)
        if parts is None:
            if stateful:
                self.not_restored[step] = "not in the checkpoint: starts empty"
            return
        self._used.add(step)
        try:
            apply(decode_parts(parts))
        except (ValueError, TypeError, KeyError) as error:
            self.not_restored[step] = f"state not restored ({error}): starts empty"
            return
        self.restored.append(step)

    def expect_source(self, step: str) -> None:
        """A source of the flow: its position is used if the checkpoint has one, else reported."""
        if step in self.checkpoint.steps:
            self._used.add(step)
        else:
            self.not_restored[step] = "no position in the checkpoint: reads from the start"

    def report(self) -> dict[str, Any]:
        """Restored steps, steps left empty and why, and checkpoint steps the flow lacks."""
        dropped = sorted(set(self.checkpoint.steps) - self._used)
        return {
            "epoch": self.epoch,
            "restored": sorted(self.restored),
            "not_restored": dict(sorted(self.not_restored.items())),
            "dropped": dropped,
        }

    def warn(self) -> None:
        """One warning listing what could not be restored (a changed pipeline)."""
        report = self.report()
        problems = [f"{step}: {why}" for step, why in report["not_restored"].items()]
        problems += [
            f"{step}: in checkpoint {self.epoch} but not in the flow: its state is dropped"
            for step in report["dropped"]
        ]
        if problems:
            message = f"resumed from checkpoint {self.epoch} with differences:\n  " + "\n  ".join(problems)
            log.warning(message)
            warnings.warn(message, CheckpointWarning, stacklevel=3)
