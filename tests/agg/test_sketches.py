"""DDSketch and HyperLogLog: accuracy against exact answers, exact mergeability, encoding, speed."""

from __future__ import annotations

import math
import struct
import time
import warnings

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow.agg import (
    ApproxDistinct,
    ApproxQuantile,
    DDSketch,
    HashChangedWarning,
    HyperLogLog,
    approx_distinct,
    approx_quantile,
)
from tideflow.agg.hll import hash64

QS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]


def _data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(0, 1000, n)
    if kind == "lognormal":
        return rng.lognormal(0, 3, n)
    if kind == "signed":  # negatives, zeros, positives over many magnitudes
        x = rng.standard_cauchy(n)
        x[rng.random(n) < 0.1] = 0.0
        return x
    if kind == "duplicates":
        return rng.integers(-3, 8, n).astype(np.float64)
    if kind == "pareto":
        return rng.pareto(1.2, n) + 1e-6
    raise ValueError(kind)


def _assert_within(sketch: DDSketch, x: np.ndarray, qs: list[float], accuracy: float) -> None:
    estimates = sketch.quantiles(qs)
    assert estimates is not None
    lower = np.quantile(x, qs, method="lower")
    higher = np.quantile(x, qs, method="higher")
    for q, est, lo, hi in zip(qs, estimates, lower, higher, strict=True):
        # the guarantee: within relative accuracy of the value of rank floor(q (n - 1))
        assert abs(est - lo) <= accuracy * abs(lo), (q, est, lo)
        # and so inside [lower, higher] widened by the accuracy
        assert min(lo * (1 - accuracy), lo * (1 + accuracy)) <= est <= max(hi * (1 + accuracy), hi * (1 - accuracy))


# -- DDSketch: accuracy -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "lognormal", "signed", "duplicates", "pareto"])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 10_000, 200_000])
def test_ddsketch_quantiles_within_relative_accuracy(kind: str, n: int) -> None:
    x = _data(kind, n, seed=n)
    sketch = DDSketch(0.01).add(pl.Series(x))
    assert sketch.count == n
    _assert_within(sketch, x, QS, 0.01)


@pytest.mark.parametrize(("accuracy", "max_buckets"), [(0.05, 2048), (0.001, 20_000)])
def test_ddsketch_other_accuracies_on_a_million_values(accuracy: float, max_buckets: int) -> None:
    # 2048 buckets of 0.1% cover values within a factor ~60 only: finer accuracy needs more buckets
    x = _data("signed", 1_000_000, seed=3)
    sketch = DDSketch(accuracy, max_buckets).add(x)
    assert len(sketch.positive.counts) < max_buckets
    _assert_within(sketch, x, QS, accuracy)


def test_ddsketch_exact_extremes_and_single_values() -> None:
    x = np.array([3.0, -2.5, 0.0, 1e-300, 1e300, -1e300])
    sketch = DDSketch(max_buckets=100_000).add(x)  # 1e-300 .. 1e300 takes ~69000 buckets of 1%
    assert sketch.quantile(0.0) == -1e300
    assert sketch.quantile(1.0) == 1e300
    _assert_within(sketch, x, QS, 0.01)
    assert DDSketch().add([42.0]).quantiles([0.0, 0.5, 1.0]) == [42.0, 42.0, 42.0]
    assert DDSketch().add([0.0, 0.0]).quantile(0.5) == 0.0


def test_ddsketch_bucket_boundaries_stay_within_accuracy() -> None:
    # values at (and one ulp around) the bucket boundaries gamma^i, where log() rounding can err
    sketch = DDSketch(0.02)
    a = 0.02 * (1 - 1e-9)
    gamma = (1 + a) / (1 - a)
    edges = gamma ** np.arange(-200, 200, dtype=np.float64)
    for x in (edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)):
        for v in x:
            est = DDSketch(0.02).add([v]).quantile(0.5)
            assert abs(est - v) <= 0.02 * v
        sketch.add(x)
    assert sketch.count == 1200


def test_ddsketch_skips_nulls_nan_and_infinities() -> None:
    s = pl.Series("v", [1.0, None, 2.0, float("nan"), float("inf"), -float("inf"), 3.0])
    sketch = DDSketch().add(s)
    assert sketch.count == 3
    assert sketch == DDSketch().add([1.0, 2.0, 3.0])
    ints = pl.Series("v", [5, None, 7], dtype=pl.Int32)
    assert DDSketch().add(ints) == DDSketch().add([5.0, 7.0])


