"""``tideflow bench nexmark``."""

from __future__ import annotations

import typer


def nexmark_command() -> None:
    """Run a NEXMark query (not built yet)."""
    raise typer.Exit(2)
