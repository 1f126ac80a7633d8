"""Each exported graph equals its torch module under ONNX Runtime (fp32, max abs error <= 1e-4).

Inputs are fresh random tensors whose dynamic axes differ from the export example, so the check
covers the dynamic batch / frames / resolution axes as well as the arithmetic. The decoder's graph
ends in uint8 frames: it is held to the same float tolerance through ``video.rounding_excess``.
"""

import numpy as np
import onnx
import pytest
import torch

from t2vserve import onnx_export
from t2vserve.bench.common import runner_config
from t2vserve.export import ONNX_TOLERANCE, check_slot
from t2vserve.families import get_family
from t2vserve.runners import make_runner
from t2vserve.video import LEVEL, rounding_excess, uint8_frames

FP_SLOTS = ["text_encoder", "kv_projector", "unet", "vae_decoder"]


@pytest.fixture(scope="module")
def slots(geometry):
    return {s.name: s for s in get_family(geometry.family).slots_of(geometry)}


@pytest.mark.parametrize("name", FP_SLOTS)
@pytest.mark.parametrize("grow", [0, 2])
def test_exported_graph_matches_torch(slots, components, geometry, repository, name: str, grow: int) -> None:
    slot = slots[name]
    error = check_slot(slot, slot.module(components), geometry, repository / name / "1" / "model.onnx", grow, seed=grow)
    assert error <= ONNX_TOLERANCE, f"{name}: max |onnxruntime - torch| = {error:.2e}"


@pytest.mark.parametrize("name", FP_SLOTS)
def test_exported_graph_interface(slots, repository, name: str) -> None:
    model = onnx.load(str(repository / name / "1" / "model.onnx"))
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset >= 18
    slot = slots[name]
    assert [i.name for i in model.graph.input] == slot.input_names
    assert [o.name for o in model.graph.output] == slot.output_names
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        for axis, label in slot.dynamic_axes()[tensor.name].items():
            assert dims[axis].dim_param == label, f"{name}.{tensor.name} axis {axis} is not dynamic"


def test_large_models_use_external_data(slots, components, geometry, tmp_path, monkeypatch) -> None:
    """Over the protobuf limit (lowered here) the weights go to model.onnx.data and still load."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1024)
    slot = slots["kv_projector"]
    module = slot.module(components)
    example = slot.example_inputs(get_family(geometry.family).example_values(geometry), geometry.vocab_size)
    path = onnx_export.export_graph(slot.name, module, example, slot.output_names, slot.dynamic_axes(), tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx.data").stat().st_size > 1024
    assert check_slot(slot, module, geometry, path) <= ONNX_TOLERANCE


def _postprocess_rounding(frames: np.ndarray) -> np.ndarray:
    """What postprocess did to the decoder's fp32 frames before the decoder slot emitted uint8 (diffusers' rounding)."""
    video = np.clip(frames.astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    return np.round(video.transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def test_uint8_frames_round_exactly_as_postprocess_did() -> None:
    ties = (torch.arange(256.0) + 0.5) / 255 * 2 - 1  # values on (or next to) a rounding boundary, either side
    edges = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.999, 1.0, 1.5])
    values = torch.cat([ties, torch.nextafter(ties, torch.tensor(2.0)), torch.nextafter(ties, torch.tensor(-2.0)), edges,
                        torch.randn(3 * 5 * 7 * 11, generator=torch.Generator().manual_seed(0))])
    frames = values[: values.numel() // 3 * 3].reshape(-1, 3, 1, 1)
    video = uint8_frames(frames)
    assert video.dtype == torch.uint8 and video.shape == (frames.shape[0], 1, 1, 3)
    np.testing.assert_array_equal(video.numpy(), _postprocess_rounding(frames.numpy()))


def test_rounding_excess_is_the_float_error_a_uint8_difference_implies() -> None:
    frames = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1)).clamp(-0.9, 0.9).numpy()
    video = uint8_frames(torch.from_numpy(frames)).numpy()
    assert rounding_excess(video, frames) == 0.0
    near = frames.copy()
    near[0, 0, 0, 0] = (100.5 + 0.01) / 127.5 - 1  # 0.01 level above a boundary, given the level below
    lower = video.copy()
    lower[0, 0, 0, 0] = 100
    assert rounding_excess(lower, near) == pytest.approx(0.01 * LEVEL, rel=1e-3)  # a tie's flip: within the tolerance
    far = video.copy()
    far[1, 2, 3, 0] = video[1, 2, 3, 0] + (2 if video[1, 2, 3, 0] < 128 else -2)
    assert rounding_excess(far, frames) >= 1.5 * LEVEL > ONNX_TOLERANCE


def test_the_decoder_slot_emits_uint8_frames_from_onnx_and_the_torch_runner(slots, components, geometry, repository) -> None:
    """The exported graph ends in Round and Cast(UINT8) (what TensorRT builds its UINT8 output from), and the torch
    runner of the same slot returns the module's uint8 frames as they are."""
    model = onnx.load(str(repository / "vae_decoder" / "1" / "model.onnx"))
    assert [n.op_type for n in model.graph.node][-2:] == ["Round", "Cast"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    config = runner_config(repository, "vae_decoder", "torch-cpu")
    runner = make_runner("torch", repository / "vae_decoder" / "1", config)
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    (frames,) = runner.run({"LATENTS": latents}).values()
    side = 8 * geometry.vae_scale_factor
    assert frames.dtype == torch.uint8 and frames.shape == (2, side, side, 3)
    with torch.no_grad():
        assert torch.equal(frames, slots["vae_decoder"].module(components)(latents))
