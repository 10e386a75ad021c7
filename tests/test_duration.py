from datetime import timedelta

import pytest

from tideflow._duration import to_millis, to_seconds


@pytest.mark.parametrize(
    ("text", "millis"),
    [("250ms", 250), ("10s", 10_000), ("5m", 300_000), ("1h", 3_600_000), ("2d", 172_800_000), ("1.5s", 1_500)],
)
def test_duration_strings(text: str, millis: int) -> None:
    assert to_millis(text) == millis


def test_timedelta_and_numbers() -> None:
    assert to_millis(timedelta(minutes=2, milliseconds=5)) == 120_005
    assert to_millis(42) == 42
    assert to_seconds("1500ms") == 1.5


@pytest.mark.parametrize("bad", ["10", "ten seconds", "5 parsecs", "-1s"])
def test_bad_duration_says_what_is_accepted(bad: str) -> None:
    with pytest.raises(ValueError, match="250ms"):
        to_millis(bad)


def test_negative_number_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        to_millis(-5)
