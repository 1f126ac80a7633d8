"""Speed of ``make quality``'s tracks at full size: one fidelity and speed table per family.

``make quality`` measures each track's fidelity and adherence on the trained tiny model on the CPU
(``docs/quality.json``); this part times the same variants (``data/quality_set.json``: the family's
reference and variants, each a set of request overrides such as PRECISION and STEP_CACHE) on a full-size
model with random weights (speed does not depend on weight values), in-process with the repository's
runners (the served computation minus Triton, ``RunnerPipeline``):

    python client/bench.py variants --device cuda --preset modelscope --steps 20 [--quality docs/quality.json]

Per variant: the kernels its denoiser entries run, their weights as loaded on the device, denoiser calls per
clip (steps the step cache skipped make none), milliseconds per call (CUDA-synchronised, at the clip's
batch), the clip's median seconds (text encoder, loop, VAE decode, H.264) and its speed-up over the
reference. A variant whose track the model lacks (a distilled student exists for the trained demo model
only) or the runner refuses (int8 under the torch runner) gets its reason instead of a time under its name.
With ``--quality``, each row also carries the CPU report's PSNR, SSIM, adherence and gate verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..params import ResolvedRequest
from ..quality.variants import Variant, family_variants, load_quality_set
from ..spec import CFG_BATCH
from ..geometry import ModelGeometry
from ..step_cache import StepCache
from .common import RunnerPipeline, bench_request, environment, load_geometry, timed
from .inprocess import denoiser_feeds


def variant_request(geometry: ModelGeometry, variant: Variant, base: ResolvedRequest) -> ResolvedRequest:
    """The bench request with the variant's overrides: its track (with the track's own defaults, e.g. a student's
    steps and guidance) and its step cache; explicit step or guidance overrides win."""
    track = variant.precision(geometry)
    own = geometry.track_defaults.get(track, {})
    o = variant.overrides
    return replace(base, precision=track, steps=int(o.get("steps", own.get("STEPS", base.steps))),
                   guidance_scale=float(o.get("guidance_scale", own.get("GUIDANCE_SCALE", base.guidance_scale))),
                   step_cache=float(o.get("step_cache", base.step_cache)))


def module_weight_bytes(runner: Any) -> int:
    """Bytes of a torch runner's module parameters and buffers as they sit on the device (FP8 weights: 1 byte each)."""
    module = getattr(runner, "module", None)
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def prepare_variant(pipeline: RunnerPipeline, geometry: ModelGeometry, request: ResolvedRequest, args: argparse.Namespace) -> dict[str, Any]:
    """One variant's row before timing: kernels, weights, its first clip (compiles), its denoiser call time."""
    cuda = args.device == "cuda"
    entries = geometry.tracks[request.precision]
    runners = [pipeline.runners[e] for e in entries]
    row: dict[str, Any] = {"precision": request.precision, "steps": request.steps, "guidance_scale": request.guidance_scale,
                           "step_cache": request.step_cache, "entries": entries, "kernels": {e: r.kernels for e, r in zip(entries, runners)}}
    row["weight_bytes"] = sum(module_weight_bytes(r) for r in runners)
    start = time.perf_counter()
    pipeline.clip(request)
    row["first_clip_s"] = time.perf_counter() - start
    batch = CFG_BATCH if request.guidance_scale > 1.0 else 1
    feeds = {name: tensor[:batch] if tensor.shape[0] == CFG_BATCH else tensor for name, tensor in denoiser_feeds(geometry, request, args.device).items()}
    row["denoiser_batch"] = batch
    row["ms_per_call"] = timed(lambda: runners[0].run(feeds), args.step_repeats, 2, cuda) * 1e3
    return row


def time_clips(pipeline: RunnerPipeline, requests: dict[str, ResolvedRequest], rows: dict[str, dict[str, Any]], repeats: int, cuda: bool) -> None:
    """Median clip seconds per variant, the variants interleaved round by round (drift hits them all alike), and
    the denoiser calls each clip made (steps the step cache skipped make none)."""
    samples: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(repeats):
        for name, request in requests.items():
            cache = StepCache(request.step_cache)
            samples[name].append(timed(lambda: pipeline.clip(request, step_cache=cache), repeats=1, warmup=0, cuda=cuda))
            rows[name]["denoiser_calls_per_clip"] = cache.stats.steps - cache.stats.skipped
            rows[name]["skipped_steps"] = cache.stats.skipped
    for name, seconds in samples.items():
        rows[name]["clip_s"], rows[name]["clip_samples_s"] = statistics.median(seconds), seconds


