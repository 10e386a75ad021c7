"""An on-disk model registry: numbered, hashed versions of a model and which one is serving.

A running ``infer`` step follows a model *name*, not a file: it polls ``revision(name)`` at batch
boundaries and, when someone promotes (or rolls back) a version, builds a handler for the new
champion and swaps it in. So the registry is plain files that several processes share safely:

    ROOT/NAME/registry.json            {"champion", "history", "revision", "next_version"}
    ROOT/NAME/versions/N/meta.json     what was registered, its sha256, metrics, ...
    ROOT/NAME/versions/N/<artifact>    a copy of the registered file or directory
    ROOT/NAME/.lock                    flock'ed around every read-modify-write

Every write goes to a temporary file or folder first and is renamed into place, so a reader
never sees a half-written ``registry.json`` or a half-copied version, and the lock makes two
processes registering at once get distinct version numbers. Versions are never renumbered:
a deleted version's number is not reused, because output rows carry ``NAME:N`` labels.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TideflowError

if TYPE_CHECKING:
    from .base import ModelHandler

ENV_VAR = "TIDEFLOW_MODELS"
DEFAULT_ROOT = "tideflow-models"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FORMATS = {".onnx": "onnx", ".joblib": "sklearn", ".pkl": "sklearn", ".pt": "torch", ".pth": "torch", ".ts": "torch"}
_CHUNK = 1 << 20


class RegistryError(TideflowError):
    """A registry operation cannot be done (unknown name or version, no champion, ...); the
    message says what to do instead."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as stored in its ``meta.json``."""

    name: str
    version: int
    path: Path
    """The stored artifact (a file, or a directory for directory artifacts)."""
    created: str
    sha256: str
    size_bytes: int
    format: str
    metrics: dict[str, float] = field(default_factory=dict, hash=False)
    description: str | None = None
    source_path: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        """``"NAME:VERSION"``: what output rows carry as ``model_version``."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "path": str(self.path),
            "created": self.created,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "metrics": dict(self.metrics),
            "description": self.description,
            "source_path": self.source_path,
            "tags": dict(self.tags),
        }


def validate_name(name: str) -> str:
    """A model name is one path component: letters, digits, ``-``, ``_`` and ``.``, starting with
    a letter or digit (so never ``..`` nor a hidden folder)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '-', '_' and '.', starting with a letter or digit"
        )
    return name


def infer_format(path: str | Path) -> str:
    """The artifact format from its extension: onnx, sklearn, torch, dir (a directory) or file."""
    path = Path(path)
    if path.is_dir():
        return "dir"
    return _FORMATS.get(path.suffix.lower(), "file")


def artifact_digest(path: str | Path) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a file, or of a directory: its files in sorted order of
    relative path, each hashed as path, size and content, so renames and edits both show."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        return _hash_file(path, digest).hexdigest(), path.stat().st_size
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    total = 0
    files = sorted((file.relative_to(path).as_posix(), file) for file in path.rglob("*") if file.is_file())
    for relative, file in files:
        size = file.stat().st_size
        total += size
        digest.update(f"{relative}\0{size}\0".encode())
        _hash_file(file, digest)
    return digest.hexdigest(), total


