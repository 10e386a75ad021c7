"""The state codec: what round-trips, what is refused (and never run), and how fast it is."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import math
import pickle
import random
import sys
import textwrap
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tideflow.checkpoint import codec
from tideflow.checkpoint.codec import CorruptCheckpoint, UnsafeCheckpoint, allow_module, decode, encode
from tideflow.checkpoint.store import epoch_ranges
from tideflow.errors import TideflowError


def round_trip(value: Any) -> Any:
    return decode(encode(value))


PLAIN = {
    "containers": {1: [1, 2.5, "x"], "s": (None, True, b"\x00\xff"), (1, "a"): {3, 4}, 2: frozenset({"f"})},
    "numbers": [0, -1, 2**100, 1.5, math.inf, complex(1, -2), Decimal("12.3400")],
    "bytes": [b"", bytearray(b"abc"), bytes(range(256))],
    "ranges": [range(1, 10, 3), slice(1, None, 2)],
    "collections": [
        collections.OrderedDict(b=1, a=2),
        collections.deque([1, 2, 3], maxlen=5),
        collections.Counter("hello"),
    ],
    "times": [
        dt.datetime(2024, 5, 1, 12, 30, 15, 123456),
        dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 5, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2024, 3, 31, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.date(2024, 2, 29),
        dt.time(23, 59, 59),
        dt.timedelta(days=-1, microseconds=7),
    ],
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "numpy scalars": [np.float32(1.5), np.int64(-7), np.bool_(True), np.datetime64("2024-01-01T00:00:00.123")],
    "dtypes as values": [np.float64, np.dtype("int16"), float, pl.Int64, pl.Datetime("us", "UTC"), pl.List(pl.Utf8)],
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_state_round_trips(name: str) -> None:
    value = PLAIN[name]
    assert round_trip(value) == value
    assert type(round_trip(value)) is type(value)


def test_nan_defaultdict_and_random_state() -> None:
    assert math.isnan(round_trip(math.nan))
    counts: collections.defaultdict[str, list[int]] = collections.defaultdict(list, a=[1])
    back = round_trip(counts)
    assert back == counts and back.default_factory is list
    back["new"].append(1)
    rng = random.Random(7)
    rng.random()
    copy = round_trip(rng)
    assert [copy.random() for _ in range(3)] == [rng.random() for _ in range(3)]
    assert round_trip(functools.partial(dict, a=1))() == {"a": 1}


def test_numpy_arrays() -> None:
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
        np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "i4"), ("b", "f8")]),
        np.array(["2024-01-01", "NaT"], dtype="datetime64[ms]"),
        np.array([1, "x", None, (2, 3)], dtype=object),
        np.array(["short", "a longer string"], dtype=np.dtypes.StringDType()),
        np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
        np.zeros((0, 5)),
    ]
    for array in arrays:
        back = round_trip(array)
        assert type(back) is type(array) and back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
        assert back.flags.f_contiguous == array.flags.f_contiguous
        assert np.array_equal(np.ma.getmaskarray(back), np.ma.getmaskarray(array))
    rng = np.random.default_rng(3)
    assert round_trip(rng).random() == rng.random()
    legacy = np.random.RandomState(3)
    assert round_trip(legacy).rand() == legacy.rand()


def test_polars_frames_series_and_dtypes() -> None:
    frame = pl.DataFrame(
        {
            "at": [dt.datetime(2024, 1, 1, 0, 0, 0, 1), None, dt.datetime(2030, 12, 31)],
            "key": ["a", "b", None],
            "values": [[1, 2], [], None],
            "record": [{"x": 1, "tags": ["p"]}, {"x": None, "tags": []}, None],
            "amount": [Decimal("1.25"), Decimal("-3.50"), None],
            "wait": [dt.timedelta(seconds=1), None, dt.timedelta(days=2)],
        },
        schema_overrides={"at": pl.Datetime("us", "Europe/Paris"), "amount": pl.Decimal(10, 2)},
    ).with_columns(pl.col("key").cast(pl.Categorical))
    back = round_trip(frame)
    assert back.schema == frame.schema
    assert back.equals(frame)
    assert back.schema["record"] == pl.Struct({"x": pl.Int64, "tags": pl.List(pl.String)})
    series = pl.Series("ns", [dt.datetime(2024, 1, 1)], dtype=pl.Datetime("ns"))
    assert round_trip(series).equals(series) and round_trip(series).dtype == pl.Datetime("ns")
    state = {"frames": {("k", 1): frame.head(1)}, "schema": frame.schema, "dtype": pl.Datetime("us")}
    again = round_trip(state)
    assert again["frames"][("k", 1)].equals(frame.head(1)) and again["dtype"] == pl.Datetime("us")
    assert again["schema"] == frame.schema


def test_river_scaler_keeps_learning_where_it_left_off() -> None:
    preprocessing = pytest.importorskip("river.preprocessing")
    naive_bayes = pytest.importorskip("river.naive_bayes")
    scaler = preprocessing.StandardScaler()
    for x in (1.0, 2.0, 4.0, 8.0):
        scaler.learn_one({"x": x, "y": -x})
    copy = round_trip(scaler)
    assert copy.transform_one({"x": 3.0, "y": 1.0}) == scaler.transform_one({"x": 3.0, "y": 1.0})
    copy.learn_one({"x": 16.0, "y": 0.0})
    scaler.learn_one({"x": 16.0, "y": 0.0})
    assert copy.transform_one({"x": 3.0, "y": 1.0}) == scaler.transform_one({"x": 3.0, "y": 1.0})
    # GaussianNB keeps a function as a defaultdict factory: a value, never called while decoding
    model = naive_bayes.GaussianNB()
    for i in range(20):
        model.learn_one({"a": float(i % 5)}, i % 2 == 0)
    assert round_trip(model).predict_proba_one({"a": 2.0}) == model.predict_proba_one({"a": 2.0})


def test_sklearn_models_round_trip() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    neighbors = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(0)
    features, labels = rng.random((50, 3)), rng.integers(0, 2, 50)
    sgd = linear_model.SGDClassifier(random_state=np.random.RandomState(0))
    sgd.partial_fit(features, labels, classes=[0, 1])
    copy = round_trip(sgd)
    assert np.array_equal(copy.coef_, sgd.coef_)
    assert np.array_equal(copy.predict(features), sgd.predict(features))
    copy.partial_fit(features, labels)
    sgd.partial_fit(features, labels)
    assert np.array_equal(copy.coef_, sgd.coef_)
    # a KD-tree pickles through sklearn's own reconstructor functions (newObj)
    knn = neighbors.KNeighborsClassifier(algorithm="kd_tree").fit(features, labels)
    assert np.array_equal(round_trip(knn).predict(features), knn.predict(features))


def test_a_pickle_calling_os_system_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return os.system, (f"touch {marker}",)

    for data in (pickle.dumps(Evil(), protocol=5), f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()):
        with pytest.raises(UnsafeCheckpoint, match=r"os\.system|posix\.system") as refused:
            decode(data)
        assert isinstance(refused.value, TideflowError)
        assert not marker.exists()
    with pytest.raises(UnsafeCheckpoint):
        encode(Evil())  # refused while checkpointing too, not only on restore
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name", "why"),
    [
        ("builtins", "eval", "not on the allowlist"),
        ("builtins", "getattr", "not on the allowlist"),
        ("subprocess", "Popen", "not on the allowlist"),
        ("numpy", "memmap", "not a data type class"),
        ("numpy", "load", "not a data type class"),
        ("polars.lazyframe.frame", "LazyFrame", "not on the allowlist"),
        ("tideflow.checkpoint.store", "dataclass", "defined in dataclasses"),  # re-exported, not defined there
        ("tideflow.checkpoint.store", "os", "a module"),
        ("tideflow.checkpoint.codec", "UnsafeCheckpoint.__init__", "special or private"),
        ("tideflow.cli", "main", "command modules"),
        ("sklearn.datasets", "dump_svmlight_file", "I/O, dataset"),
        ("scipy.io", "savemat", "I/O"),
        ("polars.datatypes.classes", "DataTypeClass", "metaclass"),
        ("riverside", "x", "not on the allowlist"),
    ],
)
def test_globals_off_the_allowlist_are_refused(module: str, name: str, why: str) -> None:
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UnsafeCheckpoint, match=why) as refused:
        decode(data)
    assert f"{module}.{name}" in str(refused.value)


class _Call:
    """Pickles as a call of ``func(*args)``: what a crafted file could ask for."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def test_functions_of_trusted_packages_are_values_never_calls() -> None:
    with pytest.raises(UnsafeCheckpoint, match=r"calls tideflow\.checkpoint\.store\.epoch_ranges"):
        decode(pickle.dumps(_Call(epoch_ranges, [1, 2]), protocol=5))
    with pytest.raises(UnsafeCheckpoint, match=r"calls tideflow\.checkpoint\.store\.epoch_ranges"):
        decode(pickle.dumps(functools.partial(epoch_ranges, [1, 2]), protocol=5))
    with pytest.raises(UnsafeCheckpoint, match="calls"):
        encode(functools.partial(epoch_ranges, [1, 2]))  # the encoder refuses it up front
    assert round_trip({"f": epoch_ranges})["f"] is epoch_ranges
    # setting attributes on a class (monkeypatching through BUILD) is refused
    data = b"\x80\x02ctideflow.checkpoint.store\nStepInfo\n}X\x04\x00\x00\x00kindK\x01sb."
    with pytest.raises(UnsafeCheckpoint, match="sets attributes"):
        decode(data)
    # numpy's RandomState reconstructor calls its second argument: only known constructors pass
    from numpy.random import _pickle as np_pickle

    evil = _Call(np_pickle.__randomstate_ctor, [1], epoch_ranges)
    with pytest.raises(UnsafeCheckpoint, match="epoch_ranges"):
        decode(pickle.dumps(evil, protocol=5))


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(UnsafeCheckpoint, match="bound method"):
        encode({"f": random.Random(1).gauss})
    with pytest.raises(UnsafeCheckpoint, match=r"(posix|os)\.getcwd"):
        encode({"f": __import__("os").getcwd})
    with pytest.raises(TypeError, match="cannot checkpoint"):
        encode(lambda x: x)
    import threading

    with pytest.raises(TypeError, match="cannot checkpoint"):
        encode({"lock": threading.Lock()})