def run_variants(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    """Every variant of the family's quality set, timed in-process (see the module docstring)."""
    geometry = load_geometry(repository)
    reference, variants = family_variants(load_quality_set(), geometry.family)
    base = bench_request(geometry, args.steps, args.frames, height=args.height, width=args.width)
    pipeline = RunnerPipeline(repository, args.runner, args.device)  # every track's entries, loaded once
    results: dict[str, Any] = {"family": geometry.family, "reference": reference.name, "request": base.__dict__,
                               "environment": environment(), "runner": args.runner, "variants": {}}
    rows, timed_requests = results["variants"], {}
    for variant in [reference, *variants]:
        track = variant.precision(geometry)
        if track not in geometry.tracks:
            row: dict[str, Any] = {"absent": f"this model has no {track!r} track (a student exists where one was distilled: the trained demo model)"}
        else:
            request = variant_request(geometry, variant, base)
            try:
                row = prepare_variant(pipeline, geometry, request, args)
                timed_requests[variant.name] = request
            except Exception as exc:  # a track the runner cannot run: its reason, no time under its name
                row = {"refused": str(exc)[:300], "precision": track}
        row["overrides"], row["default"] = variant.overrides, variant.default
        rows[variant.name] = row
        print(f"variant {variant.name}: " + json.dumps({k: v for k, v in row.items() if k != "kernels"}, default=str), flush=True)
    time_clips(pipeline, timed_requests, rows, args.repeats, args.device == "cuda")
    reference_clip = rows[reference.name].get("clip_s")
    for name, row in rows.items():
        if reference_clip and "clip_s" in row:
            row["speedup"] = reference_clip / row["clip_s"]
            print(f"variant {name}: clip {row['clip_s']:.3f} s ({row['speedup']:.2f}x), {row['denoiser_calls_per_clip']} denoiser calls", flush=True)
    if getattr(args, "quality", None):
        attach_quality(results, json.loads(Path(args.quality).read_text()))
    return results


def attach_quality(results: dict[str, Any], quality: dict[str, Any]) -> None:
    """Join the CPU quality report's fidelity columns (same variant names, same family) onto the speed rows."""
    if quality.get("family") != results["family"]:
        raise ValueError(f"--quality is a {quality.get('family')} report; this model is {results['family']}")
    from ..quality.report import verdicts

    results["quality_report"] = quality.get("repository", "")
    summary, failures = quality.get("summary", {}), verdicts(quality)
    for name, row in results["variants"].items():
        track = quality.get("tracks", {}).get(name, {})
        verdict = ("fail: " + "; ".join(failures[name])) if failures.get(name) else ("pass" if name in failures else "-")
        row["fidelity"] = {"adherence": track.get("adherence"), **summary.get(name, {}), "verdict": verdict}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _pct(adherence: dict[str, Any] | None) -> str:
    if not adherence:
        return "-"
    return " / ".join(f"{100 * adherence[g]['all']:.0f}%" for g in ("seen", "held_out") if g in adherence)


def variants_table(results: dict[str, Any]) -> list[str]:
    """Markdown: one row per variant (with the CPU fidelity columns when attached)."""
    fidelity = any("fidelity" in r for r in results["variants"].values())
    head = "| variant | request | default | kernels | denoiser weights (as loaded) | calls per clip | ms per call | clip (s) | speed-up |"
    if fidelity:
        head += " PSNR (dB) | SSIM | adherence seen / held-out | gate |"
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results["variants"].items():
        request = ", ".join(f"{k.upper()}={v}" for k, v in r["overrides"].items())
        default = "yes" if r["default"] else "no"
        if "clip_s" in r:
            kernels = "; ".join(sorted(set(r["kernels"].values())))
            calls = f"{r['denoiser_calls_per_clip']} of {r['steps']} (batch {r['denoiser_batch']})"
            cells = [kernels, _size(r["weight_bytes"]), calls, f"{r['ms_per_call']:.1f}", f"{r['clip_s']:.2f}",
                     f"{r.get('speedup', 1.0):.2f}x"]
        else:
            cells = [r.get("absent") or "refused: " + r.get("refused", "")[:100], "-", "-", "-", "-", "-"]
        if fidelity:
            f = r.get("fidelity") or {}
            psnr = f"{f['mean_psnr_db']:.2f}" if "mean_psnr_db" in f else ("reference" if name == results["reference"] else "-")
            ssim = f"{f['mean_ssim']:.4f}" if "mean_ssim" in f else "-"
            cells += [psnr, ssim, _pct(f.get("adherence")), f.get("verdict", "-")]
        lines.append(f"| {name} | {request} | {default} | " + " | ".join(cells) + " |")
    return lines
