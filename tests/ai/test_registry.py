"""The on-disk model registry: versions, hashes, promotions, rollbacks, concurrency, following a name."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tideflow.ai.base import ModelHandler
from tideflow.ai.registry import (
    ModelRegistry,
    ModelVersion,
    RegisteredModel,
    RegistryError,
    artifact_digest,
    default_loader,
)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def artifact(tmp_path: Path, name: str = "model.onnx", content: bytes = b"weights-1") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "encoder"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"dim": 8}')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    return root


def test_register_list_promote_rollback_round_trip(registry: ModelRegistry, tmp_path: Path) -> None:
    first = registry.register("fraud", artifact(tmp_path), metrics={"accuracy": 0.75}, description="baseline")
    second = registry.register("fraud", artifact(tmp_path, content=b"weights-2"), metrics={"accuracy": 0.8})

    assert (first.version, second.version) == (1, 2)
    assert first.label == "fraud:1"
    assert first.metrics == {"accuracy": 0.75} and first.description == "baseline"
    assert first.format == "onnx" and first.path.read_bytes() == b"weights-1"
    assert first.path.parent.parent.parent == registry.root / "fraud"
    assert registry.names() == ["fraud"]
    assert [v.version for v in registry.versions("fraud")] == [1, 2]
    assert registry.get("fraud", 2) == second
    assert registry.champion("fraud") is None

    assert registry.promote("fraud", 1, reason="first") == first
    assert registry.promote("fraud", 2) == second
    assert registry.champion("fraud") == second
    assert registry.rollback("fraud") == first
    assert registry.champion("fraud") == first
    assert [(e["action"], e["version"], e["previous"]) for e in registry.history("fraud")] == [
        ("promote", 1, None),
        ("promote", 2, 1),
        ("rollback", 1, 2),
    ]
    assert registry.history("fraud")[0]["reason"] == "first"
    # Another registry object on the same directory sees the same thing (all state is on disk).
    assert ModelRegistry(registry.root).champion("fraud") == first


def test_metadata_hash_size_format_and_source(registry: ModelRegistry, tmp_path: Path) -> None:
    content = b"\x00\x01" * 5000
    source = artifact(tmp_path, "clf.joblib", content)
    version = registry.register("clf", source, metrics={"f1": 1})

    assert version.sha256 == hashlib.sha256(content).hexdigest()
    assert version.size_bytes == len(content)
    assert version.format == "sklearn"
    assert version.metrics == {"f1": 1.0}
    assert version.source_path == str(source.resolve())
    assert version.created.endswith("+00:00")
    meta = json.loads((version.path.parent / "meta.json").read_text())
    assert meta["version"] == 1 and meta["sha256"] == version.sha256

    formats = {
        "a.onnx": "onnx",
        "a.pkl": "sklearn",
        "a.pt": "torch",
        "a.pth": "torch",
        "a.ts": "torch",
        "a.bin": "file",
        "meta.json": "file",
    }
    for filename, expected in formats.items():
        assert registry.register("formats", artifact(tmp_path, filename)).format == expected
    assert registry.register("formats", artifact(tmp_path), format="custom").format == "custom"
    assert registry.register("formats", model_dir(tmp_path)).format == "dir"
    assert registry.versions("formats")[6].path.name == "artifact.json"  # never overwrites meta.json
    with pytest.raises(ValueError, match="must be a number"):
        registry.register("clf", source, metrics={"accuracy": "high"})
    with pytest.raises(RegistryError, match="no such file"):
        registry.register("clf", tmp_path / "missing.onnx")


def test_directory_hash_is_stable_and_changes_with_content(registry: ModelRegistry, tmp_path: Path) -> None:
    source = model_dir(tmp_path)
    first = registry.register("encoder", source)
    assert first.path.is_dir() and (first.path / "sub" / "weights.bin").is_file()
    assert first.sha256 == artifact_digest(source)[0] == artifact_digest(first.path)[0]
    assert first.size_bytes == 10 + 2560
    assert registry.register("encoder", source).sha256 == first.sha256

    (source / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 9 + bytes(256))
    changed = registry.register("encoder", source).sha256
    (source / "sub" / "weights.bin").rename(source / "weights.bin")  # same bytes, another path
    moved = registry.register("encoder", source).sha256
    assert len({first.sha256, changed, moved}) == 3


def test_verify_detects_tampering(registry: ModelRegistry, tmp_path: Path) -> None:
    file_version = registry.register("fraud", artifact(tmp_path))
    dir_version = registry.register("encoder", model_dir(tmp_path))
    assert registry.verify("fraud", 1) and registry.verify("encoder", 1)

    file_version.path.write_bytes(b"weights-X")
    (dir_version.path / "config.json").write_text('{"dim": 9}')
    assert not registry.verify("fraud", 1)
    assert not registry.verify("encoder", 1)
    file_version.path.unlink()
    assert not registry.verify("fraud", 1)


REGISTER_MANY = textwrap.dedent(
    """
    import sys
    from tideflow.ai.registry import ModelRegistry

    registry = ModelRegistry(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the other process
    for i in range(int(sys.argv[3])):
        print(registry.register("race", sys.argv[2], metrics={"i": i}).version, flush=True)
    """
)


def test_concurrent_processes_get_distinct_versions(registry: ModelRegistry, tmp_path: Path) -> None:
    source = artifact(tmp_path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_MANY, str(registry.root), str(source), "10"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in processes:  # both are waiting on stdin now: release them at once
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    assigned: list[int] = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assigned += [int(line) for line in out.split()]

    assert sorted(assigned) == list(range(1, 21))
    assert [v.version for v in registry.versions("race")] == list(range(1, 21))
    assert registry.register("race", source).version == 21
    assert not [p for p in (registry.root / "race").iterdir() if p.name.startswith(".incoming")]


def test_rollback_walks_back_through_promotions(registry: ModelRegistry, tmp_path: Path) -> None:
    for i in range(1, 6):
        registry.register("fraud", artifact(tmp_path, content=f"w{i}".encode()))
    with pytest.raises(RegistryError, match="has no champion"):
        registry.rollback("fraud")
    for version in (1, 2, 3, 2, 4):
        registry.promote("fraud", version)
    registry.promote("fraud", 4)  # promoting the champion again is not a new promotion

    assert registry.rollback("fraud").version == 2
    assert registry.rollback("fraud").version == 3
    registry.promote("fraud", 5)
    assert registry.rollback("fraud").version == 3
    registry.delete("fraud", 2)  # deleted versions are skipped
    assert registry.rollback("fraud").version == 1
    with pytest.raises(
        RegistryError, match=r"no earlier champion than fraud:1 is left.*tideflow models promote fraud VERSION"
    ):
        registry.rollback("fraud")
    assert registry.champion("fraud").version == 1  # type: ignore[union-attr]


def test_delete_refuses_the_champion_and_never_reuses_numbers(registry: ModelRegistry, tmp_path: Path) -> None:
    for _ in range(3):
        registry.register("fraud", artifact(tmp_path))
    registry.promote("fraud", 3)
    with pytest.raises(RegistryError, match="fraud:3 is the champion: promote or roll back"):
        registry.delete("fraud", 3)
    registry.delete("fraud", 2)
    with pytest.raises(RegistryError, match=r"no version 2; its versions are \[1, 3\]"):
        registry.get("fraud", 2)
    registry.promote("fraud", 1)
    registry.delete("fraud", 3)
    assert registry.register("fraud", artifact(tmp_path)).version == 4
    assert [v.version for v in registry.versions("fraud")] == [1, 4]


def test_revision_changes_on_promote_and_rollback_only(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.register("fraud", artifact(tmp_path))
    watcher = ModelRegistry(registry.root)  # another reader, with its own stat cache
    start = watcher.revision("fraud")
    registry.register("fraud", artifact(tmp_path))
    assert watcher.revision("fraud") == start

    registry.promote("fraud", 1)
    after_promote = watcher.revision("fraud")
    assert after_promote != start
    registry.promote("fraud", 1)
    assert watcher.revision("fraud") == after_promote
    registry.promote("fraud", 2)
    after_second = watcher.revision("fraud")
    assert after_second != after_promote
    registry.rollback("fraud")
    assert watcher.revision("fraud") not in (start, after_promote, after_second)
    registry.register("fraud", artifact(tmp_path), promote=True)
    assert watcher.revision("fraud") == registry.revision("fraud") == 4
    assert watcher.champion("fraud").version == 3  # type: ignore[union-attr]


def test_readers_never_see_a_half_written_registry(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.register("fraud", artifact(tmp_path))
    registry.register("fraud", artifact(tmp_path))
    state_file = registry.root / "fraud" / "registry.json"
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(json.loads(state_file.read_text())["revision"])
            except BaseException as error:
                errors.append(error)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            registry.promote("fraud", 1 + i % 2)
    finally:
        done.set()
        reader.join()
    assert not errors
    assert seen == sorted(seen) and seen[-1] <= 200


def test_names_are_validated(registry: ModelRegistry, tmp_path: Path) -> None:
    for bad in ("", "..", ".hidden", "a/b", "a\\b", "with space", "ünï"):
        with pytest.raises(ValueError, match="invalid model name"):
            registry.register(bad, artifact(tmp_path))
    for good in ("fraud", "Fraud-v2", "minilm_l6.int8"):
        assert registry.register(good, artifact(tmp_path)).name == good
    assert registry.names() == ["Fraud-v2", "fraud", "minilm_l6.int8"]


def test_errors_say_what_there_is(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(
        RegistryError, match=r"\(the registry is empty\); register one: tideflow models register fraud PATH"
    ):
        registry.versions("fraud")
    assert registry.names() == []
    registry.register("fraud", artifact(tmp_path))
    registry.register("churn", artifact(tmp_path))
    with pytest.raises(RegistryError, match=r"no model named 'frud'.*known models: churn, fraud"):
        registry.promote("frud", 1)
    with pytest.raises(RegistryError, match=r"no version 7; its versions are \[1\]"):
        registry.promote("fraud", 7)
    with pytest.raises(RegistryError, match="no model named"):
        registry.revision("frud")
    assert not (registry.root / "frud").exists()  # failed commands leave nothing behind


def test_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEFLOW_MODELS", str(tmp_path / "env-models"))
    assert ModelRegistry().root == tmp_path / "env-models"
    monkeypatch.delenv("TIDEFLOW_MODELS")
    assert ModelRegistry().root == Path("tideflow-models")


class EchoHandler(ModelHandler[bytes]):
    """A stand-in model: predicts the artifact's content for every row."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name

    def load(self, device: str) -> bytes:
        return self.path.read_bytes()

    def predict_batch(self, model: bytes, inputs: pl.DataFrame) -> Any:
        return [model.decode()] * inputs.height


def test_registered_model_follows_promotions(registry: ModelRegistry, tmp_path: Path) -> None:
    built: list[str] = []

    def loader(version: ModelVersion) -> ModelHandler:
        built.append(version.label)
        return EchoHandler(version.path, version.name)

    follower = RegisteredModel("fraud", registry=registry.root, loader=loader)
    with pytest.raises(RegistryError, match="no model named 'fraud'"):
        follower.current()
    registry.register("fraud", artifact(tmp_path, content=b"v1"))
    with pytest.raises(RegistryError, match="promote a version first: tideflow models promote fraud VERSION"):
        follower.current()

    registry.promote("fraud", 1)
    seen = follower.revision()
    version, handler = follower.current()
    assert version.label == handler.version == "fraud:1"
    assert handler.predict_batch(handler.load("cpu"), pl.DataFrame({"x": [1, 2]})) == ["v1", "v1"]
    assert follower.current()[1] is handler  # same champion: the handler is not rebuilt
    assert follower.revision() == seen

    registry.register("fraud", artifact(tmp_path, content=b"v2"), promote=True)
    assert follower.revision() != seen
    version, handler = follower.current()
    assert handler.version == "fraud:2"
    assert handler.predict_batch(handler.load("cpu"), pl.DataFrame({"x": [1]})) == ["v2"]
    registry.rollback("fraud")
    assert follower.current()[1].version == "fraud:1"
    assert built == ["fraud:1", "fraud:2", "fraud:1"]


def test_default_loader_explains_unknown_formats(registry: ModelRegistry, tmp_path: Path) -> None:
    version = registry.register("blob", artifact(tmp_path, "model.bin"))
    with pytest.raises(RegistryError, match="no default loader: pass RegisteredModel"):
        default_loader(version)
    registry.promote("blob", 1)
    with pytest.raises(RegistryError, match="no default loader"):
        RegisteredModel("blob", registry=registry).current()
