"""Explicit Q/DQ ONNX from a ModelOpt-quantized module, as TensorRT and ONNX Runtime consume it.

The TorchScript exporter turns every enabled ModelOpt quantizer into QuantizeLinear ->
DequantizeLinear: ModelOpt's own symbolic for INT8, ``fp8_onnx.standard_fp8_qdq`` for FP8 (the
standard ops with an E4M3 zero point instead of ModelOpt's custom ``trt::TRT_FP8*`` ops).
``finish_qdq_model`` (in memory, as export saves the graph) or ``finish_qdq_graph`` (a graph on
disk) then stores each quantized weight as its INT8 or E4M3 values (QuantizeLinear of a
constant computed once, exactly as ONNX Runtime would at load time), so the file is the size of an
8-bit model and TensorRT reads weight Q/DQ pairs in their canonical form (8-bit initializer ->
DequantizeLinear -> Conv/MatMul/Gemm).

Graphs of any size: the finishing pass reads one weight at a time (``load_external_data=False``, then
that tensor's bytes) and writes the result back inline or, above protobuf's 2 GB, as one external
data file next to the graph (``model.onnx.data``), so a 20 GB FP32 transformer never sits in memory
as one protobuf.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from ..onnx_export import EXTERNAL_DATA_THRESHOLD

log = logging.getLogger(__name__)

FP8 = TensorProto.FLOAT8E4M3FN
#: Zero-point types of weight quantizers that are folded: the quantized weight's storage type.
QUANTIZED_TYPES = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", FP8: "fp8"}
#: Bytes per element of the initializer types our graphs hold.
ITEM_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8, TensorProto.INT64: 8,
              TensorProto.INT32: 4, TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.BOOL: 1, FP8: 1}
#: Initializers smaller than this stay inside the graph file when the weights go to external data.
INLINE_BYTES = 1024


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def tensor_bytes(tensor: TensorProto, base: Path) -> bytes:
    """The raw little-endian bytes of an initializer, read from its external data file when it has one."""
    if _is_external(tensor):
        info = {entry.key: entry.value for entry in tensor.external_data}
        with open(base / info["location"], "rb") as data:
            data.seek(int(info.get("offset", 0)))
            return data.read(int(info["length"])) if "length" in info else data.read()
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def _array(tensor: TensorProto, base: Path) -> np.ndarray:
    copy = TensorProto()
    copy.CopyFrom(tensor)
    if _is_external(copy):
        copy.raw_data = tensor_bytes(tensor, base)
        del copy.external_data[:]
        copy.data_location = TensorProto.DEFAULT
    return numpy_helper.to_array(copy)


def quantize_values(weight: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, storage: int) -> bytes:
    """ONNX QuantizeLinear of a constant: saturate(round(x / scale) + zero), per tensor or along ``axis``.

    Integers round half to even; E4M3 casts with round-to-nearest-even and saturates at +-448 (the
    ``saturate=1`` semantics of the exported FP8 nodes). Returns the stored bytes.
    """
    scale = scale.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * weight.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    scaled = weight.astype(np.float32) / scale
    if storage == FP8:
        fp8 = torch.from_numpy(np.ascontiguousarray(scaled)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return fp8.view(torch.uint8).numpy().tobytes()
    dtype = np.int8 if storage == TensorProto.INT8 else np.uint8
    info = np.iinfo(dtype)
    return np.clip(np.rint(scaled) + zero.astype(np.float32), info.min, info.max).astype(dtype).tobytes()


def _quantized_tensor(name: str, dims: list[int], storage: int, data: bytes) -> TensorProto:
    tensor = TensorProto()
    tensor.name, tensor.data_type, tensor.raw_data = name, storage, data
    tensor.dims.extend(dims)
    return tensor


def fold_weight_quantizers(model: onnx.ModelProto, base: Path = Path(".")) -> int:
    """Replace QuantizeLinear(constant float weight) by its 8-bit result; returns how many were folded.

    ``base``: the directory of the graph's external data (tensors are read one at a time).
    """
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep, dropped = 0, [], set()
    for node in model.graph.node:
        zero_name = node.input[2] if len(node.input) > 2 else ""
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or zero_name not in inits:
            keep.append(node)
            continue
        zero_point = inits[zero_name]
        if zero_point.data_type not in QUANTIZED_TYPES:
            keep.append(node)
            continue
        weight = inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zero = _array(zero_point, base).astype(np.float32) if zero_point.data_type != FP8 else np.zeros(1, np.float32)
        data = quantize_values(_array(weight, base), _array(inits[node.input[1]], base), zero, axis, zero_point.data_type)
        model.graph.initializer.append(_quantized_tensor(node.output[0], list(weight.dims), zero_point.data_type, data))
        folded += 1
        if consumers.get(node.input[0], 0) == 1:  # the float weight is no longer needed
            dropped.add(node.input[0])
    kept_inits = [i for i in model.graph.initializer if i.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return folded


def fold_fp8_weight_transposes(model: onnx.ModelProto) -> int:
    """E4M3 weight -> DequantizeLinear -> Transpose -> MatMul becomes the transposed weight -> DequantizeLinear -> MatMul.

    The TorchScript exporter writes ``nn.Linear`` as a MatMul with the weight transposed after its
    Q/DQ; ModelOpt's own FP8 ONNX exporter pre-transposes such weights so that TensorRT sees DQ feeding
    the MatMul it fuses into an FP8 GEMM. Per-tensor scales only (the FP8 recipes); returns how many.
    """
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped, folded = set(), 0
    for node in model.graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is None or weight.data_type != FP8 or not weight.HasField("raw_data") or inits[node.input[1]].dims:
            continue
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Transpose" or len(consumers.get(weight.name, [])) != 1:
            continue
        transpose = after[0]
        users = consumers.get(transpose.output[0], [])
        if not users or any(user.op_type != "MatMul" for user in users):
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), list(range(len(weight.dims)))[::-1])
        values = np.frombuffer(weight.raw_data, dtype=np.uint8).reshape(list(weight.dims)).transpose(perm)
        weight.raw_data = np.ascontiguousarray(values).tobytes()
        del weight.dims[:]
        weight.dims.extend(values.shape)
        for user in users:
            for i, name in enumerate(user.input):
                if name == transpose.output[0]:
                    user.input[i] = node.output[0]
        dropped.add(transpose.output[0])
        folded += 1
    kept = [n for n in model.graph.node if n.op_type != "Transpose" or n.output[0] not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return folded


def initializer_bytes(tensor: TensorProto) -> int:
    """Bytes an initializer's values take, from its type and shape (nothing is read)."""
    return int(np.prod(tensor.dims, dtype=np.int64)) * ITEM_BYTES.get(tensor.data_type, 4)


