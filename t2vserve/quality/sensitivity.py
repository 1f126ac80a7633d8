"""Per-layer-group quantization sensitivity: quantize one group at a time, measure the clip against FP32.

Finds which layers cost fidelity so the recipe (data/recipes/unet_int8.json) can keep them in
floating point, and compares the calibration methods on the whole recipe. Runs in-process in torch
with ModelOpt's fake quantization (the same module the Q/DQ ONNX is exported from).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..export import demo_model_dir
from ..families import family_of
from ..params import ResolvedRequest
from ..pipeline import InProcessPipeline, Pipeline
from ..quantize import CALIBRATION_METHODS, Recipe, capture_calibration, quantize_module
from ..spec import DENOISER
from .metrics import clip_metrics

log = logging.getLogger(__name__)
SWEEP_PROMPTS = ("a red circle moving to the left on a black background", "a purple square growing on a white background")


class SwappableDenoiserPipeline(Pipeline):
    """The in-process pipeline with every denoiser call on a module that can be swapped."""

    def __init__(self, components, geometry, denoiser: torch.nn.Module) -> None:
        modules = InProcessPipeline(components, geometry)
        self.denoiser = denoiser

        def call(name: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            slot = self.slots[name]
            if slot.role != DENOISER:
                return modules.call(name, inputs)
            return {slot.output_names[0]: self.denoiser(*inputs.values())}

        super().__init__(geometry, components.tokenizer, call)


def layer_group(module_name: str) -> str:
    """``unet.down_blocks.0.temp_convs.1.conv1`` -> ``down_blocks.0/temp_convs``; ``unet.mid_block...`` likewise."""
    parts = module_name.split(".")[1:]  # drop the wrapper's "unet"
    if len(parts) >= 3 and parts[1].isdigit():
        return f"{parts[0]}.{parts[1]}/{parts[2]}"
    return parts[0] if parts else module_name


def run_sweep(model_dir: Path | None, preset: str, out: Path, prompt_limit: int | None, methods: tuple[str, ...] = CALIBRATION_METHODS,
              slot_name: str | None = None) -> int:
    family = family_of(preset)
    components = family.components(model_dir or demo_model_dir(family.name))
    geometry = family.geometry(components, preset)
    slot = family.slot(slot_name, geometry.experts) if slot_name else next(s for s in family.slots_of(geometry) if s.quantized_from)
    recipe = Recipe.load(str(slot.recipe))
    source = slot.onnx_module(components, geometry).eval()
    calibration = capture_calibration(InProcessPipeline(components, geometry), recipe, geometry, prompt_limit).for_entry(str(slot.quantized_from))
    p = geometry.presets
    requests = [
        ResolvedRequest(prompt, p.negative_prompt, p.steps, p.guidance_scale, 7, p.height, p.width, p.num_frames, p.fps, geometry.default_precision, p.sampler)
        for prompt in SWEEP_PROMPTS
    ]
    pipeline = SwappableDenoiserPipeline(components, geometry, source)
    references = [pipeline.generate(r) for r in requests]

    def score(variant: Recipe, layers=None) -> tuple[int, float, float]:
        pipeline.denoiser, summary = quantize_module(source, variant, calibration, layers)
        metrics = [clip_metrics(ref, pipeline.generate(r)) for ref, r in zip(references, requests)]
        return summary.quantized_layers, float(np.mean([m["psnr_db"] for m in metrics])), float(np.mean([m["ssim"] for m in metrics]))

    rows = []
    for method in methods:
        start = time.perf_counter()
        scored = score(recipe.with_method(method))
        rows.append((f"whole recipe, {method} calibration ({time.perf_counter() - start:.0f} s with its clips)", *scored))
    rows.append(("every Conv/Linear (no floating-point layers)", *score(replace(recipe, keep_floating_point=()))))
    head = len(rows)
    names = [name for name, module in source.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))]
    unkept = replace(recipe, keep_floating_point=())
    for group in sorted({layer_group(name) for name in names}):
        kept = all(recipe.keeps(name) for name in names if layer_group(name) == group)
        variant = unkept if kept else recipe  # what quantizing a group the recipe keeps would cost
        rows.append((f"only {group}{' (kept floating point by the recipe)' if kept else ''}", *score(variant, lambda name, g=group: layer_group(name) == g)))
        log.info("%s", rows[-1])
    lines = [
        "# Quantization sensitivity of the denoiser, per layer group",
        "",
        f"Slot `{slot.name}`, recipe `{recipe.name}` ({recipe.format}, {recipe.method} calibration), model `{model_dir or 'the demo model'}` ({preset}).",
        "The first rows quantize the whole recipe with each calibration method, and every quantizable layer;",
        "then each row quantizes one group (everything else floating point) and compares the clip with the",
        f"floating-point pipeline on {len(requests)} prompts (seed 7). Lower PSNR = more sensitive. Command:",
        f"`python -m t2vserve.quantize sweep{f' --slot {slot.name} --preset {preset}' if slot_name else ''}`.",
        "",
        "| quantized | layers | mean PSNR (dB) | mean SSIM |",
        "|---|---|---|---|",
    ]
    rows[head:] = sorted(rows[head:], key=lambda row: row[2])
    lines += [f"| {name} | {count} | {psnr:.2f} | {ssim:.4f} |" for name, count, psnr, ssim in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
