"""Operator state to bytes and back: pickle protocol 5 out, a restricted unpickler in.

Why not plain pickle: the project forbids unpickling untrusted data, and checkpoints are not
always ours: ``tideflow checkpoints import FILE`` brings files from other machines, and a
checkpoint directory may be shared. An ordinary ``pickle.loads`` of such a file runs whatever
callable the file names (``os.system``, ...). Why pickle at all: operator state is plain
containers, numpy arrays and polars frames (which pickle as Arrow IPC) plus model objects from
River and scikit-learn, which only pickle knows how to rebuild, and protocol 5 is fast.

So :func:`decode` resolves every global the data names against an allowlist; anything else
raises :class:`UnsafeCheckpoint` naming it, before it is imported or called. Two tiers:

* **core**: builtin containers and scalars, ``collections``, ``datetime``, ``zoneinfo``,
  ``decimal``, ``uuid``, ``random.Random``, ``functools.partial``, numpy's array and scalar
  reconstructors, numpy scalar types, polars ``DataFrame``/``Series`` and dtypes. Nothing here
  touches files, processes or code, so data that names only these is loaded by the C unpickler
  at full speed (LazyFrame and Expr are left out: their pickles can carry pickled functions).
* **trusted prefixes** (``tideflow``, ``river``, ``sklearn``, ``scipy``, and what
  :func:`allow_module` adds): classes and functions *defined* in those packages (an object
  re-exported from elsewhere, say ``subprocess.Popen`` imported by some module, is refused),
  never through names with ``__`` parts, never from test, I/O, dataset, benchmark or CLI
  modules. These libraries also hold functions that write files (``export_graphviz``), so data
  naming them is loaded by a guarded unpickler that may *call* only classes, core
  reconstructors and the libraries' own reconstructors (sklearn's ``newObj``, Cython's
  ``__pyx_unpickle_*``), and never sets attributes on a class, function or module. Functions
  may still appear as values (a River model's ``defaultdict`` factory). The guarded path is a
  pure-Python unpickler, several times slower; it only runs for data holding model objects.

What remains trusted: constructors of classes under trusted prefixes run with values from the
data, and restored objects are used afterwards as the code expects (a function stored as a
value may be called later by the model that holds it). Keep the prefixes to libraries whose
classes are inert data holders. On the fast path, data can still set attributes of core Python
classes (``Counter``, polars dtypes) to other core objects, which can break them in this
process but not run anything: no core object does I/O.

:func:`encode` applies the same rules while pickling, so state that could not be restored
fails at checkpoint time, naming the object, rather than at recovery time.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import functools
import importlib
import io
import pickle
import threading
import types
import uuid
import zoneinfo
from typing import Any, ClassVar

import numpy as np
import polars as pl

from ..errors import TideflowError

__all__ = ["CorruptCheckpoint", "UnsafeCheckpoint", "allow_module", "allowed_modules", "decode", "encode"]

PROTOCOL = 5


class UnsafeCheckpoint(TideflowError):
    """Checkpoint data names a global that tideflow does not restore (it could run code)."""


class CorruptCheckpoint(TideflowError):
    """A checkpoint's bytes are damaged or incomplete: a checksum does not match, a blob is
    missing, or the data is not a tideflow checkpoint at all."""


_CORE_NAMES: dict[str, tuple[str, ...]] = {
    "builtins": (
        *("dict", "list", "set", "frozenset", "tuple", "bytes", "bytearray", "int", "float", "complex"),
        *("str", "bool", "slice", "range", "object"),
    ),
    "collections": ("OrderedDict", "deque", "defaultdict", "Counter"),
    "copyreg": ("_reconstructor",),
    "_codecs": ("encode",),  # bytes in protocol 2 pickles: encode(text, "latin1")
    "functools": ("partial",),
    "datetime": ("date", "time", "datetime", "timedelta", "timezone"),
    "zoneinfo": ("ZoneInfo",),
    "decimal": ("Decimal",),
    "uuid": ("UUID", "SafeUUID"),
    "random": ("Random",),
    "numpy": ("dtype", "ndarray"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.numeric": ("_frombuffer",),
    "numpy._core._internal": ("_convert_to_stringdtype_kwargs",),
    "numpy.ma.core": ("_mareconstruct",),
    "numpy.ma": ("MaskedArray",),
    "numpy.random._pickle": ("__randomstate_ctor", "__bit_generator_ctor", "__generator_ctor"),
    "numpy.random.bit_generator": ("__pyx_unpickle_SeedSequence", "SeedSequence"),
    "numpy.random.mtrand": ("RandomState",),
    "numpy.random._generator": ("Generator",),
    "numpy.random._mt19937": ("MT19937",),
    "numpy.random._pcg64": ("PCG64", "PCG64DXSM"),
    "numpy.random._philox": ("Philox",),
    "numpy.random._sfc64": ("SFC64",),
    "polars.dataframe.frame": ("DataFrame",),
    "polars.series.series": ("Series",),
    "polars.schema": ("Schema",),
}
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


def _canonical(module: str) -> str:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``: accept pickles written by either."""
    for old in ("numpy.core.", "numpy._core."):
        if module.startswith(old):
            return _NUMPY_CORE + "." + module[len(old) :]
    return module


