"""torch -> ONNX with torch's dynamo exporter (``torch.export`` + onnxscript), for graphs the
TorchScript exporter cannot trace (Wan: ``aten::rms_norm``, nearest-exact upsampling).

The graphs target TensorRT 10.5's ONNX parser: opset 18, standard domain only. At opset 18 the
exporter decomposes ``rms_norm`` into Cast(fp32)/Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul (there is
no RMSNormalization before opset 23); ``export_dynamo`` refuses any graph that still holds an
operator outside the standard opset, so a fused or custom-domain node never reaches TensorRT.

Dynamic axes become ``torch.export`` dims named by their labels (``Dim.DYNAMIC``, renamed to the
label in the ONNX graph): export infers each one's range from the model instead of asking for
bounds (Wan's RoPE table limits latent frames to 1024; ``VaeDecoderGraph(max_latent_frames=N)``
limits them to N), and ``export_dynamo`` fails if an input axis it was told is dynamic came out
specialised. Constraints, as found on the Wan graphs:

* every dynamic axis of the example inputs must be >= 2 (torch.export specialises sizes 0 and 1);
  the ONNX graph keeps no guard, and sizes 1 run correctly (batch 1, one latent frame, a latent
  height of 2 are tested);
* nothing is imposed on divisibility: an odd latent height or width exports and runs, the 2x2
  patchify rounding it down as torch does; the serving presets only produce even sizes, so no
  derived dims are needed;
* ``VaeDecoderGraph(max_latent_frames=N)`` with an example of f = 2 latent frames: for N >= 3 the
  default (non-strict) capture keeps f dynamic in [2, N]; for N = 2 it specialises f (f >= 2 and
  the guard f <= N leave one value) and torch.onnx falls back to its strict (dynamo) capture,
  which keeps f dynamic.

The exporter's own optimizer folds constants and removes dead nodes; no graphsurgeon pass is needed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
import torch

from . import onnx_export
from .onnx_export import OPSET

log = logging.getLogger(__name__)

#: Standard operators TensorRT 10.5 does not parse (opset 23), refused whatever the opset.
UNSUPPORTED_OPS = frozenset({"RMSNormalization"})


def export_dynamo(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: Path,
    opset: int = OPSET,
) -> Path:
    """Export ``module`` to ``path`` with ``torch.onnx.export(dynamo=True)``; external data when > 2 GB.

    ``example_inputs`` are the forward's positional arguments in order, keyed by ONNX input name;
    ``dynamic_axes`` labels the dynamic axes of inputs (and outputs: those labels name the output
    dims). Raises ``ValueError`` if the graph holds an operator TensorRT 10.5 cannot parse or an input
    axis labelled dynamic came out static.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = tuple(dict(dynamic_axes[name]) if name in dynamic_axes else None for name in example_inputs)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            tuple(example_inputs.values()),
            input_names=list(example_inputs),
            output_names=output_names,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            optimize=True,
        )
    assert program is not None  # no file argument: the exporter returns the program
    _label_output_axes(program.model, dynamic_axes)
    for candidate in (path, path.with_name(path.name + ".data")):
        candidate.unlink(missing_ok=True)
    initializers = program.model.graph.initializers.values()
    weights = sum(int(v.const_value.nbytes) for v in initializers if v.const_value is not None)
    program.save(str(path), external_data=weights > onnx_export.EXTERNAL_DATA_THRESHOLD)
    model = onnx.load(str(path), load_external_data=False)
    bad = unsupported_ops(model)
    if bad:
        raise ValueError(f"{path}: operators TensorRT 10.5 cannot parse: {', '.join(sorted(bad))}")
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        for axis, label in dynamic_axes.get(tensor.name, {}).items():
            if dims[axis].dim_param != label:
                got = dims[axis].dim_value or dims[axis].dim_param
                raise ValueError(f"{path}: {tensor.name} axis {axis} ({label}) was specialised to {got}")
    log.info(
        "exported %s (dynamo): %d nodes, %.1f MB weights, %.1f s",
        path, len(program.model.graph), weights / 1e6, time.perf_counter() - start,
    )
    return path


def _label_output_axes(model: ir.Model, dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Name the dynamic output dims as told (the exporter names them by expressions such as ``4*s0 - 3``)."""
    for output in model.graph.outputs:
        labels = dynamic_axes.get(output.name or "")
        if labels and output.shape is not None:
            dims = [ir.SymbolicDim(labels[i]) if i in labels else dim for i, dim in enumerate(output.shape)]
            output.shape = ir.Shape(dims)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                yield from _nodes(subgraph)


def unsupported_ops(model: onnx.ModelProto) -> set[str]:
    """Operators of ``model`` outside the standard ONNX opset it imports, plus ``UNSUPPORTED_OPS``.

    Anything in a custom domain (or a model-local function) counts, as ``domain::op``.
    """
    opset = {entry.domain: entry.version for entry in model.opset_import}.get("", 0)
    bad = {f"function {f.domain}::{f.name}" for f in model.functions}
    for node in _nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}::{node.op_type}")
        elif node.op_type in UNSUPPORTED_OPS or not onnx.defs.has(node.op_type, opset, ""):
            bad.add(node.op_type)
    return bad


def compare_with_onnxruntime(
    module: torch.nn.Module, path: Path, inputs: dict[str, torch.Tensor], output_names: list[str]
) -> float:
    """Max abs difference between ONNX Runtime (CPU) and the torch module on ``inputs``, over all outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    actual = session.run(output_names, {name: value.numpy() for name, value in inputs.items()})
    error = 0.0
    for name, want, got in zip(output_names, expected, actual):
        want = want.float().numpy()
        if got.shape != want.shape:
            raise AssertionError(f"{path}: {name}: ONNX shape {got.shape} != torch shape {want.shape}")
        error = max(error, float(np.max(np.abs(got.astype(np.float32) - want))))
    return error
