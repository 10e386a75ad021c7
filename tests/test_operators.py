"""Every stateless operator, checked against a plain-Python oracle over the same records."""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tdf


def records(n: int = 50) -> list[dict[str, Any]]:
    return [{"id": i, "value": (i * 7) % 13 - 3.5, "host": f"h{i % 4}"} for i in range(n)]


def run_one(build, data, batch_size: int = 7) -> tuple[list[dict[str, Any]], tdf.RunResult, list[dict[str, Any]]]:
    flow = tdf.Flow("test")
    stream = flow.source("src", tdf.io.MemorySource(data, batch_size=batch_size))
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    build(stream).sink("out", out)
    flow.dead_letters().sink("dlq", dead)
    result = flow.run(handle_signals=False)
    return out.records, result, dead.records


def test_map_applies_function_to_every_record() -> None:
    out, result, _ = run_one(lambda s: s.map("double", lambda r: {**r, "value": r["value"] * 2}), records())
    assert out == [{**r, "value": r["value"] * 2} for r in records()]
    assert result.records_in == result.records_out == 50


def test_filter_with_function_and_with_expression_agree() -> None:
    by_fn, _, _ = run_one(lambda s: s.filter("pos", lambda r: r["value"] > 0), records())
    by_expr, _, _ = run_one(lambda s: s.filter("pos", pl.col("value") > 0), records())
    expected = [r for r in records() if r["value"] > 0]
    assert by_fn == expected
    assert by_expr == expected


def test_flat_map_emits_zero_or_more_records_per_input() -> None:
    out, _, _ = run_one(
        lambda s: s.flat_map("repeat", lambda r: [{"id": r["id"], "copy": k} for k in range(r["id"] % 3)]),
        records(20),
    )
    assert out == [{"id": r["id"], "copy": k} for r in records(20) for k in range(r["id"] % 3)]


def test_flat_map_may_return_none_to_drop() -> None:
    out, _, dead = run_one(lambda s: s.flat_map("drop-odd", lambda r: None if r["id"] % 2 else [r]), records(10))
    assert [r["id"] for r in out] == [0, 2, 4, 6, 8]
    assert dead == []


def test_map_batches_on_polars_and_on_arrow() -> None:
    as_polars, _, _ = run_one(
        lambda s: s.map_batches("scale", lambda df: df.with_columns(pl.col("value") * 10)), records()
    )
    as_arrow, _, _ = run_one(
        lambda s: s.map_batches(
            "scale",
            lambda t: t.set_column(t.schema.get_field_index("value"), "value", pc.multiply(t["value"], 10)),
            format="arrow",
        ),
        records(),
    )
    expected = [{**r, "value": r["value"] * 10} for r in records()]
    assert as_polars == expected
    assert as_arrow == expected


def test_with_columns_and_select() -> None:
    out, _, _ = run_one(
        lambda s: s.with_columns("derive", big=pl.col("value") > 1, id2=pl.col("id") * 2).select(
            "project", "id2", "big", upper=pl.col("host").str.to_uppercase()
        ),
        records(10),
    )
    assert out == [{"id2": r["id"] * 2, "big": r["value"] > 1, "upper": r["host"].upper()} for r in records(10)]


def test_select_keeps_source_positions_for_dead_letters() -> None:
    out, _, dead = run_one(
        lambda s: s.select("only-id", "id").map("inverse", lambda r: {"inv": 1 / (r["id"] - 3)}), records(6)
    )
    assert len(out) == 5
    assert [(d["step"], d["position"]) for d in dead] == [("inverse", "index 3")]


def test_branch_splits_by_predicate_evaluated_once() -> None:
    calls: list[int] = []

    def is_even(record: dict[str, Any]) -> bool:
        calls.append(record["id"])
        return record["id"] % 2 == 0

    flow = tdf.Flow("b")
    evens, odds = flow.source("src", tdf.io.MemorySource(records(30), batch_size=4)).branch("parity", is_even)
    even_sink, odd_sink = tdf.io.MemorySink(), tdf.io.MemorySink()
    evens.sink("evens", even_sink)
    odds.sink("odds", odd_sink)
    flow.run(handle_signals=False)
    assert [r["id"] for r in even_sink.records] == list(range(0, 30, 2))
    assert [r["id"] for r in odd_sink.records] == list(range(1, 30, 2))
    assert sorted(calls) == list(range(30))


