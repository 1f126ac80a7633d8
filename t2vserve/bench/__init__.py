"""Benchmarks: the served pipeline vs the same runners in-process vs diffusers, printed as tables.

    make bench                                                     # CPU: tiny unet3d, ONNX Runtime runner
    python client/bench.py inprocess --device cuda --preset modelscope    # GPU (device tool)
    python client/bench.py served --device cuda --preset wan22-480p       # GPU (device tool)
    python client/bench.py variants --device cuda --preset modelscope --quality docs/quality.json  # make quality's tracks, timed
    python client/bench.py prefill --device cuda --preset modelscope --sizes 2   # compile caches first, every entry at once

Every family runs through the same code: the model's slots (``families/``), its diffusers pipeline
as reference (``DiffusionPipeline.from_pretrained`` of the same directory) and the repository's
runners. Results land in a JSON file next to a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..export import ensure_tiny_model, export_model, quiet_libraries
from ..families import family_of
from ..server import REPO_ROOT
from ..settings import compile_cache_environment
from ..spec import PRESETS
from .common import RunnerPipeline, bench_request, load_geometry, timed
from .inprocess import run_inprocess, run_inprocess_control, step_cache_clips
from .report import markdown
from .served import run_served
from .variants import attach_quality, run_variants


def prepare_repository(preset: str, device: str, work: Path, runner: str, experts: int,
                       size: tuple[int, int, int] | None = None, tracks: list[str] | None = None) -> tuple[Path, Path]:
    """(model dir, repository) for ``preset``: the tiny model of a tiny preset, else full size with random weights;
    the runners warm up at ``size`` (height, width, frames; default the preset's), the size the benchmark requests;
    ``tracks``: serve only these PRECISION tracks (the others' entries load and compile nothing)."""
    family = family_of(preset)
    if preset == family.tiny_preset:
        model_dir = ensure_tiny_model(family.name, work / "tiny", experts=experts) if experts > 1 else ensure_tiny_model(family.name)
    elif (work / preset / "model_index.json").exists():  # --work of an earlier part (same machine)
        model_dir = work / preset
    else:
        dtype = family.reference_dtype if device == "cuda" else torch.float32
        model_dir = family.build_full_size_model(work / preset, preset, dtype, device, experts=experts)
    repository = work / "model_repository"
    export_model(model_dir, repository, preset, check=False, calibration_prompts=1, onnx=(runner == "onnxruntime"), warmup_size=size,
                 tracks=tracks)
    return model_dir, repository


def prefill(repository: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Fill the compile cache for the denoiser entries of ``--precisions`` (default every track) in parallel processes."""
    from ..compile_cache import fill

    geometry = load_geometry(repository)
    entries = sorted({e for track in (args.precisions or args.serve_tracks or list(geometry.tracks)) for e in geometry.tracks[track]})
    return fill(repository, entries, args.runner, tuple(int(s) for s in args.sizes.split(",") if s), repository.parent)


def run_cpu(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    """``make bench``: the tiny model in-process (ONNX Runtime runners) vs through the embedded server."""
    geometry = load_geometry(repository)
    request = bench_request(geometry, args.steps, args.frames, height=args.height, width=args.width)
    runners = RunnerPipeline(repository, args.runner, args.device, request.precision)
    runners.clip(request)
    inprocess = timed(lambda: runners.clip(request), repeats=args.repeats, warmup=0)
    cached = step_cache_clips(runners, request, args.step_cache, args.repeats, cuda=False)
    del runners
    results = run_served(args, repository)
    results["inprocess_clip_s"], results["inprocess_clip_step_cache"] = inprocess, cached
    return results


#: ``--also-served`` keys -> (bench argument, type); every variant restates the batcher delay (the generated
#: default unless given), since setting one rewrites the repository's configs.
VARIANT_KEYS = {"delay": ("queue_delay_us", int), "poll": ("gpu_poll_s", float), "gpumetrics": ("gpu_metrics", int)}


def served_variant(text: str) -> dict[str, Any]:
    """``delay=0+poll=0`` -> {"queue_delay_us": 0, "gpu_poll_s": 0.0, ...}: the served part's arguments for one variant."""
    from ..spec import DENOISER_QUEUE_DELAY_US

    settings: dict[str, Any] = {"queue_delay_us": DENOISER_QUEUE_DELAY_US}
    for item in text.split("+"):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS or not value:
            raise ValueError(f"--also-served: {item!r} is not key=value with key one of {', '.join(VARIANT_KEYS)}")
        name, kind = VARIANT_KEYS[key]
        settings[name] = kind(value)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="t2vserve benchmarks")
    parser.add_argument("part", choices=("cpu", "inprocess", "served", "all", "report", "variants", "prefill"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--experts", type=int, choices=(1, 2), default=1, help="denoiser experts (wan22: 2 = the A14B layout)")
    parser.add_argument("--runner", choices=("onnxruntime", "torch"), default=None, help="default: onnxruntime on CPU, torch on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None, help="default: the preset's (e.g. 256 with --width 256: a small modelscope clip)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-cache", type=lambda s: [float(t) for t in s.split(",") if t], default=[],
                        help="inprocess, cpu: also time the in-process clip with the step cache at these thresholds, "
                        "e.g. 0.1,0.2 (STEP_CACHE in gpu_bench.sh)")
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",") if c], default=[1, 2, 4], help="e.g. 1,2,4 (empty: none)")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="served: set the denoisers' dynamic-batcher delay to this (default: the generated config's)")
    parser.add_argument("--gpu-poll-s", type=float, default=0.5, help="served: nvidia-smi's GPU-memory polling interval (0: off)")
    parser.add_argument("--gpu-metrics", type=int, choices=(0, 1), default=1, help="served: Triton's GPU metrics (0: --allow-gpu-metrics=false)")
    parser.add_argument("--also-served", type=lambda s: [v for v in s.split(",") if v], default=[],
                        help="served, all: after the served part, serve again (latency only, same runners) with each of these "
                        "settings, e.g. delay=0,poll=0+gpumetrics=0 (delay: batcher delay in us; poll: --gpu-poll-s; gpumetrics: 0/1)")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client in the concurrency runs")
    parser.add_argument("--precisions", type=lambda s: [t for t in s.split(",") if t], default=[],
                        help="tracks to time side by side, e.g. bf16,fp8 (step and clip, with the kernels each ran)")
    parser.add_argument("--perf-analyzer", default=None, help="perf_analyzer binary: also run the perf recipe")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench.json")
    parser.add_argument("--work", type=Path, default=None, help="keep the model and repository here (default: a temporary directory)")
    parser.add_argument("--tracks-only", action="store_true", help="inprocess: only the --precisions tracks' denoiser steps")
    parser.add_argument("--serve-tracks", type=lambda s: [t for t in s.split(",") if t] or None, default=None,
                        help="export only these PRECISION tracks' entries (e.g. fp16): the others load and compile nothing")
    parser.add_argument("--sizes", default="", help="prefill: batch sizes to compile (e.g. 2: one CFG pair; default each entry's own)")
    parser.add_argument("--quality", type=Path, default=None,
                        help="variants, report: the CPU quality report (docs/quality.json) whose fidelity columns join the speed rows")
    parser.add_argument("--inputs", type=Path, nargs="*", default=[], help="report: JSON files to merge")
    args = parser.parse_args(argv)
    quiet_libraries()
    os.environ.update(compile_cache_environment())  # in-process parts share the cache of prefill and of the server
    args.runner = args.runner or ("torch" if args.device == "cuda" else "onnxruntime")
    if args.part == "report":
        merged: dict[str, Any] = {}
        for path in args.inputs:
            merged.update(json.loads(path.read_text()))
        if args.quality and merged.get("variants"):  # a GPU run's speed rows joined to a CPU quality report made later
            attach_quality(merged["variants"], json.loads(args.quality.read_text()))
        print(markdown(merged))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join(["python client/bench.py", *(argv if argv is not None else sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as tmp:
        work = args.work or Path(tmp)
        preset = PRESETS[args.preset]
        size = (args.height or preset.height, args.width or preset.width, args.frames or preset.num_frames)
        model_dir, repository = prepare_repository(args.preset, args.device, work, args.runner, args.experts, size, args.serve_tracks)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the built model's memory goes back before prefill's processes or the server load (OOM seen)
        if args.part in ("inprocess", "all"):
            results["inprocess"] = run_inprocess(args, model_dir, repository)
            args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the server's runners load next
        if args.part in ("served", "all"):
            results["served"] = run_served(args, repository)
            for variant in args.also_served:  # the same latencies with other settings (a restart, same runners)
                args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
                again = argparse.Namespace(**{**vars(args), **served_variant(variant), "concurrency": [], "perf_analyzer": None})
                results.setdefault("served_variants", {})[variant] = run_served(again, repository)
        if args.part == "all":  # the in-process side again, now that the GPU has served: its drift over the run
            args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            results["inprocess_control"] = run_inprocess_control(args, repository)
        if args.part == "cpu":
            results["cpu"] = run_cpu(args, repository)
        if args.part == "variants":
            results["variants"] = run_variants(args, repository)
        if args.part == "prefill":  # compile caches for a later part (T2V_COMPILE_CACHE_DIR): every entry at once
            results["prefill"] = prefill(repository, args)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    return 0
