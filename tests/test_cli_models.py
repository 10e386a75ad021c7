"""``tideflow models``: register, list, promote, rollback, show, delete, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tideflow.ai.registry import ModelRegistry
from tideflow.cli import app

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "fraud.onnx"
    path.write_bytes(b"onnx-bytes")
    return path


def models(store: Path, *args: str) -> Result:
    return runner.invoke(app, ["models", *args, "--registry", str(store)])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def test_every_command_has_help() -> None:
    for command in ([], ["register"], ["list"], ["promote"], ["rollback"], ["show"], ["delete"]):
        shown = runner.invoke(app, ["models", *command, "--help"])
        assert shown.exit_code == 0, shown.output
        assert "Usage" in shown.output
        if command:
            assert "--registry" in shown.output and "TIDEFLOW_MODELS" in shown.output


def test_register_promote_rollback_round_trip(store: Path, model_file: Path) -> None:
    registered = ok(models(store, "register", "fraud", str(model_file), "--metrics", "accuracy=0.75", "-m", "f1=0.7"))
    assert "fraud:1" in registered.stdout
    second = models(store, "register", "fraud", str(model_file), "--metrics", '{"accuracy": 0.8}', "--promote")
    assert "promoted fraud:2" in ok(second).stdout
    ok(models(store, "register", "fraud", str(model_file), "--format", "custom", "--description", "tuned"))

    listed = json.loads(ok(models(store, "list", "--json")).stdout)
    assert listed == [{"name": "fraud", "champion": 2, "versions": 3, "latest": 3}]
    versions = json.loads(ok(models(store, "list", "fraud", "--json")).stdout)
    assert versions["champion"] == 2
    assert [v["metrics"] for v in versions["versions"]] == [{"accuracy": 0.75, "f1": 0.7}, {"accuracy": 0.8}, {}]
    assert [v["champion"] for v in versions["versions"]] == [False, True, False]
    assert versions["versions"][2]["format"] == "custom" and versions["versions"][2]["description"] == "tuned"

    assert "promoted fraud:3 (was fraud:2)" in ok(models(store, "promote", "fraud", "3", "--reason", "better")).stdout
    assert "rolled back fraud to fraud:2 (was fraud:3)" in ok(models(store, "rollback", "fraud")).stdout
    assert ModelRegistry(store).champion("fraud").version == 2  # type: ignore[union-attr]
    assert ModelRegistry(store).history("fraud")[1]["reason"] == "better"

    assert "deleted fraud:3" in ok(models(store, "delete", "fraud", "3")).stdout
    assert [v.version for v in ModelRegistry(store).versions("fraud")] == [1, 2]


def test_tables_are_printed(store: Path, model_file: Path) -> None:
    ok(models(store, "register", "fraud", str(model_file), "-m", "accuracy=0.75", "--promote"))
    table = ok(models(store, "list")).stdout
    assert "fraud" in table and "fraud:1" in table
    versions = ok(models(store, "list", "fraud")).stdout
    assert "* champion" in versions and "accuracy=0.75" in versions
    shown = ok(models(store, "show", "fraud")).stdout
    assert "fraud:1" in shown and "verified" in shown


def test_show_verifies_the_hash(store: Path, model_file: Path) -> None:
    ok(models(store, "register", "fraud", str(model_file)))
    ok(models(store, "register", "fraud", str(model_file), "--promote"))
    shown = json.loads(ok(models(store, "show", "fraud", "--json")).stdout)
    assert shown["label"] == "fraud:2" and shown["champion"] and shown["verified"]
    assert shown["sha256"] == ModelRegistry(store).get("fraud", 2).sha256
    assert json.loads(ok(models(store, "show", "fraud", "1", "--json")).stdout)["champion"] is False

    Path(shown["path"]).write_bytes(b"tampered")
    tampered = models(store, "show", "fraud", "--json")
    assert tampered.exit_code == 1
    assert json.loads(tampered.stdout)["verified"] is False
    assert "does not match its sha256" in tampered.stderr and "register the model again" in tampered.stderr


def test_errors_exit_1_and_say_what_to_do(store: Path, model_file: Path) -> None:
    empty = models(store, "show", "fraud")
    assert empty.exit_code == 1 and "tideflow models register fraud PATH" in empty.stderr
    assert empty.stdout == ""
    ok(models(store, "register", "fraud", str(model_file)))

    cases = {
        ("promote", "frud", "1"): "known models: fraud",
        ("promote", "fraud", "9"): "its versions are [1]",
        ("rollback", "fraud"): "tideflow models promote fraud VERSION",
        ("register", "fraud", "missing.onnx"): "no such file",
        ("register", "bad/name", str(model_file)): "invalid model name",
        ("register", "fraud", str(model_file), "-m", "accuracy"): "use NAME=NUMBER",
        ("register", "fraud", str(model_file), "-m", "accuracy=high"): "use NAME=NUMBER",
        ("register", "fraud", str(model_file), "-m", "{oops"): "is not valid JSON",
        ("register", "fraud", str(model_file), "-m", '{"accuracy": "high"}'): "must be a number",
    }
    for args, hint in cases.items():
        result = models(store, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "error:" in result.stderr and hint in result.stderr, (args, result.stderr)

    ok(models(store, "promote", "fraud", "1"))
    refused = models(store, "delete", "fraud", "1")
    assert refused.exit_code == 1 and "promote or roll back to another version" in refused.stderr
    assert [v.version for v in ModelRegistry(store).versions("fraud")] == [1]


def test_registry_comes_from_the_environment(tmp_path: Path, model_file: Path) -> None:
    env = {"TIDEFLOW_MODELS": str(tmp_path / "env-models")}
    ok(runner.invoke(app, ["models", "register", "fraud", str(model_file)], env=env))
    assert ModelRegistry(tmp_path / "env-models").names() == ["fraud"]
    listed = runner.invoke(app, ["models", "list", "--json"], env=env)
    assert json.loads(ok(listed).stdout)[0]["name"] == "fraud"
