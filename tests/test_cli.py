"""The command line: help, version, running a pipeline file, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

import tideflow
from tideflow.cli import app

from .conftest import wait_until

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tideflow {tideflow.__version__}"
    for command in ([], ["run"], ["demo"]):
        shown = runner.invoke(app, [*command, "--help"])
        assert shown.exit_code == 0, shown.output
        assert "Usage" in shown.output


def write_pipeline(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipeline.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_run_prints_a_json_summary(tmp_path: Path) -> None:
    pipeline = write_pipeline(
        tmp_path,
        """
        import polars as pl
        import tideflow as tdf
        flow = tdf.Flow("cli-json")
        flow.source("src", tdf.io.MemorySource([{"v": i} for i in range(100)])).filter(
            "even", pl.col("v") % 2 == 0).map("inv", lambda r: {"v": 1 / (r["v"] - 50)}).sink(
            "out", tdf.io.NullSink())
        """,
    )
    result = runner.invoke(app, ["run", str(pipeline), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["flow"] == "cli-json"
    assert summary["records_in"] == 100
    assert summary["records_out"] == 49
    assert summary["dead_letters"] == 1


def test_run_explains_a_file_without_a_flow(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, "import tideflow as tdf\nmine = tdf.Flow('x')\n")
    result = runner.invoke(app, ["run", str(pipeline)], env={"COLUMNS": "300"})
    assert result.exit_code != 0
    assert "--flow mine" in result.output


def test_ctrl_c_finishes_in_flight_batches_flushes_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    pipeline = write_pipeline(
        tmp_path,
        f"""
        import itertools
        import tideflow as tdf

        class FileLines(tdf.io.Sink):
            def open(self, step):
                self.file = open({str(out)!r}, "a")
            def write(self, df):
                self.file.write("".join(f"{{i}}\\n" for i in df["i"]))
                self.file.flush()
            def close(self):
                self.file.write("closed\\n")
                self.file.close()

        flow = tdf.Flow("endless")
        flow.source("counter", tdf.io.IterableSource(({{"i": i}} for i in itertools.count()), batch_size=100,
                    linger="5ms")).sink("lines", FileLines())
        """,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli", "run", str(pipeline), "--quiet", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        wait_until(lambda: out.exists() and out.stat().st_size > 10_000, what="output to appear")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    lines = out.read_text().splitlines()
    assert lines[-1] == "closed"
    numbers = [int(x) for x in lines[:-1]]
    assert numbers == list(range(len(numbers)))  # every record read was written, in order
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    assert summary["records_in"] == summary["records_out"] == len(numbers)
    assert "interrupted" in stderr