def test_ddsketch_empty_gives_none() -> None:
    assert DDSketch().quantile(0.5) is None
    assert DDSketch().quantiles([0.1, 0.9]) is None
    assert DDSketch().add(pl.Series([None, None], dtype=pl.Float64)).quantile(0.5) is None
    assert DDSketch().add(pl.Series([None, None])).quantile(0.5) is None  # dtype Null
    assert DDSketch.build_groups(np.array([0, 1]), pl.Series([None, None]), 2)[1].count == 0
    agg = approx_quantile("v", [0.5, 0.9])
    assert agg.result(agg.add(agg.init(), pl.Series("v", [float("nan")]))) is None


def test_ddsketch_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="numeric"):
        DDSketch().add(pl.Series(["a", "b"]))
    with pytest.raises(ValueError, match="relative_accuracy"):
        DDSketch(0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DDSketch().add([1.0]).quantile(1.5)
    with pytest.raises(ValueError, match="accuracy"):
        DDSketch(0.01).merge(DDSketch(0.02))
    with pytest.raises(ValueError, match="q must be"):
        approx_quantile("v", [])


# -- DDSketch: bounded buckets ------------------------------------------------------------------
def test_ddsketch_collapses_lowest_buckets_and_keeps_upper_quantiles() -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([10.0 ** rng.uniform(-30, 30, 100_000), -(10.0 ** rng.uniform(-30, 30, 100_000))])
    sketch = DDSketch(0.01, max_buckets=256).add(x)
    assert len(sketch.positive.counts) <= 256 and len(sketch.negative.counts) <= 256
    assert sketch.count == len(x)
    # 256 buckets of gamma ~ 1.0202 span a factor ~ 165: the top of the positive range is exact
    _assert_within(sketch, x, [0.999, 0.9999, 1.0], 0.01)
    merged = DDSketch(0.01, max_buckets=256)
    for part in np.array_split(x, 37):
        merged.merge(DDSketch(0.01, max_buckets=256).add(part))
    assert merged == sketch


# -- DDSketch: merging ----------------------------------------------------------------------------
def test_ddsketch_merge_of_many_parts_equals_one_sketch() -> None:
    x = _data("signed", 300_000, seed=11)
    whole = DDSketch().add(x)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(len(x), 500, replace=False))
    merged = DDSketch()
    for part in np.split(x, cuts):
        merged = merged.merge(DDSketch().add(part))
    assert merged == whole
    assert merged.quantiles(QS) == whole.quantiles(QS)
    _assert_within(merged, x, QS, 0.01)


def test_ddsketch_merge_does_not_modify_its_argument() -> None:
    a, b = DDSketch().add([1.0, 2.0]), DDSketch().add([-5.0, 100.0])
    b_before = b.copy()
    assert a.merge(b) is a
    assert b == b_before
    empty = DDSketch()
    empty.merge(b)
    empty.add([7.0])
    assert b == b_before  # the copy taken by merging into an empty sketch is not shared


_floats = st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-308, 5e-324]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_floats, b=_floats, c=_floats, max_buckets=st.sampled_from([4, 64, 2048]))
def test_ddsketch_merge_is_associative_and_commutative(
    a: list[float], b: list[float], c: list[float], max_buckets: int
) -> None:
    def sk(*parts: list[float]) -> DDSketch:
        s = DDSketch(0.01, max_buckets)
        for p in parts:
            s.add(np.array(p, dtype=np.float64))
        return s

    sa, sb, sc = sk(a), sk(b), sk(c)
    ab_c = sa.copy().merge(sb).merge(sc)
    a_bc = sa.copy().merge(sb.copy().merge(sc))
    ba = sb.copy().merge(sa)
    assert sa.copy().merge(sb) == ba
    assert ab_c == a_bc == sk(a + b + c) == sk(c, a, b)
    assert ab_c.quantiles(QS) == a_bc.quantiles(QS)


@pytest.mark.parametrize("n_groups", [1, 5, 3000])
@pytest.mark.parametrize("kind", ["signed", "lognormal", "duplicates"])
def test_ddsketch_build_groups_equals_one_add_per_group(n_groups: int, kind: str) -> None:
    rng = np.random.default_rng(n_groups)
    x = _data(kind, 60_000, seed=5)
    x[rng.random(len(x)) < 0.01] = np.nan
    g = rng.integers(0, n_groups, len(x))
    values = pl.Series("v", x).set(pl.Series(rng.random(len(x)) < 0.01), None)
    built = DDSketch.build_groups(g, values, n_groups + 2)
    assert len(built) == n_groups + 2
    assert built[-1].count == 0 and built[-1].quantile(0.5) is None
    for i in range(n_groups):
        assert built[i] == DDSketch().add(values.filter(pl.Series(g == i))), i


