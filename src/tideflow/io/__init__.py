"""Sources and sinks."""

from .base import Sink, Source, SourceContext
from .csv import CsvSource
from .files_out import CsvSink, JsonlSink, ParquetSink, SinkSchemaError
from .jsonl import JsonlSource
from .memory import IterableSource, MemorySink, MemorySource, NullSink, StdoutSink
from .parquet import ParquetSource
from .schema import Schema
from .sqlite import SqliteCommitError, SqliteSink
from .tail import TailSource

__all__ = [
    "CsvSink",
    "CsvSource",
    "IterableSource",
    "JsonlSink",
    "JsonlSource",
    "MemorySink",
    "MemorySource",
    "NullSink",
    "ParquetSink",
    "ParquetSource",
    "Schema",
    "Sink",
    "SinkSchemaError",
    "Source",
    "SourceContext",
    "SqliteCommitError",
    "SqliteSink",
    "StdoutSink",
    "TailSource",
]
