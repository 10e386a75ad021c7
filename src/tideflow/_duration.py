"""Parsing of human durations ("250ms", "10s", "5m", "1h", "2d") into milliseconds.

Every public argument that means "a span of time" accepts a string, a ``timedelta`` or a number
of milliseconds, so that pipelines read the way people talk about time.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")

Duration = str | timedelta | int | float


def to_millis(value: Duration, *, what: str = "duration") -> int:
    """Return ``value`` in whole milliseconds; raise ``ValueError`` that says the accepted forms."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a duration, got {value!r}")
    if isinstance(value, timedelta):
        return round(value.total_seconds() * 1000)
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value!r}")
        return round(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"{what} {value!r} is not a duration; write e.g. '250ms', '10s', '5m', '1h', '2d' "
                "or pass a datetime.timedelta"
            )
        return round(float(match.group(1)) * _UNITS_MS[match.group(2)])
    raise TypeError(f"{what} must be a str, timedelta or milliseconds, got {type(value).__name__}")


def to_seconds(value: Duration, *, what: str = "duration") -> float:
    """Return ``value`` in seconds (float)."""
    return to_millis(value, what=what) / 1000.0
