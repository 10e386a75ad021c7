"""``tideflow bench inference``."""

from __future__ import annotations

import typer


def inference_command() -> None:
    """Measure inference throughput and latency (not built yet)."""
    raise typer.Exit(2)
