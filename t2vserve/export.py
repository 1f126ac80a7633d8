"""Export a diffusers-format model into the model repository: ONNX graphs, tokenizer, geometry.

    python export/export_onnx.py --tiny                 # the demo model (trained, shipped; or tiny random)
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
from typing import Any

import torch

from .batcher_delay import check_queue_delay, set_queue_delay
from .deployment import write_deployment
from .families import family_of, get_family
from .families.base import Slot
from .onnx_export import compare_with_torch, export_graph
from .previews import PREVIEW_FILE, LatentPreview, fit_preview
from .quantize import CALIBRATION_METHODS, CaptureSettings, Recipe
from .quantize.track import QUANTIZATION_REPORT, capture_trajectories, quantize_slot
from .repository import write_repository
from .runners import SOURCE_FILE
from .server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT
from .params import tokenize_pair
from .spec import (
    CFG_BATCH, CONDITIONING_MODEL, DENOISER_QUEUE_DELAY_RANGE_US, DENOISER_QUEUE_DELAY_US, PINNED_TEXTS_FILE, PRESETS, STREAM_MODEL,
)
from .geometry import GEOMETRY_FILE, ModelGeometry

log = logging.getLogger("t2vserve.export")

#: fp32 ONNX Runtime vs torch on random inputs: max abs difference allowed per graph.
ONNX_TOLERANCE = 1e-4
#: Entries that need the geometry file (``preprocess`` also gets the tokenizer, ``t2v_stream`` the preview decoder).
GEOMETRY_ENTRIES = ("preprocess", "scheduler", STREAM_MODEL)


def tiny_dir(family: str) -> Path:
    """Where the tiny demo model of ``family`` is built (git-ignored)."""
    return REPO_ROOT / "artifacts" / f"tiny-{family}"


#: Demo models the project trained itself (``python -m t2vserve.train``), shipped in diffusers format.
TRAINED_DIR = Path(__file__).parent / "data" / "trained"


def request_batch(geometry: ModelGeometry, entry: str) -> int:
    """Rows one request sends to ``entry`` by default: 1 where a track it serves defaults to no guidance (a
    distilled student), else the CFG pair. The torch runner compiles the batch sizes built from it."""
    guidance_free = any(
        entry in entries and geometry.defaults(precision=track)["GUIDANCE_SCALE"] <= 1.0 for track, entries in geometry.tracks.items()
    )
    return 1 if guidance_free else CFG_BATCH


def trained_model_dir(family: str) -> Path | None:
    """The shipped trained demo model of ``family``, or None where the project has none yet."""
    directory = TRAINED_DIR / family
    return directory if (directory / "model_index.json").exists() else None


def demo_model_dir(family: str, random_weights: bool = False, directory: Path | None = None) -> Path:
    """The demo model: ``directory`` if given, else the trained one (if shipped and not ``random_weights``),
    else the tiny random model (built if absent)."""
    if directory is None and not random_weights:
        directory = trained_model_dir(family)
    return ensure_tiny_model(family, directory)


def export_slot(slot: Slot, components: Any, geometry: ModelGeometry, path: Path, check: bool = True) -> Path:
    """Export one slot's module to ONNX with its declared exporter; check it against torch on other shapes."""
    family = get_family(geometry.family)
    module = slot.onnx_module(components, geometry).eval()
    example = slot.example_inputs(family.example_values(geometry), geometry.vocab_size)
    if slot.exporter == "dynamo":
        from .onnx_dynamo import export_dynamo

        export_dynamo(module, example, slot.output_names, slot.dynamic_axes(), path)
    else:
        export_graph(slot.name, module, example, slot.output_names, slot.dynamic_axes(), path)
    if check:
        error = check_slot(slot, module, geometry, path)
        log.info("checked %s: max |onnxruntime - torch| = %.2e", slot.name, error)
        if error > ONNX_TOLERANCE:
            raise RuntimeError(f"{slot.name}: ONNX differs from torch by {error:.2e} > {ONNX_TOLERANCE}")
    return path


def check_slot(slot: Slot, module: torch.nn.Module, geometry: ModelGeometry, path: Path, grow: int = 1, seed: int = 1) -> float:
    """Max |ONNX Runtime - torch| of a slot's graph on random inputs, its dynamic axes grown by ``grow`` steps."""
    values = get_family(geometry.family).example_values(geometry, grow=grow)
    return compare_with_torch(module, path, slot.example_inputs(values, geometry.vocab_size, seed=seed), slot.output_names)


