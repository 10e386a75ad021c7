"""``tideflow bench``: the benchmark commands, each defined in its own module."""

from __future__ import annotations

import typer

from .inference import inference_command
from .nexmark.command import nexmark_command

bench_app = typer.Typer(
    name="bench",
    help="Measure tideflow (and its peers, side by side): NEXMark queries, inference.",
    no_args_is_help=True,
)
bench_app.command("nexmark")(nexmark_command)
bench_app.command("inference")(inference_command)
