"""``NexmarkSource``: one kind of NEXMark events (persons, auctions or bids) as a tideflow source.

The three kinds come from one deterministic event sequence (see :mod:`.generator`): a source
per kind generates only its own kind's rows, block by block, straight into columnar batches,
so a query reading bids never pays for persons. Sources built from the same configuration agree
with each other and with :func:`.generator.generate`. Event time is ``dateTime``; positions (for
dead letters) are the events' places in the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from ...io.base import Source, SourceContext
from ...record import POSITION
from .generator import TIME, Kind, NexmarkConfig, blocks


class NexmarkSource(Source):
    """Generated NEXMark events of one ``kind``: ``"person"``, ``"auction"`` or ``"bid"``.

    ``batch_size`` cuts each generated block (``config.block_events`` events, 46,000 bids for
    the default) into batches of at most that many rows; ``None`` yields one batch per block.
    """

    def __init__(self, kind: Kind, config: NexmarkConfig | None = None, *, batch_size: int | None = None) -> None:
        if kind not in ("person", "auction", "bid"):
            raise ValueError(f"kind must be 'person', 'auction' or 'bid', got {kind!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.kind: Kind = kind
        self.config = config or NexmarkConfig()
        self.batch_size = batch_size
        self.time = TIME
        self._done = 0
        self._total: int | None = None

    def batches(self, ctx: SourceContext) -> Iterator[pl.DataFrame]:
        for frame, positions in blocks(self.config, self.kind):
            if ctx.stopping():
                return
            if frame.height == 0:
                continue
            frame = frame.hstack([pl.Series(POSITION, positions, dtype=pl.Int64)])
            size = self.batch_size or frame.height
            for offset in range(0, frame.height, size):
                part = frame.slice(offset, size)
                self._done += part.height
                yield part

    def progress(self) -> tuple[int, int | None]:
        if self._total is None:
            self._total = self.config.count(self.kind)
        return (self._done, self._total)

    def __repr__(self) -> str:
        return f"NexmarkSource({self.kind!r}, {self.config!r})"
