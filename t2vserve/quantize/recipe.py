"""Precision recipes: data files saying what is quantized, what stays floating point, how to calibrate.

A recipe (``data/recipes/<name>.json``) is turned into a ModelOpt quantization config here, so the
choice of layers and calibration is reviewed as data, not code:

- ``format``: ``int8`` (per-channel symmetric weights, per-tensor symmetric activations) or ``fp8``
  (E4M3, per-tensor scales), the two formats TensorRT consumes as explicit Q/DQ;
- ``keep_floating_point``: regular expressions over torch module names (``unet.conv_in``,
  ``unet.time_embedding.linear_1``, ...) whose layers stay in FP16/FP32, each with its reason;
- ``calibration``: ``max``, ``percentile`` or ``entropy`` (histogram calibrators) or
  ``smoothquant`` (activation smoothing folded into the weights, then max), the prompts and seed of
  the captured sampler trajectories.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
RECIPES_DIR = DATA_DIR / "recipes"
DEFAULT_RECIPE = RECIPES_DIR / "unet_int8.json"
CALIBRATION_METHODS = ("max", "percentile", "entropy", "smoothquant")
HISTOGRAM_METHODS = ("percentile", "entropy")
#: Layers ModelOpt can quantize besides Linear/Conv, whose inputs stay floating point in every recipe.
NOT_QUANTIZED_LAYERS = ("LayerNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
                        "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d")
#: ModelOpt ``num_bits`` per format: an int for integers, (exponent, mantissa) bits for floats.
FORMAT_BITS: dict[str, Any] = {"int8": 8, "fp8": (4, 3)}


@dataclass(frozen=True)
class Recipe:
    """A precision recipe: the quantized format, the layers kept in floating point, the calibration."""

    name: str
    format: str
    keep_floating_point: tuple[str, ...]  # regular expressions over torch module names
    weight_axis: int | None = 0  # per output channel (None: per tensor)
    calibration: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | str = DEFAULT_RECIPE) -> "Recipe":
        """A recipe by file path or by name (``unet_int8`` -> data/recipes/unet_int8.json)."""
        path = Path(path)
        if not path.suffix:
            path = RECIPES_DIR / f"{path.name}.json"
        data = json.loads(path.read_text())
        if data["format"] not in FORMAT_BITS:
            raise ValueError(f"{path}: format must be one of {sorted(FORMAT_BITS)}")
        recipe = cls(
            name=data["name"],
            format=data["format"],
            keep_floating_point=tuple(rule["pattern"] for rule in data["keep_floating_point"]),
            weight_axis=data.get("weight_axis", 0),
            calibration=data["calibration"],
            path=path,
        )
        return recipe.with_method(recipe.method)  # validates the method

    @property
    def method(self) -> str:
        return str(self.calibration["method"])

    def with_method(self, method: str) -> "Recipe":
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
        if method == "smoothquant" and self.format != "int8":
            raise ValueError("smoothquant applies to int8 recipes")
        return replace(self, calibration={**self.calibration, "method": method})

    def keeps(self, module_name: str) -> bool:
        """Does the recipe keep this module (or quantizer, e.g. ``...conv_in.input_quantizer``) in floating point?"""
        return any(re.search(pattern, module_name) for pattern in self.keep_floating_point)

    def modelopt_config(self) -> dict[str, Any]:
        """The ModelOpt ``mtq.quantize`` config: every quantizer off, then weights and layer inputs on.

        Layers the recipe keeps are switched off afterwards by name (``ptq.quantize_module``), and the
        attention score path (Q K^T, softmax V) has no quantizer at all: only Linear/Conv inputs and
        weights are quantized.
        """
        bits = FORMAT_BITS[self.format]
        activations: dict[str, Any] = {"num_bits": bits, "axis": None}
        if self.method in HISTOGRAM_METHODS:
            activations["calibrator"] = "histogram"
        algorithm: Any = "max"
        if self.method == "smoothquant":
            algorithm = {"method": "smoothquant", "alpha": float(self.calibration.get("smoothquant_alpha", 0.5))}
        elif self.method in HISTOGRAM_METHODS:
            algorithm = None  # histogram statistics are collected and turned into ranges by ptq.calibrate_histograms
        return {
            "quant_cfg": [
                {"quantizer_name": "*", "enable": False},
                {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": bits, "axis": self.weight_axis if self.format == "int8" else None}},
                {"quantizer_name": "*input_quantizer", "cfg": activations},
                # only Linear/Conv layers: ModelOpt would also quantize the inputs of normalization and pooling layers
                *({"quantizer_name": "*", "parent_class": f"nn.{layer}", "enable": False} for layer in NOT_QUANTIZED_LAYERS),
            ],
            "algorithm": algorithm,
        }

    def calibration_prompts(self, limit: int | None = None) -> list[str]:
        lines = (DATA_DIR / self.calibration["prompts_file"]).read_text().splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
        return prompts[:limit] if limit else prompts