def test_ddsketch_build_groups_wide_ranges_use_sparse_counting() -> None:
    # groups x bucket span too large for one dense table: the sorted-keys path
    rng = np.random.default_rng(3)
    x = 10.0 ** rng.uniform(-200, 200, 50_000) * rng.choice([-1.0, 0.0, 1.0], 50_000)
    g = rng.integers(0, 400, len(x))
    built = DDSketch.build_groups(g, x, 400, 0.01, max_buckets=100)
    for i in range(0, 400, 37):
        assert built[i] == DDSketch(0.01, max_buckets=100).add(x[g == i])


# -- DDSketch: encoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[], [0.0], [1.0, -2.0, 0.0], list(range(1, 70_000))])
def test_ddsketch_round_trips_through_bytes(values: list[float]) -> None:
    sketch = DDSketch(0.005, max_buckets=1000).add(np.array(values, dtype=np.float64))
    data = sketch.to_bytes()
    restored = DDSketch.from_bytes(data)
    assert restored == sketch
    assert restored.max_buckets == 1000 and restored.relative_accuracy == 0.005
    assert restored.quantiles(QS) == sketch.quantiles(QS)
    agg = ApproxQuantile("v", 0.5, relative_accuracy=0.005, max_buckets=1000)
    assert agg.from_bytes(agg.to_bytes(sketch)) == sketch


def test_ddsketch_encoding_is_compact_and_checked() -> None:
    sketch = DDSketch().add(_data("lognormal", 100))
    assert len(sketch.positive.counts) > 500
    assert len(sketch.to_bytes()) < 100 * 3 + 80  # sparse layout: 2-byte positions, 1-byte counts
    dense = DDSketch().add(_data("uniform", 100_000))
    assert len(dense.to_bytes()) < len(dense.positive.counts) * 2 + 80  # dense layout, 2-byte counts
    with pytest.raises(ValueError, match="magic"):
        DDSketch.from_bytes(b"nope" + sketch.to_bytes()[4:])
    with pytest.raises(ValueError, match="trailing"):
        DDSketch.from_bytes(sketch.to_bytes() + b"\0")
    data = bytearray(sketch.to_bytes())
    struct.pack_into("<q", data, 4 + 8 + 4, 99)  # the count
    with pytest.raises(ValueError, match="add up"):
        DDSketch.from_bytes(bytes(data))


# -- HyperLogLog ------------------------------------------------------------------------------------
def _distinct_data(kind: str, n: int, seed: int = 0) -> pl.Series:
    rng = np.random.default_rng(seed)
    if kind == "sequential":
        return pl.Series(np.arange(n, dtype=np.int64))
    if kind == "random":
        return pl.Series(rng.integers(-(2**62), 2**62, n))
    if kind == "strings":
        return pl.Series([f"user-{i}" for i in range(n)])
    if kind == "floats":
        return pl.Series(rng.standard_normal(n))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["sequential", "random", "strings", "floats"])
@pytest.mark.parametrize("n", [1, 100, 2048])
def test_hll_is_exact_while_sparse(kind: str, n: int) -> None:
    sketch = HyperLogLog(14).add(_distinct_data(kind, n))
    assert sketch.is_sparse
    assert sketch.estimate() == n


@pytest.mark.parametrize("kind", ["sequential", "random", "strings", "floats"])
@pytest.mark.parametrize("n", [2049, 10_000, 40_000, 45_000, 100_000, 1_000_000])
def test_hll_estimate_within_four_standard_errors(kind: str, n: int) -> None:
    if n == 1_000_000 and kind in ("strings", "floats"):
        n = 300_000  # keep the suite fast; the sizes around 5m/2 = 40960 matter most
    values = _distinct_data(kind, n, seed=n)
    exact = values.n_unique()
    sketch = HyperLogLog(14).add(values)
    assert not sketch.is_sparse
    sigma = 1.04 / math.sqrt(1 << 14)
    assert abs(sketch.estimate() / exact - 1) < 4 * sigma
    if not 2 * 16384 < n < 4 * 16384:  # the classic estimate is biased just above its switch at 5m/2
        assert abs(sketch.estimate("classic") / exact - 1) < 4 * sigma


