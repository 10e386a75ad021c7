"""Where checkpoints live: an atomic, incremental, verified store of encoded operator state.

A checkpoint is a manifest (flow, epoch, source positions, sink handles, metadata, and for
every step and key group the sha256 of its state) plus the state blobs, stored by content: a
key group whose state did not change since the last checkpoint has the same hash, so saving
it again writes nothing. The sha256 doubles as the checksum ``load`` verifies, and the
manifest has its own; a damaged checkpoint is reported, never restored, and ``latest()``
falls back to the newest checkpoint that verifies.

Two layouts, the same guarantees (see :mod:`.store_sqlite` and :mod:`.store_files`): one
SQLite file (the default: one transaction per save) or a directory of files (a manifest
appears by rename after its blobs are on disk). Either way a crash at any point of ``save``
leaves the earlier checkpoints intact and the new one absent.

What is trusted: a blob already stored under a hash with the right length is not re-read when
a later checkpoint uses it again (that is what makes saves incremental); damage to it shows at
``load``, which hashes everything.

Test hook: with the environment variable ``TIDEFLOW_CRASH_AT=save:N``, the N-th call of
``save`` in this process (1-based) kills the process with SIGKILL after writing about half of
its new blobs and before the commit, so that tests can check what a real crash leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ..errors import TideflowError
from .codec import CorruptCheckpoint

__all__ = [
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointStore",
    "CheckpointWarning",
    "CorruptCheckpoint",
    "SaveReport",
    "StepInfo",
    "open_store",
]

log = logging.getLogger("tideflow.checkpoint")

FORMAT = 1
StoreKind = Literal["sqlite", "files"]
SQLITE_FILE = "checkpoints.sqlite"
MANIFESTS_DIR = "manifests"
CRASH_ENV = "TIDEFLOW_CRASH_AT"
_SHA = re.compile(r"[0-9a-f]{64}")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (it is damaged) or a step could not be restored from it."""


@dataclass
class Checkpoint:
    """One consistent snapshot of a flow, as saved and loaded (state still encoded)."""

    epoch: int
    """Increasing per store, not necessarily contiguous."""
    flow: str
    created: float
    """Unix seconds."""
    finished: bool
    """Taken after the end of input: a resume has nothing left to do."""
    sources: dict[str, Any]
    """Source step -> JSON-able position data."""
    sinks: dict[str, Any]
    """Sink step -> JSON-able handle (what ``TransactionalSink.prepare`` returned)."""
    steps: dict[str, dict[int, bytes]]
    """Step name -> key group -> encoded state (:func:`~.codec.encode` bytes); group -1: not per key."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-able: tideflow version, ``kinds`` (step -> operator class name), key group count..."""


@dataclass
class SaveReport:
    """What one ``save`` cost: blobs and bytes the checkpoint references, and those written."""

    epoch: int
    bytes_total: int
    """Size of the distinct state blobs the checkpoint references."""
    bytes_written: int
    """Of those, the bytes the store did not hold yet."""
    blobs_total: int
    blobs_written: int
    seconds: float


@dataclass
class StepInfo:
    kind: str | None
    """The operator class, from ``meta["kinds"]`` when the writer recorded it."""
    groups: int
    bytes: int


@dataclass
class CheckpointInfo:
    """A checkpoint as its manifest describes it (blobs are not read)."""

    epoch: int
    flow: str
    created: float
    finished: bool
    steps: dict[str, StepInfo]
    bytes_total: int
    sources: dict[str, Any]
    sinks: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    """Why the manifest itself does not verify (blobs are checked by ``verify``); None: fine."""


