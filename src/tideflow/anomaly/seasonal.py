"""Seasonal baseline: a point compared with past values at the same time of day (and week day).

Why: most telemetry follows the clock (traffic by day, batch jobs at night). A value that is
ordinary at 3 pm can be alarming at 3 am, and a trailing window that mixes both hours is blind to
it. Each time slot (``slot_minutes`` of the day, optionally per day of the week) keeps its own
history of the last ``history`` values seen in that slot; a point scores
``|x - median| / robust sigma`` against its slot's history: the robust z-score, per slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import as_float_array, epoch_ms, floored, keep_tail, robust_center_scale, trailing_stats

_MS_PER_MINUTE = 60_000
_MINUTES_PER_DAY = 1440
_EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday: day number + 3 is the weekday, Monday = 0."""


@dataclass
class SeasonalBaseline:
    """Robust z-score against the history of the point's time slot (UTC clock of the timestamps).

    ``slot_minutes=60`` with ``weekly=False`` gives 24 slots; ``weekly=True`` gives 7 x 24 (needs
    weeks of data before it scores). ``history``: values kept per slot (96 is eight days of
    5-minute data in an hour slot). ``min_history``: values a slot needs before it scores.
    """

    slot_minutes: int = 60
    weekly: bool = False
    history: int = 96
    min_history: int = 24
    min_spread_ratio: float = 0.01
    _slots: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.slot_minutes < 1 or _MINUTES_PER_DAY % self.slot_minutes:
            raise ValueError("slot_minutes must divide a day (1440 minutes)")
        if self.history < 2 or not 1 <= self.min_history <= self.history:
            raise ValueError("need history >= 2 and 1 <= min_history <= history")

    def slot_of(self, timestamps: np.ndarray) -> np.ndarray:
        """The slot number of each timestamp."""
        minutes = epoch_ms(timestamps) // _MS_PER_MINUTE
        slot = (minutes % _MINUTES_PER_DAY) // self.slot_minutes
        if self.weekly:
            weekday = (minutes // _MINUTES_PER_DAY + _EPOCH_WEEKDAY) % 7
            slot = slot + weekday * (_MINUTES_PER_DAY // self.slot_minutes)
        return slot

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        if timestamps is None:
            raise ValueError("SeasonalBaseline needs the timestamps of the points")
        x = as_float_array(values)
        slots = self.slot_of(timestamps)
        if len(slots) != len(x):
            raise ValueError(f"{len(slots)} timestamps for {len(x)} values")
        out = np.full(len(x), np.nan)
        # Each slot is its own series: the points of a slot, in order, against that slot's past.
        order = np.argsort(slots, kind="stable")
        bounds = np.flatnonzero(np.diff(slots[order])) + 1
        for members in np.split(order, bounds) if len(order) else []:
            slot = int(slots[members[0]])
            past = self._slots.get(slot, np.empty(0))
            fresh = x[members]
            center, scale = trailing_stats(past, fresh, self.history, self.min_history, robust_center_scale)
            out[members] = np.abs(fresh - center) / floored(scale, center, self.min_spread_ratio)
            self._slots[slot] = keep_tail(past, fresh, self.history)
        return out