def test_branch_with_expression_treats_null_as_false() -> None:
    data = [{"v": 1}, {"v": None}, {"v": -1}]
    flow = tdf.Flow("b")
    yes, no = flow.source("src", tdf.io.MemorySource(data)).branch("pos", pl.col("v") > 0)
    a, b = tdf.io.MemorySink(), tdf.io.MemorySink()
    yes.sink("a", a)
    no.sink("b", b)
    flow.run(handle_signals=False)
    assert a.records == [{"v": 1}]
    assert b.records == [{"v": None}, {"v": -1}]


def test_union_merges_every_record_of_both_streams() -> None:
    flow = tdf.Flow("u")
    left = flow.source("left", tdf.io.MemorySource([{"x": i} for i in range(100)], batch_size=9))
    right = flow.source("right", tdf.io.MemorySource([{"x": -i} for i in range(1, 51)], batch_size=4))
    out = tdf.io.MemorySink()
    left.union("both", right).sink("out", out)
    result = flow.run(handle_signals=False)
    assert sorted(r["x"] for r in out.records) == sorted([*range(100), *(-i for i in range(1, 51))])
    # Order within each input is kept.
    assert [r["x"] for r in out.records if r["x"] >= 0] == list(range(100))
    assert result.records_in == result.records_out == 150


def test_fan_out_delivers_every_record_to_each_consumer() -> None:
    flow = tdf.Flow("fan")
    src = flow.source("src", tdf.io.MemorySource(records(40), batch_size=6))
    a, b = tdf.io.MemorySink(), tdf.io.MemorySink()
    src.map("tag-a", lambda r: {**r, "tag": "a"}).sink("a", a)
    src.filter("hosts-0", pl.col("host") == "h0").sink("b", b)
    flow.run(handle_signals=False)
    assert len(a) == 40
    assert [r["id"] for r in b.records] == [r["id"] for r in records(40) if r["host"] == "h0"]


def test_memory_source_accepts_dataframe_arrow_and_generator() -> None:
    frame = pl.DataFrame({"a": list(range(25))})
    for data in (frame, frame.to_arrow(), (r for r in frame.to_dicts())):
        out, result, _ = run_one(lambda s: s, data, batch_size=10)
        assert out == frame.to_dicts()
        assert result.records_in == 25


def test_key_by_records_key_columns_and_rejects_bad_keys() -> None:
    flow = tdf.Flow("k")
    keyed = flow.source("src", tdf.io.MemorySource(records(3))).key_by(["host", "id"])
    assert keyed.key == ["host", "id"]
    with pytest.raises(tdf.FlowDefinitionError):
        keyed.key_by([])


# -- the pipeline's output must not depend on how input is cut into batches ------------------
values = st.one_of(st.none(), st.integers(-1000, 1000))


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.fixed_dictionaries({"k": st.integers(0, 5), "v": values}), max_size=120),
    batch_size=st.integers(1, 50),
)
def test_mixed_chain_matches_python_oracle_for_any_batching(data: list[dict[str, Any]], batch_size: int) -> None:
    def build(s: tdf.Stream) -> tdf.Stream:
        return (
            s.filter("has-v", pl.col("v").is_not_null())
            .with_columns("sq", sq=pl.col("v") * pl.col("v"))
            .map("label", lambda r: {**r, "label": f"k{r['k']}"})
            .filter("small", lambda r: r["sq"] < 250_000)
            .flat_map("twice-if-odd", lambda r: [r, r] if r["k"] % 2 else [r])
        )

    expected = []
    for r in data:
        if r["v"] is None:
            continue
        row = {**r, "sq": r["v"] * r["v"]}
        row["label"] = f"k{r['k']}"
        if row["sq"] >= 250_000:
            continue
        expected.extend([row, row] if r["k"] % 2 else [row])
    out, _, dead = run_one(build, data, batch_size=batch_size) if data else ([], None, [])
    assert out == expected
    assert dead == []


