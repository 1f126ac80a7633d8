"""tensorrt_builder's precision plans, timing cache and device-memory log, against a stand-in ``tensorrt`` module.

TensorRT cannot be installed on these machines (its libraries need a GPU host), so these tests give the
builder a module with the few names it touches at import and fake builder-config / runtime objects that
behave as TensorRT 10 documents: ``create_timing_cache`` raises on bytes it cannot deserialize,
``set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache of another device or version,
``deserialize_cuda_engine`` returns None when it fails. ``make typecheck`` checks the real API's names.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

import t2vserve

MIB = 2**20


class _Names:
    def __getattr__(self, name: str) -> str:
        return name


def _fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.Builder = object  # type: ignore[attr-defined]
    trt.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})  # type: ignore[attr-defined]
    trt.BuilderFlag = trt.LayerType = _Names()  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)  # type: ignore[attr-defined]
    trt.float32 = "float32"  # type: ignore[attr-defined]
    trt.uint8 = "uint8"  # type: ignore[attr-defined]
    trt.__version__ = "10.5.0"  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def builder(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.delitem(sys.modules, "t2vserve.tensorrt_builder", raising=False)
    module = importlib.import_module("t2vserve.tensorrt_builder")
    yield module
    sys.modules.pop("t2vserve.tensorrt_builder", None)  # the real import (no tensorrt here) must fail again
    if hasattr(t2vserve, "tensorrt_builder"):
        delattr(t2vserve, "tensorrt_builder")


class FakeConfig:
    """IBuilderConfig's timing-cache calls: caches serialized on "this GPU" start with b"GPU0"."""

    def __init__(self) -> None:
        self.cache: bytes | None = None

    def create_timing_cache(self, blob: bytes) -> bytes:
        if blob and not blob.startswith(b"GPU"):
            raise RuntimeError("[TRT] Error Code 1: timing cache deserialization failed (bad magic)")
        return blob

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        if cache and not cache.startswith(b"GPU0") and not ignore_mismatch:
            return False
        self.cache = cache
        return True


@pytest.mark.parametrize(
    "content,said",
    [
        (b"GPU0 tactics", "reusing"),
        (b"GPU1 tactics", "rejected"),  # another GPU or TensorRT version
        (b"\x00\x17garbage", "unreadable"),  # truncated or corrupt
        (None, None),  # no file yet: a new cache, nothing to say
        ("directory", "unreadable"),  # the path is not a readable file
    ],
)
def test_a_timing_cache_tensorrt_rejects_is_rebuilt(builder, tmp_path: Path, content, said) -> None:
    path = tmp_path / "timing.cache"
    if content == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    config, messages = FakeConfig(), []
    cache = builder._timing_cache(config, path, messages.append)
    assert config.cache == cache  # the builder always gets a cache set: never a crash, never none
    if said == "reusing":
        assert cache == content and "reusing" in messages[-1]
    else:
        assert cache == b""
        assert said is None and messages == [] or any(said in m for m in messages), messages
    if said in ("rejected", "unreadable"):
        assert "starting an empty one" in messages[-1]


class FakeEngine:
    num_optimization_profiles = 2
    device_memory_size_v2 = 96 * MIB

    def get_device_memory_size_for_profile_v2(self, index: int) -> int:
        return (64, 96)[index] * MIB


class FakeRuntime:
    def __init__(self, engine: FakeEngine | None) -> None:
        self.engine = engine

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        return self.engine


def test_each_built_plan_logs_its_device_memory(builder) -> None:
    plan = bytes(3 * MIB)
    messages: list[str] = []
    builder.log_device_memory("unet", FakeRuntime(FakeEngine()), plan, messages.append)
    assert messages == [
        "unet: device memory 99.0 MiB = weights 3.0 MiB (plan) + activations 96.0 MiB per execution context "
        "(profiles: 64.0, 96.0 MiB)"
    ]
    builder.log_device_memory("vae_decoder", FakeRuntime(None), plan, messages.append)
    assert messages[-1].startswith("vae_decoder: plan 3.0 MiB; device memory unknown")


class FakeLayer:
    def __init__(self, kind: str) -> None:
        self.type, self.num_outputs, self.precision, self.output_types = kind, 1, None, {}

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class FakeNetwork:
    def __init__(self, kinds: list[str]) -> None:
        self.layers = [FakeLayer(kind) for kind in kinds]
        self.num_layers = len(self.layers)
        self.num_outputs = 0  # no UINT8 output (DecoderNetwork has one)

    def get_layer(self, index: int) -> FakeLayer:
        return self.layers[index]


class FlagConfig:
    """IBuilderConfig's flags; setting a calibrator (implicit quantization) fails the test."""

    def __init__(self) -> None:
        self.flags: list[str] = []

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def __setattr__(self, name: str, value: object) -> None:
        assert name != "int8_calibrator", "explicit quantization: no calibrator"
        object.__setattr__(self, name, value)


