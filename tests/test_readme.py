"""The README's Python examples run as shown (docs that match the code)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_quickstart_runs_and_dead_letters_the_bad_reading(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    exec(python_blocks()[0], namespace)
    printed = capsys.readouterr().out
    assert "285 alerts, 1 dead letter(s), 1001 readings in" in printed
    assert '"step":"parse-watts"' in printed


def test_windowed_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requests").mkdir()
    (tmp_path / "requests" / "a.csv").write_text(
        "ts,request_id,service,latency_ms\n1000,r1,api,12.5\n2000,r2,api,30\n2000,r2,api,30\n65000,r3,db,5\n"
    )
    namespace: dict[str, object] = {}
    exec(python_blocks()[1] + "\nresult = flow.run(handle_signals=False)\n", namespace)
    rows = (
        sqlite3.connect(tmp_path / "latency.db")
        .execute("SELECT service, window_start, n, mean_ms FROM per_minute ORDER BY service, window_start")
        .fetchall()
    )
    assert rows == [("api", 0, 2, 21.25), ("db", 60_000, 1, 5.0)]
