"""Quantized weights stored as their 8-bit values before export, so no FP32 weight reaches the ONNX graph.

After calibration, ``store_quantized_weights`` replaces every enabled ModelOpt weight quantizer by a
``StoredWeight``: the weight's INT8 or E4M3 values and scale as buffers, computed once exactly as
ONNX's QuantizeLinear would (round half to even / E4M3 round-to-nearest-even, saturating; ranges of
zero count as 1, as ModelOpt's export does). In torch it returns the dequantized weight (what the
fake quantizer returned); in the TorchScript export it becomes ``8-bit initializer ->
DequantizeLinear``, the canonical weight form TensorRT reads. A 20 GB FP32 transformer thus exports
as a 5 GB graph without the FP32 copy ever being serialized, loaded or rewritten.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .fp8_onnx import FP8_MAX, ZERO_AMAX

#: Integer range of symmetric INT8 weights (ModelOpt's 8-bit weight quantizer: amax -> 127).
INT8_BOUND = 127


class _Dequantize(torch.autograd.Function):
    """values * scale (along ``axis``); exports as DequantizeLinear(values, scale, zero point)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, scale: torch.Tensor, axis: int | None, dtype: torch.dtype) -> torch.Tensor:
        shape = [1] * values.dim()
        if axis is not None:
            shape[axis] = -1
        return (values.float() * scale.view(shape) if axis is not None else values.float() * scale).to(dtype)

    @staticmethod
    def symbolic(g: Any, values: Any, scale: Any, axis: int | None, dtype: torch.dtype) -> Any:
        zero_dtype = torch.float8_e4m3fn if values.type().scalarType() == "Float8_e4m3fn" else torch.int8
        zero_shape = tuple(values.type().sizes()[axis:axis + 1]) if axis is not None else ()
        zero_point = g.op("Constant", value_t=torch.zeros(zero_shape, dtype=zero_dtype))
        if axis is None:
            return g.op("DequantizeLinear", values, scale, zero_point)
        return g.op("DequantizeLinear", values, scale, zero_point, axis_i=axis)


class StoredWeight(nn.Module):
    """A layer's quantized weight as 8-bit values and a scale; called like the weight quantizer it replaces."""

    def __init__(self, weight: torch.Tensor, amax: torch.Tensor, fmt: str) -> None:
        super().__init__()
        weight, amax = weight.detach().float(), amax.detach().float()
        per_channel = amax.numel() > 1
        self.axis = 0 if per_channel else None
        self.dtype = weight.dtype
        bound = INT8_BOUND if fmt == "int8" else FP8_MAX
        if fmt == "fp8":
            amax = torch.where(amax <= ZERO_AMAX, torch.ones_like(amax), amax)
        scale = amax / bound
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        scaled = weight / scale.reshape(-1, *[1] * (weight.dim() - 1)) if per_channel else weight / scale
        if fmt == "int8":
            values = torch.round(scaled).clamp(-128, 127).to(torch.int8)
        else:
            values = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        self.register_buffer("values", values)
        self.register_buffer("scale", scale.reshape(-1) if per_channel else scale.reshape(()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # the float weight is not read: the stored values are the weight
        return _Dequantize.apply(self.values, self.scale, self.axis, weight.dtype)


def store_quantized_weights(module: nn.Module, fmt: str) -> int:
    """Replace every enabled weight quantizer inside ``module`` by its ``StoredWeight`` (in place); returns how many.

    The float weights stay on the layers (the torch module still runs; export drops them, unused).
    """
    from .ptq import _modelopt

    quantizer_class = _modelopt().nn.TensorQuantizer
    stored = 0
    for _, layer in list(module.named_modules()):
        quantizer = getattr(layer, "weight_quantizer", None)
        if not isinstance(quantizer, quantizer_class) or not quantizer.is_enabled or getattr(quantizer, "amax", None) is None:
            continue
        weight = layer._parameters["weight"]  # the float parameter (``layer.weight`` is ModelOpt's quantized view)
        layer.weight_quantizer = StoredWeight(weight, quantizer.amax, fmt).to(weight.device)
        stored += 1
    return stored
