"""Nothing is lost: every input record is an output or a dead letter, with step and position."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf


def build_and_run(build, data, *, on_error: str = "dlq", batch_size: int = 5):
    flow = tdf.Flow("dl", on_error=on_error)  # type: ignore[arg-type]
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    build(flow.source("src", tdf.io.MemorySource(data, batch_size=batch_size))).sink("out", out)
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    return out.records, dead.records, result


def test_failing_map_sends_only_bad_records_with_payload_step_and_position() -> None:
    data = [{"n": n} for n in range(-3, 4)]
    out, dead, result = build_and_run(lambda s: s.map("invert", lambda r: {"inv": 1 / r["n"]}), data)
    assert [r["inv"] for r in out] == [1 / n for n in range(-3, 4) if n != 0]
    assert len(dead) == 1
    letter = dead[0]
    assert letter["step"] == "invert"
    assert letter["error"] == "ZeroDivisionError: division by zero"
    assert letter["payload"] == '{"n":0}'
    assert (letter["source"], letter["position"]) == ("src", "index 3")
    assert result.dead_letters == 1
    assert result.step("invert").dead_letters == 1


def test_error_is_attributed_to_the_failing_step_inside_a_fused_chain() -> None:
    data = [{"n": n} for n in range(6)]
    _, dead, result = build_and_run(
        lambda s: s.map("plus-one", lambda r: {"n": r["n"] + 1}).filter("picky", lambda r: 10 // (r["n"] - 3) > 0),
        data,
    )
    assert [d["step"] for d in dead] == ["picky"]
    assert result.step("plus-one").fused_with == "plus-one"
    assert result.step("picky").fused_with == "plus-one"


def test_map_returning_a_non_dict_is_a_dead_letter_that_explains() -> None:
    _, dead, _ = build_and_run(lambda s: s.map("bad", lambda r: [r]), [{"a": 1}])
    assert dead[0]["error"].startswith("TypeError: map must return a dict")


def test_expression_error_bisects_to_the_bad_rows_only() -> None:
    data = [{"s": x} for x in ["1", "2", "x", "4", "five", "6", "7"]]
    out, dead, _ = build_and_run(
        lambda s: s.with_columns("parse", n=pl.col("s").cast(pl.Int64, strict=True)), data, batch_size=7
    )
    assert [r["n"] for r in out] == [1, 2, 4, 6, 7]
    assert sorted(d["payload"] for d in dead) == ['{"s":"five"}', '{"s":"x"}']
    assert {d["step"] for d in dead} == {"parse"}


def test_missing_column_in_expression_dead_letters_every_row_without_bisecting() -> None:
    out, dead, _ = build_and_run(lambda s: s.filter("typo", pl.col("vlaue") > 1), [{"value": i} for i in range(9)])
    assert out == []
    assert len(dead) == 9
    assert all("vlaue" in d["error"] for d in dead)


def test_map_batches_failure_isolates_rows() -> None:
    def strict_sqrt(df: pl.DataFrame) -> pl.DataFrame:
        if (df["x"] < 0).any():
            raise ValueError("negative input")
        return df.with_columns(root=pl.col("x").sqrt())

    data = [{"x": float(x)} for x in [4, 9, -1, 16, -4, 25]]
    out, dead, _ = build_and_run(lambda s: s.map_batches("sqrt", strict_sqrt), data, batch_size=6)
    assert [r["root"] for r in out] == [2.0, 3.0, 4.0, 5.0]
    assert sorted(d["payload"] for d in dead) == ['{"x":-1.0}', '{"x":-4.0}']


def test_records_that_disagree_on_types_become_dead_letters_not_nulls() -> None:
    out, dead, _ = build_and_run(
        lambda s: s.map("typed", lambda r: {"v": r["v"] if r["v"] != 3 else "three"}),
        [{"v": i} for i in range(6)],
        batch_size=6,
    )
    assert [r["v"] for r in out] == [0, 1, 2, 4, 5]
    assert [d["payload"] for d in dead] == ['{"v":"three"}']


def test_on_error_fail_stops_the_run_and_names_the_step_and_position() -> None:
    with pytest.raises(tdf.StepError) as caught:
        build_and_run(
            lambda s: s.map("explode", lambda r: {"x": 1 // (r["n"] - 2)}),
            [{"n": n} for n in range(5)],
            on_error="fail",
        )
    error = caught.value
    assert error.step == "explode"
    assert isinstance(error.cause, ZeroDivisionError)
    assert "step 'explode' failed" in str(error)
    assert "index 2" in str(error)


def test_step_level_policy_overrides_flow_policy() -> None:
    flow = tdf.Flow("mixed", on_error="dlq")
    out = tdf.io.MemorySink()
    (
        flow.source("src", tdf.io.MemorySource([{"n": n} for n in range(4)]))
        .map("lenient", lambda r: {"n": 10 // r["n"]})
        .map("strict", lambda r: {"n": 1 // (r["n"] - 5)}, on_error="fail")
        .sink("out", out)
    )
    with pytest.raises(tdf.StepError, match="'strict'"):
        flow.run(handle_signals=False)


def test_sink_errors_dead_letter_only_the_rows_the_sink_rejects() -> None:
    class PickySink(tdf.io.Sink):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def write(self, df: pl.DataFrame) -> None:
            if (df["v"] == 13).any():
                raise ValueError("unlucky")
            self.rows.extend(df.to_dicts())

    sink = PickySink()
    flow = tdf.Flow("s")
    flow.source("src", tdf.io.MemorySource([{"v": i} for i in range(20)], batch_size=8)).sink("picky", sink)
    result = flow.run(handle_signals=False)
    assert [r["v"] for r in sink.rows] == [i for i in range(20) if i != 13]
    assert result.dead_letters == 1
    assert result.dead_letter_samples[0]["step"] == "picky"


def test_dead_letters_are_kept_and_counted_when_not_routed_to_a_sink() -> None:
    flow = tdf.Flow("unrouted")
    out = tdf.io.MemorySink()
    flow.source("src", tdf.io.MemorySource([{"n": n} for n in range(5)])).map(
        "inv", lambda r: {"n": 1 / (r["n"] % 2)}
    ).sink("out", out)
    result = flow.run(handle_signals=False)
    assert result.dead_letters == 3
    assert [d["payload"] for d in result.dead_letter_samples] == ['{"n":0}', '{"n":2}', '{"n":4}']


def test_non_dict_items_in_a_generator_are_dead_letters() -> None:
    out, dead, result = build_and_run(lambda s: s, [{"a": 1}, "oops", {"a": 2}])
    assert out == [{"a": 1}, {"a": 2}]
    assert dead[0]["step"] == "src"
    assert dead[0]["payload"] == "oops"
    assert result.records_in == 3


def oracle(numbers: list[int], steps) -> tuple[int, int]:
    """Run the same functions record by record in plain Python: (survivors, failures)."""
    survivors = failures = 0
    for n in numbers:
        try:
            record = steps[0]({"n": n})
            if steps[1](record):
                survivors += 1
        except ArithmeticError:
            failures += 1
    return survivors, failures


@settings(max_examples=30, deadline=None)
@given(
    numbers=st.lists(st.integers(-20, 20), max_size=80),
    batch_size=st.integers(1, 30),
)
def test_outputs_plus_dead_letters_account_for_every_input(numbers: list[int], batch_size: int) -> None:
    def invert(r):
        return {"n": r["n"], "inv": 60 // r["n"]}

    def keep(r):
        return 60 % r["n"] == 0 or 1 // (r["n"] + 7) == 0

    data = [{"n": n} for n in numbers]
    out, dead, result = build_and_run(
        lambda s: s.map("inv", invert).filter("divisible", keep), data, batch_size=batch_size
    )
    survivors, failures = oracle(numbers, (invert, keep))
    assert len(out) == survivors
    assert len(dead) == failures
    assert len(out) + len(dead) <= len(numbers)
    assert result.records_in == len(numbers)


def test_a_failure_inside_the_dead_letter_branch_stops_the_run() -> None:
    flow = tdf.Flow("dlq-of-dlq")
    flow.source("src", tdf.io.MemorySource([{"n": 0}, {"n": 1}])).map("inv", lambda r: {"n": 1 / r["n"]}).sink(
        "out", tdf.io.NullSink()
    )
    flow.dead_letters().map("broken-handler", lambda r: {"x": r["missing"]}).sink("dlq", tdf.io.NullSink())
    with pytest.raises(tdf.StepError, match="broken-handler"):
        flow.run(handle_signals=False)


def test_an_infrastructure_error_in_a_sink_stops_the_run_instead_of_dead_lettering_rows() -> None:
    attempts = 0

    class FullDisk(tdf.io.Sink):
        def write(self, df: pl.DataFrame) -> None:
            nonlocal attempts
            attempts += 1
            raise OSError(28, "No space left on device")

    flow = tdf.Flow("disk")
    flow.source("src", tdf.io.MemorySource([{"v": i} for i in range(100)], batch_size=100)).sink("full", FullDisk())
    with pytest.raises(tdf.StepError, match="step 'full' failed: OSError"):
        flow.run(handle_signals=False)
    assert attempts == 1
