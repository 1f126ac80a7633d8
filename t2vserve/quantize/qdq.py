"""Explicit Q/DQ ONNX from a ModelOpt-quantized module, as TensorRT and ONNX Runtime consume it.

The TorchScript exporter turns every enabled ModelOpt quantizer into QuantizeLinear ->
DequantizeLinear (ModelOpt's symbolic functions). ``fold_weight_quantizers`` then stores each
quantized weight as its INT8 values (QuantizeLinear of a constant computed once, exactly as ONNX
Runtime would at load time), so the file is the size of an INT8 model and TensorRT reads weight
Q/DQ pairs in their canonical form (INT8 initializer -> DequantizeLinear -> Conv/MatMul/Gemm).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

_INTEGER_TYPES = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(constant float weight) by its integer result; returns how many were folded.

    ONNX semantics: saturate(round_half_to_even(x / scale) + zero_point), the scale per tensor or
    along ``axis``. FP8 weights are left as they are (ONNX Runtime folds them at load time).
    """
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or len(node.input) < 3 or node.input[2] not in inits:
            keep.append(node)
            continue
        zero_point = inits[node.input[2]]
        if zero_point.data_type not in _INTEGER_TYPES:
            keep.append(node)
            continue
        dtype = _INTEGER_TYPES[zero_point.data_type]
        weight = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(zero_point).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * weight.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(dtype)
        values = np.clip(np.rint(weight / scale) + zero, info.min, info.max).astype(dtype)
        model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        folded += 1
        if consumers.get(node.input[0], 0) == 1:  # the float weight is no longer needed
            model.graph.initializer.remove(inits.pop(node.input[0]))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return folded


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Quantized weights (integer initializers feeding DequantizeLinear) and activation Q/DQ pairs."""
    integer_inits = {i.name for i in model.graph.initializer if i.data_type in _INTEGER_TYPES}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return {
        "weights": sum(1 for n in dq if n.input[0] in integer_inits),
        "activations": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
    }


def finish_qdq_graph(path: Path) -> dict[str, int]:
    """Fold the weight quantizers of the exported graph at ``path`` in place; returns ``qdq_counts``."""
    model = onnx.load(str(path))
    folded = fold_weight_quantizers(model)
    onnx.save_model(model, str(path))
    counts = qdq_counts(model)
    log.info("%s: %d weights stored as integers, %d activation quantizers", path.name, folded, counts["activations"])
    return counts


def weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of the graph's weights: as stored, and what FP32 / FP16 copies of its float parameters take."""
    model = onnx.load(str(path))
    stored, params = 0, 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        stored += array.nbytes
        if array.dtype in (np.float32, np.float16, np.int8, np.uint8) and array.size > 1:
            params += array.size
    return {"stored": stored, "fp32_equivalent": params * 4, "fp16_equivalent": params * 2}
