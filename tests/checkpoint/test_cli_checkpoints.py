"""``tideflow checkpoints``: list, inspect, export, import, delete, against stores filled
through the API, with tables, JSON and errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tideflow.checkpoint.store import Checkpoint, open_store
from tideflow.cli import app

runner = CliRunner()
COMMANDS = ["list", "inspect", "export", "import", "delete"]


def checkpoint(epoch: int, *, finished: bool = False) -> Checkpoint:
    return Checkpoint(
        epoch=epoch,
        flow="orders",
        created=1_700_000_000.0 + epoch,
        finished=finished,
        sources={"orders_in": {"position": epoch * 10}},
        sinks={"orders_out": {"files": [f"part-{epoch}.parquet"]}},
        steps={"per_user": {0: b"a%d" % epoch, 1: b"b" * 2000}, "dedupe": {-1: b"seen"}},
        meta={"kinds": {"per_user": "KeyedAggregate", "dedupe": "Dedupe"}, "key_groups": 2},
    )


@pytest.fixture(params=["sqlite", "files"])
def store_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    directory = tmp_path / "ckpt"
    with open_store(directory, request.param) as store:
        for epoch in (1, 2, 5):
            store.save(checkpoint(epoch, finished=epoch == 5))
    return directory


def run(directory: Path | None, *args: str) -> Result:
    options = ["--checkpoint-dir", str(directory)] if directory is not None else []
    return runner.invoke(app, ["checkpoints", *args, *options], env={"TIDEFLOW_CHECKPOINT_DIR": None})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def corrupt_epoch_2(directory: Path) -> None:
    """Damage the one blob only checkpoint 2 has (per_user group 0: b"a2")."""
    if (directory / "checkpoints.sqlite").exists():
        with sqlite3.connect(directory / "checkpoints.sqlite") as conn:
            assert conn.execute("UPDATE blobs SET data = X'00' WHERE data = ?", (b"a2",)).rowcount == 1
    else:
        [path] = [p for p in (directory / "blobs").glob("*/*") if p.read_bytes() == b"a2"]
        path.write_bytes(b"\x00")


def test_every_command_has_help() -> None:
    for command in ([], *([c] for c in COMMANDS)):
        shown = runner.invoke(app, ["checkpoints", *command, "--help"])
        assert shown.exit_code == 0, shown.output
        assert "Usage" in shown.output
        if command:
            assert "--checkpoint-dir" in shown.output and "TIDEFLOW_CHECKPOINT_DIR" in shown.output


def test_list_as_table_and_json(store_dir: Path) -> None:
    table = ok(run(store_dir, "list")).stdout
    assert "orders" in table and "epoch" in table and "5" in table
    rows = json.loads(ok(run(store_dir, "list", "--json")).stdout)
    assert [row["epoch"] for row in rows] == [1, 2, 5]
    first = rows[0]
    assert first["flow"] == "orders" and first["steps"] == 2 and first["bytes"] == 2 + 2000 + 4
    assert first["created"] == 1_700_000_001.0 and first["created_iso"].startswith("2023-11-1")
    assert [row["finished"] for row in rows] == [False, False, True]
    assert all(row["ok"] for row in rows)
    verified = ok(run(store_dir, "list", "--verify")).stdout
    assert verified.count("OK") == 3


def test_the_directory_can_come_from_the_environment(store_dir: Path) -> None:
    shown = runner.invoke(app, ["checkpoints", "list", "--json"], env={"TIDEFLOW_CHECKPOINT_DIR": str(store_dir)})
    assert [row["epoch"] for row in json.loads(ok(shown).stdout)] == [1, 2, 5]


def test_a_missing_directory_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = run(None, "list")
    assert (
        missing.exit_code == 1 and "--checkpoint-dir" in missing.stderr and "TIDEFLOW_CHECKPOINT_DIR" in missing.stderr
    )
    absent = run(tmp_path / "nowhere", "inspect")
    assert absent.exit_code == 1 and "no checkpoints in" in absent.stderr
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", "list").exit_code == 1


def test_inspect_the_newest_and_a_given_one(store_dir: Path) -> None:
    shown = ok(run(store_dir, "inspect")).stdout
    assert "checkpoint 5 of flow orders" in shown and "end of input" in shown
    assert "per_user" in shown and "KeyedAggregate" in shown and "orders_in" in shown and "part-5.parquet" in shown
    assert "checksums: OK" in shown
    report = json.loads(ok(run(store_dir, "inspect", "2", "--json")).stdout)
    assert report["epoch"] == 2 and report["ok"] is True and report["problems"] == []
    assert report["steps"]["per_user"] == {"kind": "KeyedAggregate", "groups": 2, "bytes": 2002}
    assert report["steps"]["dedupe"] == {"kind": "Dedupe", "groups": 1, "bytes": 4}
    assert report["sources"] == {"orders_in": {"position": 20}}
    assert report["sinks"] == {"orders_out": {"files": ["part-2.parquet"]}}
    unknown = run(store_dir, "inspect", "9")
    assert unknown.exit_code == 1 and "no checkpoint 9" in unknown.stderr and "1-2, 5" in unknown.stderr


def test_damage_is_reported_with_exit_status_1(store_dir: Path) -> None:
    corrupt_epoch_2(store_dir)
    assert ok(run(store_dir, "list")).stdout.count("orders") == 3  # without --verify blobs are not read
    listed = run(store_dir, "list", "--verify")
    assert listed.exit_code == 1 and "CORRUPT" in listed.stdout and "damaged" in listed.stderr
    rows = json.loads(run(store_dir, "list", "--verify", "--json").stdout)
    assert [row["ok"] for row in rows] == [True, False, True]
    assert "checksum mismatch" in rows[1]["problems"][0]
    inspected = run(store_dir, "inspect", "2")
    assert inspected.exit_code == 1 and "CORRUPT" in inspected.stderr and "checksum mismatch" in inspected.stderr
    report = json.loads(run(store_dir, "inspect", "2", "--json").stdout)
    assert report["ok"] is False and "group 0" in report["problems"][0]
    assert ok(run(store_dir, "inspect", "5")).stdout.count("OK") == 1


def test_export_then_import(store_dir: Path, tmp_path: Path) -> None:
    file = tmp_path / "moved.tfckpt"
    exported = ok(run(store_dir, "export", str(file)))
    assert "exported checkpoint 5" in exported.stdout and file.is_file()
    again = run(store_dir, "export", str(file), "--epoch", "2")
    assert again.exit_code == 1 and "--force" in again.stderr
    assert "exported checkpoint 2" in ok(run(store_dir, "export", str(file), "--epoch", "2", "--force")).stdout
    target = tmp_path / "elsewhere"
    imported = ok(run(target, "import", str(file), "--kind", "files"))
    assert "imported checkpoint 2" in imported.stdout
    assert (target / "manifests").is_dir()
    with open_store(target) as store, open_store(store_dir) as source:
        assert store.load(2) == source.load(2)
    assert [row["epoch"] for row in json.loads(ok(run(target, "list", "--json")).stdout)] == [2]
    bad = tmp_path / "bad.tfckpt"
    bad.write_text("not a checkpoint")
    refused = run(target, "import", str(bad))
    assert refused.exit_code == 1 and "not a tideflow checkpoint" in refused.stderr


def test_export_skips_damaged_newest_with_a_warning(store_dir: Path, tmp_path: Path) -> None:
    with open_store(store_dir) as store:
        store.save(checkpoint(6))
    file = tmp_path / "out.tfckpt"
    if (store_dir / "checkpoints.sqlite").exists():
        with sqlite3.connect(store_dir / "checkpoints.sqlite") as conn:
            conn.execute("UPDATE blobs SET data = X'00' WHERE data = ?", (b"a6",))
    else:
        [path] = [p for p in (store_dir / "blobs").glob("*/*") if p.read_bytes() == b"a6"]
        path.write_bytes(b"\x00")
    shown = ok(run(store_dir, "export", str(file)))
    assert "exported checkpoint 5" in shown.stdout
    assert "warning" in shown.stderr and "checkpoint 6" in shown.stderr and "resuming from checkpoint 5" in shown.stderr


def test_delete_one_keep_and_all(store_dir: Path) -> None:
    assert "deleted checkpoint(s) 2; kept 1, 5" in ok(run(store_dir, "delete", "2")).stdout
    missing = run(store_dir, "delete", "2")
    assert missing.exit_code == 1 and "no checkpoint 2" in missing.stderr
    assert "deleted checkpoint(s) 1; kept 5" in ok(run(store_dir, "delete", "--keep", "1")).stdout
    assert "nothing to delete" in ok(run(store_dir, "delete", "--keep", "3")).stdout
    assert "deleted checkpoint(s) 5; none left" in ok(run(store_dir, "delete", "--all")).stdout
    assert json.loads(ok(run(store_dir, "list", "--json")).stdout) == []


def test_delete_needs_exactly_one_choice(store_dir: Path) -> None:
    for args in ([], ["1", "--all"], ["--all", "--keep", "1"]):
        refused = run(store_dir, "delete", *args)
        assert refused.exit_code == 2 and "one of EPOCH, --all or --keep" in refused.stderr
    assert run(store_dir, "delete", "--keep", "-1").exit_code == 2
    with open_store(store_dir) as store:
        assert store.epochs() == [1, 2, 5]
