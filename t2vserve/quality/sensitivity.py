"""Per-layer-group INT8 sensitivity: quantize one group at a time, measure the clip against FP32.

Finds which layers cost fidelity so the recipe (data/recipes/unet_int8.json) can keep them in
floating point. Runs in-process with ONNX Runtime on the exported FP32 and Q/DQ graphs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ..export import demo_model_dir, export_slot
from ..families import family_of
from .metrics import clip_metrics
from ..onnx_export import onnxruntime_session
from ..params import ResolvedRequest
from ..pipeline import InProcessPipeline, Pipeline
from ..quantize import CALIBRATION_METHODS, Recipe, capture_calibration, quantizable_groups, quantize_unet
from ..spec import DENOISER, NOISE_PRED

log = logging.getLogger(__name__)
SWEEP_PROMPTS = ("a red circle moving to the left on a black background", "a purple square growing on a white background")


class OnnxDenoiserPipeline(Pipeline):
    """The in-process pipeline with every denoiser call on an ONNX Runtime session of ``path`` (swappable)."""

    def __init__(self, components, geometry, path: Path) -> None:
        modules = InProcessPipeline(components, geometry)
        self.use(path)

        def call(name: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if self.slots[name].role != DENOISER:
                return modules.call(name, inputs)
            return {NOISE_PRED: torch.from_numpy(self.session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])}

        super().__init__(geometry, components.tokenizer, call)

    def use(self, path: Path) -> None:
        self.session = onnxruntime_session(path)


def run_sweep(model_dir: Path | None, preset: str, out: Path, work: Path, prompt_limit: int | None) -> int:
    family = family_of(preset)
    components = family.components(model_dir or demo_model_dir(family.name))
    geometry = family.geometry(components, preset)
    int8 = next(slot for slot in family.slots_of(geometry) if slot.quantized_from)
    source = family.slot(int8.quantized_from)
    fp_path = export_slot(source, components, geometry, work / "unet.onnx")
    recipe = Recipe.load()
    calibration = capture_calibration(InProcessPipeline(components, geometry), recipe, geometry, prompt_limit)
    cache = work / f"{recipe.calibration['method']}.json"
    p = geometry.presets
    requests = [
        ResolvedRequest(prompt, "", p.steps, p.guidance_scale, 7, p.height, p.width, p.num_frames, p.fps, geometry.default_precision, p.sampler)
        for prompt in SWEEP_PROMPTS
    ]
    pipeline = OnnxDenoiserPipeline(components, geometry, fp_path)
    references = [pipeline.generate(r) for r in requests]

    def score(quantized: Path) -> tuple[float, float]:
        pipeline.use(quantized)
        metrics = [clip_metrics(ref, pipeline.generate(r)) for ref, r in zip(references, requests)]
        return float(np.mean([m["psnr_db"] for m in metrics])), float(np.mean([m["ssim"] for m in metrics]))

    rows = []
    for method in CALIBRATION_METHODS:  # the recipe's default method should measure best
        variant = recipe.with_method(method)
        rows.append((f"whole recipe, {method} calibration", "-", *score(quantize_unet(fp_path, work / "all.onnx", calibration, variant, work / f"{method}.json"))))
        log.info("%s", rows[-1])
    everything = replace(recipe, keep_floating_point=())
    rows.append(("every Conv/MatMul/Gemm (no floating-point layers)", "-", *score(quantize_unet(fp_path, work / "all.onnx", calibration, everything, cache))))
    log.info("%s", rows[-1])
    head = len(rows)
    groups = quantizable_groups(onnx.load(str(fp_path)), recipe)
    for name, nodes in groups.items():
        psnr, ssim = score(quantize_unet(fp_path, work / "one.onnx", calibration, recipe, cache, only_nodes=nodes))
        rows.append((f"only {name}", str(len(nodes)), psnr, ssim))
        log.info("only %s (%d nodes): PSNR %.2f dB, SSIM %.4f", name, len(nodes), psnr, ssim)
    lines = [
        "# INT8 sensitivity of the UNet, per layer group",
        "",
        f"Recipe `{recipe.name}`, {recipe.calibration['method']} calibration, model `{model_dir or 'tiny'}` ({preset}).",
        "The first rows quantize the whole recipe with each calibration method, and every quantizable layer;",
        "then each row quantizes one group (everything else floating point) and compares the clip with the FP32",
        f"ONNX pipeline on {len(requests)} prompts (seed 7). Lower PSNR = more sensitive. Command:",
        "`python -m t2vserve.quantize sweep`.",
        "",
        "| quantized | nodes | mean PSNR (dB) | mean SSIM |",
        "|---|---|---|---|",
    ]
    rows[head:] = sorted(rows[head:], key=lambda row: row[2])
    lines += [f"| {name} | {count} | {psnr:.2f} | {ssim:.4f} |" for name, count, psnr, ssim in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
