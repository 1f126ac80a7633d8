"""torch -> ONNX for the engine slots, with onnx-graphsurgeon cleanup and an ONNX Runtime check."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from .video import rounding_excess

log = logging.getLogger(__name__)

OPSET = 18
#: Protobuf's hard limit: larger models keep their weights in an external data file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 1


def export_graph(
    name: str,
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: Path,
    opset: int = OPSET,
    transform: Callable[[onnx.ModelProto], None] | None = None,
) -> Path:
    """Export ``module`` to ``path`` with the TorchScript exporter: trace, fold constants, clean up,
    ``transform`` the graph in memory (e.g. fold Q/DQ weights), save (external data when > 2 GB).

    The raw export goes to a scratch directory next to ``path``: above 2 GB the TorchScript exporter
    writes one external file per tensor beside its graph.
    """
    import onnx_graphsurgeon as gs

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-raw-", dir=path.parent))
    raw = scratch / "model.onnx"
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Shape checks inside diffusers become constants in the trace; the ONNX Runtime check
            # on other shapes (export.check_inputs) is what proves the dynamic axes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module.eval(),
                tuple(example_inputs.values()),
                str(raw),
                input_names=list(example_inputs),
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        phases = {"torch.onnx.export": time.perf_counter() - start}
        model = onnx.load(str(raw))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bypass_initializer_identities(model)
    mark = time.perf_counter()
    gs_graph = gs.import_onnx(model)
    del model
    gs_graph.fold_constants().cleanup().toposort()
    model = gs.export_onnx(gs_graph)
    del gs_graph
    phases["load + graphsurgeon"] = time.perf_counter() - mark
    if transform is not None:
        mark = time.perf_counter()
        transform(model)
        phases["transform"] = time.perf_counter() - mark
    weights_bytes = sum(init.ByteSize() for init in model.graph.initializer)
    _remove_onnx(path)
    large = weights_bytes > EXTERNAL_DATA_THRESHOLD
    mark = time.perf_counter()
    onnx.save_model(model, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)
    phases["save"] = time.perf_counter() - mark
    log.info("exported %s: %d nodes, %.1f MB weights, %.1f s (%s)", name, len(model.graph.node), weights_bytes / 1e6, time.perf_counter() - start,
             ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return path


def bypass_initializer_identities(model: onnx.ModelProto) -> int:
    """Read initializers directly where the TorchScript exporter routed them through Identity nodes; returns how many.

    The exporter writes one copy of identical initializers (e.g. the all-zero E4M3 weights of two
    zero-initialized layers) and an Identity for the other; graphsurgeon would fold that Identity
    through numpy, which has no E4M3 type, and store the result as UINT8.
    """
    initializers = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs}
    if not alias:
        return 0
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(alias)


def _remove_onnx(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + ".data")):
        candidate.unlink(missing_ok=True)


def onnxruntime_session(path: Path, threads: int = 0):
    """A CPU ONNX Runtime session for ``path`` (threads 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: graph-optimizer notes are not actionable here
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Q/DQ graphs run as quantize -> dequantize -> float op: exact INT8 arithmetic (what TensorRT's
    # int32-accumulating kernels compute). Fused into ONNX Runtime's x86 int8 kernels instead, the
    # u8 x s8 pair sums saturate at int16 on CPUs without VNNI (AVX2), and fidelity depends on the CPU.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_with_torch(module: torch.nn.Module, path: Path, inputs: dict[str, torch.Tensor], output_names: list[str]) -> float:
    """Max abs difference between ONNX Runtime and the torch module on ``inputs`` (first output). A graph with uint8
    frames out (``Uint8Frames``: a decoder slot) is measured against its module's float frames before the rounding
    (``video.rounding_excess``), so the float tolerance keeps its meaning where ties may round either way."""
    session = onnxruntime_session(path)
    with torch.no_grad():
        expected = module(*inputs.values())
        frames = module.decoder(*inputs.values()) if expected.dtype == torch.uint8 else None
    (actual,) = session.run(output_names[:1], {k: v.numpy() for k, v in inputs.items()})
    if actual.shape != tuple(expected.shape) or (actual.dtype == np.uint8) != (frames is not None):
        raise AssertionError(f"{path}: ONNX {actual.dtype} {actual.shape} != torch {expected.dtype} {tuple(expected.shape)}")
    if frames is not None:
        return rounding_excess(actual, frames.float().numpy())
    return float(np.max(np.abs(actual - expected.float().numpy())))
