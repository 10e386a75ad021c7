"""NEXMark: the standard streaming benchmark's generator and queries, as tideflow pipelines.

* :mod:`.generator` — the reference generator, vectorized: ``generate(NexmarkConfig(...))``
  gives one frame per kind (persons, auctions, bids), deterministic for a seed;
* :mod:`.source` — ``NexmarkSource(kind, config)``, the same events as a tideflow source;
* :mod:`.queries` — q0–q5, q7, q8, q11, q12 of the Flink suite as flows (``build(query, sink)``);
* :mod:`.oracle` — the same queries in DuckDB SQL (the tests' oracle);
* :mod:`.bytewax_queries` — the same queries in Bytewax 0.21.1 (runs in ``.bench-venv``);
* :mod:`.harness`, :mod:`.worker`, :mod:`.command` — ``tideflow bench nexmark``: one core,
  fresh processes, medians, tideflow or Bytewax on the same events.
"""

from __future__ import annotations

from typing import Any

__all__ = ["QUERIES", "NexmarkConfig", "NexmarkSource", "build", "generate"]


def __getattr__(name: str) -> Any:
    # Lazy: ``tideflow bench --help`` should not pay for numpy and the generator's tables.
    if name in ("NexmarkConfig", "generate"):
        from . import generator

        return getattr(generator, name)
    if name == "NexmarkSource":
        from .source import NexmarkSource

        return NexmarkSource
    if name in ("build", "QUERIES"):
        from . import queries

        return getattr(queries, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