def save_graph(model: onnx.ModelProto, path: Path, base: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """Write ``model`` to ``path``; its weights (read from ``base`` where external) go inline, or into one
    external data file ``<name>.data`` when they exceed ``threshold`` bytes. Returns whether they are external.

    Written to temporary names and moved into place, so the old data file can be read while writing.
    """
    path = Path(path)
    external = sum(initializer_bytes(i) for i in model.graph.initializer) > threshold
    data_path = path.with_name(path.name + ".data")
    tmp_data = data_path.with_name(data_path.name + ".tmp")
    offset = 0
    with open(tmp_data, "wb") if external else open(os.devnull, "wb") as data:
        for tensor in model.graph.initializer:
            raw = tensor_bytes(tensor, base) if _is_external(tensor) or external else None
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
            if raw is None:
                continue
            tensor.ClearField("float_data"), tensor.ClearField("int32_data"), tensor.ClearField("int64_data")
            if external and len(raw) >= INLINE_BYTES:
                tensor.ClearField("raw_data")
                data.write(raw)
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                tensor.data_location = TensorProto.EXTERNAL
                offset += len(raw)
            else:
                tensor.raw_data = raw
    tmp_model = path.with_name(path.name + ".tmp")
    tmp_model.write_bytes(model.SerializeToString())
    if external:
        os.replace(tmp_data, data_path)
    else:
        tmp_data.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
    os.replace(tmp_model, path)
    return external


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Quantized weights (8-bit initializers feeding DequantizeLinear) and activation Q/DQ pairs."""
    quantized_inits = {i.name for i in model.graph.initializer if i.data_type in QUANTIZED_TYPES}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return {
        "weights": sum(1 for n in dq if n.input[0] in quantized_inits),
        "activations": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
    }


def finish_qdq_model(model: onnx.ModelProto, base: Path = Path(".")) -> dict[str, int]:
    """Fold the weight quantizers (and FP8 weight transposes) of an in-memory graph; returns ``qdq_counts``."""
    folded = fold_weight_quantizers(model, base)
    fold_fp8_weight_transposes(model)
    counts = qdq_counts(model)
    log.info("%d 8-bit weights (%d folded from QuantizeLinear), %d activation quantizers", counts["weights"], folded, counts["activations"])
    return counts


def finish_qdq_graph(path: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> dict[str, int]:
    """Fold the weight quantizers of the exported graph at ``path`` in place; returns ``qdq_counts``.

    Works on graphs with external data: weights are read one at a time; the result is saved inline or
    as external data by ``save_graph`` (``threshold``: protobuf's 2 GB unless told otherwise).
    """
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    counts = finish_qdq_model(model, path.parent)
    if save_graph(model, path, path.parent, threshold):
        log.info("%s: weights as external data", path)
    return counts


def weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of the graph's weights: as stored, and what FP32 / FP16 copies of its parameters take (no data is read)."""
    model = onnx.load(str(path), load_external_data=False)
    stored, params = 0, 0
    parameter_types = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, *QUANTIZED_TYPES)
    for init in model.graph.initializer:
        stored += initializer_bytes(init)
        size = int(np.prod(init.dims, dtype=np.int64))
        if init.data_type in parameter_types and size > 1:
            params += size
    return {"stored": stored, "fp32_equivalent": params * 4, "fp16_equivalent": params * 2}