def export_model(
    model_dir: Path,
    repository: Path,
    preset: str,
    check: bool = True,
    recipe: Recipe | None = None,
    calibration_prompts: int | None = None,
    onnx: bool = True,
    only: list[str] | None = None,
    calibration_method: str | None = None,
    warmup_size: tuple[int, int, int] | None = None,
    tracks: list[str] | None = None,
) -> ModelGeometry:
    """Export every engine slot of ``model_dir`` into ``repository`` and write the serving metadata.

    The preset names the family. Quantized slots (``quantized_from``) are their source slot's module
    quantized with ModelOpt by ``recipe`` (default: the slot's declared recipe; ``calibration_method``
    overrides its method), calibrated on the first ``calibration_prompts`` prompts (all: None). ``onnx=False`` writes only configs and metadata:
    enough for the torch runner, which loads the diffusers directory itself (``source.json``).
    ``only``: export just these slots' ONNX (full-size checks one graph at a time on a small disk).
    ``warmup_size``: (height, width, frames) the torch runner warms up at before READY (default: the preset's).
    ``tracks``: the PRECISION tracks the repository serves (default all; the others' entries load nothing, and are
    neither exported nor quantized).
    """
    family = family_of(preset)
    start = time.perf_counter()
    # metadata only: the weights' values are not used, so only configs and shapes are loaded (meta device)
    components = family.components(model_dir, torch.float32 if onnx else None)
    geometry = family.geometry(components, preset)
    if tracks is not None:
        unknown = sorted(set(tracks) - set(geometry.tracks))
        if unknown:
            raise ValueError(f"--tracks: unknown track(s) {', '.join(unknown)}; this model's: {', '.join(geometry.tracks)}")
    write_repository(repository, family.name, geometry.experts, family.present_components(geometry), tracks)  # configs and model.py files
    write_deployment(repository, tracks)  # kept when the configs are written again (engines_cli's reuse of an export)
    log.info("loaded %s in %.1f s (K/V width %d over %d layers)", model_dir, time.perf_counter() - start, geometry.kv_layout.width, len(geometry.kv_layout.layers))
    left_out = {e for track, entries in geometry.tracks.items() if tracks is not None and track not in tracks for e in entries}
    slots = tuple(slot for slot in family.slots_of(geometry) if slot.name not in left_out)
    warmup_values = family.warmup_values(geometry, *(warmup_size or ()))  # what a runner warms up before it is READY
    for slot in slots:
        source = {"family": family.name, "model_dir": str(Path(model_dir).resolve()), "slot": slot.name, "experts": geometry.experts,
                  "warmup_values": warmup_values, "vocab_size": geometry.vocab_size, "request_batch": request_batch(geometry, slot.name)}
        (repository / slot.name / "1" / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    if only:
        unknown = sorted(set(only) - {slot.name for slot in slots})
        if unknown:
            raise ValueError(f"unknown slot(s) {', '.join(unknown)}; this model's: {', '.join(s.name for s in slots)}")
        slots = tuple(slot for slot in slots if slot.name in only)
    if onnx:
        for slot in slots:
            if slot.quantized_from is None:
                export_slot(slot, components, geometry, repository / slot.name / "1" / "model.onnx", check)
        quantize_slots(components, geometry, repository, [s for s in slots if s.quantized_from is not None], recipe,
                       CaptureSettings(prompts=calibration_prompts), calibration_method)
    _write_serving_metadata(components, geometry, repository)
    if onnx:  # the fit decodes with the real weights; metadata-only components have none (no previews then)
        write_preview(components, geometry, repository)
    log.info("exported %s into %s in %.1f s", model_dir, repository, time.perf_counter() - start)
    return geometry


def quantize_slots(components: Any, geometry: ModelGeometry, repository: Path, slots: list[Slot], recipe: Recipe | None,
                   capture: CaptureSettings, calibration_method: str | None = None, device: str = "cpu") -> dict[str, dict]:
    """Quantize ``slots`` (each by ``recipe`` or its declared one); recipes with the same trajectories share one capture."""
    captures: dict[str, Any] = {}
    reports = {}
    for slot in slots:
        slot_recipe = recipe or Recipe.load(str(slot.recipe))
        slot_recipe = slot_recipe.with_method(calibration_method or slot_recipe.method)
        key = json.dumps({k: v for k, v in slot_recipe.calibration.items() if k in ("prompts_file", "seed", "steps", "guidance_scale")})
        if key not in captures:
            captures[key] = capture_trajectories(components, geometry, slot_recipe, capture, device)
        source_graph = repository / str(slot.quantized_from) / "1" / "model.onnx"
        reports[slot.name] = quantize_slot(slot, components, geometry, repository / slot.name / "1", slot_recipe,
                                           lambda key=key: captures[key], device, source_graph=source_graph)
    return reports


def _write_serving_metadata(components, geometry: ModelGeometry, repository: Path) -> None:
    """Tokenizer for preprocess, geometry (presets, K/V layout, scheduler config) for preprocess/scheduler,
    the default negative prompt's token ids for conditioning (its K/V is pinned in the cache)."""
    tokenizer_dir = repository / "preprocess" / "1" / "tokenizer"
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    components.tokenizer.save_pretrained(str(tokenizer_dir))
    for entry in GEOMETRY_ENTRIES:
        (repository / entry / "1" / GEOMETRY_FILE).write_text(geometry.to_json())
    negative = geometry.presets.negative_prompt
    clean = get_family(geometry.family).clean_prompt
    negative_ids = tokenize_pair(components.tokenizer, "", negative, geometry.text_max_length, clean)[0]
    pinned = {"default negative prompt": negative_ids.tolist()}
    (repository / CONDITIONING_MODEL / "1" / PINNED_TEXTS_FILE).write_text(json.dumps(pinned))


def write_preview(components: Any, geometry: ModelGeometry, repository: Path) -> LatentPreview:
    """Fit the model's preview decoder (``t2vserve.previews``) and write it for ``t2v_stream``."""
    start = time.perf_counter()
    preview = fit_preview(components, geometry)
    preview.save(repository / STREAM_MODEL / "1" / PREVIEW_FILE)
    seconds = time.perf_counter() - start
    log.info("preview decoder fitted in %.1f s: %.1f uint8 levels from the decode on its fit clips", seconds, preview.fit_error)
    return preview


def quiet_libraries() -> None:
    """No per-file progress bars or deprecation chatter from diffusers/transformers in our logs."""
    import diffusers
    import transformers

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the dynamo exporter's per-initializer notes
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def ensure_tiny_model(family: str, directory: Path | None = None, **variant: Any) -> Path:
    """The tiny demo model of ``family`` in ``directory`` (default ``tiny_dir(family)``), built if absent."""
    directory = Path(directory or tiny_dir(family))
    if not (directory / "model_index.json").exists():
        get_family(family).build_tiny_model(directory, **variant)
        log.info("built the tiny %s model in %s", family, directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a text-to-video model into the Triton model repository")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="local diffusers-format directory of the preset's family")
    source.add_argument("--tiny", action="store_true", help="export the demo model: the trained one shipped in t2vserve/data/trained/, else the tiny random one")
    parser.add_argument("--random", action="store_true", help="with --tiny: the tiny random-weight model (plumbing), even where a trained one ships")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: tiny with --tiny, else modelscope; names the family")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--tiny-dir", type=Path, default=None, help="a diffusers directory to use as the demo model (built as the tiny random model if absent)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    parser.add_argument("--recipe", type=Path, default=None, help="precision recipe JSON for every quantized slot (default: each slot's own)")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None, help="override the recipe's")
    parser.add_argument("--calibration-prompts", type=int, default=None, help="use only the first N calibration prompts")
    parser.add_argument("--metadata-only", action="store_true", help="configs and metadata only (torch runner): no ONNX, no INT8")
    parser.add_argument("--slots", default=None, help="comma-separated: export only these slots' ONNX (default: all)")
    parser.add_argument("--tracks", default=None, help="comma-separated PRECISION tracks to serve (default: all); the others' "
                        "entries load nothing and refuse requests naming PRECISION")
    parser.add_argument("--denoiser-queue-delay-us", type=int, default=None, metavar="US",
                        help=f"the denoisers' batcher delay and the loops' step-barrier window (default {DENOISER_QUEUE_DELAY_US}; 0: latency "
                        f"first, as python -m t2vserve.batcher_delay sets it; allowed {DENOISER_QUEUE_DELAY_RANGE_US.describe()})")
    args = parser.parse_args(argv)
    delay = args.denoiser_queue_delay_us
    if delay is not None:  # refused before any export work
        try:
            check_queue_delay(delay)
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    preset = args.preset or ("tiny" if args.tiny else "modelscope")
    model_dir = demo_model_dir(PRESETS[preset].family, args.random, args.tiny_dir) if args.tiny else args.weights
    recipe = Recipe.load(args.recipe) if args.recipe else None
    only = [name.strip() for name in args.slots.split(",")] if args.slots else None
    tracks = [name.strip() for name in args.tracks.split(",")] if args.tracks else None
    export_model(model_dir, args.repository, preset, not args.no_check, recipe, args.calibration_prompts, not args.metadata_only, only,
                 args.calibration_method, tracks=tracks)
    if delay is not None:  # kept by this export's configs; a later export without the flag writes the default again
        for config in set_queue_delay(args.repository, delay):
            log.info("%s: batcher delay / step-barrier window %d us", config, delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
