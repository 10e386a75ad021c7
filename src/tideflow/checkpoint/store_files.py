"""The directory-of-files checkpoint store: plain files, readable with ``ls`` and ``jq``.

    DIR/blobs/<sha[:2]>/<sha>             encoded state, named by its sha256
    DIR/manifests/<epoch:012d>.json       {"sha256": "<of the manifest>", "manifest": {...}}
    DIR/.lock                             flock'ed by writers (save, delete, import)

Every file is written to a temporary name, fsynced and renamed into place; a save writes its
new blobs first, fsyncs their directories, and writes its manifest last: the manifest's
appearance is the commit. A crash before it leaves only unreferenced blobs (and temporary
files), which the next ``delete`` or ``retain`` sweeps away under the lock. Readers take no
lock: they only ever see complete files.

The manifest's sha256 covers its exact bytes: the file is written as
``{"sha256":"<hex>","manifest":<canonical manifest JSON>}`` so both are recovered verbatim.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import TideflowError
from .codec import CorruptCheckpoint
from .store import MANIFESTS_DIR, CheckpointStore, log

_PREFIX = b'{"sha256":"'
_MIDDLE = b'","manifest":'
_NAME = re.compile(r"(\d{12})\.json")


class FileStore(CheckpointStore):
    """Checkpoints as files in ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / MANIFESTS_DIR
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(exist_ok=True)
        self._lock_fd: int | None = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Across processes: no blob sweep while another process saves (its blobs are not yet
        referenced). The store's thread lock is held too: flock does not exclude threads."""
        with self._lock:
            if self._lock_fd is None:
                raise TideflowError(f"{self} is closed")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _manifest_path(self, epoch: int) -> Path:
        return self.manifests / f"{epoch:012d}.json"

    def _blob_path(self, sha: str) -> Path:
        return self.blobs / sha[:2] / sha

    def epochs(self) -> list[int]:
        return sorted(int(m.group(1)) for name in os.listdir(self.manifests) if (m := _NAME.fullmatch(name)))

    def _read_manifest(self, epoch: int) -> tuple[bytes, str]:
        try:
            raw = self._manifest_path(epoch).read_bytes()
        except FileNotFoundError:
            raise TideflowError(self._no_such(epoch)) from None
        raw = raw.rstrip(b"\n")
        start = len(_PREFIX) + 64
        if not (raw.startswith(_PREFIX) and raw[start : start + len(_MIDDLE)] == _MIDDLE and raw.endswith(b"}")):
            raise CorruptCheckpoint("manifest file is damaged")
        return raw[start + len(_MIDDLE) : -1], raw[len(_PREFIX) : start].decode("ascii", "replace")

    def _read_blob(self, sha: str) -> bytes | None:
        try:
            return self._blob_path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, epoch: int, manifest: bytes, manifest_sha: str, blobs: dict[str, bytes]) -> tuple[int, int]:
        with self._exclusive():
            target = self._manifest_path(epoch)
            if target.exists():
                raise TideflowError(
                    f"checkpoint {epoch} already exists in {self.location}; epochs only increase "
                    f"(the next free one is {max(self.epochs()) + 1})"
                )
            new = [sha for sha, data in blobs.items() if _size(self._blob_path(sha)) != len(data)]
            directories: set[Path] = set()
            for done, sha in enumerate(new, 1):
                path = self._blob_path(sha)
                if not path.parent.is_dir():
                    path.parent.mkdir(exist_ok=True)
                    directories.add(self.blobs)
                _write_file(path, blobs[sha])
                directories.add(path.parent)
                self._progress(done, len(new))
            for directory in directories:
                _fsync_directory(directory)
            self._progress(None, len(new))
            _write_file(target, _PREFIX + manifest_sha.encode() + _MIDDLE + manifest + b"}\n")
            _fsync_directory(self.manifests)
        return len(new), sum(len(blobs[sha]) for sha in new)

    def _remove(self, epochs: list[int]) -> None:
        with self._exclusive():
            for epoch in epochs:
                self._manifest_path(epoch).unlink(missing_ok=True)
            _fsync_directory(self.manifests)
            self._sweep()

    def _sweep(self) -> None:
        """Delete blobs (and temporary files) no manifest references. Skipped when a manifest
        cannot be read: its blobs are unknown, and may be all that is left of a checkpoint."""
        referenced: set[str] = set()
        for epoch in self.epochs():
            try:
                body, _sha = self._read_manifest(epoch)
                steps = json.loads(body)["steps"]
                referenced.update(entry[0] for groups in steps.values() for entry in groups.values())
            except (CorruptCheckpoint, ValueError, KeyError, TypeError, IndexError) as error:
                log.warning("unused blobs in %s stay: checkpoint %d is unreadable (%s)", self.root, epoch, error)
                return
        for name in os.listdir(self.manifests):
            if ".tmp-" in name:
                (self.manifests / name).unlink(missing_ok=True)
        for directory in self.blobs.iterdir():
            if directory.is_dir():
                for path in directory.iterdir():
                    if path.name not in referenced:
                        path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _write_file(path: Path, data: bytes) -> None:
    """``data`` at ``path`` by temporary file, fsync and rename: never a partial file there."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temporary, path)


def _fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