_CORE: set[tuple[str, str]] = {(_canonical(module), name) for module, names in _CORE_NAMES.items() for name in names}
_CLASS_RULES: dict[str, tuple[type, ...]] = {
    "numpy": (np.generic, np.dtype),  # not all of numpy: np.memmap opens files
    "numpy.dtypes": (np.dtype,),
    "polars.datatypes.classes": (object,),
}
"""Core modules whose classes of these kinds are allowed: numpy scalar and dtype classes, polars dtypes."""

_prefixes: list[str] = ["tideflow", "river", "sklearn", "scipy"]
_DENIED_PARTS = {"tests", "testing", "_testing", "conftest", "io", "_io", "datasets", "bench", "cli", "__main__"}
_lock = threading.Lock()
_resolved: dict[tuple[str, str], tuple[Any, bool]] = {}
"""Cache of allowed globals: (module, name) -> (object, core?)."""


def allow_module(prefix: str) -> None:
    """Trust classes and functions defined under module ``prefix`` (``"mylib"`` covers
    ``mylib.models``) when decoding checkpoints, as for River and scikit-learn. Only for
    packages whose classes are data holders: restoring may construct them with data from an
    imported file."""
    prefix = prefix.strip().rstrip(".")
    if not prefix or any(not part.isidentifier() for part in prefix.split(".")):
        raise ValueError(f"allow_module({prefix!r}): pass a module name such as 'mylib' or 'mylib.models'")
    with _lock:
        if prefix not in _prefixes:
            _prefixes.append(prefix)


def allowed_modules() -> list[str]:
    """The trusted module prefixes (besides the core allowlist)."""
    return list(_prefixes)


