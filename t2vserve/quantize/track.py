"""One quantized denoiser slot end to end: calibrate, quantize, export Q/DQ ONNX, fold weights, check, report.

``quantize_slot`` is what export runs for every slot declared with ``quantized_from`` (``unet_int8``,
``unet_fp8``, ``transformer_int8``, ...), on the tiny models in the test suite and at full size on the
GPU machine (``t2vserve.quantize.full_size``). The check runs the graph under ONNX Runtime against
the floating-point module on a small shape: its mean error must be ``QDQ_ERROR_BAND`` times that of
the ModelOpt-quantized torch module (a quantized denoiser is chaotic at rounding boundaries, so two
correct quantized executions differ by about the quantization error and are not compared directly).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .calibration import CalibrationSet, CaptureSettings, capture_calibration
from .fp8_onnx import FP8_OPSET, standard_fp8_qdq
from .ptq import quantize_module
from .qdq import finish_qdq_model, weight_bytes
from .recipe import Recipe
from .stored_weights import store_quantized_weights

log = logging.getLogger(__name__)

#: Band of (ONNX Runtime error) / (quantized torch error) against the floating-point module: below it
#: the graph lost its quantizers, above it the graph computes something else.
QDQ_ERROR_BAND = (0.5, 1.5)
#: Written next to a quantized denoiser: recipe, calibration, layer counts, weight sizes, timings and its ONNX check.
QUANTIZATION_REPORT = "quantization.json"


class QdqCheckFailed(RuntimeError):
    """The Q/DQ graph's error under ONNX Runtime is outside ``QDQ_ERROR_BAND`` (the report is written first)."""


def capture_trajectories(components: Any, geometry: Any, recipe: Recipe, settings: CaptureSettings, device: str = "cpu") -> CalibrationSet:
    """Every denoiser call of the recipe's trajectories through the in-process pipeline (each slot keeps its source entry's)."""
    from ..pipeline import InProcessPipeline

    return capture_calibration(InProcessPipeline(components, geometry, device), recipe, geometry, settings)


def qdq_check(source: torch.nn.Module, quantized: torch.nn.Module, path: Path, inputs: dict[str, torch.Tensor],
              output_names: list[str]) -> dict[str, float]:
    """Mean/max absolute differences of ONNX Runtime on the Q/DQ graph and of the quantized torch module
    from the floating-point module, and from each other (torch on the modules' device, ONNX Runtime on the CPU)."""
    from ..onnx_export import onnxruntime_session

    device = next(source.parameters()).device
    with torch.no_grad():
        reference, fake = (m(*(t.to(device) for t in inputs.values())).float().cpu().numpy() for m in (source, quantized))
    session = onnxruntime_session(path)
    (onnx_out,) = session.run(output_names[:1], {k: v.cpu().numpy() for k, v in inputs.items()})
    del session
    pairs = {"onnxruntime_vs_float": (onnx_out, reference), "quantized_vs_float": (fake, reference), "onnxruntime_vs_quantized": (onnx_out, fake)}
    check = {}
    for name, (a, b) in pairs.items():
        check[f"mean_abs_{name}"] = float(np.abs(a - b).mean())
        check[f"max_abs_{name}"] = float(np.abs(a - b).max())
    check["ratio"] = check["mean_abs_onnxruntime_vs_float"] / max(check["mean_abs_quantized_vs_float"], 1e-30)
    return check


