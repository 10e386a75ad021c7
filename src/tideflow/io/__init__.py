"""Sources and sinks."""

from .base import Sink, Source, SourceContext
from .files_out import CsvSink, JsonlSink, ParquetSink, SinkSchemaError
from .memory import IterableSource, MemorySink, MemorySource, NullSink, StdoutSink
from .sqlite import SqliteSink

__all__ = [
    "CsvSink",
    "IterableSource",
    "JsonlSink",
    "MemorySink",
    "MemorySource",
    "NullSink",
    "ParquetSink",
    "Sink",
    "SinkSchemaError",
    "Source",
    "SourceContext",
    "SqliteSink",
    "StdoutSink",
]
