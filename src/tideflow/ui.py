"""Terminal display of a run: a live progress bar while it runs, a one-screen summary after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from .runtime.local import LocalRuntime, RunResult


class RunProgress:
    """One bar per source with a known size (files: bytes), plus a live records count."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[records]} records"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, runtime: LocalRuntime) -> None:
        for step, done, total, unit in runtime.progress():
            if step not in self.tasks:
                self.tasks[step] = self.progress.add_task(step, total=total, records=0, amount="")
            self.progress.update(
                self.tasks[step],
                completed=done,
                total=total,
                records=f"{runtime.records_read():,}",
                amount=_amount(done, total, unit),
            )


def human_size(size: int) -> str:
    """``532 B``, ``14.9 MB``: byte counts for people (decimal units, as ``ls -h --si``)."""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _amount(done: int, total: int | None, unit: str) -> str:
    """``1.2/3.4 MB`` for bytes, ``1,200/3,400`` for records (or just ``done`` without a total)."""
    if unit == "bytes":
        return f"{decimal(done)}/{decimal(total)}" if total else decimal(done)
    return f"{done:,}/{total:,}" if total else f"{done:,}"


def render_summary(console: Console, result: RunResult, extra: dict[str, Any] | None = None) -> None:
    """The one-screen summary: totals, then per-step counts."""
    head = Table(title=f"tideflow run: {result.flow}" + (" (interrupted)" if result.interrupted else ""))
    for column in ("records in", "records out", "dead letters", "seconds", "records/s"):
        head.add_column(column, justify="right")
    head.add_row(
        f"{result.records_in:,}",
        f"{result.records_out:,}",
        f"{result.dead_letters:,}",
        f"{result.seconds:.2f}",
        f"{result.records_per_s:,.0f}",
    )
    console.print(head)
    steps = Table(show_edge=False, box=None)
    for column in ("step", "kind", "in", "out", "dead letters"):
        steps.add_column(column, justify="left" if column in ("step", "kind") else "right")
    for s in result.steps:
        steps.add_row(
            s.step,
            s.kind + (f" (fused with {s.fused_with})" if s.fused_with and s.fused_with != s.step else ""),
            "–" if s.records_in is None else f"{s.records_in:,}",
            "–" if s.records_out is None else f"{s.records_out:,}",
            f"{s.dead_letters:,}" if s.dead_letters else "",
        )
    console.print(steps)
    models = [s for s in result.steps if s.metrics and "model_ms_per_batch" in s.metrics]
    if models:
        console.print(_model_table(models))
    if extra:
        details = Table(show_header=False, box=None)
        for key, value in extra.items():
            details.add_row(key, str(value))
        console.print(details)


def _model_table(steps: list[Any]) -> Table:
    """One line per ``infer`` step: throughput, batch fill, where the time went."""
    table = Table(show_edge=False, box=None, title="models")
    for column in ("step", "version", "records/s", "batches", "mean batch", "model ms p50", "wait ms p99", "errors"):
        table.add_column(column, justify="left" if column in ("step", "version") else "right")
    for s in steps:
        m = s.metrics
        model_ms = (m.get("model_ms_per_batch") or {}).get("p50")
        wait_ms = (m.get("queue_wait_ms") or {}).get("p99")
        table.add_row(
            s.step,
            str(m.get("model_version") or ""),
            f"{m['records_per_s']:,.0f}" if m.get("records_per_s") else "–",
            f"{m['batches']:,}",
            f"{m['mean_batch_size']:.1f}" if m.get("mean_batch_size") else "–",
            "–" if model_ms is None else f"{model_ms:.2f}",
            "–" if wait_ms is None else f"{wait_ms:.2f}",
            f"{m['errors']:,}" if m.get("errors") else "",
        )
    return table


def render_demo_summary(console: Console, summary: dict[str, Any]) -> None:
    """``tideflow demo``'s summary: the figures of each branch, then where the results are."""
    title = "tideflow demo" + (" (interrupted: partial results)" if summary.get("interrupted") else "")
    figures = Table(title=title, show_header=False, title_justify="left")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    figures.add_column("note", style="dim")
    latency = summary.get("latency_ms") or {}
    forecast = summary.get("forecast") or {}
    text = summary.get("text") or {}
    rows = [
        ("events", f"{summary['events']:,}", f"{summary['seconds']:.1f} s, {summary['events_per_s']:,.0f}/s"),
        ("latency p50 / p99", f"{_ms(latency.get('p50'))} / {_ms(latency.get('p99'))}", "source to sink"),
        ("alerts", f"{summary['alerts']:,}", f"{summary.get('recalibrations', 0)} recalibrations on drift"),
        ("NAB score", _figure(summary["nab_score"], 1), "0 never alerting, 100 perfect"),
        ("precision", _figure(summary["precision"], 3), "alerts inside a labelled window"),
        ("recall", _figure(summary["recall"], 3), f"{summary.get('windows_detected')} labelled windows"),
        ("forecast MAE", _figure(summary["forecast_mae"], 3), f"last value: {_figure(forecast.get('naive_mae'), 3)}"),
        ("text accuracy", _figure(summary["text_accuracy"], 3), _text_note(text)),
        ("dead letters", f"{summary['dead_letters']:,}", ""),
    ]
    for row in rows:
        figures.add_row(*row)
    console.print(figures)
    where = Table(show_header=False, box=None, title="results", title_justify="left")
    where.add_column("what")
    where.add_column("where", overflow="fold")
    for name, location in (summary.get("tables") or {}).items():
        where.add_row(name, location)
    if text.get("head"):
        where.add_row("sentiment head", text["head"])
    charts = summary.get("charts") or []
    if charts:
        where.add_row("charts", f"{len(charts)} PNG files in {Path(charts[0]).parent}")
    elif summary.get("charts_note"):
        where.add_row("charts", summary["charts_note"])
    console.print(where)
    database = summary.get("database")
    if database:
        console.print(f'try: sqlite3 {database} "SELECT series, COUNT(*) AS alerts FROM alerts GROUP BY series"')


def _figure(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def _text_note(text: dict[str, Any]) -> str:
    if text.get("accuracy") is None:
        return "skipped" if str(text.get("head", "")).startswith("skipped") else ""
    return f"majority class: {_figure(text.get('majority_baseline'), 3)}"
