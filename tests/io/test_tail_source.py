"""TailSource: appended lines, new files, partial lines, truncation, rotation, idle end and stop.

Tests synchronise on conditions (rows in the sink, bytes read by the source), never on sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tideflow as tdf
from tideflow.io.files import LineReader
from tideflow.io.tail import TailSource

from ..conftest import FlowThread, wait_until


@dataclass
class Tail:
    source: TailSource
    out: tdf.io.MemorySink
    dead: tdf.io.MemorySink
    runner: FlowThread

    def values(self, column: str = "v") -> list[object]:
        return self.out.frame.get_column(column).to_list() if len(self.out) else []

    def wait_rows(self, n: int) -> None:
        wait_until(lambda: len(self.out) >= n, what=f"{n} rows")
        assert len(self.out) == n

    def wait_read(self, *paths: Path) -> None:
        """Until the source has read every byte of ``paths`` (their sizes add up)."""
        total = sum(p.stat().st_size for p in paths)
        wait_until(lambda: self.source.progress()[0] >= total, what=f"{total} bytes read")


@contextmanager
def tailing(source: TailSource) -> Iterator[Tail]:
    """Run a flow over ``source`` in a thread; stop it and check it ended cleanly on exit."""
    flow = tdf.Flow("tail")
    out, dead = tdf.io.MemorySink(), tdf.io.MemorySink()
    flow.source("src", source).sink("out", out)
    flow.dead_letters().sink("dlq", dead)
    runner = FlowThread(flow)
    runner.start()
    try:
        yield Tail(source, out, dead, runner)
    finally:
        flow.stop()
        runner.join(timeout=10)
    assert not runner.is_alive(), "the tail source did not stop"
    assert runner.error is None, runner.error


def append(path: Path, text: str) -> None:
    with path.open("ab") as handle:
        handle.write(text.encode())


def test_picks_up_appended_lines_and_new_files(tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    append(first, '{"v":1}\n{"v":2}\n')
    (tmp_path / "notes.txt").write_text("not followed\n")
    with tailing(TailSource(tmp_path, pattern="*.jsonl", poll="20ms", file_column="series")) as tail:
        tail.wait_rows(2)
        append(first, '{"v":3}\n')
        tail.wait_rows(3)
        append(tmp_path / "b.jsonl", '{"v":4}\n{"v":5}\n')
        tail.wait_rows(5)
        append(first, "not json\n")
        wait_until(lambda: len(tail.dead) == 1, what="the dead letter")
    assert tail.values() == [1, 2, 3, 4, 5]
    assert tail.values("series") == ["a", "a", "a", "b", "b"]
    (letter,) = tail.dead.records
    assert (letter["step"], letter["payload"], letter["file"], letter["position"]) == (
        "src",
        "not json",
        str(first),
        "line 4",
    )
    assert tail.runner.result is not None and tail.runner.result.interrupted


def test_partial_line_is_held_until_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    append(path, '{"v":1}\n{"v":')
    with tailing(TailSource(path, poll="20ms")) as tail:
        tail.wait_rows(1)
        tail.wait_read(path)
        append(path, "2}")
        tail.wait_read(path)
        append(path, '\n{"v":3}\n')
        tail.wait_rows(3)
    assert tail.values() == [1, 2, 3]
    assert len(tail.dead) == 0


def test_truncated_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    append(path, '{"v":1}\n{"v":2}\n{"v":3}\n')
    with tailing(TailSource(path, poll="20ms")) as tail:
        tail.wait_rows(3)
        path.write_text('{"v":10}\n')
        tail.wait_rows(4)
        append(path, '{"v":11}\n')
        tail.wait_rows(5)
    assert tail.values() == [1, 2, 3, 10, 11]


def test_file_rewritten_longer_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    append(path, '{"v":1}\n')
    with tailing(TailSource(path, poll="20ms")) as tail:
        tail.wait_rows(1)
        path.write_text('{"v":20}\n{"v":21}\n{"v":22}\n')
        tail.wait_rows(4)
    assert tail.values() == [1, 20, 21, 22]


def test_rotated_file_is_not_read_twice(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, '{"v":1}\n')
    with tailing(TailSource(tmp_path, pattern="app.log*", poll="20ms")) as tail:
        tail.wait_rows(1)
        append(log, '{"v":2}\n')
        os.rename(log, tmp_path / "app.log.1")
        append(log, '{"v":3}\n')
        tail.wait_rows(3)
        append(tmp_path / "app.log.1", '{"v":"late"}\n')  # still followed under its new name: a dead letter
        wait_until(lambda: len(tail.dead) == 1, what="the late line")
    assert sorted(tail.values()) == [1, 2, 3]
    assert tail.dead.records[0]["file"] == str(tmp_path / "app.log.1")
    assert tail.dead.records[0]["position"] == "line 3"


def test_csv_from_the_end_reads_only_new_lines_with_true_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    append(path, "host,v\na,1\nb,2\n")
    source = TailSource(path, format="csv", from_start=False, poll="20ms", schema={"host": str, "v": int})
    with tailing(source) as tail:
        tail.wait_read(path)
        append(path, "c,3\nd,oops\n")
        tail.wait_rows(1)
        wait_until(lambda: len(tail.dead) == 1, what="the dead letter")
    assert tail.out.frame.rows() == [("c", 3)]
    letter = tail.dead.records[0]
    assert (letter["payload"], letter["position"]) == ("d,oops", "line 5")
    assert letter["error"] == "column 'v': cannot read 'oops' as Int64"


def test_idle_timeout_ends_like_a_bounded_source(tmp_path: Path) -> None:
    path = tmp_path / "i.jsonl"
    append(path, '{"v":1}\n{"v":2}')  # the last line never gets its newline
    flow = tdf.Flow("idle")
    out = tdf.io.MemorySink()
    flow.source("src", TailSource(path, poll="10ms", idle_timeout="200ms")).sink("out", out)
    result = flow.run(handle_signals=False)
    assert out.frame.get_column("v").to_list() == [1, 2]
    assert not result.interrupted


def test_stop_ends_a_long_poll_promptly(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    append(path, '{"v":1}\n')
    with tailing(TailSource(path, poll="1h")) as tail:
        tail.wait_rows(1)
    assert tail.values() == [1]


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "later.jsonl"
    with tailing(TailSource(path, poll="20ms")) as tail:
        append(path, '{"v":1}\n')
        tail.wait_rows(1)


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        TailSource(tmp_path, format="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll"):
        TailSource(tmp_path, poll="soon")


@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    max_bytes=st.integers(1, 40),
)
def test_line_reader_gives_the_same_lines_however_the_bytes_are_chunked(
    data: bytes, cuts: list[int], max_bytes: int
) -> None:
    """Split at any chunk boundaries, the reader numbers, keeps, skips and cuts lines as a whole split does."""
    expected_lines, expected_numbers, expected_long = [], [], []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if len(line) > max_bytes:
            expected_long.append((number, line[:max_bytes], len(line)))
        elif line not in (b"", b"\r"):
            expected_lines.append(line)
            expected_numbers.append(number)
    reader = LineReader(max_bytes)
    lines, numbers, long = [], [], []
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    parts = [reader.feed(data[a:b]) for a, b in pairwise(bounds)] + [reader.finish()]
    for part in parts:
        lines += part.lines
        numbers += part.numbers
        long += part.overlong
    assert (lines, numbers, long) == (expected_lines, expected_numbers, expected_long)