def _under(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _lookup(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _refuse(module: str, name: str, why: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"checkpoint data refers to {module}.{name}, which tideflow does not restore ({why}); "
        "only containers, numbers, strings, datetimes, numpy, polars and classes from trusted packages "
        f"({', '.join(_prefixes)}) are. If you trust that package, call "
        f"tideflow.checkpoint.codec.allow_module({module.split('.')[0]!r})"
    )


def _resolve(module: str, name: str) -> tuple[Any, bool]:
    """The object ``module.name`` stands for and whether it is core, or raise UnsafeCheckpoint."""
    key = (module, name)
    hit = _resolved.get(key)
    if hit is not None:
        return hit
    module = _canonical(module)
    if (module, name) in _CORE:
        result = (_lookup(module, name), True)
    elif module in _CLASS_RULES and "." not in name and not name.startswith("_"):
        obj = getattr(importlib.import_module(module), name, None)
        if not isinstance(obj, type) or obj.__module__ != module or not issubclass(obj, _CLASS_RULES[module]):
            raise _refuse(module, name, "not a data type class of that module")
        result = (obj, True)
    else:
        result = (_resolve_trusted(module, name), False)
    if isinstance(result[0], type) and issubclass(result[0], type):
        raise _refuse(module, name, "a metaclass: calling it makes classes")
    _resolved[key] = result
    return result


def _resolve_trusted(module: str, name: str) -> Any:
    if not _under(module, _prefixes):
        raise _refuse(module, name, "not on the allowlist")
    parts = module.split(".")
    if any(p in _DENIED_PARTS or p.endswith("_cli") for p in parts):
        raise _refuse(module, name, "test, I/O, dataset, benchmark and command modules are never restored from")
    for part in name.split("."):
        if not part.isidentifier() or (part.startswith("__") and not part.startswith("__pyx_unpickle_")):
            raise _refuse(module, name, "special or private attribute")
    try:
        obj = _lookup(module, name)
    except (ImportError, AttributeError) as error:
        raise _refuse(module, name, f"cannot be found here: {error}") from None
    if isinstance(obj, types.ModuleType):
        raise _refuse(module, name, "a module")
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str) or not _under(owner, _prefixes):
        raise _refuse(module, name, f"it is defined in {owner}, not under a trusted package")
    return obj


# -- encode ---------------------------------------------------------------------------------

_GLOBAL_TYPES = (type, types.FunctionType, types.BuiltinFunctionType)
_PLAIN_TYPES = {
    datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone, decimal.Decimal,
    uuid.UUID, collections.OrderedDict, collections.deque, collections.defaultdict, collections.Counter,
    np.ndarray, pl.DataFrame, pl.Series,
}  # fmt: skip
"""Types whose reduction calls only a core class or reconstructor (contents are still checked)."""


class _CheckingPickler(pickle.Pickler):
    """Refuses, while pickling, what :func:`decode` would refuse: globals off the allowlist, and
    reductions whose callable the guarded unpickler would not call."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MethodType) or (
            isinstance(obj, types.BuiltinMethodType) and not isinstance(obj.__self__, types.ModuleType | None)
        ):
            raise UnsafeCheckpoint(
                f"it holds the bound method {obj.__qualname__} (pickled as a getattr call, which restoring refuses); "
                "keep the object and call its method instead"
            )
        if isinstance(obj, _GLOBAL_TYPES) or (callable(obj) and hasattr(obj, "__qualname__")):
            module = getattr(obj, "__module__", None)
            name = getattr(obj, "__qualname__", None)
            if isinstance(module, str) and isinstance(name, str) and "<locals>" not in name:
                _resolve(module, name)
            return NotImplemented  # pickled by reference; an unpicklable one fails there
        if type(obj) in _PLAIN_TYPES or isinstance(obj, np.generic | np.dtype):
            return NotImplemented  # reduces to a core class or reconstructor: nothing to check
        if type(obj) is zoneinfo.ZoneInfo and obj.key is not None:
            # ZoneInfo pickles through getattr(ZoneInfo, "_unpickle"); rebuilding it by key is the same zone
            return zoneinfo.ZoneInfo, (obj.key,)
        # what pickle would do next, done here to see the callable the data will call
        reducer = copyreg.dispatch_table.get(type(obj))
        reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(PROTOCOL)
        if isinstance(reduced, str):
            return NotImplemented
        func, args = reduced[0], reduced[1]
        if func is copyreg.__newobj__ or func is copyreg.__newobj_ex__:  # type: ignore[attr-defined]
            _guard_call(args[0], ())
        else:
            _guard_call(func, args)
        if len(reduced) > 5 and reduced[5] is not None:  # protocol 5 state_setter(obj, state)
            _guard_call(reduced[5], ())
        return reduced


def encode(obj: Any) -> bytes:
    """``obj`` as bytes that :func:`decode` restores. Raises :class:`UnsafeCheckpoint` when it
    holds a class or function that decode would refuse, and ``TypeError`` when it cannot be
    pickled at all (a lambda, a lock, an open file)."""
    buffer = io.BytesIO()
    try:
        _CheckingPickler(buffer, protocol=PROTOCOL).dump(obj)
    except UnsafeCheckpoint as error:
        raise UnsafeCheckpoint(f"cannot checkpoint this state: {error}") from None
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise TypeError(
            f"cannot checkpoint a {type(obj).__name__}: {error}; state must be plain data "
            "(containers, numbers, strings, numpy, polars, model objects), not functions, locks or files"
        ) from error
    return buffer.getvalue()


# -- decode ---------------------------------------------------------------------------------


class _NeedsGuard(Exception):
    """The data names a trusted-prefix global: decode again with the guarded unpickler."""


class _CoreUnpickler(pickle.Unpickler):
    """The C unpickler, for data that names core globals only."""

    def find_class(self, module: str, name: str) -> Any:
        obj, core = _resolve(module, name)
        if not core:
            raise _NeedsGuard
        return obj


_CORE_CALLABLES: set[int] = set()
"""ids of core objects that are not classes but may be called (reconstructors)."""
_CALLABLE_ARGS: dict[int, tuple[int, ...]] = {}
"""ids of core callables that call one of their arguments (at these positions) while restoring."""
_FUNCTION_TYPES = {"function", "builtin_function_or_method", "cython_function_or_method"}


def _may_call(func: Any) -> bool:
    if isinstance(func, type) or id(func) in _CORE_CALLABLES:
        return True
    if type(func).__name__ not in _FUNCTION_TYPES:
        return False
    name = getattr(func, "__qualname__", "")
    # sklearn's Cython trees: newObj(cls) is cls.__new__(cls); Cython's generated __pyx_unpickle_X
    return isinstance(name, str) and (name == "newObj" or name.startswith("__pyx_unpickle_"))


def _guard_call(func: Any, args: tuple[Any, ...]) -> None:
    if not _may_call(func):
        where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
        raise UnsafeCheckpoint(f"checkpoint data calls {where}: restoring calls only classes and known reconstructors")
    for position in _CALLABLE_ARGS.get(id(func), ()):
        if position < len(args):
            _guard_call(args[position], ())


class _GuardedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """The pure-Python unpickler with every call and attribute update checked."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)[0]

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        _guard_call(func, args)
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        _guard_call(cls, args)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        _guard_call(cls, args)
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, type | types.ModuleType | types.FunctionType | types.BuiltinFunctionType):
            raise UnsafeCheckpoint(f"checkpoint data sets attributes of {inst!r}: refused")
        if isinstance(inst, functools.partial) and isinstance(state, tuple) and state:
            _guard_call(state[0], ())  # partial.__setstate__((func, args, kwargs, dict))
        super().load_build()

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # protocol 0/1 INST and OBJ
        _guard_call(klass, tuple(args))
        super()._instantiate(klass, args)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def decode(data: bytes) -> Any:
    """The object :func:`encode` made of ``data``. Raises :class:`UnsafeCheckpoint` for data
    naming anything outside the allowlist (nothing it names is called), and
    :class:`CorruptCheckpoint` for bytes that are not a complete pickle."""
    try:
        try:
            return _CoreUnpickler(io.BytesIO(data)).load()
        except _NeedsGuard:
            return _GuardedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError) as error:
        raise CorruptCheckpoint(f"state data cannot be decoded: {type(error).__name__}: {error}") from error


def _init_core_callables() -> None:
    for module, name in _CORE:
        obj = _lookup(module, name)
        if not isinstance(obj, type):
            _CORE_CALLABLES.add(id(obj))
    higher_order = {
        ("functools", "partial"): (0,),  # partial(func, ...) is called later with these arguments
        ("copyreg", "_reconstructor"): (0, 1),  # (cls, base, state): base.__init__ runs
        ("numpy.random._pickle", "__randomstate_ctor"): (1,),  # (name, bit_generator_ctor)
        ("numpy.random._pickle", "__generator_ctor"): (1,),
    }
    for (module, name), positions in higher_order.items():
        _CALLABLE_ARGS[id(_lookup(module, name))] = positions


_init_core_callables()