class CheckpointStore(ABC):
    """Checkpoints of one flow, in one directory. Usable from several threads (one lock), and
    by several processes at once (a CLI next to a running flow): writes are serialised."""

    def __init__(self, location: Path) -> None:
        self.location = location
        """The directory (or the single file, for an export) shown in messages."""
        self._lock = threading.RLock()
        self._crash_armed = False

    # -- what a layout implements -------------------------------------------------------------

    @abstractmethod
    def epochs(self) -> list[int]:
        """Epochs of the stored checkpoints, oldest first (damaged ones included)."""

    @abstractmethod
    def _read_manifest(self, epoch: int) -> tuple[bytes, str]:
        """The manifest's bytes and the sha256 recorded with them; CorruptCheckpoint when the
        record itself is unreadable, TideflowError when there is no such epoch."""

    @abstractmethod
    def _read_blob(self, sha: str) -> bytes | None:
        """A blob by its sha256, None when missing."""

    @abstractmethod
    def _write(self, epoch: int, manifest: bytes, manifest_sha: str, blobs: dict[str, bytes]) -> tuple[int, int]:
        """Atomically store blobs the store lacks, then the manifest; returns (blobs, bytes)
        written. Calls ``self._progress(i, n)`` after the i-th of n new blobs and
        ``_progress(None, n)`` right before the commit. Raises TideflowError when ``epoch`` exists."""

    @abstractmethod
    def _remove(self, epochs: list[int]) -> None:
        """Delete these checkpoints and every blob no remaining checkpoint references."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; it must not be used afterwards."""

    # -- save -----------------------------------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> SaveReport:
        """Store ``checkpoint`` atomically, writing only blobs the store does not hold yet.
        Raises TideflowError when its epoch is already stored (epochs only increase)."""
        self._crash_armed = _crash_armed()
        try:
            return self._save(checkpoint)
        finally:
            self._crash_armed = False

    def _save(self, checkpoint: Checkpoint) -> SaveReport:
        started = time.perf_counter()
        manifest, blobs = _manifest_of(checkpoint)
        body = _canonical(manifest)
        with self._lock:
            written, written_bytes = self._write(checkpoint.epoch, body, hashlib.sha256(body).hexdigest(), blobs)
        return SaveReport(
            epoch=checkpoint.epoch,
            bytes_total=sum(len(data) for data in blobs.values()),
            bytes_written=written_bytes,
            blobs_total=len(blobs),
            blobs_written=written,
            seconds=time.perf_counter() - started,
        )

    def _progress(self, written: int | None, new: int) -> None:
        """The crash hook (see the module docstring): called by ``_write`` as blobs go out."""
        if self._crash_armed and (written is None or written >= (new + 1) // 2):
            log.error("%s=save:N reached: killing the process in the middle of a save", CRASH_ENV)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- read -----------------------------------------------------------------------------------

    def load(self, epoch: int) -> Checkpoint:
        """Checkpoint ``epoch`` with every checksum verified; CorruptCheckpoint says what is wrong."""
        with self._lock:
            checkpoint, problems = self._check(epoch)
        if problems:
            raise CorruptCheckpoint(f"checkpoint {epoch} in {self.location} is corrupted ({'; '.join(problems)})")
        assert checkpoint is not None
        return checkpoint

    def verify(self, epoch: int) -> list[str]:
        """What is wrong with checkpoint ``epoch`` (every blob is read and hashed); [] when it is fine."""
        with self._lock:
            return self._check(epoch)[1]

    def _check(self, epoch: int) -> tuple[Checkpoint | None, list[str]]:
        try:
            manifest = self._manifest(epoch)
        except CorruptCheckpoint as error:
            return None, [str(error)]
        problems: list[str] = []
        steps: dict[str, dict[int, bytes]] = {}
        for step, groups in manifest["steps"].items():
            steps[step] = {}
            for group, (sha, _size) in groups.items():
                data = self._read_blob(sha)
                where = f"step {step!r} group {group}: blob {sha[:12]}"
                if data is None:
                    problems.append(f"{where} is missing")
                elif hashlib.sha256(data).hexdigest() != sha:
                    problems.append(f"{where} checksum mismatch")
                else:
                    steps[step][int(group)] = data
        if problems:
            return None, problems
        return _checkpoint_of(manifest, steps), []

    def _manifest(self, epoch: int) -> dict[str, Any]:
        """The verified, parsed manifest of ``epoch``."""
        body, recorded = self._read_manifest(epoch)
        if hashlib.sha256(body).hexdigest() != recorded:
            raise CorruptCheckpoint("manifest checksum mismatch")
        try:
            manifest = json.loads(body)
            _validate_manifest(manifest, epoch)
        except (ValueError, TypeError, KeyError) as error:
            raise CorruptCheckpoint(f"manifest is not a tideflow checkpoint manifest: {error}") from None
        return manifest

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies (None: there is none). Each newer, damaged one is
        reported with a CheckpointWarning and a log warning, naming what is wrong."""
        skipped: list[tuple[int, list[str]]] = []
        found: Checkpoint | None = None
        for epoch in reversed(self.epochs()):
            with self._lock:
                found, problems = self._check(epoch)
            if found is not None:
                break
            skipped.append((epoch, problems))
        after = f"resuming from checkpoint {found.epoch}" if found else "no older checkpoint verifies"
        for epoch, problems in skipped:
            message = f"checkpoint {epoch} in {self.location} is corrupted ({'; '.join(problems)}); {after}"
            log.warning(message)
            warnings.warn(message, CheckpointWarning, stacklevel=2)
        return found

    def list(self) -> list[CheckpointInfo]:
        """Every checkpoint, oldest first, from the manifests alone (blobs are not read)."""
        infos = []
        with self._lock:
            for epoch in self.epochs():
                try:
                    infos.append(_info_of(self._manifest(epoch)))
                except CorruptCheckpoint as error:
                    infos.append(CheckpointInfo(epoch, "", 0.0, False, {}, 0, {}, {}, problem=str(error)))
        return infos

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, epoch: int) -> None:
        """Delete checkpoint ``epoch`` and the blobs no other checkpoint references."""
        with self._lock:
            if epoch not in self.epochs():
                raise TideflowError(self._no_such(epoch))
            self._remove([epoch])

    def retain(self, keep: int) -> list[int]:
        """Delete all checkpoints but the newest ``keep``; returns the deleted epochs."""
        if keep < 0:
            raise ValueError(f"retain(keep={keep}): keep must be 0 or more")
        with self._lock:
            epochs = self.epochs()
            doomed = epochs[: max(0, len(epochs) - keep)]
            if doomed:
                self._remove(doomed)
        return doomed

    def _no_such(self, epoch: int) -> str:
        epochs = self.epochs()
        have = f"it holds {epoch_ranges(epochs)}" if epochs else "it holds none"
        return f"no checkpoint {epoch} in {self.location}; {have}"

    # -- export / import --------------------------------------------------------------------------

    def export(self, file: Path, epoch: int | None = None, *, overwrite: bool = False) -> int:
        """Write checkpoint ``epoch`` (default: the newest that verifies) to ``file``, one
        self-contained SQLite file that ``import_`` reads on another machine; returns the epoch."""
        from .store_sqlite import SqliteStore

        file = Path(file)
        if file.exists() and not overwrite:
            raise TideflowError(f"{file} exists; remove it or pass overwrite=True (--force)")
        checkpoint = self.latest() if epoch is None else self.load(epoch)
        if checkpoint is None:
            raise TideflowError(f"no checkpoint in {self.location} to export")
        temporary = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        try:
            single = SqliteStore(temporary, wal=False)
            try:
                single._save(checkpoint)
            finally:
                single.close()
            os.replace(temporary, file)
        finally:
            temporary.unlink(missing_ok=True)
        return checkpoint.epoch

    def import_(self, file: Path) -> int:
        """Verify the checkpoint in ``file`` (made by ``export``) and store it here; returns its
        epoch. The same checkpoint twice is a no-op; another one under a stored epoch is refused."""
        from .store_sqlite import SqliteStore

        file = Path(file)
        if not file.is_file():
            raise TideflowError(f"{file} is not a file")
        source = SqliteStore(file, readonly=True)
        try:
            epochs = source.epochs()
            if len(epochs) != 1:
                raise TideflowError(f"{file} holds {len(epochs)} checkpoints; an export holds exactly one")
            checkpoint = source.load(epochs[0])
        finally:
            source.close()
        with self._lock:
            if checkpoint.epoch in self.epochs():
                theirs = _canonical(_manifest_of(checkpoint)[0])
                if self._read_manifest(checkpoint.epoch)[0] == theirs:
                    return checkpoint.epoch
                raise TideflowError(
                    f"checkpoint {checkpoint.epoch} already exists in {self.location} with different content; "
                    f"delete it first (tideflow checkpoints delete {checkpoint.epoch})"
                )
            self._save(checkpoint)
        return checkpoint.epoch

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.location)!r})"


def open_store(directory: str | os.PathLike[str], kind: StoreKind | None = None) -> CheckpointStore:
    """The checkpoint store in ``directory`` (created if missing). ``kind`` None: the layout
    already there, else SQLite; naming a kind other than the one there is an error."""
    from .store_files import FileStore
    from .store_sqlite import SqliteStore

    if kind not in (None, "sqlite", "files"):
        raise ValueError(f"open_store(kind={kind!r}): use 'sqlite' or 'files'")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    found = detect_kind(root)
    if kind is not None and found is not None and kind != found:
        raise TideflowError(f"{root} holds a {found} checkpoint store, not {kind}; use another directory")
    if (kind or found or "sqlite") == "files":
        return FileStore(root)
    return SqliteStore(root / SQLITE_FILE, location=root)


def detect_kind(directory: Path) -> StoreKind | None:
    """Which store ``directory`` holds, None when it holds none."""
    if (directory / SQLITE_FILE).is_file():
        return "sqlite"
    if (directory / MANIFESTS_DIR).is_dir():
        return "files"
    return None


# -- manifests -------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()  # keeps the flow's step order


def _manifest_of(checkpoint: Checkpoint) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest of ``checkpoint`` (JSON-able) and its blobs by sha256."""
    epoch = checkpoint.epoch
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"checkpoint epoch must be an int >= 0, got {epoch!r}")
    blobs: dict[str, bytes] = {}
    steps: dict[str, dict[str, list[Any]]] = {}
    for step, groups in checkpoint.steps.items():
        if not isinstance(step, str):
            raise TypeError(f"checkpoint {epoch}: step names must be str, got {step!r}")
        steps[step] = {}
        for group, data in groups.items():
            if not isinstance(group, int) or group < -1:
                raise TypeError(f"checkpoint {epoch}, step {step!r}: key groups are ints >= -1, got {group!r}")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"checkpoint {epoch}, step {step!r}: state must be encoded bytes, got {type(data)}")
            data = bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            blobs[sha] = data
            steps[step][str(group)] = [sha, len(data)]
    manifest = {
        "format": FORMAT,
        "epoch": epoch,
        "flow": str(checkpoint.flow),
        "created": float(checkpoint.created),
        "finished": bool(checkpoint.finished),
        "sources": checkpoint.sources,
        "sinks": checkpoint.sinks,
        "meta": checkpoint.meta,
        "steps": steps,
    }
    for part in ("sources", "sinks", "meta"):
        try:
            json.dumps(manifest[part])
        except (TypeError, ValueError) as error:
            raise TypeError(f"checkpoint {epoch}: {part} must be JSON-able: {error}") from None
    return manifest, blobs