def quantize_slot(slot: Any, components: Any, geometry: Any, directory: Path, recipe: Recipe,
                  capture: CaptureSettings | Callable[[], CalibrationSet] = CaptureSettings(), device: str = "cpu",
                  shapes_preset: str | None = None, source_graph: Path | None = None) -> dict[str, Any]:
    """Calibrate ``slot``'s source module, write its Q/DQ ONNX (``directory/model.onnx``) and its report.

    ``capture``: how to capture (or a callable returning the calibration set, shared between slots of
    one source); ``device``: where calibration and the torch side of the check run; ``shapes_preset``:
    the preset whose small example shapes the export traces and the check runs (default: the model's);
    ``source_graph``: the floating-point graph, for the weight-size comparison (else the parameters' FP32 size).
    Raises ``QdqCheckFailed`` (after writing the report) when the check is outside ``QDQ_ERROR_BAND``.
    """
    from ..families import get_family
    from ..onnx_export import OPSET, export_graph

    family = get_family(geometry.family)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    captured = capture() if callable(capture) else capture_trajectories(components, geometry, recipe, capture, device)
    calibration = captured.for_entry(str(slot.quantized_from))
    if not len(calibration):
        raise ValueError(f"{slot.name}: no calibration sample reached {slot.quantized_from} (entries: {sorted(set(captured.entries))})")
    timings["capture_s"] = time.perf_counter() - start
    source = slot.onnx_module(components, geometry).to(device).eval()
    mark = time.perf_counter()
    quantized, summary = quantize_module(source, recipe, calibration.to(device))
    store_quantized_weights(quantized, recipe.format)  # 8-bit weight initializers straight from the export
    timings["quantize_s"] = time.perf_counter() - mark
    # Calibration is where the GPU pays; export and check run on the CPU: TorchScript tracing on CUDA breaks in
    # diffusers' UNet3D (repeat_interleave with output_size builds its index on the host; seen on an H200)
    quantized, source = quantized.to("cpu"), source.to("cpu")
    if device != "cpu":
        torch.cuda.empty_cache()
    path = Path(directory) / "model.onnx"
    shapes = replace(geometry, preset=shapes_preset or geometry.preset)
    example = slot.example_inputs(family.example_values(shapes), geometry.vocab_size)
    mark = time.perf_counter()
    fp8 = recipe.format == "fp8"
    finished: dict[str, dict[str, int]] = {}
    with standard_fp8_qdq() if fp8 else nullcontext():  # activations: Q/DQ pairs; weights: 8-bit values -> DequantizeLinear
        export_graph(slot.name, quantized, example, slot.output_names, slot.dynamic_axes(), path, opset=FP8_OPSET if fp8 else OPSET,
                     transform=lambda model: finished.update(counts=finish_qdq_model(model)))
    counts = finished["counts"]
    timings["export_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    check = qdq_check(source, quantized, path, slot.example_inputs(family.example_values(shapes, grow=1), geometry.vocab_size, seed=1), slot.output_names)
    timings["check_s"] = time.perf_counter() - mark
    quant = weight_bytes(path)
    fp = weight_bytes(source_graph) if source_graph is not None and source_graph.exists() else {**quant, "stored": quant["fp32_equivalent"]}
    files = sorted(path.parent.glob("model.onnx*"))
    report = {
        "slot": slot.name,
        "recipe": recipe.name,
        "format": recipe.format,
        "calibration_method": recipe.method,
        "calibration_samples": len(calibration),
        "quantized_layers": summary.quantized_layers,
        "kept_floating_point_layers": summary.kept_layers,
        "unused_layers": summary.unused_layers,
        "qdq": counts,
        "check": check,
        "check_passed": QDQ_ERROR_BAND[0] <= check["ratio"] <= QDQ_ERROR_BAND[1],
        "weight_bytes": {"fp32": fp["stored"], "fp16": fp["fp16_equivalent"], recipe.format: quant["stored"]},
        "files": {f.name: f.stat().st_size for f in files},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (path.parent / QUANTIZATION_REPORT).write_text(json.dumps(report, indent=2))
    log.info("checked %s: mean |onnxruntime Q/DQ - float torch| = %.2e, %.2f x that of the quantized torch module; %s weights %.2f MB (FP32 %.2f MB)",
             slot.name, check["mean_abs_onnxruntime_vs_float"], check["ratio"], recipe.format.upper(), quant["stored"] / 1e6, fp["stored"] / 1e6)
    if not report["check_passed"]:
        raise QdqCheckFailed(f"{slot.name}: the Q/DQ graph's error is {check['ratio']:.2f} x the quantized module's, outside {QDQ_ERROR_BAND}: {check}")
    return report
