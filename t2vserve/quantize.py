"""INT8 post-training quantization of the UNet ONNX graph (explicit Q/DQ, as TensorRT consumes it).

Library: ``onnxruntime.quantization`` (already the CPU runtime here): ``quantize_static`` in QDQ
format with per-channel symmetric weights and calibrated symmetric activations, entropy or
percentile calibration, a calibration cache, and node exclusion. The same Q/DQ ONNX runs under ONNX
Runtime on the CPU (so measured fidelity is the quantized math) and is what a TensorRT build reads.

The precision recipe is data (``data/recipes/unet_int8.json``): which op types are quantized, which
layers stay floating point (regular expressions over ONNX node names), and the calibration set-up.
Calibration data are real denoising inputs: (latents, timestep, packed K/V) of every UNet call of
full DDIM trajectories over the calibration prompts, captured in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .spec import KV, SAMPLE, TIMESTEP

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_RECIPE = DATA_DIR / "recipes" / "unet_int8.json"
CALIBRATION_METHODS = ("entropy", "percentile", "minmax")


@dataclass(frozen=True)
class Recipe:
    """A precision recipe: what becomes INT8, what stays floating point, how to calibrate."""

    name: str
    op_types_to_quantize: tuple[str, ...]
    keep_floating_point: tuple[str, ...]  # regular expressions over ONNX node names
    per_channel: bool = True
    channel_axis: dict[str, int] = field(default_factory=dict)
    symmetric_activations: bool = True
    quantize_bias: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DEFAULT_RECIPE) -> "Recipe":
        data = json.loads(Path(path).read_text())
        return cls(
            name=data["name"],
            op_types_to_quantize=tuple(data["op_types_to_quantize"]),
            keep_floating_point=tuple(rule["pattern"] for rule in data["keep_floating_point"]),
            per_channel=data.get("per_channel", True),
            channel_axis=data.get("channel_axis", {}),
            symmetric_activations=data.get("symmetric_activations", True),
            quantize_bias=data.get("quantize_bias", False),
            calibration=data["calibration"],
        )

    def with_method(self, method: str) -> "Recipe":
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}")
        return replace(self, calibration={**self.calibration, "method": method})

    def excluded_nodes(self, model: onnx.ModelProto) -> list[str]:
        """Nodes of a quantized op type that the recipe keeps in floating point."""
        patterns = [re.compile(p) for p in self.keep_floating_point]
        return [
            n.name for n in model.graph.node
            if n.op_type in self.op_types_to_quantize and any(p.search(n.name) for p in patterns)
        ]

    def calibration_prompts(self, limit: int | None = None) -> list[str]:
        lines = (DATA_DIR / self.calibration["prompts_file"]).read_text().splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
        return prompts[:limit] if limit else prompts


class CalibrationSet:
    """UNet inputs captured from DDIM trajectories; an ONNX Runtime CalibrationDataReader with ranges."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = samples
        self.set_range(0, len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.samples[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self.set_range(0, len(self.samples))


def capture_calibration(pipeline: Any, recipe: Recipe, geometry: Any, prompt_limit: int | None = None) -> CalibrationSet:
    """Run full sampler trajectories in-process and record every denoiser call's (latents, timestep, K/V).

    Steps and guidance scale: the recipe's, else the preset's (what the server runs by default).
    """
    from .params import ResolvedRequest

    cal, preset = recipe.calibration, geometry.presets
    samples: list[dict[str, np.ndarray]] = []

    def record(entry, sample, timestep, kv) -> None:
        samples.append({SAMPLE: sample.cpu().numpy().copy(), TIMESTEP: timestep.cpu().numpy().copy(), KV: kv.cpu().numpy().copy()})

    for index, prompt in enumerate(recipe.calibration_prompts(prompt_limit)):
        request = ResolvedRequest(
            prompt, "", int(cal.get("steps", preset.steps)), float(cal.get("guidance_scale", preset.guidance_scale)), int(cal["seed"]) + index,
            preset.height, preset.width, preset.num_frames, preset.fps, geometry.default_precision, preset.sampler,
        )
        pipeline.generate(request, observer=record)
    log.info("captured %d UNet calls from %d calibration trajectories", len(samples), index + 1)
    return CalibrationSet(samples)


def quantize_unet(
    fp_model: Path, out_model: Path, calibration: CalibrationSet, recipe: Recipe, cache: Path | None = None,
    extra_excluded: list[str] | None = None, only_nodes: list[str] | None = None,
) -> Path:
    """Write the Q/DQ INT8 model. ``cache`` keeps activation ranges between runs of the same method."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp_model))
    excluded = recipe.excluded_nodes(model) + list(extra_excluded or [])
    cal = recipe.calibration
    method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}[cal["method"]]
    extra: dict[str, Any] = {
        "ActivationSymmetric": recipe.symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": recipe.quantize_bias,
        "QDQOpTypePerChannelSupportToAxis": dict(recipe.channel_axis),
        # ONNX Runtime's histogram calibrators keep every intermediate tensor of every sample in
        # memory; feeding the samples in chunks keeps a full-size UNet's calibration bounded.
        "CalibStridedMinMax": _chunk(len(calibration), int(cal.get("chunk", 4))),
    }
    if cal["method"] == "percentile":
        extra["CalibPercentile"] = float(cal.get("percentile", 99.99))
    calibration.rewind()
    start = time.perf_counter()
    out_model.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp_model), str(out_model), calibration,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(recipe.op_types_to_quantize),
        per_channel=recipe.per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=excluded,
        nodes_to_quantize=only_nodes,
        extra_options=extra,
        calibration_cache_path=str(cache) if cache else None,
    )
    log.info("quantized %s (%s, %s calibration, %d nodes kept floating point) in %.1f s",
             fp_model.parent.parent.name, recipe.name, cal["method"], len(excluded), time.perf_counter() - start)
    return out_model


def _chunk(total: int, wanted: int) -> int:
    """Largest chunk size <= wanted that divides total (ONNX Runtime requires an exact division)."""
    for size in range(min(wanted, total), 0, -1):
        if total % size == 0:
            return size
    return 1


def weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of the graph's weights: as stored, and what FP32 / FP16 copies of the float graph take."""
    model = onnx.load(str(path))
    stored, float_params = 0, 0
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        stored += array.nbytes
        if array.dtype in (np.float32, np.float16):
            float_params += array.size
    return {"stored": stored, "fp32_equivalent": float_params * 4, "fp16_equivalent": float_params * 2}


def quantizable_groups(model: onnx.ModelProto, recipe: Recipe) -> dict[str, list[str]]:
    """Quantizable nodes grouped by UNet block and sub-module kind, e.g. ``down_blocks.0/temp_convs``."""
    excluded = set(recipe.excluded_nodes(model))
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in recipe.op_types_to_quantize or node.name in excluded:
            continue
        parts = node.name.strip("/").split("/")[1:]  # drop the wrapper's "unet"
        key = parts[0] if len(parts) < 3 or "." not in parts[0] else f"{parts[0]}/{parts[1].split('.')[0]}"
        groups.setdefault(key, []).append(node.name)
    return groups


def main(argv: list[str] | None = None) -> int:
    """``python -m t2vserve.quantize sweep``: per-layer-group sensitivity of the INT8 recipe."""
    from .quality.sensitivity import run_sweep

    parser = argparse.ArgumentParser(description="INT8 UNet quantization tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="quantize one layer group at a time and measure clip PSNR vs FP32")
    sweep.add_argument("--model-dir", type=Path, default=None, help="diffusers directory (default: the tiny model)")
    sweep.add_argument("--preset", default="tiny")
    sweep.add_argument("--out", type=Path, default=Path("docs/int8-sensitivity.md"))
    sweep.add_argument("--calibration-prompts", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        return run_sweep(args.model_dir, args.preset, args.out, Path(tmp), args.calibration_prompts)


if __name__ == "__main__":
    sys.exit(main())
