"""Post-training quantization of a denoiser module with NVIDIA ModelOpt, calibrated on captured inputs.

``quantize_module`` inserts ModelOpt quantizers (fake quantization in torch) into a copy of the
module, calibrates them on (latents, timestep, K/V) of real sampler trajectories and switches off
the quantizers of layers the recipe keeps in floating point. The result runs in torch (sensitivity
sweeps, fidelity checks) and exports to explicit Q/DQ ONNX (``qdq.export_qdq``). Calibration runs
on whatever device the module and the samples are on (the GPU where there is one).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .calibration import CalibrationSet
from .recipe import HISTOGRAM_METHODS, Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizationSummary:
    """What a recipe did to a module."""

    quantized_layers: int
    kept_layers: int
    unused_layers: int  # never reached by calibration data (e.g. cross-attention K/V projections of a packed-K/V UNet)
    seconds: float


def _modelopt():
    """``modelopt.torch.quantization``, imported without its warning about untested transformers versions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import modelopt.torch.quantization as mtq
    return mtq


def _quantizers(module: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    TensorQuantizer = _modelopt().nn.TensorQuantizer

    return ((name, q) for name, q in module.named_modules() if isinstance(q, TensorQuantizer))


def _has_range(quantizer: nn.Module) -> bool:
    amax = getattr(quantizer, "amax", None)
    return amax is not None and bool(torch.isfinite(amax).all())


def quantize_module(module: nn.Module, recipe: Recipe, calibration: CalibrationSet,
                    layers: Callable[[str], bool] | None = None) -> tuple[nn.Module, QuantizationSummary]:
    """A quantized copy of ``module`` (the original is untouched).

    ``layers``: quantize only the layers whose module name it accepts (sensitivity sweeps); the
    recipe's floating-point layers stay floating point either way.
    """
    mtq = _modelopt()
    start = time.perf_counter()
    quantized = copy.deepcopy(module).eval()
    histogram = recipe.method in HISTOGRAM_METHODS

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for inputs in calibration:
                model(*inputs)

    quantized = mtq.quantize(quantized, recipe.modelopt_config(), forward_loop=None if histogram else forward_loop)
    if histogram:
        calibrate_histograms(quantized, forward_loop, recipe)

    kept = 0
    def keep(name: str) -> bool:
        layer = name.rsplit(".", 1)[0]
        return recipe.keeps(layer) or (layers is not None and not layers(layer))
    for name, quantizer in _quantizers(quantized):
        if not quantizer.is_enabled:
            continue
        if keep(name):
            quantizer.disable()
            kept += name.endswith("weight_quantizer")
    unused = 0
    for name, quantizer in _quantizers(quantized):
        if quantizer.is_enabled and name.endswith("input_quantizer") and not _has_range(quantizer):
            # a layer calibration never reached (e.g. cross-attention K/V projections of a packed-K/V
            # UNet): not part of the exported graph, and it would quantize with an undefined range
            layer = quantized.get_submodule(name.rsplit(".", 1)[0])
            for q in (quantizer, getattr(layer, "weight_quantizer", None)):
                if q is not None:
                    q.disable()
            unused += 1
    layers_on = sum(1 for name, q in _quantizers(quantized) if q.is_enabled and name.endswith("weight_quantizer"))
    summary = QuantizationSummary(layers_on, kept, unused, time.perf_counter() - start)
    log.info("%s: %d layers quantized (%s, %s calibration on %d samples), %d kept floating point, %d unused, %.1f s",
             recipe.name, layers_on, recipe.format, recipe.method, len(calibration), kept, unused, summary.seconds)
    return quantized, summary


def calibrate_histograms(model: nn.Module, forward_loop: Callable[[nn.Module], None], recipe: Recipe) -> None:
    """Weight ranges from max |w|, activation ranges from histograms (percentile or entropy)."""
    quantizers = [(n, q) for n, q in _quantizers(model) if q.is_enabled]
    with torch.no_grad():
        for name, quantizer in quantizers:
            if name.endswith("weight_quantizer"):
                quantizer.amax = _weight_amax(model.get_submodule(name.rsplit(".", 1)[0]).weight, quantizer)
    activations = [q for n, q in quantizers if n.endswith("input_quantizer")]
    for quantizer in activations:
        quantizer.disable_quant()
        quantizer.enable_calib()
    forward_loop(model)
    for quantizer in activations:
        quantizer.disable_calib()
        quantizer.enable_quant()
        if quantizer._calibrator.compute_amax("percentile") is None:
            continue  # never reached: quantize_module switches it off
        if recipe.method == "percentile":
            quantizer.load_calib_amax("percentile", percentile=float(recipe.calibration.get("percentile", 99.99)))
        else:
            quantizer.load_calib_amax(recipe.method)


def _weight_amax(weight: torch.Tensor, quantizer: nn.Module) -> torch.Tensor:
    """Max |w| per output channel (axis 0) or per tensor, as ModelOpt's max calibrator computes it."""
    if quantizer.axis is None:
        return weight.detach().abs().amax()
    dims = [d for d in range(weight.dim()) if d != quantizer.axis]
    return weight.detach().abs().amax(dim=dims, keepdim=True)
