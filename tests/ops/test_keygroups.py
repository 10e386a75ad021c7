"""Key groups: a stable assignment of keys to groups, and keyed state split and restored by group.

The assignment must be the same in every process (Python salts ``hash()`` of strings per
process), give equal keys one group, and not depend on the other keys hashed with it (the
vectorized per-type passes against one key at a time). ``stateful_map`` and ``dedupe`` split their
state by group; restoring any subset gives exactly the original state restricted to those keys, and
two workers restored with complementary groups, each fed the rows of its keys, produce what the
uninterrupted operator produces (a scale-out at a checkpoint).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.checkpoint.codec import decode, encode
from tideflow.deadletters import DeadLetters
from tideflow.ops.base import Operator, StepContext
from tideflow.ops.keyed import Dedupe, StatefulMap
from tideflow.ops.keygroups import KEY_GROUP_FUNCTION, KEY_GROUPS, key_groups, key_groups_of_columns
from tideflow.ops.state import python_keys
from tideflow.record import Batch

from .test_dedupe import by_key
from .test_dedupe import oracle as dedupe_oracle
from .test_keyed import make_batches, summarize, visible
from .test_keyed import oracle as map_oracle

Record = dict[str, Any]


# -- the assignment -----------------------------------------------------------------------------
PINNED_KEYS: list[Any] = [0, 1, -1, 2**40, "a", "user-17", "", None, 2.5, (1, "x"), ("a", None, 3), b"k", True]
PINNED_GROUPS = [83, 116, 115, 78, 97, 40, 42, 14, 104, 46, 90, 86, 116]
"""Groups of PINNED_KEYS under KEY_GROUP_FUNCTION. If this test fails, the assignment changed:
checkpoints written before cannot be split by the new one. Change it only together with
KEY_GROUP_FUNCTION (and then update these values)."""


def test_the_assignment_is_pinned() -> None:
    assert KEY_GROUP_FUNCTION == "tideflow-kg1"
    assert key_groups(PINNED_KEYS, KEY_GROUPS).tolist() == PINNED_GROUPS


def test_every_process_computes_the_same_groups() -> None:
    """String hashing is salted per process in Python: the groups must not be."""
    code = (
        "from tideflow.ops.keygroups import key_groups\n"
        "print(key_groups(['a', 'user-17', ('x', 1), b'k', 'é'], 1000).tolist())"
    )
    outputs = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.add(done.stdout.strip())
    assert outputs == {str(key_groups(["a", "user-17", ("x", 1), b"k", "é"], 1000).tolist())}


def test_keys_python_calls_equal_share_a_group() -> None:
    utc = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    paris = utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
    equal_sets = [
        [1, True, 1.0, Decimal(1), Decimal("1.000")],
        [0, False, 0.0, -0.0, Decimal("-0")],
        [math.nan, float("nan"), Decimal("NaN")],
        [2**70, float(2**70), Decimal(2**70)],
        [1.5, Decimal("1.5")],
        [utc, paris],
        [("a", 1), ("a", 1.0), ("a", True)],
        [-(2**63), float(-(2**63))],
    ]
    for values in equal_sets:
        assert all(a == b or (a != a and b != b) for a in values for b in values)  # the premise
        assert len(set(key_groups(values, KEY_GROUPS).tolist())) == 1, values


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(),
    st.timedeltas(),
    st.decimals(allow_nan=False, places=3),
)
keys = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(scalars, st.tuples(scalars, scalars), scalars))


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, max_size=40), st.integers(1, 300))
def test_a_keys_group_does_not_depend_on_the_keys_beside_it(values: list[Any], groups: int) -> None:
    together = key_groups(values, groups).tolist()
    assert together == [int(key_groups([v], groups)[0]) for v in values]
    assert all(0 <= g < groups for g in together)
    for a, group_a in zip(values, together, strict=True):  # equal keys (one dict entry): one group
        assert all(group_a == group_b for b, group_b in zip(values, together, strict=True) if a == b)


def test_groups_are_balanced_and_types_without_a_stable_value_are_refused() -> None:
    for sample in (
        [*range(100_000)],
        [f"user-{i}" for i in range(100_000)],
        [(i % 7, f"p{i}") for i in range(100_000)],
    ):
        counts = np.bincount(key_groups(sample, KEY_GROUPS), minlength=KEY_GROUPS)
        assert counts.min() > 0.85 * len(sample) / KEY_GROUPS and counts.max() < 1.15 * len(sample) / KEY_GROUPS
    with pytest.raises(TypeError, match="no stable key group"):
        key_groups([object()], KEY_GROUPS)
    with pytest.raises(TypeError, match="frozenset"):
        key_groups(["a", frozenset({1})], KEY_GROUPS)
    with pytest.raises(ValueError, match="groups"):
        key_groups(["a"], 0)
    assert key_groups([], KEY_GROUPS).dtype == np.int64


def test_rows_are_routed_by_the_groups_of_their_key_values() -> None:
    import polars as pl

    df = pl.DataFrame({"user": ["a", "b", None, "a"], "n": [1, 2, 3, 1], "f": [0.0, -0.0, float("nan"), 1.0]})
    for columns in (["user"], ["user", "n"], ["f"]):
        series = [df.get_column(c) for c in columns]
        assert key_groups_of_columns(series, 64).tolist() == key_groups(python_keys(series), 64).tolist()
    f = key_groups_of_columns([df.get_column("f")], 64).tolist()
    assert f[0] == f[1] == key_groups([0], 64)[0]  # -0.0 is the key 0.0, as for polars and dicts


# -- stateful_map and dedupe, split by key group ------------------------------------------------
def fresh_map(ttl: int | None) -> StatefulMap:
    return StatefulMap("state", ["k"], summarize, ttl_ms=ttl, time="t")


def fresh_dedupe(within: int) -> Dedupe:
    return Dedupe("dedupe", ["k"], within_ms=within, time="t")


def groups_of(keys: list[Any]) -> dict[Any, int]:
    return dict(zip(keys, key_groups(keys, KEY_GROUPS).tolist(), strict=True))


def subset(parts: dict[int, Any], chosen: set[int]) -> dict[int, Any]:
    return {g: part for g, part in parts.items() if g == -1 or g in chosen}


def through_the_codec(parts: dict[int, Any]) -> dict[int, Any]:
    """What a checkpoint does to parts: each encoded on its own and decoded (restricted unpickler)."""
    return {group: decode(encode(part)) for group, part in parts.items()}


rows_strategy = st.lists(st.tuples(st.integers(0, 3_000), st.sampled_from([0, 1, 2, 3, 17, 255, -4])), max_size=100)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows_strategy,
    ttl=st.one_of(st.none(), st.integers(1, 1_500)),
    delay=st.integers(0, 1_000),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    chosen=st.sets(st.integers(0, KEY_GROUPS - 1)),
)
def test_stateful_map_restores_any_subset_of_its_groups(
    rows: list[tuple[int, int]], ttl: int | None, delay: int, sizes: list[int], chosen: set[int]
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    ctx = StepContext(DeadLetters())
    op = fresh_map(ttl)
    for batch in make_batches(records, delay, sizes):
        op.process(batch, ctx)
    parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))
    assert parts[-1]["key_groups"] == {"groups": KEY_GROUPS, "function": KEY_GROUP_FUNCTION}
    group = groups_of(list(op.states))
    assert set(parts) == {-1, *group.values()}  # only groups that hold keys
    # All groups: the original state.
    whole = fresh_map(ttl)
    whole.restore_groups(parts)
    assert whole.snapshot() == op.snapshot()
    assert len(whole.index) == len(op.expiry)
    # A subset: the original restricted to its keys, with the operator's scalars.
    part = fresh_map(ttl)
    part.restore_groups(subset(parts, chosen))
    assert part.states == {k: s for k, s in op.states.items() if group[k] in chosen}
    assert part.expiry == {k: e for k, e in op.expiry.items() if group[k] in chosen}
    assert (part.watermark, part.expired, part._types) == (op.watermark, op.expired, op._types)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows_strategy,
    within=st.integers(1, 800),
    delay=st.integers(0, 1_000),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    chosen=st.sets(st.integers(0, KEY_GROUPS - 1)),
)
def test_dedupe_restores_any_subset_of_its_groups(
    rows: list[tuple[int, int]], within: int, delay: int, sizes: list[int], chosen: set[int]
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    ctx = StepContext(DeadLetters())
    op = fresh_dedupe(within)
    for batch in make_batches(records, delay, sizes):
        op.process(batch, ctx)
    parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))
    group = groups_of(list(op.anchors))
    whole = fresh_dedupe(within)
    whole.restore_groups(parts)
    assert whole.snapshot() == op.snapshot()
    part = fresh_dedupe(within)
    part.restore_groups(subset(parts, chosen))
    assert part.anchors == {k: a for k, a in op.anchors.items() if group[k] in chosen}
    assert (part.watermark, part.duplicates) == (op.watermark, op.duplicates)
    assert len(part.index) == len(part.anchors)


def test_restore_groups_wants_the_operators_part_and_its_kind() -> None:
    op = fresh_map(None)
    with pytest.raises(ValueError, match="part -1"):
        op.restore_groups({3: {"keys": [], "states": [], "expiry": None}})
    with pytest.raises(ValueError, match="not a stateful_map snapshot"):
        op.restore_groups(fresh_dedupe(10).snapshot_groups(KEY_GROUPS))


# -- interrupted, restored by group, and uninterrupted ------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 5)), max_size=100),
    ttl=st.one_of(st.none(), st.integers(1, 800)),
    delay=st.integers(0, 500),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_stateful_map_restored_by_group_gives_the_results_of_an_uninterrupted_run(
    rows: list[tuple[int, int]], ttl: int | None, delay: int, sizes: list[int], cuts: list[int]
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    expected, _, _ = map_oracle(records, ttl, delay)
    ctx = StepContext(DeadLetters())
    op = fresh_map(ttl)
    out: list[Record] = []
    for number, batch in enumerate(make_batches(records, delay, sizes)):
        if number in cuts:  # a checkpoint, a crash, and a resume from it
            parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))
            op = fresh_map(ttl)
            op.restore_groups(parts)
        result = op.process(batch, ctx)
        if result is not None:
            out.extend(visible(result.df))
    assert out == expected


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 3)), max_size=120),
    within=st.integers(1, 600),
    delay=st.integers(0, 600),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_dedupe_restored_by_group_gives_the_results_of_an_uninterrupted_run(
    rows: list[tuple[int, int]], within: int, delay: int, sizes: list[int], cuts: list[int]
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    kept, dups, _ = dedupe_oracle(records, by_key, within, delay)
    ctx = StepContext(DeadLetters())
    op = fresh_dedupe(within)
    out: list[Record] = []
    dropped: list[Record] = []
    for number, batch in enumerate(make_batches(records, delay, sizes)):
        if number in cuts:
            parts = through_the_codec(op.snapshot_groups(KEY_GROUPS))
            op = fresh_dedupe(within)
            op.restore_groups(parts)
        result = op.process(batch, ctx)
        if result is not None:
            out.extend(visible(result.df))
        dropped.extend(r for b in op.side_outputs.pop("duplicates", []) for r in visible(b.df))
    assert out == kept
    assert dropped == dups


def scale_out(
    make: Any, records: list[Record], delay: int, sizes: list[int], cut: int, chosen: set[int]
) -> tuple[list[Record], list[list[Record]], list[Operator]]:
    """The uninterrupted operator's outputs after batch ``cut``, and those of two workers that
    resumed there from complementary key groups, each fed its keys' rows (watermarks for all)."""
    ctx = StepContext(DeadLetters())
    batches = make_batches(records, delay, sizes)
    alone = make()
    for batch in batches[:cut]:
        alone.process(batch, ctx)
    parts = through_the_codec(alone.snapshot_groups(KEY_GROUPS))
    workers = [make(), make()]
    workers[0].restore_groups(subset(parts, chosen))
    workers[1].restore_groups(subset(parts, set(range(KEY_GROUPS)) - chosen))
    expected: list[Record] = []
    got: list[list[Record]] = [[], []]
    for batch in batches[cut:]:
        result = alone.process(batch, ctx)
        expected.extend(visible(result.df) if result is not None else [])
        mine = np.isin(key_groups_of_columns([batch.df.get_column("k")], KEY_GROUPS), list(chosen))
        for worker, rows, mask in ((0, got[0], mine), (1, got[1], ~mine)):
            part = workers[worker].process(Batch(batch.df.filter(mask), batch.origin, batch.watermark), ctx)
            rows.extend(visible(part.df) if part is not None else [])
    return expected, got, [alone, *workers]


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2_000), st.sampled_from(range(-3, 40))), max_size=100),
    ttl=st.one_of(st.none(), st.integers(1, 800)),
    delay=st.integers(0, 500),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    cut=st.integers(0, 10),
    chosen=st.sets(st.integers(0, KEY_GROUPS - 1), max_size=KEY_GROUPS),
)
def test_workers_restored_from_complementary_groups_do_the_work_of_one(
    rows: list[tuple[int, int]], ttl: int | None, delay: int, sizes: list[int], cut: int, chosen: set[int]
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    groups = groups_of([r["k"] for r in records])
    expected, got, (alone, first, second) = scale_out(lambda: fresh_map(ttl), records, delay, sizes, cut, chosen)
    assert got[0] == [r for r in expected if groups[r["k"]] in chosen]
    assert got[1] == [r for r in expected if groups[r["k"]] not in chosen]
    assert {**first.states, **second.states} == alone.states  # type: ignore[attr-defined]


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2_000), st.sampled_from(range(-3, 40))), max_size=100),
    within=st.integers(1, 600),
    delay=st.integers(0, 500),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    cut=st.integers(0, 10),
    chosen=st.sets(st.integers(0, KEY_GROUPS - 1), max_size=KEY_GROUPS),
)
def test_dedupe_workers_restored_from_complementary_groups_do_the_work_of_one(
    rows: list[tuple[int, int]], within: int, delay: int, sizes: list[int], cut: int, chosen: set[int]
) -> None:
    records = [{"t": t, "k": k, "v": i} for i, (t, k) in enumerate(rows)]
    groups = groups_of([r["k"] for r in records])
    expected, got, (alone, first, second) = scale_out(lambda: fresh_dedupe(within), records, delay, sizes, cut, chosen)
    assert got[0] == [r for r in expected if groups[r["k"]] in chosen]
    assert got[1] == [r for r in expected if groups[r["k"]] not in chosen]
    assert {**first.anchors, **second.anchors} == alone.anchors  # type: ignore[attr-defined]


def test_snapshots_are_detached_and_restores_independent() -> None:
    op = fresh_map(None)
    shared = [1, 2]
    op.states = {"a": shared, "b": {"x": shared}, "c": 3}
    parts = op.snapshot_groups(KEY_GROUPS)
    shared.append(99)  # the running operator goes on: the snapshot must not change
    restored = fresh_map(None)
    restored.restore_groups(parts)
    assert restored.states == {"a": [1, 2], "b": {"x": [1, 2]}, "c": 3}
    again = fresh_map(None)
    again.restore_groups(parts)  # the same parts restored twice: two independent states
    again.states["a"].append(5)
    assert restored.states["a"] == [1, 2]
