"""Checkpoints: operator state encoded by :mod:`.codec` (restricted unpickling), kept by a
:class:`CheckpointStore` (SQLite file or directory of files: atomic, incremental, verified),
and managed with ``tideflow checkpoints`` (:mod:`.cli`)."""

from .codec import CorruptCheckpoint, UnsafeCheckpoint, allow_module, decode, encode
from .store import (
    Checkpoint,
    CheckpointInfo,
    CheckpointStore,
    CheckpointWarning,
    SaveReport,
    StepInfo,
    open_store,
)

__all__ = [
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointStore",
    "CheckpointWarning",
    "CorruptCheckpoint",
    "SaveReport",
    "StepInfo",
    "UnsafeCheckpoint",
    "allow_module",
    "decode",
    "encode",
    "open_store",
]