@pytest.mark.parametrize("precision", [4, 8, 11, 16])
def test_hll_error_matches_the_standard_error(precision: int) -> None:
    m = 1 << precision
    sigma = 1.04 / math.sqrt(m)
    rng = np.random.default_rng(precision)
    errors = []
    for n in np.geomspace(m // 4, 20 * m, 24).astype(int):
        values = pl.Series(rng.integers(0, 2**63 - 1, int(n)))
        errors.append(HyperLogLog(precision).add(values).estimate() / values.n_unique() - 1)
    rms = float(np.sqrt(np.mean(np.square(errors))))
    assert rms < 1.5 * sigma, (rms, sigma)
    assert abs(float(np.mean(errors))) < 3 * sigma / math.sqrt(len(errors)) + 0.2 * sigma


def test_hll_heavy_duplicates() -> None:
    rng = np.random.default_rng(9)
    values = pl.Series(rng.integers(0, 50_000, 1_000_000))
    exact = values.n_unique()
    assert abs(HyperLogLog().add(values).estimate() / exact - 1) < 0.03
    few = pl.Series(rng.integers(0, 1000, 1_000_000))
    sketch = HyperLogLog().add(few)
    assert sketch.is_sparse and sketch.estimate() == few.n_unique()


def test_hll_nulls_and_nan_are_not_counted_and_numbers_are_canonical() -> None:
    assert HyperLogLog().add(pl.Series([None, None], dtype=pl.Int64)).estimate() == 0
    assert HyperLogLog().add(pl.Series([None, None])).estimate() == 0  # dtype Null
    assert HyperLogLog.build_groups(np.array([0, 1]), pl.Series([None, None]), 2)[1].estimate() == 0
    assert len(HyperLogLog().add(pl.Series([1.0, None, float("nan"), 2.0]))) == 2
    same = [
        pl.Series([1, 2, 3], dtype=pl.Int64),
        pl.Series([1, 2, 3], dtype=pl.Int8),
        pl.Series([1, 2, 3], dtype=pl.UInt32),
        pl.Series([1.0, 2.0, 3.0]),
        pl.Series([1.0, 2.0, 3.0], dtype=pl.Float32),
    ]
    sketches = [HyperLogLog().add(s) for s in same]
    assert all(s == sketches[0] for s in sketches)
    assert HyperLogLog().add(pl.Series([0.0, -0.0, 0])).estimate() == 1
    assert HyperLogLog().add(pl.Series([0.5, 1.0, 1.5])).estimate() == 3
    strings = HyperLogLog().add(pl.Series(["a", "b", "a"]))
    categorical = HyperLogLog().add(pl.Series(["a", "b", "a"], dtype=pl.Categorical))
    assert strings == categorical and strings.estimate() == 2
    days = pl.Series([0, 1, 1], dtype=pl.Int32).cast(pl.Date)
    assert HyperLogLog().add(days).estimate() == 2


def test_hll_counts_distinct_rows_of_a_frame() -> None:
    frame = pl.DataFrame({"a": [1, 1, 2, None], "b": ["x", "x", "x", None]})
    agg = ApproxDistinct(None)
    assert agg.result(agg.add(agg.init(), frame)) == 2


def test_hll_hash_is_a_bijection_on_integers() -> None:
    values = pl.Series(np.arange(-500_000, 500_000, dtype=np.int64))
    hashes, by_polars = hash64(values)
    assert not by_polars
    assert pl.Series(hashes).n_unique() == len(values)
    # stable: independent of any library version
    assert hash64(pl.Series([0, 1, -1]))[0].tolist() == hash64(pl.Series([0, 1, -1]))[0].tolist()


def test_hll_merge_of_many_parts_equals_one_sketch() -> None:
    values = _distinct_data("random", 200_000, seed=2)
    whole = HyperLogLog().add(values)
    merged = HyperLogLog()
    for part in values.to_numpy().reshape(400, -1):
        merged = merged.merge(HyperLogLog().add(pl.Series(part)))
    assert merged == whole


_items = st.lists(st.one_of(st.integers(-50, 50), st.text(max_size=3), st.none()), max_size=60)


@settings(max_examples=150, deadline=None)
@given(a=_items, b=_items, c=_items, precision=st.sampled_from([4, 5, 7]))
def test_hll_merge_is_associative_and_commutative(a: list, b: list, c: list, precision: int) -> None:
    def sk(items: list) -> HyperLogLog:
        return HyperLogLog(precision).add(pl.Series([None if v is None else str(v) for v in items], dtype=pl.String))

    sa, sb, sc = sk(a), sk(b), sk(c)
    assert sa.copy().merge(sb) == sb.copy().merge(sa)
    ab_c = sa.copy().merge(sb).merge(sc)
    a_bc = sa.copy().merge(sb.copy().merge(sc))
    assert ab_c == a_bc == sk(a + b + c)
    assert ab_c.estimate() == a_bc.estimate()
    distinct = len({str(v) for v in a + b + c if v is not None})
    if ab_c.is_sparse:
        assert ab_c.estimate() == distinct


def test_hll_merge_keeps_its_argument() -> None:
    sparse, dense = HyperLogLog().add(pl.Series([1, 2])), HyperLogLog().add(pl.Series(np.arange(10_000)))
    before = (sparse.copy(), dense.copy())
    HyperLogLog().merge(dense).add(pl.Series(np.arange(10_000, 20_000)))
    sparse.copy().merge(dense)
    dense.copy().merge(sparse)
    assert (sparse, dense) == before
    with pytest.raises(ValueError, match="precision"):
        HyperLogLog(12).merge(HyperLogLog(14))


@pytest.mark.parametrize("n_groups", [1, 7, 5000])
def test_hll_build_groups_equals_one_add_per_group(n_groups: int) -> None:
    rng = np.random.default_rng(n_groups)
    values = pl.Series("u", rng.integers(0, 30_000, 80_000)).set(pl.Series(rng.random(80_000) < 0.02), None)
    g = rng.integers(0, n_groups, len(values))
    built = HyperLogLog.build_groups(g, values, n_groups + 1, precision=12)
    assert built[-1].estimate() == 0
    for i in range(0, n_groups, max(1, n_groups // 50)):
        assert built[i] == HyperLogLog(12).add(values.filter(pl.Series(g == i))), i
    floats = pl.Series([1.0, float("nan"), None, 2.0, 1.0])
    by_group = HyperLogLog.build_groups(np.array([0, 0, 1, 1, 1]), floats, 2)
    assert [s.estimate() for s in by_group] == [1, 2]


@pytest.mark.parametrize("n", [0, 3, 5000])
def test_hll_round_trips_through_bytes(n: int) -> None:
    sketch = HyperLogLog(12).add(pl.Series([f"k{i}" for i in range(n)], dtype=pl.String))
    restored = HyperLogLog.from_bytes(sketch.to_bytes())
    assert restored == sketch and restored.estimate() == sketch.estimate()
    assert restored.polars_hashed == (n > 0)
    numbers = HyperLogLog().add(pl.Series(np.arange(n)))
    assert HyperLogLog.from_bytes(numbers.to_bytes()) == numbers
    agg = approx_distinct("u", precision=12)
    assert agg.from_bytes(agg.to_bytes(sketch)) == sketch
    with pytest.raises(ValueError):
        HyperLogLog.from_bytes(sketch.to_bytes()[:-1] if n else b"HLL1")


def test_hll_warns_when_restored_under_a_different_polars_hash() -> None:
    data = bytearray(HyperLogLog().add(pl.Series(["a", "b"])).to_bytes())
    struct.pack_into("<Q", data, 6, 12345)  # another fingerprint
    with pytest.warns(HashChangedWarning, match="counted twice"):
        HyperLogLog.from_bytes(bytes(data))
    numeric = bytearray(HyperLogLog().add(pl.Series([1, 2])).to_bytes())
    struct.pack_into("<Q", numeric, 6, 12345)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HyperLogLog.from_bytes(bytes(numeric))  # numeric hashes do not depend on polars


def test_hll_rejects_bad_precision() -> None:
    for bad in (3, 19, 14.0):
        with pytest.raises(ValueError, match="precision"):
            HyperLogLog(bad)  # type: ignore[arg-type]


# -- speed ------------------------------------------------------------------------------------------
def _rate(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = min(_timed(fn) for _ in range(3))
    return n / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_vectorized_add_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Values/s for 1M values (one core when POLARS_MAX_THREADS=1); generous floor against regressions."""
    rng = np.random.default_rng(0)
    n = 1_000_000
    latency = pl.Series(rng.lognormal(3, 1, n))
    users = pl.Series(rng.integers(0, 10**9, n))
    groups = rng.integers(0, 1000, n)
    quantile, distinct = approx_quantile("v", 0.99), approx_distinct("v")
    rates = {
        "DDSketch.add": _rate(lambda: DDSketch().add(latency), n),
        "HyperLogLog.add": _rate(lambda: HyperLogLog().add(users), n),
        "ApproxQuantile.add_groups(1000 groups)": _rate(lambda: quantile.add_groups(groups, latency, 1000), n),
        "ApproxDistinct.add_groups(1000 groups)": _rate(lambda: distinct.add_groups(groups, users, 1000), n),
    }
    with capsys.disabled():
        print()
        for name, rate in rates.items():
            print(f"  {name}: {rate / 1e6:.1f} M values/s")
    assert all(rate > 2e6 for rate in rates.values()), rates
