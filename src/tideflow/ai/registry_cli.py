"""``tideflow models``: the model registry's commands."""

from __future__ import annotations

import typer

models_app = typer.Typer(
    name="models", help="The model registry: register, list, promote, rollback.", no_args_is_help=True
)