def _validate_manifest(manifest: Any, epoch: int) -> None:
    """Raise ValueError unless ``manifest`` has the shape ``_manifest_of`` writes (an imported
    file is not trusted: a blob hash becomes a file name in the files store)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"unknown manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'}")
    if manifest["epoch"] != epoch:
        raise ValueError(f"it says epoch {manifest['epoch']}")
    if not isinstance(manifest["steps"], dict) or not all(isinstance(v, dict) for v in manifest["steps"].values()):
        raise ValueError("bad steps")
    for groups in manifest["steps"].values():
        for group, entry in groups.items():
            int(group)
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ValueError(f"bad blob entry {entry!r}")
            if not _SHA.fullmatch(entry[0]):
                raise ValueError(f"bad blob hash {entry[0]!r}")


def _checkpoint_of(manifest: dict[str, Any], steps: dict[str, dict[int, bytes]]) -> Checkpoint:
    return Checkpoint(
        epoch=manifest["epoch"],
        flow=manifest["flow"],
        created=manifest["created"],
        finished=manifest["finished"],
        sources=manifest["sources"],
        sinks=manifest["sinks"],
        steps=steps,
        meta=manifest["meta"],
    )


def _info_of(manifest: dict[str, Any]) -> CheckpointInfo:
    kinds = manifest["meta"].get("kinds") if isinstance(manifest["meta"], dict) else None
    kinds = kinds if isinstance(kinds, dict) else {}
    sizes: dict[str, int] = {}
    steps = {}
    for step, groups in manifest["steps"].items():
        for sha, size in groups.values():
            sizes[sha] = size
        kind = kinds.get(step)
        steps[step] = StepInfo(
            kind=kind if isinstance(kind, str) else None,
            groups=len(groups),
            bytes=sum(size for _sha, size in groups.values()),
        )
    return CheckpointInfo(
        epoch=manifest["epoch"],
        flow=manifest["flow"],
        created=manifest["created"],
        finished=manifest["finished"],
        steps=steps,
        bytes_total=sum(sizes.values()),
        sources=manifest["sources"],
        sinks=manifest["sinks"],
        meta=manifest["meta"],
    )


def epoch_ranges(epochs: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"``."""
    parts: list[str] = []
    start = previous = epochs[0]
    for epoch in [*epochs[1:], None]:
        if epoch is not None and epoch == previous + 1:
            previous = epoch
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if epoch is not None:
            start = previous = epoch
    return ", ".join(parts)


_save_calls = 0
_save_calls_lock = threading.Lock()


def _crash_armed() -> bool:
    """Counts ``save`` calls; True when this one is the ``TIDEFLOW_CRASH_AT=save:N`` one."""
    global _save_calls
    with _save_calls_lock:
        _save_calls += 1
        calls = _save_calls
    wanted = os.environ.get(CRASH_ENV, "")
    return wanted.startswith("save:") and wanted[5:].strip().isdigit() and int(wanted[5:]) == calls
