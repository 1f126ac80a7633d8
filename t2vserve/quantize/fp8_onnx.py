"""FP8 (E4M3) Q/DQ in standard ONNX operators, which both TensorRT and ONNX Runtime read.

ModelOpt 0.47's TorchScript symbolic writes FP8 quantizers as TensorRT's custom
``trt::TRT_FP8QuantizeLinear`` / ``trt::TRT_FP8DequantizeLinear`` ops: TensorRT parses them, ONNX
Runtime cannot load them. The standard opset-19 ``QuantizeLinear`` / ``DequantizeLinear`` with a
``FLOAT8E4M3FN`` zero point mean the same thing (TensorRT's ONNX parser takes the quantized type from
the zero point's type, ``onnx-tensorrt``'s ``QuantDequantLinearHelper``; ModelOpt's own ONNX FP8
exporter, ``modelopt.onnx.export.FP8QuantExporter.post_process``, rewrites its custom ops into exactly
these), and ONNX Runtime's CPU execution provider runs them (opset 19+, checked in the tests).
``standard_fp8_qdq`` swaps ModelOpt's FP8 symbolic for one that emits them, for one export.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

#: QuantizeLinear/DequantizeLinear accept FLOAT8E4M3FN zero points from ONNX opset 19.
FP8_OPSET = 19
FP8_MAX = 448.0
#: ModelOpt's FP8 fake quantization treats ranges at or below this as 1 (``tensor_quant._fp8_eager``).
ZERO_AMAX = 2.0**-24


def _export_fp8(g: Any, inputs: Any, amax: float | None, trt_high_precision_dtype: str | None) -> Any:
    """Per-tensor E4M3 fake quantization as QuantizeLinear(saturate) -> DequantizeLinear, scale amax / 448.

    A range of (almost) zero (a zero-initialized layer's output, say) counts as 1, as ModelOpt's own
    fake quantization does (``tensor_quant._fp8_eager``): TensorRT wants positive scales, and x / 0 is NaN.
    """
    from modelopt.torch.quantization.export_onnx import torch_dtype_map

    amax = 1.0 if amax is None or float(amax) <= ZERO_AMAX else float(amax)
    scale = amax / FP8_MAX
    dtype = torch_dtype_map[inputs.type().scalarType()]
    scale_value = g.op("Constant", value_t=torch.tensor(scale, dtype=dtype))
    zero_point = g.op("Constant", value_t=torch.zeros((), dtype=torch.float8_e4m3fn))
    quantized = g.op("QuantizeLinear", inputs, scale_value, zero_point, saturate_i=1)
    return g.op("DequantizeLinear", quantized, scale_value, zero_point)


@contextmanager
def standard_fp8_qdq() -> Iterator[None]:
    """While open, ModelOpt's FP8 quantizers export as standard Q/DQ (its symbolic looks the function up at each call)."""
    from modelopt.torch.quantization import export_onnx

    original = export_onnx.export_fp8
    export_onnx.export_fp8 = _export_fp8
    try:
        yield
    finally:
        export_onnx.export_fp8 = original
