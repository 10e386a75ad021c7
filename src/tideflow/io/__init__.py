"""Sources and sinks."""

from .base import Sink, Source, SourceContext
from .memory import IterableSource, MemorySink, MemorySource, NullSink, StdoutSink

__all__ = [
    "IterableSource",
    "MemorySink",
    "MemorySource",
    "NullSink",
    "Sink",
    "Source",
    "SourceContext",
    "StdoutSink",
]