LAYERS = ["CONVOLUTION", "QUANTIZE", "DEQUANTIZE", "MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "REDUCE", "UNARY", "ELEMENTWISE"]


@pytest.mark.parametrize(
    "precision,flags,typing,islands",
    [
        ("fp16", ["FP16"], 0, False),
        ("bf16", ["BF16", "PREFER_PRECISION_CONSTRAINTS"], 0, True),
        ("fp32", [], 0, False),
        # INT8 Q/DQ (TensorRT 10.5 demo/Diffusion): weakly typed, INT8 + the float flag, FP32 islands preferred
        ("int8", ["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"], 0, True),
        ("int8+bf16", ["BF16", "INT8", "PREFER_PRECISION_CONSTRAINTS"], 0, True),
        # FP8 Q/DQ: strongly typed, no precision flag, no layer precision (the ONNX's types decide)
        ("fp8", [], 1 << 1, False),
    ],
)
def test_precision_plans_build_qdq_graphs_with_explicit_quantization(builder, precision, flags, typing, islands) -> None:
    from t2vserve.families import FAMILIES

    config, network, messages = FlagConfig(), FakeNetwork(LAYERS), []
    builder.apply_precision(config, network, "slot", precision, messages.append)
    assert config.flags == flags
    assert builder.network_flags(builder.precision_plan("slot", precision)) == typing
    fp32 = {layer.type for layer in network.layers if layer.precision == "float32"}
    assert fp32 == ({"NORMALIZATION", "SOFTMAX", "REDUCE", "UNARY"} if islands else set())
    assert all(layer.precision is None for layer in network.layers if layer.type in ("QUANTIZE", "DEQUANTIZE", "MATRIX_MULTIPLY"))
    declared = {slot.precision for family in FAMILIES.values() for experts in (1, 2) if family.name == "wan22" or experts == 1
                for slot in family.slots(experts)}
    assert declared <= set(builder.PRECISION_PLANS)  # every declared slot precision has a plan


def test_an_unknown_precision_is_refused(builder) -> None:
    from t2vserve.engines import EngineError

    with pytest.raises(EngineError, match="unknown precision 'int4'"):
        builder.apply_precision(FlagConfig(), FakeNetwork([]), "unet_int4", "int4", print)


class FakeTensor:
    def __init__(self, name: str, dtype: str = "float32") -> None:
        self.name, self.dtype = name, dtype


class DecoderLayer:
    def __init__(self, name: str, kind: str, inputs: list[FakeTensor], output: FakeTensor) -> None:
        self.name, self.type, self.inputs, self.outputs = name, kind, inputs, [output]
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}
        self.num_inputs, self.num_outputs = len(inputs), 1

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class DecoderNetwork:
    """The decoder graph's end as the ONNX parser builds it: conv_out, then Cast(float) x / 2 + 0.5, clip, transpose,
    x 255, round, Cast(UINT8) (video.uint8_frames), each constant a layer of its own; a second, float output beside."""

    def __init__(self) -> None:
        self.layers: list[DecoderLayer] = []
        self.outputs = [self._chain(), self._add("other", "CONVOLUTION", [FakeTensor("LATENTS")]).get_output(0)]

    def _add(self, name: str, kind: str, inputs: list[FakeTensor], dtype: str = "float32") -> DecoderLayer:
        layer = DecoderLayer(name, kind, inputs, FakeTensor(f"{name}_out", dtype))
        self.layers.append(layer)
        return layer

    def _chain(self) -> FakeTensor:
        tensor = self._add("conv_out", "CONVOLUTION", [FakeTensor("LATENTS")]).get_output(0)
        for name, kind, constant in [("to_float", "CAST", False), ("div", "ELEMENTWISE", True), ("add", "ELEMENTWISE", True),
                                     ("clip", "ACTIVATION", False), ("transpose", "SHUFFLE", False), ("mul", "ELEMENTWISE", True),
                                     ("round", "UNARY", False)]:
            inputs = [tensor] + ([self._add(f"{name}_constant", "CONSTANT", []).get_output(0)] if constant else [])
            tensor = self._add(name, kind, inputs).get_output(0)
        return self._add("to_uint8", "CAST", [tensor], dtype="uint8").get_output(0)

    num_layers = property(lambda self: len(self.layers))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, index: int) -> DecoderLayer:
        return self.layers[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_the_rounding_before_a_uint8_output_is_kept_in_fp32(builder, precision: str) -> None:
    """FP16 is spaced 0.125 above 128 and BF16 1.0: the frames' x 255 and round run in FP32 in a reduced-precision
    plan, from the decoder's last layer to the Cast (which TensorRT converts from FP32 by truncation)."""
    network, config, messages = DecoderNetwork(), FlagConfig(), []
    builder.apply_precision(config, network, "vae_decoder", precision, messages.append)
    constrained = {layer.name for layer in network.layers if layer.precision == "float32"}
    tail = {"to_float", "div", "add", "clip", "transpose", "mul", "round"}
    if precision == "fp32":  # no reduced-precision flag: nothing to constrain
        assert constrained == set() and config.flags == []
        return
    assert tail <= constrained and not constrained & {"conv_out", "other", "to_uint8", "div_constant"}
    assert all(layer.output_types == {0: "float32"} for layer in network.layers if layer.name in tail)
    assert "PREFER_PRECISION_CONSTRAINTS" in config.flags
    assert any(f"{len(tail)} layers before the UINT8 output constrained to FP32" in m for m in messages), messages
