"""Export a diffusers-format model into the model repository: ONNX graphs, tokenizer, geometry.

    python export/export_onnx.py --tiny                 # build the tiny demo model, then export it
    python export/export_onnx.py --weights DIR --preset modelscope

Each graph is checked against its torch module with ONNX Runtime on fresh random inputs of a
different size than the export example (so the dynamic axes are exercised too).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from .families import get_family
from .onnx_export import compare_with_torch, export_graph
from .repository import write_repository
from .server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT
from .quantize import CALIBRATION_METHODS, Recipe, capture_calibration, quantize_unet, weight_bytes
from .runners import SOURCE_FILE
from .spec import ENGINE_SLOTS, GEOMETRY_FILE, PRESETS, TIMESTEP, UNET_TRACKS, ModelGeometry

log = logging.getLogger("t2vserve.export")

DEFAULT_TINY_DIR = REPO_ROOT / "artifacts" / "tiny-unet3d"
#: fp32 ONNX Runtime vs torch on random inputs: max abs difference allowed per graph.
ONNX_TOLERANCE = 1e-4
#: Entries that need the geometry file, and the one that needs the tokenizer.
GEOMETRY_ENTRIES = ("preprocess", "scheduler")
#: Written next to the INT8 UNet: recipe, calibration and weight sizes.
QUANTIZATION_REPORT = "quantization.json"


def check_inputs(graph, grow: int = 1) -> dict[str, torch.Tensor]:
    """Random inputs like the graph's examples, each dynamic axis grown by ``grow`` step."""
    inputs = {}
    for name, example in graph.example_inputs.items():
        shape = list(example.shape)
        for axis, label in graph.dynamic_axes.get(name, {}).items():
            shape[axis] += grow * (1 if label in ("batch", "frames") else 2)
        if example.dtype == torch.int64:
            inputs[name] = torch.randint(0, int(example.max()) + 1, shape)
        elif name == TIMESTEP:
            inputs[name] = torch.randint(0, 1000, shape).float()
        else:
            inputs[name] = torch.randn(shape)
    return inputs


def export_model(
    model_dir: Path,
    repository: Path,
    preset: str,
    family: str = "unet3d",
    check: bool = True,
    recipe: Recipe | None = None,
    calibration_prompts: int | None = None,
    onnx: bool = True,
) -> ModelGeometry:
    """Export every engine slot of ``model_dir`` into ``repository`` and write the serving metadata.

    The INT8 UNet (``unet_int8``) is quantized from the exported UNet with ``recipe`` (default:
    data/recipes/unet_int8.json), calibrated on the first ``calibration_prompts`` prompts (all: None).
    ``onnx=False`` writes only configs and metadata: enough for the torch runner, which loads the
    diffusers directory itself (``source.json`` in each engine slot).
    """
    fam = get_family(family)
    start = time.perf_counter()
    write_repository(repository)  # configs and model.py files: a complete, servable repository
    # metadata only: the weights' values are not used, so half precision halves load time and memory
    components = fam.load_components(model_dir, torch.float32 if onnx else torch.float16)
    geometry = fam.geometry(components, preset)
    log.info("loaded %s in %.1f s (K/V width %d over %d layers)", model_dir, time.perf_counter() - start, geometry.kv_layout.width, len(geometry.kv_layout.layers))
    for slot in ENGINE_SLOTS:
        source = {"family": family, "model_dir": str(Path(model_dir).resolve()), "slot": slot}
        (repository / slot / "1" / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    if not onnx:
        _write_serving_metadata(components, geometry, repository)
        return geometry
    for graph in fam.engine_graphs(components, geometry):
        path = export_graph(graph, repository / graph.name / "1" / "model.onnx")
        if check:
            error = compare_with_torch(graph, path, check_inputs(graph))
            log.info("checked %s: max |onnxruntime - torch| = %.2e", graph.name, error)
            if error > ONNX_TOLERANCE:
                raise RuntimeError(f"{graph.name}: ONNX differs from torch by {error:.2e} > {ONNX_TOLERANCE}")
    quantize_int8_unet(components, geometry, repository, recipe or Recipe.load(), calibration_prompts)
    _write_serving_metadata(components, geometry, repository)
    log.info("exported %s into %s in %.1f s", model_dir, repository, time.perf_counter() - start)
    return geometry


def _write_serving_metadata(components, geometry: ModelGeometry, repository: Path) -> None:
    """Tokenizer for preprocess, geometry (presets, K/V layout, scheduler config) for preprocess/scheduler."""
    tokenizer_dir = repository / "preprocess" / "1" / "tokenizer"
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    components.tokenizer.save_pretrained(str(tokenizer_dir))
    for entry in GEOMETRY_ENTRIES:
        (repository / entry / "1" / GEOMETRY_FILE).write_text(geometry.to_json())


def quantize_int8_unet(components, geometry: ModelGeometry, repository: Path, recipe: Recipe, prompts: int | None) -> dict:
    """Calibrate on captured DDIM trajectories, write unet_int8/1/model.onnx and its size report."""
    from .pipeline import InProcessPipeline

    calibration = capture_calibration(InProcessPipeline(components, geometry), recipe, geometry, prompts)
    fp_path = repository / UNET_TRACKS["fp16"] / "1" / "model.onnx"
    int8_path = quantize_unet(fp_path, repository / UNET_TRACKS["int8"] / "1" / "model.onnx", calibration, recipe)
    fp, int8 = weight_bytes(fp_path), weight_bytes(int8_path)
    report = {
        "recipe": recipe.name,
        "calibration_method": recipe.calibration["method"],
        "calibration_samples": len(calibration),
        "weight_bytes": {"fp32": fp["stored"], "fp16": fp["fp16_equivalent"], "int8": int8["stored"]},
    }
    (int8_path.parent / QUANTIZATION_REPORT).write_text(json.dumps(report, indent=2))
    log.info("INT8 UNet weights %.2f MB vs FP16 %.2f MB vs FP32 %.2f MB", int8["stored"] / 1e6, fp["fp16_equivalent"] / 1e6, fp["stored"] / 1e6)
    return report


def quiet_libraries() -> None:
    """No per-file progress bars or deprecation chatter from diffusers/transformers in our logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a text-to-video model into the Triton model repository")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="local diffusers-format directory (TextToVideoSDPipeline layout)")
    source.add_argument("--tiny", action="store_true", help="build (if needed) and export the tiny random demo model")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: tiny with --tiny, else modelscope")
    parser.add_argument("--family", default="unet3d")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--tiny-dir", type=Path, default=DEFAULT_TINY_DIR)
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    parser.add_argument("--int8-recipe", type=Path, default=None, help="precision recipe JSON (default: the project's)")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None, help="override the recipe's")
    parser.add_argument("--calibration-prompts", type=int, default=None, help="use only the first N calibration prompts")
    parser.add_argument("--metadata-only", action="store_true", help="configs and metadata only (torch runner): no ONNX, no INT8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    if args.tiny:
        if not (args.tiny_dir / "model_index.json").exists():
            get_family(args.family).build_tiny_model(args.tiny_dir)
            log.info("built the tiny %s model in %s", args.family, args.tiny_dir)
        model_dir, preset = args.tiny_dir, args.preset or "tiny"
    else:
        model_dir, preset = args.weights, args.preset or "modelscope"
    recipe = Recipe.load(args.int8_recipe) if args.int8_recipe else Recipe.load()
    if args.calibration_method:
        recipe = recipe.with_method(args.calibration_method)
    export_model(model_dir, args.repository, preset, args.family, not args.no_check, recipe, args.calibration_prompts, not args.metadata_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
