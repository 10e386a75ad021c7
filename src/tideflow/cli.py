"""The ``tideflow`` command line: run a pipeline file, run the demo, show the version.

Output conventions: progress and messages go to stderr, results (the summary table, or one JSON
object with ``--json``) go to stdout, so ``tideflow run p.py --json | jq`` works. A run stopped
by Ctrl-C flushes its sinks, prints a partial summary and exits with 130.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .errors import TideflowError
from .flow import Flow
from .runtime.local import RunResult
from .ui import RunProgress, render_demo_summary, render_summary

EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="tideflow",
    help="tideflow: a Python engine for real-time AI on data streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)


def _add_command_groups() -> None:
    from .ai.registry_cli import models_app
    from .apps.telemetry_cli import apps_app
    from .bench.cli import bench_app
    from .checkpoint.cli import checkpoints_app

    app.add_typer(models_app, name="models")
    app.add_typer(apps_app, name="apps")
    app.add_typer(bench_app, name="bench")
    app.add_typer(checkpoints_app, name="checkpoints")


_add_command_groups()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tideflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """tideflow: a Python engine for real-time AI on data streams."""


def load_flow(path: Path, variable: str = "flow") -> Flow:
    """Execute a pipeline file and return the ``Flow`` it defines under ``variable``."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file", param_hint="PIPELINE")
    namespace = runpy.run_path(str(path), run_name="__tideflow_pipeline__")
    flow = namespace.get(variable)
    if not isinstance(flow, Flow):
        found = [name for name, value in namespace.items() if isinstance(value, Flow)]
        hint = f"; it defines {found}: pass --flow {found[0]}" if found else ""
        raise typer.BadParameter(
            f"{path} must define a tideflow.Flow named {variable!r}{hint}", param_hint="PIPELINE"
        )
    return flow


def run_flow(flow: Flow, *, quiet: bool = False, **options: Any) -> RunResult:
    """Run with a progress display on stderr (suppressed by ``quiet`` or when not a terminal);
    ``options`` go to ``Flow.run`` (checkpoints)."""
    progress = None if quiet else RunProgress(stderr)
    try:
        if progress is not None:
            progress.start()
        return flow.run(on_tick=progress.update if progress is not None else None, **options)
    finally:
        if progress is not None:
            progress.stop()


def finish(result: RunResult, *, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Print the summary (table or JSON) and exit 130 when the run was interrupted."""
    if as_json:
        payload = {**result.to_dict(), **(extra or {})}
        stdout.print_json(json.dumps(payload, default=str))
    else:
        render_summary(stdout, result, extra)
    if result.interrupted:
        if result.checkpoints is not None and result.checkpoints.get("last_epoch") is not None:
            stderr.print(
                f"[yellow]interrupted: stopped at checkpoint {result.checkpoints['last_epoch']}; "
                "run again with --resume to go on from there[/]"
            )
        else:
            stderr.print("[yellow]interrupted: in-flight batches were finished and sinks flushed[/]")
        raise typer.Exit(EXIT_INTERRUPTED)


RUN_HELP = (
    "Run the flow defined in PIPELINE embedded, until its bounded inputs end (or Ctrl-C).\n\n"
    "With --checkpoint-dir, Ctrl-C stops at a last checkpoint and --resume continues from it; after a crash, "
    "--resume continues from the newest checkpoint, with no output lost or repeated by transactional sinks "
    "(SQLite, CSV, JSON Lines, Parquet directories, memory). See docs/recovery.md."
)


@app.command("run", help=RUN_HELP)
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="A Python file that defines a tideflow.Flow.")],
    flow_variable: Annotated[str, typer.Option("--flow", help="Name of the Flow variable in the file.")] = "flow",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            help="Take aligned checkpoints into DIR (SQLite store; exactly-once output to transactional sinks).",
        ),
    ] = None,
    checkpoint_every: Annotated[
        str, typer.Option("--checkpoint-every", help="Time between checkpoints, e.g. 500ms, 1s, 1m.")
    ] = "1s",
    keep: Annotated[int, typer.Option("--keep-checkpoints", help="Checkpoints kept (newest); 0 keeps all.")] = 3,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the newest valid checkpoint in --checkpoint-dir (none: start)."),
    ] = False,
    store: Annotated[
        str | None, typer.Option("--checkpoint-store", help="Store for a new directory: sqlite (default) or files.")
    ] = None,
) -> None:
    """Run the flow defined in PIPELINE embedded, until its bounded inputs end (or Ctrl-C)."""
    if resume and checkpoint_dir is None:
        raise typer.BadParameter("--resume needs --checkpoint-dir", param_hint="--resume")
    if store not in (None, "sqlite", "files"):
        raise typer.BadParameter("must be sqlite or files", param_hint="--checkpoint-store")
    sys.path.insert(0, str(pipeline.resolve().parent))
    flow = load_flow(pipeline, flow_variable)
    options: dict[str, Any] = {}
    if checkpoint_dir is not None:
        options = {
            "checkpoint_dir": checkpoint_dir,
            "checkpoint_every": checkpoint_every,
            "keep_checkpoints": keep,
            "resume": resume,
            "checkpoint_store": store,
        }
    try:
        result = run_flow(flow, quiet=quiet, **options)
    except (TideflowError, ValueError) as error:
        stderr.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from error
    _say_recovery(result)
    finish(result, as_json=as_json)


def _say_recovery(result: RunResult) -> None:
    """On stderr: where a resumed run started, and the steps it could not restore."""
    report = result.recovery
    if report is None:
        return
    if report.get("finished_before"):
        stderr.print(f"checkpoint {report['epoch']} was taken at the end of input: nothing left to do")
        return
    stderr.print(f"resumed from checkpoint {report['epoch']}: {len(report['restored'])} step(s) restored")
    for step, why in report["not_restored"].items():
        stderr.print(f"[yellow]  {step}: {why}[/]")
    for step in report["dropped"]:
        stderr.print(f"[yellow]  {step}: in the checkpoint, not in the flow: its state is dropped[/]")


@app.command("demo")
def demo_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="Where results go (default: a new folder under ./tideflow-out).")
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option("--speed", help="Replay speed relative to event time (default: as fast as possible)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no messages.")] = False,
) -> None:
    """The main job on bundled real data, as one flow: anomalies and a load forecast on server metrics
    (NAB), and the sentiment of a tweet stream (MiniLM). Writes SQLite, Parquet and PNG charts."""
    from .apps.demo import Demo, DemoSettings

    if speed is not None and speed <= 0:
        raise typer.BadParameter("must be positive", param_hint="--speed")

    def say(line: str) -> None:
        if not quiet:
            stderr.print(line, markup=False, highlight=False)

    demo = Demo(DemoSettings(out_dir=out, speed=speed), say=say)
    say(f"tideflow demo: {len(demo.files)} NAB series, a load forecast and a tweet stream → {demo.out_dir}")
    try:
        summary, _ = demo.run(lambda flow: run_flow(flow, quiet=quiet))
    except TideflowError as error:
        stderr.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        stdout.print_json(json.dumps(summary, default=str))
    else:
        render_demo_summary(stdout, summary)
    if summary["interrupted"]:
        stderr.print("[yellow]interrupted: in-flight batches were finished and sinks flushed; figures are partial[/]")
        raise typer.Exit(EXIT_INTERRUPTED)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
