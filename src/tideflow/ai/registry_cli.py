"""``tideflow models``: the model registry's commands.

Same conventions as ``tideflow.cli``: results go to stdout (a table, or JSON with ``--json``),
errors go to stderr, say what to do, and exit with 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..ui import human_size
from .registry import DEFAULT_ROOT, ENV_VAR, ModelRegistry, ModelVersion, RegistryError

models_app = typer.Typer(
    name="models", help="The model registry: register, list, promote, rollback.", no_args_is_help=True
)
stdout = Console()
stderr = Console(stderr=True)

RegistryDir = Annotated[
    Path, typer.Option("--registry", envvar=ENV_VAR, help="The registry directory.", show_envvar=True)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NameArg = Annotated[str, typer.Argument(help="The model name.", show_default=False)]
VersionArg = Annotated[int, typer.Argument(help="The version number.", show_default=False)]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the registry's errors into one line on stderr and exit status 1."""
    try:
        yield
    except (RegistryError, ValueError, OSError) as error:
        stderr.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(1) from error


def parse_metrics(values: list[str]) -> dict[str, float]:
    """``--metrics`` values: ``NAME=NUMBER`` pairs, or JSON objects of numbers."""
    metrics: dict[str, Any] = {}
    for text in values:
        text = text.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--metrics {text!r} is not valid JSON ({error}); use '{{\"accuracy\": 0.75}}'"
                ) from None
            metrics.update(parsed)
            continue
        key, sep, value = text.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            metrics[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--metrics {text!r}: use NAME=NUMBER, e.g. --metrics accuracy=0.75") from None
    return metrics


def _metrics_text(version: ModelVersion) -> str:
    return escape(" ".join(f"{key}={value:g}" for key, value in version.metrics.items()))


@models_app.command("register")
def register_command(
    name: NameArg,
    path: Annotated[Path, typer.Argument(help="The model file or directory to store.", show_default=False)],
    metrics: Annotated[
        list[str] | None,
        typer.Option("--metrics", "-m", help="NAME=NUMBER (repeatable) or a JSON object of numbers."),
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="onnx, sklearn, torch, dir, ... (default: from the extension).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="What this version is.")] = None,
    promote: Annotated[bool, typer.Option("--promote", help="Make it the champion at once.")] = False,
    registry: RegistryDir = Path(DEFAULT_ROOT),
) -> None:
    """Store a copy of PATH as the next version of NAME (with its sha256 and metrics)."""
    with _errors():
        version = ModelRegistry(registry).register(
            name, path, metrics=parse_metrics(metrics or []), format=format, description=description, promote=promote
        )
    promoted = " and promoted" if promote else ""
    stdout.print(f"registered{promoted} {version.label} ({version.format}, {human_size(version.size_bytes)})")


@models_app.command("list")
def list_command(
    name: Annotated[str | None, typer.Argument(help="A model name: list its versions.", show_default=False)] = None,
    as_json: JsonFlag = False,
    registry: RegistryDir = Path(DEFAULT_ROOT),
) -> None:
    """List the models (with their champions), or the versions of NAME."""
    store = ModelRegistry(registry)
    with _errors():
        if name is None:
            _list_models(store, as_json)
        else:
            _list_versions(store, name, as_json)


def _list_models(store: ModelRegistry, as_json: bool) -> None:
    rows = []
    for name in store.names():
        versions = store.versions(name)
        champion = store.champion(name)
        rows.append(
            {
                "name": name,
                "champion": champion.version if champion else None,
                "versions": len(versions),
                "latest": versions[-1].version if versions else None,
            }
        )
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    if not rows:
        stderr.print(f"no models in {escape(str(store.root))}; register one: tideflow models register NAME PATH")
        return
    table = Table("model", "champion", "versions", "latest", title=f"models in {escape(str(store.root))}")
    for row in rows:
        champion = f"{row['name']}:{row['champion']}" if row["champion"] else "-"
        table.add_row(row["name"], champion, str(row["versions"]), str(row["latest"] or "-"))
    stdout.print(table)


def _list_versions(store: ModelRegistry, name: str, as_json: bool) -> None:
    versions = store.versions(name)
    champion = store.champion(name)
    current = champion.version if champion else None
    if as_json:
        payload = {
            "name": name,
            "champion": current,
            "revision": store.revision(name),
            "versions": [{**v.to_dict(), "champion": v.version == current} for v in versions],
            "history": store.history(name),
        }
        stdout.print_json(json.dumps(payload))
        return
    table = Table(title=f"model {name}", caption="* champion" if current else "no champion yet")
    for column in ("version", "created (UTC)", "sha256", "size", "format"):
        table.add_column(column, no_wrap=True)
    table.add_column("metrics", overflow="fold")
    for v in versions:
        marker = " [bold green]*[/]" if v.version == current else ""
        created = v.created[:16].replace("T", " ")
        size = human_size(v.size_bytes)
        table.add_row(f"{v.version}{marker}", created, v.sha256[:10], size, v.format, _metrics_text(v))
    stdout.print(table)


@models_app.command("promote")
def promote_command(
    name: NameArg,
    version: VersionArg,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the history).")] = None,
    registry: RegistryDir = Path(DEFAULT_ROOT),
) -> None:
    """Make VERSION the champion of NAME: steps following NAME switch at their next batch."""
    store = ModelRegistry(registry)
    with _errors():
        before = store.champion(name)
        promoted = store.promote(name, version, reason=reason)
    was = f" (was {before.label})" if before and before != promoted else ""
    stdout.print(f"promoted {promoted.label}{was}")


@models_app.command("rollback")
def rollback_command(name: NameArg, registry: RegistryDir = Path(DEFAULT_ROOT)) -> None:
    """Make the previous champion of NAME the champion again."""
    store = ModelRegistry(registry)
    with _errors():
        before = store.champion(name)
        restored = store.rollback(name)
    was = f" (was {before.label})" if before else ""
    stdout.print(f"rolled back {name} to {restored.label}{was}")


@models_app.command("show")
def show_command(
    name: NameArg,
    version: Annotated[
        int | None, typer.Argument(help="The version (default: the champion, else the latest).", show_default=False)
    ] = None,
    as_json: JsonFlag = False,
    registry: RegistryDir = Path(DEFAULT_ROOT),
) -> None:
    """Show a version's metadata and check that its artifact still has its sha256 (exit 1 if not)."""
    store = ModelRegistry(registry)
    with _errors():
        champion = store.champion(name)
        if version is not None:
            shown = store.get(name, version)
        elif champion is not None:
            shown = champion
        else:
            versions = store.versions(name)
            if not versions:
                raise RegistryError(
                    f"model {name!r} has no versions; register one: tideflow models register {name} PATH"
                )
            shown = versions[-1]
        verified = store.verify(name, shown.version)
    info = {**shown.to_dict(), "champion": champion == shown, "verified": verified}
    if as_json:
        stdout.print_json(json.dumps(info))
    else:
        table = Table(show_header=False, title=shown.label, box=None)
        for key, value in info.items():
            text = _metrics_text(shown) if key == "metrics" else escape("" if value is None else str(value))
            table.add_row(key, text)
        stdout.print(table)
    if not verified:
        stderr.print(
            f"[red]error:[/] {shown.label}: the stored artifact at {escape(str(shown.path))} does not match its "
            "sha256; it was changed after registration: register the model again",
            soft_wrap=True,
        )
        raise typer.Exit(1)


@models_app.command("delete")
def delete_command(name: NameArg, version: VersionArg, registry: RegistryDir = Path(DEFAULT_ROOT)) -> None:
    """Delete a version of NAME (not the champion; its number is never reused)."""
    with _errors():
        ModelRegistry(registry).delete(name, version)
    stdout.print(f"deleted {name}:{version}")
