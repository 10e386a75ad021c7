"""ParquetSource: typed rows with row positions; an unreadable file is one dead letter."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from tideflow.io.parquet import ParquetSource
from tideflow.io.schema import Schema

from .test_csv_source import run_source


def write_parquet(path: Path, frame: pl.DataFrame, row_group_size: int | None = None) -> Path:
    frame.write_parquet(path, row_group_size=row_group_size)
    return path


def test_reads_files_in_order_with_row_positions_and_file_column(tmp_path: Path) -> None:
    write_parquet(tmp_path / "b.parquet", pl.DataFrame({"v": [3.0], "host": ["z"]}))
    write_parquet(tmp_path / "a.parquet", pl.DataFrame({"v": [1.0, 2.0], "host": ["x", "y"]}))
    run = run_source(ParquetSource(tmp_path, file_column="series", batch_size=1))
    assert run.out.rows() == [(1.0, "x", "a"), (2.0, "y", "a"), (3.0, "z", "b")]
    assert run.dead == []
    assert run.result.records_in == 3


def test_corrupt_file_among_good_ones_is_one_dead_letter(tmp_path: Path) -> None:
    write_parquet(tmp_path / "1.parquet", pl.DataFrame({"v": [1, 2]}))
    (tmp_path / "2.parquet").write_bytes(b"PAR1 this is not parquet at all")
    good = write_parquet(tmp_path / "3.parquet", pl.DataFrame({"v": list(range(1000))}), row_group_size=100)
    truncated = tmp_path / "4.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write_parquet(tmp_path / "5.parquet", pl.DataFrame({"v": [9]}))

    run = run_source(ParquetSource(str(tmp_path / "*.parquet")))
    assert run.out.get_column("v").to_list() == [1, 2, *range(1000), 9]
    assert len(run.dead) == 2
    for letter, name in zip(run.dead, ["2.parquet", "4.parquet"], strict=True):
        assert letter["step"] == "src"
        assert letter["file"] == str(tmp_path / name)
        assert letter["error"].startswith(f"cannot read Parquet file {tmp_path / name}")
        assert letter["payload"] == str(tmp_path / name)
        assert letter["position"] == "row 0"


def test_file_corrupt_part_way_keeps_the_rows_before_the_damage(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "c.parquet", pl.DataFrame({"v": list(range(1000))}), row_group_size=100)
    column = pq.ParquetFile(path).metadata.row_group(5).column(0)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset
    data[start : start + column.total_compressed_size] = b"\xab" * column.total_compressed_size
    path.write_bytes(bytes(data))
    run = run_source(ParquetSource(path, batch_size=100))
    assert run.out.get_column("v").to_list() == list(range(500))
    (letter,) = run.dead
    assert letter["error"].startswith(f"cannot read Parquet file {path}")
    assert letter["position"] == "row 500"


def test_types_are_held_across_files_and_bad_rows_are_dead_letters(tmp_path: Path) -> None:
    write_parquet(tmp_path / "1.parquet", pl.DataFrame({"n": [1, 2]}))
    write_parquet(tmp_path / "2.parquet", pl.DataFrame({"n": [3.0, 3.5, None]}))
    run = run_source(ParquetSource(tmp_path))
    assert run.out.schema == pl.Schema({"n": pl.Int64})
    assert run.out.get_column("n").to_list() == [1, 2, 3, None]
    (letter,) = run.dead
    assert letter["error"] == "column 'n': cannot read '3.5' as Int64"
    assert (letter["file"], letter["position"], letter["payload"]) == (
        str(tmp_path / "2.parquet"),
        "row 1",
        '{"n":3.5}',
    )


def test_schema_casts_and_requires(tmp_path: Path) -> None:
    frame = pl.DataFrame({"host": ["a", None, "c"], "value": [1, 2, 3]}, schema_overrides={"value": pl.Int32})
    path = write_parquet(tmp_path / "s.parquet", frame)
    run = run_source(ParquetSource(path, schema=Schema({"host": pl.String, "value": pl.Float64})))
    assert run.out.schema == pl.Schema({"host": pl.String, "value": pl.Float64})
    assert run.out.rows() == [("a", 1.0), ("c", 3.0)]
    assert [d["error"] for d in run.dead] == ["column 'host' is required"]


def test_event_time_from_datetimes_and_epoch_ms(tmp_path: Path) -> None:
    times = [datetime(2024, 1, 1), datetime(2024, 1, 2)]
    path = write_parquet(tmp_path / "t.parquet", pl.DataFrame({"ts": times, "ms": [1, 2]}))
    assert run_source(ParquetSource(path, time="ts")).out.get_column("ts").to_list() == times
    assert run_source(ParquetSource(path, time="ms")).out.get_column("ms").to_list() == [1, 2]
    path = write_parquet(tmp_path / "text.parquet", pl.DataFrame({"ts": ["2024-01-01 00:00:00", "never"]}))
    run = run_source(ParquetSource(path, time="ts"))
    assert run.out.height == 1
    assert [(d["error"], d["position"]) for d in run.dead] == [("cannot read event time from column 'ts'", "row 1")]


def test_progress_and_batches(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", pl.DataFrame({"v": list(range(10_000))}))
    source = ParquetSource(path, batch_size=1_000)
    run = run_source(source)
    assert run.out.height == 10_000
    assert source.progress() == (path.stat().st_size, path.stat().st_size)


def test_missing_path_is_reported_when_built(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ParquetSource(tmp_path / "none.parquet")