def test_linger_flushes_a_partial_batch_while_the_generator_waits() -> None:
    import threading

    from .conftest import FlowThread, wait_until

    resume = threading.Event()

    def slow() -> Any:
        yield from ({"i": i} for i in range(3))
        resume.wait(30)  # the generator blocks, as one reading a socket would
        yield {"i": 3}

    out = tdf.io.MemorySink()
    flow = tdf.Flow("linger")
    flow.source("src", tdf.io.IterableSource(slow(), batch_size=1000, linger="20ms")).sink("out", out)
    runner = FlowThread(flow)
    runner.start()
    wait_until(lambda: len(out) == 3, what="the lingering partial batch")
    resume.set()
    runner.join(10)
    assert [r["i"] for r in out.records] == [0, 1, 2, 3]


def test_generator_error_after_some_records_keeps_them_and_names_the_source() -> None:
    def broken() -> Any:
        yield from ({"i": i} for i in range(5))
        raise ValueError("upstream closed")

    out = tdf.io.MemorySink()
    flow = tdf.Flow("gen-error")
    flow.source("gen", tdf.io.IterableSource(broken(), batch_size=2)).sink("out", out)
    with pytest.raises(tdf.StepError, match="step 'gen' failed: ValueError: upstream closed"):
        flow.run(handle_signals=False)
    assert [r["i"] for r in out.records] == [0, 1, 2, 3, 4]


def test_stdout_sink_writes_json_lines_and_tables() -> None:
    import io as stdio

    data = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    for fmt, check in (
        ("jsonl", lambda t: t.splitlines() == ['{"a":1,"b":"x"}', '{"a":2,"b":"y"}']),
        ("pretty", lambda t: "shape: (2, 2)" in t and "│ 2   ┆ y   │" in t),
    ):
        buffer = stdio.StringIO()
        flow = tdf.Flow("stdout")
        flow.source("src", tdf.io.MemorySource(data)).sink("print", tdf.io.StdoutSink(format=fmt, stream=buffer))
        flow.run(handle_signals=False)
        assert check(buffer.getvalue()), buffer.getvalue()


def test_select_all_columns_keeps_hidden_columns_once() -> None:
    out, _, dead = run_one(lambda s: s.select("everything", pl.all(), twice=pl.col("id") * 2), records(5))
    assert dead == []
    assert out == [{**r, "twice": r["id"] * 2} for r in records(5)]


def test_union_of_a_stream_with_itself_delivers_it_twice() -> None:
    flow = tdf.Flow("self-union")
    src = flow.source("src", tdf.io.MemorySource([{"x": i} for i in range(5)]))
    out = tdf.io.MemorySink()
    src.union("twice", src).sink("out", out)
    flow.run(handle_signals=False)
    assert sorted(r["x"] for r in out.records) == sorted([*range(5), *range(5)])


def test_map_batches_same_rows_false_never_lends_one_row_position_to_another() -> None:
    data = [{"g": i % 2, "v": i} for i in range(4)]

    def reshape(df: pl.DataFrame) -> pl.DataFrame:  # four rows in, four other rows out
        sums = df.group_by("g", maintain_order=True).agg(pl.col("v").sum())
        return pl.concat([sums, sums])

    def positions_of_failures(same_rows: bool | None) -> list[str | None]:
        flow = tdf.Flow("reshape")
        dead = tdf.io.MemorySink()
        stream = flow.source("src", tdf.io.MemorySource(data, batch_size=4))
        stream.map_batches("totals", reshape, same_rows=same_rows).map("fail", lambda r: 1 / 0).sink(
            "out", tdf.io.NullSink()
        )
        flow.dead_letters().sink("dlq", dead)
        flow.run(handle_signals=False)
        return [d["position"] for d in dead.records]

    assert positions_of_failures(None) == ["index 0", "index 1", "index 2", "index 3"]  # assumed row for row
    assert positions_of_failures(False) == [None, None, None, None]  # not: the positions would be wrong

    flow = tdf.Flow("strict", on_error="fail")
    flow.source("src", tdf.io.MemorySource(data)).map_batches("drop", lambda df: df.head(1), same_rows=True).sink(
        "out", tdf.io.NullSink()
    )
    with pytest.raises(tdf.StepError, match="same_rows=True"):
        flow.run(handle_signals=False)