def _hash_file(path: Path, digest: Any) -> Any:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _write_json(path: Path, payload: Any) -> None:
    """Write through a temporary file and ``os.replace``: readers see the old or the new file."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ModelRegistry:
    """Versions of named models under one directory; see the module docstring for the layout.

    ``root`` defaults to ``$TIDEFLOW_MODELS``, else ``./tideflow-models``; it is created by the
    first registration. Safe to share between threads and processes on one machine.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get(ENV_VAR) or DEFAULT_ROOT)
        self._revisions: dict[str, tuple[tuple[int, ...], int]] = {}

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- reading --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _NAME.fullmatch(p.name) and (p / "registry.json").is_file()
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """Every stored version of ``name``, oldest first."""
        directory = self._existing(name) / "versions"
        numbers = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
        return [self._load(name, n) for n in numbers if (directory / str(n) / "meta.json").is_file()]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version of ``name``; the error lists the versions there are."""
        meta = self._existing(name) / "versions" / str(int(version)) / "meta.json"
        if not meta.is_file():
            known = [v.version for v in self.versions(name)]
            raise RegistryError(f"model {name!r} has no version {version}; its versions are {known or 'none'}")
        return self._load(name, int(version))

    def champion(self, name: str) -> ModelVersion | None:
        """The promoted version of ``name`` (the one inference follows), or None before any."""
        state = self._state(name)
        return None if state["champion"] is None else self.get(name, state["champion"])

    def history(self, name: str) -> list[dict[str, Any]]:
        """Promotions and rollbacks of ``name``, oldest first: ``action``, ``version``,
        ``previous``, ``at``, ``reason``."""
        return list(self._state(name)["history"])

    def revision(self, name: str) -> int:
        """A number that changes on every promotion or rollback of ``name`` (not on register or
        delete): an inference step polls it at batch boundaries. Costs one ``stat`` while
        ``registry.json`` is unchanged, and one small file read after it changed."""
        path = self.root / validate_name(name) / "registry.json"
        try:
            st = path.stat()
        except FileNotFoundError:
            return int(self._state(name)["revision"])  # raises the unknown-name error
        signature = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        cached = self._revisions.get(name)
        if cached is not None and cached[0] == signature:
            return cached[1]
        revision = int(self._state(name)["revision"])
        self._revisions[name] = (signature, revision)
        return revision

    def verify(self, name: str, version: int) -> bool:
        """Whether the stored artifact still has the sha256 it was registered with."""
        stored = self.get(name, version)
        try:
            return artifact_digest(stored.path)[0] == stored.sha256
        except FileNotFoundError:
            return False

    # -- writing --------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        path: str | Path,
        *,
        metrics: Mapping[str, float] | None = None,
        format: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        promote: bool = False,
    ) -> ModelVersion:
        """Copy the file or directory at ``path`` into the registry as the next version of ``name``.

        The copy and its hash happen outside the lock (artifacts can be large); only choosing
        the number and renaming the finished copy into place happen under it.
        """
        validate_name(name)
        source = Path(path).resolve()
        if not source.exists():
            raise RegistryError(f"cannot register {source}: no such file or directory")
        values = {str(k): _metric(k, v) for k, v in (metrics or {}).items()}
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=directory))
        try:
            artifact = incoming / (source.name if source.name != "meta.json" else "artifact.json")
            if source.is_dir():
                shutil.copytree(source, artifact)
            else:
                shutil.copyfile(source, artifact)
            sha256, size = artifact_digest(artifact)
            meta = {
                "name": name,
                "artifact": artifact.name,
                "created": _now(),
                "sha256": sha256,
                "size_bytes": size,
                "format": format or infer_format(source),
                "metrics": values,
                "description": description,
                "source_path": str(source),
                "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            }
            with self._locked(name):
                state = self._read_state(name)
                versions = directory / "versions"
                versions.mkdir(exist_ok=True)
                taken = [int(p.name) for p in versions.iterdir() if p.name.isdigit()]
                number = max([state["next_version"], *(n + 1 for n in taken)])
                _write_json(incoming / "meta.json", {"version": number, **meta})
                incoming.rename(versions / str(number))
                state["next_version"] = number + 1
                if promote:
                    self._record(state, "promote", number, reason="registered with promote")
                _write_json(directory / "registry.json", state)
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)
        return self._load(name, number)

    def promote(self, name: str, version: int, *, reason: str | None = None) -> ModelVersion:
        """Make ``version`` the champion of ``name``; promoting the champion again changes nothing."""
        with self._locked(name, create=False):
            target = self.get(name, version)
            state = self._read_state(name)
            if state["champion"] != target.version:
                self._record(state, "promote", target.version, reason=reason)
                _write_json(self.root / name / "registry.json", state)
        return target

    def rollback(self, name: str) -> ModelVersion:
        """Make the champion before the current one champion again (skipping deleted versions).

        Promotions form a stack: promoting pushes, rolling back pops, so repeated rollbacks walk
        back through earlier champions until there is none left.
        """
        with self._locked(name, create=False):
            state = self._read_state(name)
            stack = self._champion_stack(state["history"])
            current = stack.pop() if stack else None
            while stack and not (self.root / name / "versions" / str(stack[-1]) / "meta.json").is_file():
                stack.pop()
            if not stack:
                what = f"no earlier champion than {name}:{current} is left" if current else "it has no champion"
                raise RegistryError(
                    f"cannot roll back {name!r}: {what}; "
                    f"promote a version instead: tideflow models promote {name} VERSION"
                )
            self._record(state, "rollback", stack[-1])
            _write_json(self.root / name / "registry.json", state)
            return self.get(name, stack[-1])

    def delete(self, name: str, version: int) -> None:
        """Remove a stored version; the champion cannot be deleted (promote another one first)."""
        with self._locked(name, create=False):
            target = self.get(name, version)
            if self._read_state(name)["champion"] == target.version:
                raise RegistryError(
                    f"{target.label} is the champion: promote or roll back to another version before deleting it"
                )
            # Rename first, so that no reader ever sees a half-deleted version.
            doomed = self.root / name / f".deleting-{target.version}-{os.getpid()}"
            (self.root / name / "versions" / str(target.version)).rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- internals ------------------------------------------------------------------------------

    def _existing(self, name: str) -> Path:
        directory = self.root / validate_name(name)
        if not (directory / "registry.json").is_file():
            known = self.names()
            hint = f"known models: {', '.join(known)}" if known else "the registry is empty"
            raise RegistryError(
                f"no model named {name!r} in {self.root} ({hint}); register one: tideflow models register {name} PATH"
            )
        return directory

    def _state(self, name: str) -> dict[str, Any]:
        self._existing(name)
        return self._read_state(name)

    def _read_state(self, name: str) -> dict[str, Any]:
        path = self.root / name / "registry.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            state = {}
        return {"champion": None, "history": [], "revision": 0, "next_version": 1, **state}

    def _load(self, name: str, version: int) -> ModelVersion:
        folder = self.root / name / "versions" / str(version)
        meta = json.loads((folder / "meta.json").read_text())
        return ModelVersion(
            name=name,
            version=int(meta["version"]),
            path=folder / meta["artifact"],
            created=meta["created"],
            sha256=meta["sha256"],
            size_bytes=int(meta["size_bytes"]),
            format=meta["format"],
            metrics=dict(meta.get("metrics") or {}),
            description=meta.get("description"),
            source_path=meta.get("source_path", ""),
            tags=dict(meta.get("tags") or {}),
        )

    @staticmethod
    def _record(state: dict[str, Any], action: str, version: int, *, reason: str | None = None) -> None:
        state["history"].append(
            {"action": action, "version": version, "previous": state["champion"], "at": _now(), "reason": reason}
        )
        state["champion"] = version
        state["revision"] += 1

    @staticmethod
    def _champion_stack(history: list[dict[str, Any]]) -> list[int]:
        """Replay promotions (push) and rollbacks (pop down to the version rolled back to)."""
        stack: list[int] = []
        for event in history:
            if event["action"] == "promote":
                stack.append(event["version"])
            else:
                while stack and stack[-1] != event["version"]:
                    stack.pop()
        return stack

    @contextmanager
    def _locked(self, name: str, *, create: bool = True) -> Iterator[None]:
        directory = self.root / validate_name(name) if create else self._existing(name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _metric(key: Any, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {key!r} must be a number, not {value!r}")
    return float(value)


def default_loader(version: ModelVersion) -> ModelHandler:
    """A handler for a stored version, chosen by its format (onnx, sklearn, torch)."""
    options = {"name": version.name, "version": version.label}
    if version.format == "onnx":
        from .onnx import OnnxModel

        return OnnxModel(version.path, **options)
    if version.format == "sklearn":
        from .sklearn import SklearnModel

        return SklearnModel(version.path, **options)
    if version.format == "torch":
        from .torch import TorchModel

        return TorchModel(version.path, jit=True, **options)
    raise RegistryError(
        f"{version.label} has format {version.format!r}, which has no default loader: "
        "pass RegisteredModel(..., loader=a function from ModelVersion to ModelHandler)"
    )


class RegisteredModel:
    """Follows a model name in a registry: what an ``infer`` step uses to serve the champion and
    to swap in a newly promoted one at a batch boundary.

    Poll ``revision()``; when it changed, call ``current()`` (read the revision *first*, so that
    a promotion between the two calls is seen at the next poll rather than missed).
    """

    def __init__(
        self,
        name: str,
        *,
        registry: ModelRegistry | str | Path | None = None,
        loader: Callable[[ModelVersion], ModelHandler] | None = None,
    ) -> None:
        self.name = validate_name(name)
        self.registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        self.loader = loader or default_loader
        self._cached: tuple[ModelVersion, ModelHandler] | None = None

    def __repr__(self) -> str:
        return f"RegisteredModel({self.name!r}, registry={self.registry!r})"

    def revision(self) -> int:
        """The registry's change token for this name (see ``ModelRegistry.revision``)."""
        return self.registry.revision(self.name)

    def current(self) -> tuple[ModelVersion, ModelHandler]:
        """The champion and a handler for it (built once per version), its ``version`` set to the
        champion's label so output rows say which version scored them."""
        champion = self.registry.champion(self.name)
        if champion is None:
            raise RegistryError(
                f"model {self.name!r} has no champion yet: promote a version first: "
                f"tideflow models promote {self.name} VERSION"
            )
        if self._cached is not None and self._cached[0] == champion:
            return self._cached
        handler = self.loader(champion)
        if handler.version != champion.label:
            handler.version = champion.label
        self._cached = (champion, handler)
        return self._cached
