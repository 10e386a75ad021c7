"""``tideflow checkpoints``: list, inspect, export, import and delete a flow's checkpoints.

Same conventions as ``tideflow.cli``: results go to stdout (a table, or JSON with ``--json``),
warnings and errors go to stderr, say what to do, and errors exit with 1 — as does finding a
damaged checkpoint with ``list --verify`` or ``inspect``, so scripts can check a store.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import TideflowError
from ..ui import human_size
from .store import CheckpointInfo, CheckpointStore, detect_kind, epoch_ranges, open_store

ENV_VAR = "TIDEFLOW_CHECKPOINT_DIR"

checkpoints_app = typer.Typer(
    name="checkpoints",
    help="A flow's checkpoints: list, inspect, export, import, delete.",
    no_args_is_help=True,
)
stdout = Console()
stderr = Console(stderr=True)

CheckpointDir = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint-dir",
        "-d",
        envvar=ENV_VAR,
        show_envvar=True,
        help="The checkpoint directory (as given to tideflow run --checkpoint-dir).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Errors: one line on stderr and exit status 1. Warnings (a damaged checkpoint skipped):
    one line on stderr each, instead of Python's warning format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (TideflowError, ValueError, OSError) as error:
            stderr.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
            raise typer.Exit(1) from error
        finally:
            for warning in caught:
                stderr.print(f"[yellow]warning:[/] {escape(str(warning.message))}", soft_wrap=True)


def _open(directory: Path | None, *, create: bool = False, kind: str | None = None) -> CheckpointStore:
    """The store in ``directory``; unless ``create``, one must already be there (reading
    commands do not leave empty stores behind)."""
    if directory is None:
        raise TideflowError(f"no checkpoint directory: pass --checkpoint-dir DIR or set {ENV_VAR}")
    if not create and (not directory.is_dir() or detect_kind(directory) is None):
        raise TideflowError(f"no checkpoints in {directory}: it is not a checkpoint directory")
    if kind not in (None, "sqlite", "files"):
        raise ValueError(f"--kind {kind!r}: use sqlite or files")
    return open_store(directory, kind)  # type: ignore[arg-type]


def _when(created: float) -> str:
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="seconds") if created else "-"


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


@checkpoints_app.command("list")
def list_command(
    as_json: JsonFlag = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Read every blob and check its sha256 (exit 1 if one is damaged).")
    ] = False,
    directory: CheckpointDir = None,
) -> None:
    """List the checkpoints, oldest first: epoch, time, flow, finished, steps, size."""
    with _errors(), _open(directory) as store:
        infos = store.list()
        problems = {info.epoch: ([info.problem] if info.problem else []) for info in infos}
        if verify:
            problems = {info.epoch: problems[info.epoch] or store.verify(info.epoch) for info in infos}
    rows = [
        {
            "epoch": info.epoch,
            "created": info.created,
            "created_iso": _when(info.created),
            "flow": info.flow,
            "finished": info.finished,
            "steps": len(info.steps),
            "bytes": info.bytes_total,
            "ok": not problems[info.epoch],
            "problems": problems[info.epoch],
        }
        for info in infos
    ]
    if as_json:
        stdout.print_json(_json(rows))
    elif not rows:
        stderr.print(f"no checkpoints in {escape(str(directory))}")
    else:
        table = Table("epoch", "created", "flow", "finished", "steps", "size", title=f"checkpoints in {directory}")
        if verify or any(problems.values()):
            table.add_column("verified", overflow="fold")
        for row in rows:
            cells = [
                str(row["epoch"]),
                row["created_iso"],
                escape(row["flow"]),
                "yes" if row["finished"] else "no",
                str(row["steps"]),
                human_size(row["bytes"]),
            ]
            if verify or any(problems.values()):
                cells.append("[green]OK[/]" if row["ok"] else f"[red]CORRUPT[/] {escape('; '.join(row['problems']))}")
            table.add_row(*cells)
        stdout.print(table)
    if any(problems.values()):
        bad = [epoch for epoch, found in problems.items() if found]
        stderr.print(f"[red]damaged:[/] checkpoint(s) {epoch_ranges(bad)}; resuming skips them", soft_wrap=True)
        raise typer.Exit(1)


@checkpoints_app.command("inspect")
def inspect_command(
    epoch: Annotated[
        int | None, typer.Argument(help="The checkpoint (default: the newest).", show_default=False)
    ] = None,
    as_json: JsonFlag = False,
    directory: CheckpointDir = None,
) -> None:
    """Show a checkpoint and verify its checksums (exit 1 if it is damaged).

    Per step: kind, key groups and bytes; then source positions and sink handles."""
    with _errors(), _open(directory) as store:
        epochs = store.epochs()
        if epoch is None:
            if not epochs:
                raise TideflowError(f"no checkpoints in {directory}")
            epoch = epochs[-1]
        if epoch not in epochs:
            store.load(epoch)  # raises, saying which epochs there are
        info: CheckpointInfo = next(i for i in store.list() if i.epoch == epoch)
        problems = [info.problem] if info.problem else store.verify(epoch)
    report = {
        "epoch": info.epoch,
        "flow": info.flow,
        "created": info.created,
        "created_iso": _when(info.created),
        "finished": info.finished,
        "bytes": info.bytes_total,
        "steps": {name: {"kind": s.kind, "groups": s.groups, "bytes": s.bytes} for name, s in info.steps.items()},
        "sources": info.sources,
        "sinks": info.sinks,
        "meta": info.meta,
        "ok": not problems,
        "problems": problems,
    }
    if as_json:
        stdout.print_json(_json(report))
    elif not info.problem:
        _print_inspect(report)
    if problems:
        stderr.print(f"[red]CORRUPT:[/] checkpoint {epoch}: {escape('; '.join(problems))}", soft_wrap=True)
        raise typer.Exit(1)
    if not as_json:
        stdout.print(f"checksums: [green]OK[/] ({len(info.steps)} steps, {human_size(info.bytes_total)})")


def _print_inspect(report: dict[str, Any]) -> None:
    finished = " (taken at the end of input)" if report["finished"] else ""
    stdout.print(
        f"checkpoint [bold]{report['epoch']}[/] of flow [bold]{escape(report['flow'])}[/], "
        f"{report['created_iso']}{finished}",
        soft_wrap=True,
    )
    steps = Table("step", "kind", "key groups", "bytes", title="state")
    for name, step in report["steps"].items():
        steps.add_row(escape(name), escape(step["kind"] or "-"), str(step["groups"]), human_size(step["bytes"]))
    stdout.print(steps)
    for title, entries in (("source positions", report["sources"]), ("sink handles", report["sinks"])):
        if entries:
            table = Table("step", title.split()[1], title=title)
            for name, value in entries.items():
                table.add_row(escape(name), escape(_json(value)))
            stdout.print(table)


@checkpoints_app.command("export")
def export_command(
    file: Annotated[Path, typer.Argument(help="The file to write (one self-contained SQLite file).")],
    epoch: Annotated[
        int | None, typer.Option("--epoch", help="The checkpoint (default: the newest that verifies).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
    directory: CheckpointDir = None,
) -> None:
    """Write one checkpoint to FILE, for `tideflow checkpoints import` on another machine."""
    with _errors(), _open(directory) as store:
        exported = store.export(file, epoch, overwrite=force)
    stdout.print(
        f"exported checkpoint {exported} to {escape(str(file))} ({human_size(file.stat().st_size)})", soft_wrap=True
    )


@checkpoints_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="A file written by `tideflow checkpoints export`.")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="Store for a new directory: sqlite (default) or files.")
    ] = None,
    directory: CheckpointDir = None,
) -> None:
    """Verify the checkpoint in FILE and add it to the checkpoint directory.

    The directory is created if needed; `tideflow run --resume` then continues from it."""
    with _errors(), _open(directory, create=True, kind=kind) as store:
        imported = store.import_(file)
    stdout.print(f"imported checkpoint {imported} into {escape(str(directory))}", soft_wrap=True)


@checkpoints_app.command("delete")
def delete_command(
    epoch: Annotated[int | None, typer.Argument(help="The checkpoint to delete.", show_default=False)] = None,
    everything: Annotated[bool, typer.Option("--all", help="Delete every checkpoint.")] = False,
    keep: Annotated[int | None, typer.Option("--keep", help="Delete all but the newest N.", min=0)] = None,
    directory: CheckpointDir = None,
) -> None:
    """Delete EPOCH, --all, or all but the newest --keep N.

    State that no remaining checkpoint uses is freed."""
    if sum((epoch is not None, everything, keep is not None)) != 1:
        stderr.print("[red]error:[/] give one of EPOCH, --all or --keep N")
        raise typer.Exit(2)
    with _errors(), _open(directory) as store:
        if epoch is not None:
            store.delete(epoch)
            deleted = [epoch]
        else:
            deleted = store.retain(0 if everything else keep or 0)
        left = store.epochs()
    done = f"deleted checkpoint(s) {epoch_ranges(deleted)}" if deleted else "nothing to delete"
    kept = f"; kept {epoch_ranges(left)}" if left else "; none left"
    stdout.print(done + kept)
