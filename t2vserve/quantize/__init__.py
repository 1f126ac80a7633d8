"""Quantized denoiser tracks with NVIDIA ModelOpt: recipes (data), calibration, Q/DQ ONNX export.

One quantizer in the project: ModelOpt calibrates the torch module (on the GPU where there is one)
on denoiser inputs captured from real sampler trajectories; the TorchScript exporter writes explicit
Q/DQ ONNX (INT8, or FP8 E4M3 in standard opset-19 operators: ``fp8_onnx``), which TensorRT builds into
INT8/FP8 engines and ONNX Runtime executes on the CPU. ``track.quantize_slot`` runs one slot end to end.

    python -m t2vserve.quantize sweep     # per-layer-group sensitivity and calibration methods
"""

from .calibration import CalibrationSet, CaptureSettings, capture_calibration
from .ptq import QuantizationSummary, quantize_module
from .qdq import finish_qdq_graph, finish_qdq_model, fold_weight_quantizers, qdq_counts, weight_bytes
from .recipe import CALIBRATION_METHODS, DATA_DIR, DEFAULT_RECIPE, RECIPES_DIR, Recipe

__all__ = [
    "CALIBRATION_METHODS", "DATA_DIR", "DEFAULT_RECIPE", "RECIPES_DIR", "CalibrationSet", "CaptureSettings", "QuantizationSummary", "Recipe",
    "capture_calibration", "finish_qdq_graph", "finish_qdq_model", "fold_weight_quantizers", "qdq_counts", "quantize_module", "weight_bytes",
]
