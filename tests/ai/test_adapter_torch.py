"""TorchModel: an nn.Module, a TorchScript file, a factory; outputs equal torch called directly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tideflow.ai import TorchModel
from tideflow.ai.torch import DeviceUnavailable
from tideflow.errors import TideflowError

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


class Heads(torch.nn.Module):
    """Two named outputs, to check that a dict of tensors becomes a mapping of arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.body(x)
        return {"score": y[:, 0], "logits": y}


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    values = np.random.default_rng(5).normal(size=(50, 4))
    return pl.DataFrame({name: values[:, i] for i, name in enumerate("abcd")})


def manual(module: torch.nn.Module, frame: pl.DataFrame) -> np.ndarray:
    x = torch.tensor(frame.to_numpy(), dtype=torch.float32)
    return (x @ module.weight.detach().T + module.bias.detach()).numpy()


def test_a_module_predicts_what_torch_computes(frame: pl.DataFrame) -> None:
    module = linear()
    handler = TorchModel(module, version="3")
    assert handler.name == "Linear" and handler.concurrency == "thread"
    model = handler.load("cpu")
    assert not model.training
    result = handler.predict_batch(model, frame)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32 and result.shape == (50, 3)
    np.testing.assert_allclose(result, manual(module, frame), rtol=1e-6, atol=1e-6)


def test_a_torchscript_file_round_trips(frame: pl.DataFrame, tmp_path) -> None:
    module = linear()
    path = tmp_path / "scorer.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    handler = TorchModel(path)
    assert handler.name == "scorer" and handler.describe()["source"] == str(path)
    result = handler.predict_batch(handler.load("cpu"), frame)
    np.testing.assert_allclose(result, manual(module, frame), rtol=1e-6, atol=1e-6)


def test_a_factory_builds_a_module_per_load(frame: pl.DataFrame) -> None:
    handler = TorchModel(linear, name="lin")
    first, second = handler.load("cpu"), handler.load("cpu")
    assert first is not second
    np.testing.assert_allclose(handler.predict_batch(first, frame), manual(linear(), frame), rtol=1e-6, atol=1e-6)


def test_jit_scripts_and_freezes_without_changing_results(frame: pl.DataFrame) -> None:
    module = linear()
    handler = TorchModel(module, jit=True)
    model = handler.load("cpu")
    assert isinstance(model, torch.jit.ScriptModule)
    np.testing.assert_allclose(handler.predict_batch(model, frame), manual(module, frame), rtol=1e-6, atol=1e-6)


def test_float64_runs_the_module_in_float64(frame: pl.DataFrame) -> None:
    module = linear()
    expected = frame.to_numpy() @ module.weight.detach().double().numpy().T + module.bias.detach().double().numpy()
    handler = TorchModel(linear(), dtype="float64")
    result = handler.predict_batch(handler.load("cpu"), frame)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_a_dict_of_tensors_becomes_named_arrays(frame: pl.DataFrame) -> None:
    torch.manual_seed(1)
    handler = TorchModel(Heads())
    model = handler.load("cpu")
    result = handler.predict_batch(model, frame)
    assert set(result) == {"score", "logits"}
    np.testing.assert_array_equal(result["score"], result["logits"][:, 0])


def test_inference_runs_without_autograd(frame: pl.DataFrame) -> None:
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["inference"] = torch.is_inference_mode_enabled()
            return x.sum(dim=1)

    handler = TorchModel(Probe())
    result = handler.predict_batch(handler.load("cpu"), frame)
    assert seen["inference"] is True
    np.testing.assert_allclose(result, frame.to_numpy().sum(axis=1), rtol=1e-6)


def test_cuda_on_a_machine_without_one_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailable, match=r"device 'cuda'.*device='cpu'") as caught:
        TorchModel(linear()).load("cuda")
    assert isinstance(caught.value, TideflowError)


def test_something_that_is_not_a_model_is_refused() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        TorchModel(42)
    with pytest.raises(TypeError, match=r"expected an nn\.Module"):
        TorchModel(lambda: "not a module").load("cpu")