@pytest.fixture
def restore_allowlist() -> Iterator[None]:
    prefixes, resolved = list(codec._prefixes), dict(codec._resolved)
    yield
    codec._prefixes[:] = prefixes
    codec._resolved.clear()
    codec._resolved.update(resolved)


def test_allow_module_trusts_a_user_package(tmp_path: Path, restore_allowlist: None) -> None:
    (tmp_path / "tf_user_state.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            @dataclass
            class Sketch:
                counts: dict
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        from tf_user_state import Sketch  # type: ignore[import-not-found]

        with pytest.raises(UnsafeCheckpoint, match=r"allow_module\('tf_user_state'\)"):
            encode(Sketch({"a": 1}))
        allow_module("tf_user_state")
        assert "tf_user_state" in codec.allowed_modules()
        assert round_trip(Sketch({"a": 1})) == Sketch({"a": 1})
        with pytest.raises(ValueError, match="module name"):
            allow_module("not a module")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tf_user_state", None)


def test_damaged_data_is_corrupt_not_a_crash() -> None:
    data = encode({"a": list(range(100))})
    for bad in (b"", b"not a pickle", data[: len(data) // 2]):
        with pytest.raises(CorruptCheckpoint):
            decode(bad)


def test_numpy_1_pickles_are_read() -> None:
    array = np.arange(3.0)
    old = pickle.dumps(array, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    assert np.array_equal(decode(old), array)


def test_encode_speed_of_a_million_entries() -> None:
    state = {i: i * 2 for i in range(1_000_000)}
    started = time.perf_counter()
    data = encode(state)
    encoded = time.perf_counter() - started
    started = time.perf_counter()
    assert decode(data) == state
    decoded = time.perf_counter() - started
    print(f"\n1M int->int: encode {encoded:.3f}s, decode {decoded:.3f}s, {len(data) / 1e6:.1f} MB")
