"""The committed model repository is what spec generates, and its wiring is consistent."""

import re

import onnx

from t2vserve.repository import ENGINE_IO, ENSEMBLE_STEPS, RUNNER_PARAMETERS, ensemble_inputs, render_repository, stale_files
from t2vserve.server import DEFAULT_MODEL_REPOSITORY
from t2vserve.spec import ENGINE_SLOTS


def test_committed_configs_equal_generated() -> None:
    assert stale_files(DEFAULT_MODEL_REPOSITORY) == [], "run: python -m t2vserve.repository --write"


def test_engine_slots_have_tensorrt_default_and_runner_configs() -> None:
    files = render_repository()
    for slot in ENGINE_SLOTS:
        assert 'platform: "tensorrt_plan"' in files[f"{slot}/config.pbtxt"]
        for runner in RUNNER_PARAMETERS:
            text = files[f"{slot}/configs/{runner}.pbtxt"]
            assert 'backend: "python"' in text and f'string_value: "{runner}"' in text


def test_ensemble_tensors_are_produced_before_use() -> None:
    available = {t.name for t in ensemble_inputs()}
    for model, inputs, outputs in ENSEMBLE_STEPS:
        missing = [v for k, v in inputs.items() if v not in available and not _optional(k)]
        assert not missing, f"{model} reads {missing} before any step produces them"
        available |= set(outputs.values())
    config = render_repository()["t2v/config.pbtxt"]
    outputs = re.search(r"output \[(.*?)\]\n", config, re.S).group(1)
    for name in re.findall(r'name: "(\w+)"', outputs):
        assert name in available


def _optional(name: str) -> bool:
    return any(t.name == name and t.optional for t in ensemble_inputs())


def test_engine_configs_match_exported_onnx(repository) -> None:
    for slot, (inputs, outputs) in ENGINE_IO.items():
        model = onnx.load(str(repository / slot / "1" / "model.onnx"), load_external_data=False)
        assert [i.name for i in model.graph.input] == [t.name for t in inputs]
        assert [o.name for o in model.graph.output] == [t.name for t in outputs]
        for declared, actual in zip(inputs + outputs, list(model.graph.input) + list(model.graph.output)):
            assert len(declared.dims) == len(actual.type.tensor_type.shape.dim), f"{slot}.{declared.name} rank"
